#!/usr/bin/env bash
# The chain: pkcs11-tool -> keyhold (remote key) -> keyhold-signd -> keyhold
# (vault key, in a second store), over a unix socket and over TCP.
#
#  - a signer store holds vault keys (P-256, secp256k1, Ed25519, RSA-2048);
#    keyhold-signd serves its token on a unix socket and on TCP loopback;
#  - a client store registers them as remote keys with `keyhold remote add`
#    (public keys fetched once; they equal `keyhold pubkey` on the signer);
#  - pkcs11-tool signs through the client module; openssl verifies every
#    signature with the public key exported from the SIGNER's store, and
#    rejects it for a changed message;
#  - `keyhold list` shows the remote keys with their backend; the usual
#    refusals of `keyhold remote add` (unknown key, signer down, usage);
#  - the TCP signer stops: signing fails fast with no signature written;
#    it comes back on the same port and signing resumes;
#  - a third keyhold-signd with "verify_signatures": false says so at start,
#    and a signature through it still verifies (the module checks it);
#  - last, tests/perf/remote-bench prints signatures/s through the chain
#    (unix, TCP, unix without signd's check) beside direct vault signing and
#    the primitive verification cost (KH_BENCH_SECONDS per cell).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/signd-lib.sh"

export KEYHOLD_SO_PIN=11223344 KEYHOLD_PIN=55667788
SIGNER_STORE="$KH_TMP/signer-store"
CLIENT_STORE="$KH_TMP/store"      # lib.sh's KEYHOLD_STORE: what p11/kh use by default
ks() { KEYHOLD_STORE="$SIGNER_STORE" kh "$@"; }

: "${KH_TEST_DRIVER:?KH_TEST_DRIVER must name the example plugin}"
printf 'remote_timeout_ms = 3000\nremote_plugin_testdrv = %s\n' "$KH_TEST_DRIVER" >"$KH_TMP/client.conf"
export KEYHOLD_CONF="$KH_TMP/client.conf"

say "the signer's store: a token with vault keys"
run ks init --label vault
for t in p256 secp256k1 ed25519 rsa2048; do
    run ks keygen --token vault --type "$t" --label "k-$t"
done
for t in p256 secp256k1 ed25519 rsa2048; do
    ks pubkey --token vault --label "k-$t" --format pem >"$KH_TMP/signer-$t.pem"
    ks pubkey --token vault --label "k-$t" --format hex >"$KH_TMP/signer-$t.hex"
done
ok "four vault keys, public keys exported from the signer's store"

say "keyhold-signd on a unix socket and on TCP loopback (same token)"
KEYHOLD_STORE="$SIGNER_STORE" signd_start unix --listen "unix:$KH_TMP/signd.sock" --token vault
KEYHOLD_STORE="$SIGNER_STORE" signd_start tcp --listen "tcp://127.0.0.1:0" --token vault
UNIX_URL="${SIGND_URL[unix]}"
TCP_URL="${SIGND_URL[tcp]}"
ok "listening on $UNIX_URL and $TCP_URL"

say "the client's store: remote keys registered with keyhold remote add"
run kh init --label client
declare -A URL_OF=([p256]="$UNIX_URL" [secp256k1]="$TCP_URL" [ed25519]="$UNIX_URL" [rsa2048]="$TCP_URL")
declare -A ID_OF=([p256]=a1 [secp256k1]=a2 [ed25519]=a3 [rsa2048]=a4)
for t in p256 secp256k1 ed25519 rsa2048; do
    uri="$(kh remote add --token client --url "${URL_OF[$t]}" --key "k-$t" --label "r-$t" --id "${ID_OF[$t]}")"
    echo "     $uri"
    case "${uri,,}" in pkcs11:*"object=r-$t"*"id=%${ID_OF[$t]}"*) ;; *) fail "remote add printed '$uri'" ;; esac
    got="$(kh pubkey --token client --label "r-$t" --format hex)"
    [ "$got" = "$(cat "$KH_TMP/signer-$t.hex")" ] || fail "r-$t: client public key $got differs from the signer's"
done
ok "four remote keys; their public keys equal the signer's"
kh list --token client --json >"$KH_TMP/list.json"
n="$(jq '[.[] | select(.backend == "remote")] | length' "$KH_TMP/list.json")"
[ "$n" = 4 ] || { cat "$KH_TMP/list.json"; fail "keyhold list --json shows $n remote keys, want 4"; }
ok "keyhold list shows the four private keys with backend remote"

head -c 1000 /dev/urandom >"$KH_TMP/msg"
cp "$KH_TMP/msg" "$KH_TMP/msg.bad"
printf 'x' >>"$KH_TMP/msg.bad"

say "registration refusals"
must_fail kh remote add --token client --url "$UNIX_URL" --key no-such-key
grep -q "CKR_ATTRIBUTE_VALUE_INVALID" "$KH_TMP/must_fail.out" || fail "unknown key: no CKR_ATTRIBUTE_VALUE_INVALID"
must_fail kh remote add --token client --url "unix:$KH_TMP/nobody.sock" --key k-p256 --label x
grep -q "CKR_DEVICE_ERROR" "$KH_TMP/must_fail.out" || fail "signer down: no CKR_DEVICE_ERROR"
rc=0
kh remote add --token client --key k-p256 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "remote add without --url: exit $rc, want 2 (usage)"
[ "$(jq length "$KH_TMP/list.json")" = "$(kh list --token client --json | jq length)" ] ||
    fail "a refused registration left an object behind"
ok "unknown key, unreachable signer and usage errors refused; nothing stored"

say "remote add without --token (one token) and through a plugin driver (--driver)"
run kh remote add --url "$UNIX_URL" --key k-p256 --label only-token
run kh remote add --token client --driver testdrv --key p256:alice --label plug --id b1
run p11 --token-label client --login --pin "$KEYHOLD_PIN" --sign --id b1 -m ECDSA-SHA256 \
    --signature-format openssl -i "$KH_TMP/msg.bad" -o "$KH_TMP/plug.sig"
kh pubkey --token client --label plug --format pem >"$KH_TMP/plug.pem"
run openssl dgst -sha256 -verify "$KH_TMP/plug.pem" -signature "$KH_TMP/plug.sig" "$KH_TMP/msg.bad"
ok "registered on the only token; the plugin's key signs through pkcs11-tool, openssl verifies"

say "pkcs11-tool signs through the chain; openssl verifies with the signer's keys"
P=(--token-label client --login --pin "$KEYHOLD_PIN")
for t in p256 secp256k1; do
    run p11 "${P[@]}" --sign --id "${ID_OF[$t]}" -m ECDSA-SHA256 --signature-format openssl \
        -i "$KH_TMP/msg" -o "$KH_TMP/$t.sig"
    run openssl dgst -sha256 -verify "$KH_TMP/signer-$t.pem" -signature "$KH_TMP/$t.sig" "$KH_TMP/msg"
    if openssl dgst -sha256 -verify "$KH_TMP/signer-$t.pem" -signature "$KH_TMP/$t.sig" "$KH_TMP/msg.bad" >/dev/null 2>&1; then
        fail "openssl accepted the $t signature for another message"
    fi
    ok "$t ECDSA-SHA256 over ${URL_OF[$t]%%:*}: openssl verifies (and rejects a changed message)"
done
run p11 "${P[@]}" --sign --id "${ID_OF[ed25519]}" -m EDDSA -i "$KH_TMP/msg" -o "$KH_TMP/ed.sig"
run openssl pkeyutl -verify -pubin -inkey "$KH_TMP/signer-ed25519.pem" -rawin -in "$KH_TMP/msg" -sigfile "$KH_TMP/ed.sig"
ok "Ed25519 EDDSA over unix: openssl verifies"
run p11 "${P[@]}" --sign --id "${ID_OF[rsa2048]}" -m SHA256-RSA-PKCS -i "$KH_TMP/msg" -o "$KH_TMP/rsa.sig"
run openssl dgst -sha256 -verify "$KH_TMP/signer-rsa2048.pem" -signature "$KH_TMP/rsa.sig" "$KH_TMP/msg"
run p11 "${P[@]}" --sign --id "${ID_OF[rsa2048]}" -m SHA256-RSA-PKCS-PSS --mgf MGF1-SHA256 --salt-len 32 \
    -i "$KH_TMP/msg" -o "$KH_TMP/pss.sig"
run openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 \
    -verify "$KH_TMP/signer-rsa2048.pem" -signature "$KH_TMP/pss.sig" "$KH_TMP/msg"
ok "RSA PKCS#1 v1.5 and PSS over TCP: openssl verifies"

say "the TCP signer stops: signing fails fast, with nothing written"
port="${TCP_URL##*:}"
signd_stop tcp
rm -f "$KH_TMP/down.sig"
t0=$(date +%s%N)
must_fail p11 "${P[@]}" --sign --id "${ID_OF[secp256k1]}" -m ECDSA-SHA256 -i "$KH_TMP/msg" -o "$KH_TMP/down.sig"
t1=$(date +%s%N)
[ ! -s "$KH_TMP/down.sig" ] || fail "a signature file was written while the signer was down"
ok "signer down: pkcs11-tool failed after $(((t1 - t0) / 1000000)) ms (deadline 3000 ms), no signature"

say "the TCP signer comes back on the same port: signing resumes"
KEYHOLD_STORE="$SIGNER_STORE" signd_start tcp --listen "tcp://127.0.0.1:$port" --token vault
run p11 "${P[@]}" --sign --id "${ID_OF[secp256k1]}" -m ECDSA-SHA256 --signature-format openssl \
    -i "$KH_TMP/msg" -o "$KH_TMP/back.sig"
run openssl dgst -sha256 -verify "$KH_TMP/signer-secp256k1.pem" -signature "$KH_TMP/back.sig" "$KH_TMP/msg"
ok "signed again after the restart; openssl verifies"

say "a signer without its own check (verify_signatures: false): the module's check still holds"
printf '{"verify_signatures": false}\n' >"$KH_TMP/unchecked.json"
KEYHOLD_STORE="$SIGNER_STORE" signd_start unchecked --listen "unix:$KH_TMP/unchecked.sock" --token vault \
    --config "$KH_TMP/unchecked.json"
grep -q 'signatures NOT checked' "$KH_TMP/unchecked.log" || fail "no warning that signatures leave unchecked"
NOCHECK_URL="${SIGND_URL[unchecked]}"
run kh remote add --token client --url "$NOCHECK_URL" --key k-p256 --label n-check --id c1
run p11 "${P[@]}" --sign --id c1 -m ECDSA-SHA256 --signature-format openssl -i "$KH_TMP/msg" -o "$KH_TMP/n.sig"
run openssl dgst -sha256 -verify "$KH_TMP/signer-p256.pem" -signature "$KH_TMP/n.sig" "$KH_TMP/msg"
ok "signed through the unchecked signer; openssl verifies"

say "throughput: the chain over unix and TCP beside direct vault signing (printed, not asserted)"
for t in p256 secp256k1 ed25519; do
    run kh remote add --token client --url "$UNIX_URL" --key "k-$t" --label "u-$t"
    run kh remote add --token client --url "tcp://127.0.0.1:$port" --key "k-$t" --label "t-$t"
    run kh remote add --token client --url "$NOCHECK_URL" --key "k-$t" --label "n-$t"
done
: "${KH_REMOTE_BENCH:?KH_REMOTE_BENCH must name the built remote-bench}"
run "$KH_REMOTE_BENCH" "$SIGNER_STORE" "$CLIENT_STORE" "$UNIX_URL" "tcp://127.0.0.1:$port" "$NOCHECK_URL"
ok "measured"

signd_stop unix
signd_stop tcp
signd_stop unchecked
