#!/usr/bin/env bash
# keyhold-sign, the external-signer command, driven the way a gateway's
# SIGNER_CMD is: message as base64 + newline on stdin, signature as base64
# on stdout. Every signature is checked by an independent verifier:
#  - Ed25519: @noble/curves (tests/integration/js/ed25519.cjs) and openssl
#    with a raw public key built from `keyhold pubkey --format hex`;
#  - ECDSA P-256, P-384, secp256k1: openssl over SHA-256 (SHA-384) of the
#    message, r||s turned into DER here;
#  - RSA PKCS #1 v1.5 and PSS: openssl; BIP-340 and recoverable ECDSA: noble.
# Then --in raw, --out hex/raw, every PIN source and its precedence, the
# configuration file and environment, the local-hash fallback when a token
# lacks CKM_ECDSA_SHA256 / CKM_SHA256_RSA_PKCS, and every failure: each gives
# empty stdout, its documented exit code and one stderr line without the PIN
# or the message. Hangs (dlopen, C_Initialize, C_Login, C_Sign, stdin) come
# from tests/integration/faulty-pkcs11.c and must end with exit 7 within
# the deadline + 1 s (the measured times are printed).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

: "${KEYHOLD_SIGN:?KEYHOLD_SIGN must name the built keyhold-sign}"
: "${KH_FAULTY_MODULE:?KH_FAULTY_MODULE must name the built faulty-pkcs11 module}"

PIN=24682468
SO=13571357
TOKEN=gw
# No PIN in the environment unless a check puts it there.
unset KEYHOLD_PIN KEYHOLD_SIGN_URI KEYHOLD_SIGN_CONFIG

# Exit codes (README, "keyhold-sign").
E_FAIL=1 E_USAGE=2 E_INPUT=3 E_NOKEY=4 E_LOGIN=5 E_UNAVAIL=6 E_TIMEOUT=7

say "JS verifiers installed (npm ci)"
js_setup
ok "node $(node --version) with @noble/curves"

say "token '$TOKEN' with Ed25519, P-256, P-384, secp256k1 and RSA-2048 keys"
export KEYHOLD_SO_PIN="$SO"
KEYHOLD_PIN="$PIN" run kh init --label "$TOKEN"
for t in ed25519 p256 p384 secp256k1 rsa2048; do
    KEYHOLD_PIN="$PIN" run kh keygen --token "$TOKEN" --type "$t" --label "k-$t"
done
ok "keys generated"

uri() { printf 'pkcs11:token=%s;object=k-%s' "$TOKEN" "$1"; }

# ks <stdin-file> <args...>: runs keyhold-sign (under a safety-net timeout)
# with stdin from the file; stdout -> $OUT, stderr -> $ERR; sets RC and MS.
# KS_NOPIN=1 runs it without KEYHOLD_PIN in its environment.
OUT="$KH_TMP/ks.out"
ERR="$KH_TMP/ks.err"
ks() {
    local in="$1" t0 t1 envcmd=(env)
    shift
    [ -z "${KS_NOPIN:-}" ] || envcmd+=(-u KEYHOLD_PIN)
    RC=0
    t0="$(date +%s%N)"
    "${envcmd[@]}" timeout -k 5 120 "$KEYHOLD_SIGN" "$@" <"$in" >"$OUT" 2>"$ERR" || RC=$?
    t1="$(date +%s%N)"
    MS=$(((t1 - t0) / 1000000))
}

# ks_ok <what>: the last run succeeded with an empty stderr.
ks_ok() {
    if [ "$RC" -ne 0 ]; then
        sed 's/^/     | /' "$ERR" >&2
        fail "$1: keyhold-sign exited $RC"
    fi
    [ ! -s "$ERR" ] || { sed 's/^/     | /' "$ERR" >&2; fail "$1: stderr is not empty"; }
}

# ks_fails <code> <stderr-regex> <what>: the last run failed with exactly
# this code, within the default deadline (10 s) + 1 s, wrote nothing on
# stdout, one line on stderr matching the regex, and neither the PIN nor the
# message text appears on stderr.
LAST_MSG_B64=""
ks_fails() {
    local code="$1" re="$2" what="$3"
    [ "$RC" -eq "$code" ] || { sed 's/^/     | /' "$ERR" >&2; fail "$what: exit $RC, want $code"; }
    [ "$MS" -le 11000 ] || fail "$what: exited after $MS ms, beyond the 10 s default deadline + 1 s"
    [ ! -s "$OUT" ] || fail "$what: stdout is not empty ($(wc -c <"$OUT") bytes)"
    [ "$(wc -l <"$ERR")" -eq 1 ] || { sed 's/^/     | /' "$ERR" >&2; fail "$what: stderr is not one line"; }
    grep -E -- "$re" "$ERR" >/dev/null || { sed 's/^/     | /' "$ERR" >&2; fail "$what: stderr does not match /$re/"; }
    if grep -F -- "$PIN" "$ERR" >/dev/null || grep -F -- "$WRONG_PIN" "$ERR" >/dev/null; then
        fail "$what: stderr holds a PIN"
    fi
    if [ -n "$LAST_MSG_B64" ] && grep -F -- "$LAST_MSG_B64" "$ERR" >/dev/null; then
        fail "$what: stderr holds the message"
    fi
    ok "$what: exit $code, empty stdout: $(cat "$ERR")"
}
WRONG_PIN=99999999

# b64line <msg-file> <line-file>: what a gateway writes: base64 + newline.
b64line() { { base64 -w0 "$1"; echo; } >"$2"; }

# ---- public keys, from keyhold pubkey, checked by openssl --------------------

say "public keys (keyhold pubkey), parsed by openssl"
ED_HEX="$(KEYHOLD_PIN="$PIN" kh pubkey --token "$TOKEN" --label k-ed25519 --format hex)"
[ "${#ED_HEX}" -eq 64 ] || fail "Ed25519 public key hex is ${#ED_HEX} characters, want 64: $ED_HEX"
# SubjectPublicKeyInfo for a raw Ed25519 key (RFC 8410): fixed prefix + 32 bytes.
printf '302a300506032b6570032100%s' "$ED_HEX" | fromhex >"$KH_TMP/ed.der"
openssl pkey -pubin -inform DER -in "$KH_TMP/ed.der" -out "$KH_TMP/k-ed25519.pem" ||
    fail "openssl rejects the Ed25519 key built from $ED_HEX"
for t in p256 p384 secp256k1 rsa2048; do
    KEYHOLD_PIN="$PIN" kh pubkey --token "$TOKEN" --label "k-$t" --format pem >"$KH_TMP/k-$t.pem"
    openssl pkey -pubin -in "$KH_TMP/k-$t.pem" -noout || fail "openssl rejects the $t public key"
done
K1_XONLY="$(KEYHOLD_PIN="$PIN" kh pubkey --token "$TOKEN" --label k-secp256k1 --format xonly)"
K1_ETH="$(KEYHOLD_PIN="$PIN" kh pubkey --token "$TOKEN" --label k-secp256k1 --format eth)"
ok "Ed25519 $ED_HEX; P-256, P-384, secp256k1, RSA as PEM"

# Verifiers. Each returns non-zero when the signature is bad.
verify_ed25519() { # <sig-file> <msg-file>
    local sighex
    sighex="$(tohex "$1")"
    [ "$(wc -c <"$1")" -eq 64 ] || { echo "signature is $(wc -c <"$1") bytes, want 64"; return 1; }
    node "$KH_JS_DIR/ed25519.cjs" verify "$sighex" "$2" "$ED_HEX" >/dev/null || return 1
    # OpenSSL 3.0's pkeyutl cannot read an empty -rawin input ("Could not
    # allocate 0 bytes"): noble alone checks the empty message.
    [ -s "$2" ] || return 0
    openssl pkeyutl -verify -pubin -inkey "$KH_TMP/k-ed25519.pem" -rawin -in "$2" -sigfile "$1" >/dev/null
}

# der_int <hex>: a DER INTEGER of an unsigned big-endian value.
der_int() {
    local h="$1"
    while [ "${#h}" -gt 2 ] && [ "${h:0:2}" = 00 ]; do h="${h:2}"; done
    [ $((0x${h:0:1})) -lt 8 ] || h="00$h"
    printf '02%s%s' "$(der_len $((${#h} / 2)))" "$h"
}

# rs_to_der <sig-file> <der-file>: r||s (equal halves) as an ECDSA-Sig-Value.
rs_to_der() {
    local hex half body
    hex="$(tohex "$1")"
    half=$((${#hex} / 2))
    body="$(der_int "${hex:0:$half}")$(der_int "${hex:$half}")"
    printf '30%s%s' "$(der_len $((${#body} / 2)))" "$body" | fromhex >"$2"
}

verify_ecdsa() { # <key> <sig-file> <msg-file> [digest]
    local want
    case "$1" in p384) want=96 ;; *) want=64 ;; esac
    [ "$(wc -c <"$2")" -eq "$want" ] || { echo "signature is $(wc -c <"$2") bytes, want $want"; return 1; }
    rs_to_der "$2" "$KH_TMP/sig.der"
    openssl dgst "-${4:-sha256}" -verify "$KH_TMP/k-$1.pem" -signature "$KH_TMP/sig.der" "$3" >/dev/null
}

verify_rsa() { # <sig-file> <msg-file> [pss]
    if [ "${3:-}" = pss ]; then
        openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 \
            -verify "$KH_TMP/k-rsa2048.pem" -signature "$1" "$2" >/dev/null
    else
        openssl dgst -sha256 -verify "$KH_TMP/k-rsa2048.pem" -signature "$1" "$2" >/dev/null
    fi
}

# ---- the gateway harness -----------------------------------------------------

say "gateway harness: SIGNER_CMD with base64 + newline in, base64 out (Ed25519)"
export KEYHOLD_PIN="$PIN"
SIGNER_CMD="$KEYHOLD_SIGN --uri '$(uri ed25519)' --timeout-ms 10000"
# gateway_sign <msg-file> <sig-file>: what a gateway does with SIGNER_CMD.
gateway_sign() {
    local b64
    b64="$({ base64 -w0 "$1"; echo; } | sh -c "$SIGNER_CMD")" || return $?
    printf '%s' "$b64" | base64 -d >"$2"
}
t0="$(date +%s%N)"
for i in 1 2 3 4 5 6; do
    case "$i" in
    1) printf 'hello gateway' >"$KH_TMP/m" ;;
    2) : >"$KH_TMP/m" ;;                                            # empty message
    3) printf 'two\nlines\n\0nul\r\n' >"$KH_TMP/m" ;;
    4) head -c 1000 /dev/urandom >"$KH_TMP/m" ;;
    5) head -c 65536 /dev/urandom >"$KH_TMP/m" ;;
    6) head -c $((1024 * 1024)) /dev/urandom >"$KH_TMP/m" ;;        # the largest message
    esac
    gateway_sign "$KH_TMP/m" "$KH_TMP/sig" || fail "message $i: SIGNER_CMD failed"
    verify_ed25519 "$KH_TMP/sig" "$KH_TMP/m" || fail "message $i ($(wc -c <"$KH_TMP/m") bytes): signature does not verify"
    ok "message $i ($(wc -c <"$KH_TMP/m") bytes): 64-byte signature verified by noble and openssl"
done
t1="$(date +%s%N)"
echo "     6 gateway signatures in $(((t1 - t0) / 1000000)) ms (one process each; printed, not asserted)"

say "a wrong signature or message is rejected by both verifiers (the checks can fail)"
printf 'hello gateway' >"$KH_TMP/m"
gateway_sign "$KH_TMP/m" "$KH_TMP/sig"
flip_byte "$KH_TMP/sig" "$KH_TMP/sig.bad" 10
! verify_ed25519 "$KH_TMP/sig.bad" "$KH_TMP/m" || fail "a flipped signature verified"
printf 'hello gatewaz' >"$KH_TMP/m2"
! verify_ed25519 "$KH_TMP/sig" "$KH_TMP/m2" || fail "the signature verified another message"
ok "flipped signature and changed message rejected"

say "Ed25519 signatures are deterministic: the same message twice gives the same signature"
gateway_sign "$KH_TMP/m" "$KH_TMP/sig2"
cmp -s "$KH_TMP/sig" "$KH_TMP/sig2" || fail "two Ed25519 signatures of one message differ"
ok "same signature"

# ---- ECDSA and RSA ------------------------------------------------------------

printf 'ecdsa message: %s' "$(head -c 48 /dev/urandom | base64 -w0)" >"$KH_TMP/m"
b64line "$KH_TMP/m" "$KH_TMP/m.b64"
for t in p256 secp256k1 p384; do
    say "$t: default mechanism (ECDSA over SHA-256, r||s), verified by openssl"
    ks "$KH_TMP/m.b64" --uri "$(uri $t)" --out raw
    ks_ok "$t"
    verify_ecdsa "$t" "$OUT" "$KH_TMP/m" || fail "$t: openssl rejects the signature over SHA-256"
    cp "$OUT" "$KH_TMP/ok.sig"
    ! verify_ecdsa "$t" "$KH_TMP/ok.sig" "$KH_TMP/m2" || fail "$t: the signature verified another message"
    ok "$t: $(wc -c <"$KH_TMP/ok.sig")-byte r||s verified over SHA-256; another message rejected"
done

say "P-384 with --mechanism ecdsa-sha384"
ks "$KH_TMP/m.b64" --uri "$(uri p384)" --out raw --mechanism ecdsa-sha384
ks_ok "p384 sha384"
verify_ecdsa p384 "$OUT" "$KH_TMP/m" sha384 || fail "P-384: openssl rejects the ECDSA-SHA384 signature"
ok "P-384 ECDSA-SHA384 verified"

say "RSA-2048: default CKM_SHA256_RSA_PKCS and --mechanism rsa-pss-sha256"
ks "$KH_TMP/m.b64" --uri "$(uri rsa2048)" --out raw
ks_ok "rsa"
[ "$(wc -c <"$OUT")" -eq 256 ] || fail "RSA-2048 signature is $(wc -c <"$OUT") bytes"
verify_rsa "$OUT" "$KH_TMP/m" || fail "openssl rejects the RSA PKCS#1 v1.5 signature"
ks "$KH_TMP/m.b64" --uri "$(uri rsa2048)" --out raw --mechanism rsa-pss-sha256
ks_ok "rsa pss"
verify_rsa "$OUT" "$KH_TMP/m" pss || fail "openssl rejects the RSA-PSS signature"
ok "RSA PKCS#1 v1.5 and PSS (SHA-256, salt 32) verified"

say "secp256k1 vendor mechanisms: bip340 and ecdsa-recoverable over a 32-byte message"
head -c 32 /dev/urandom >"$KH_TMP/m32"
b64line "$KH_TMP/m32" "$KH_TMP/m32.b64"
ks "$KH_TMP/m32.b64" --uri "$(uri secp256k1)" --mechanism bip340 --out hex
ks_ok "bip340"
js schnorr-verify "$(tr -d '\n' <"$OUT")" "$(tohex "$KH_TMP/m32")" "$K1_XONLY" >/dev/null ||
    fail "noble rejects the BIP-340 signature"
ks "$KH_TMP/m32.b64" --uri "$(uri secp256k1)" --mechanism ecdsa-recoverable --out hex
ks_ok "recoverable"
addr="$(js recover "$(tr -d '\n' <"$OUT")" "$(tohex "$KH_TMP/m32")")" || fail "noble cannot recover: $addr"
[ "$addr" = "$K1_ETH" ] || fail "recovered $addr, the key's address is $K1_ETH"
ok "BIP-340 verified by noble; recoverable signature recovers to $K1_ETH"

# ---- input and output formats -------------------------------------------------

say "--in raw: binary message with newlines and NUL bytes, as is"
printf 'raw\n\0\r\nbytes\n' >"$KH_TMP/raw"
ks "$KH_TMP/raw" --uri "$(uri ed25519)" --in raw
ks_ok "in raw"
base64 -d "$OUT" >"$KH_TMP/sig"
verify_ed25519 "$KH_TMP/sig" "$KH_TMP/raw" || fail "--in raw: signature does not verify"
ok "--in raw signed the bytes as they are"

say "--out base64 (default) is one line; --out hex is 128 hex digits + newline; --out raw is 64 bytes"
b64line "$KH_TMP/raw" "$KH_TMP/raw.b64"
ks "$KH_TMP/raw.b64" --uri "$(uri ed25519)"
ks_ok "out base64"
[ "$(wc -l <"$OUT")" -eq 1 ] && grep -Eqx '[A-Za-z0-9+/]{86}==' "$OUT" || fail "base64 output is not one 88-character line: $(cat "$OUT")"
ks "$KH_TMP/raw.b64" --uri "$(uri ed25519)" --out hex
ks_ok "out hex"
grep -Eqx '[0-9a-f]{128}' "$OUT" && [ "$(wc -c <"$OUT")" -eq 129 ] || fail "hex output is not 128 hex digits + newline"
fromhex <"$OUT" >"$KH_TMP/sig"
verify_ed25519 "$KH_TMP/sig" "$KH_TMP/raw" || fail "--out hex: signature does not verify"
ks "$KH_TMP/raw.b64" --uri "$(uri ed25519)" --out raw
ks_ok "out raw"
[ "$(wc -c <"$OUT")" -eq 64 ] || fail "raw output is $(wc -c <"$OUT") bytes"
verify_ed25519 "$OUT" "$KH_TMP/raw" || fail "--out raw: signature does not verify"
printf 'cmF3CgANCmJ5dGVzCg==\r\n' >"$KH_TMP/crlf.b64"                # "\r\n" line end
ks "$KH_TMP/crlf.b64" --uri "$(uri ed25519)" --out raw
ks_ok "crlf"
verify_ed25519 "$OUT" "$KH_TMP/raw" || fail "base64 line with \\r\\n: signature does not verify"
printf 'cmF3CgANCmJ5dGVzCg==' >"$KH_TMP/nonl.b64"                     # no line end
ks "$KH_TMP/nonl.b64" --uri "$(uri ed25519)" --out raw
ks_ok "no newline"
verify_ed25519 "$OUT" "$KH_TMP/raw" || fail "base64 without newline: signature does not verify"
ok "base64, hex and raw output all verify; \\r\\n and no line end accepted"

say "the key by id= instead of object="
ED_ID="$(KEYHOLD_PIN="$PIN" kh list --token "$TOKEN" | grep 'object=k-ed25519;' | grep 'type=private' | sed 's/.*;id=\([^;]*\);.*/\1/')"
[ -n "$ED_ID" ] || fail "no id for k-ed25519 in keyhold list"
ks "$KH_TMP/raw.b64" --uri "pkcs11:token=$TOKEN;id=$ED_ID" --out raw
ks_ok "by id"
verify_ed25519 "$OUT" "$KH_TMP/raw" || fail "key by id: signature does not verify"
ok "pkcs11:token=$TOKEN;id=$ED_ID"

# ---- PIN sources ----------------------------------------------------------------

printf 'pin source check' >"$KH_TMP/pm"
b64line "$KH_TMP/pm" "$KH_TMP/pm.b64"
LAST_MSG_B64="$(base64 -w0 "$KH_TMP/pm")"
printf '%s\n' "$PIN" >"$KH_TMP/pin"
printf '%s\n' "$WRONG_PIN" >"$KH_TMP/wrongpin"
chmod 600 "$KH_TMP/pin" "$KH_TMP/wrongpin"

# pin_ok <what> <env...> -- <args...>: signs with this PIN setup and verifies.
pin_ok() {
    local what="$1"
    shift
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    RC=0
    env -u KEYHOLD_PIN "${envs[@]}" timeout -k 5 120 "$KEYHOLD_SIGN" "$@" --out raw \
        <"$KH_TMP/pm.b64" >"$OUT" 2>"$ERR" || RC=$?
    ks_ok "$what"
    verify_ed25519 "$OUT" "$KH_TMP/pm" || fail "$what: signature does not verify"
    ok "PIN from $what"
}

say "each PIN source"
pin_ok "KEYHOLD_PIN" "KEYHOLD_PIN=$PIN" -- --uri "$(uri ed25519)"
pin_ok "--pin-file" -- --uri "$(uri ed25519)" --pin-file "$KH_TMP/pin"
pin_ok "the URI's pin-value" -- --uri "$(uri ed25519)?pin-value=$PIN"
pin_ok "the URI's pin-source=file:PATH" -- --uri "$(uri ed25519)?pin-source=file:$KH_TMP/pin"
pin_ok "the URI's pin-source=file://PATH" -- --uri "$(uri ed25519)?pin-source=file://$KH_TMP/pin"
pin_ok "the URI's pin-source=PATH" -- --uri "$(uri ed25519)?pin-source=$KH_TMP/pin"

say "PIN precedence: URI, then --pin-file, then KEYHOLD_PIN (a wrong PIN elsewhere is not used)"
pin_ok "URI pin-source over a wrong --pin-file and KEYHOLD_PIN" "KEYHOLD_PIN=$WRONG_PIN" -- \
    --uri "$(uri ed25519)?pin-source=$KH_TMP/pin" --pin-file "$KH_TMP/wrongpin"
pin_ok "--pin-file over a wrong KEYHOLD_PIN" "KEYHOLD_PIN=$WRONG_PIN" -- \
    --uri "$(uri ed25519)" --pin-file "$KH_TMP/pin"
KS_NOPIN=1 ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)?pin-value=$WRONG_PIN" --pin-file "$KH_TMP/pin"
ks_fails $E_LOGIN 'CKR_PIN_INCORRECT' "a wrong URI pin-value wins over a right --pin-file"

say "PIN failures: exit $E_LOGIN"
KS_NOPIN=1 ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)"
ks_fails $E_LOGIN 'no PIN' "no PIN at all"
KEYHOLD_PIN="$WRONG_PIN" ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)"
ks_fails $E_LOGIN 'CKR_PIN_INCORRECT' "wrong PIN (KEYHOLD_PIN)"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --pin-file "$KH_TMP/wrongpin"
ks_fails $E_LOGIN 'CKR_PIN_INCORRECT' "wrong PIN (--pin-file)"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --pin-file "$KH_TMP/absent"
ks_fails $E_LOGIN 'cannot open PIN file' "missing --pin-file"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)?pin-source=%7C/bin/echo"
ks_fails $E_LOGIN 'unsupported pin-source' "pin-source running a program"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)?pin-source=file://otherhost/etc/pin"
ks_fails $E_LOGIN 'remote host' "pin-source on another host"

say "a locked PIN: exit $E_LOGIN (a second token, locked by 10 wrong logins)"
KEYHOLD_PIN="$PIN" run kh init --label locked
KEYHOLD_PIN="$PIN" run kh keygen --token locked --type ed25519 --label k
for i in $(seq 1 10); do
    KEYHOLD_PIN="$WRONG_PIN" ks "$KH_TMP/pm.b64" --uri "pkcs11:token=locked;object=k"
    [ "$RC" -eq $E_LOGIN ] || fail "wrong login $i: exit $RC"
done
KEYHOLD_PIN="$PIN" ks "$KH_TMP/pm.b64" --uri "pkcs11:token=locked;object=k"
ks_fails $E_LOGIN 'CKR_PIN_LOCKED' "the right PIN after 10 wrong ones"

say "the PIN is gone from /proc/PID/environ and /proc/PID/cmdline while keyhold-sign runs"
KEYHOLD_PIN="$PIN" KH_FAULTY_TARGET="$KEYHOLD_MODULE" KH_FAULTY_HANG=C_Sign \
    "$KEYHOLD_SIGN" --module "$KH_FAULTY_MODULE" --uri "$(uri ed25519)?pin-value=$PIN" \
    --timeout-ms 60000 <"$KH_TMP/pm.b64" >"$OUT" 2>"$ERR" &
pid=$!
for _ in $(seq 1 100); do
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'pin-value=\*' && break
    sleep 0.05
done
kill -0 "$pid" 2>/dev/null || fail "keyhold-sign ended before the check"
environ="$(tr '\0' '\n' <"/proc/$pid/environ")"
cmdline="$(tr '\0' '\n' <"/proc/$pid/cmdline")"
kill "$pid"
wait "$pid" 2>/dev/null || true
printf '%s\n' "$cmdline" | grep -q 'pin-value=\*\*\*\*\*\*\*\*' || fail "cmdline does not show the hidden pin-value: $cmdline"
! printf '%s\n%s\n' "$environ" "$cmdline" | grep -F -- "$PIN" >/dev/null || fail "the PIN is readable in /proc/$pid"
! printf '%s\n' "$environ" | grep -q '^KEYHOLD_PIN=.' || fail "KEYHOLD_PIN has a value in /proc/$pid/environ"
ok "neither /proc/$pid/environ nor /proc/$pid/cmdline holds the PIN"

# ---- configuration ---------------------------------------------------------------

say "key and settings from --config, KEYHOLD_SIGN_CONFIG and KEYHOLD_SIGN_URI"
cat >"$KH_TMP/sign.conf" <<EOF
# keyhold-sign configuration for the test gateway
uri = $(uri ed25519)
pin_file = $KH_TMP/pin
out = hex
timeout_ms = 20000
EOF
pin_ok "--config (uri, pin_file)" -- --config "$KH_TMP/sign.conf"
KS_NOPIN=1 KEYHOLD_SIGN_CONFIG="$KH_TMP/sign.conf" ks "$KH_TMP/pm.b64"
ks_ok "KEYHOLD_SIGN_CONFIG"
grep -Eqx '[0-9a-f]{128}' "$OUT" || fail "the configuration's out = hex was not used"
fromhex <"$OUT" >"$KH_TMP/sig"
verify_ed25519 "$KH_TMP/sig" "$KH_TMP/pm" || fail "KEYHOLD_SIGN_CONFIG: signature does not verify"
ok "KEYHOLD_SIGN_CONFIG: out = hex used, signature verifies"
sed "s/object=k-ed25519/object=k-p256/" "$KH_TMP/sign.conf" >"$KH_TMP/p256.conf"
pin_ok "--uri over the configuration's uri (k-p256 there: an Ed25519 check would fail)" -- \
    --config "$KH_TMP/p256.conf" --uri "$(uri ed25519)"
KS_NOPIN=1 KEYHOLD_SIGN_URI="$(uri secp256k1)" ks "$KH_TMP/pm.b64" --pin-file "$KH_TMP/pin" --out raw
ks_ok "KEYHOLD_SIGN_URI"
verify_ecdsa secp256k1 "$OUT" "$KH_TMP/pm" || fail "KEYHOLD_SIGN_URI: the secp256k1 signature does not verify"
ok "KEYHOLD_SIGN_URI names the key"
printf 'uri = %s\nbogus = 1\n' "$(uri ed25519)" >"$KH_TMP/bad.conf"
ks "$KH_TMP/pm.b64" --config "$KH_TMP/bad.conf"
ks_fails $E_USAGE "line 2: bogus: unknown setting" "a configuration with an unknown setting"

# ---- the local-hash fallback --------------------------------------------------------

say "a token without CKM_ECDSA_SHA256 (0x1044) / CKM_SHA256_RSA_PKCS (0x40): hashed here, raw mechanism"
KH_FAULTY_TARGET="$KEYHOLD_MODULE" KH_FAULTY_HIDE_MECH=0x1044 \
    ks "$KH_TMP/m.b64" --module "$KH_FAULTY_MODULE" --uri "$(uri p256)" --out raw
ks_ok "fallback ecdsa"
verify_ecdsa p256 "$OUT" "$KH_TMP/m" || fail "fallback: openssl rejects the CKM_ECDSA signature of the SHA-256"
KH_FAULTY_TARGET="$KEYHOLD_MODULE" KH_FAULTY_HIDE_MECH=0x40 \
    ks "$KH_TMP/m.b64" --module "$KH_FAULTY_MODULE" --uri "$(uri rsa2048)" --out raw
ks_ok "fallback rsa"
verify_rsa "$OUT" "$KH_TMP/m" || fail "fallback: openssl rejects the CKM_RSA_PKCS signature of the DigestInfo"
ok "P-256 via CKM_ECDSA over a local SHA-256 and RSA via CKM_RSA_PKCS over a DigestInfo: both verified by openssl"
KH_FAULTY_TARGET="$KEYHOLD_MODULE" KH_FAULTY_HIDE_MECH=0x1057 \
    ks "$KH_TMP/m.b64" --module "$KH_FAULTY_MODULE" --uri "$(uri ed25519)"
ks_fails $E_FAIL 'CKR_MECHANISM_INVALID' "a token without CKM_EDDSA (0x1057)"

# ---- input failures -----------------------------------------------------------------

say "malformed input: exit $E_INPUT"
LAST_MSG_B64="aGVsbG8="
bad_input() { # <printf-format> <stderr-regex> <what> [args]
    printf "$1" >"$KH_TMP/bad.in"
    ks "$KH_TMP/bad.in" --uri "$(uri ed25519)" "${@:4}"
    ks_fails $E_INPUT "$2" "$3"
}
bad_input '' 'no input' "empty stdin"
bad_input 'aGVsbG8' 'not a multiple of 4' "missing padding"
bad_input 'aGVsbG8=\nextra\n' 'trailing data.*6 more bytes after offset 8' "a second line"
bad_input 'aGVsbG8=\n\n' 'trailing data.*1 more bytes' "an empty second line"
bad_input 'aGVs bG8=\n' 'offset 4 is not in the base64 alphabet' "a blank inside"
bad_input ' aGVsbG8=\n' 'offset 0 is not in the base64 alphabet' "a leading blank"
bad_input 'aGVsbG8=\t\n' 'offset 8 is not in the base64 alphabet' "a trailing tab"
bad_input 'aGVs-G8_\n' 'offset 4 is not in the base64 alphabet' "base64url characters"
bad_input 'aGVsbG8h!\n' 'offset 8 is not in the base64 alphabet' "a '!'"
bad_input 'aG=sbG8=\n' "'=' at offset 2 is not final padding" "'=' inside"
bad_input 'aGVsbA=A\n' "'=' at offset 6 is not final padding" "'=' before the last character"
bad_input '====\n' "'=' at offset 0" "only padding"
bad_input 'aGVsbG9=\n' 'non-canonical' "non-zero padding bits"
bad_input 'aGVs\rbG8=\n' 'line break at offset 4' "a CR inside"
bad_input 'aGVsbG8=\0\n' 'offset 8 is not in the base64 alphabet' "a NUL byte"
head -c $((1024 * 1024 + 1)) /dev/zero >"$KH_TMP/big"
ks "$KH_TMP/big" --uri "$(uri ed25519)" --in raw
ks_fails $E_INPUT 'longer than 1048576 bytes' "a raw message of 1 MiB + 1"
b64line "$KH_TMP/big" "$KH_TMP/big.b64"
ks "$KH_TMP/big.b64" --uri "$(uri ed25519)"
ks_fails $E_INPUT 'longer than' "a base64 message of 1 MiB + 1"
ks "$KH_TMP/pm.b64" --uri "$(uri secp256k1)" --mechanism bip340
ks_fails $E_INPUT 'bip340 signs exactly 32 bytes; the message has 16' "bip340 with a 16-byte message"

# ---- key, token, module and usage failures --------------------------------------------

LAST_MSG_B64="$(base64 -w0 "$KH_TMP/pm")"
say "key not found: exit $E_NOKEY"
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=$TOKEN;object=no-such-key"
ks_fails $E_NOKEY "no private key with label 'no-such-key'" "unknown label"
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=$TOKEN;id=%01%02%03"
ks_fails $E_NOKEY "no private key with id 010203" "unknown id"
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=$TOKEN;object=k-ed25519;id=%01"
ks_fails $E_NOKEY "no private key" "right label, wrong id"

say "signer unavailable: exit $E_UNAVAIL"
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=no-such-token;object=k-ed25519"
ks_fails $E_UNAVAIL "no token labelled 'no-such-token'" "unknown token"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --module "$KH_TMP/no-such-module.so"
ks_fails $E_UNAVAIL "cannot load .*no-such-module.so" "missing module"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)?module-path=$KH_TMP/no-such-module.so"
ks_fails $E_UNAVAIL "cannot load .*no-such-module.so" "missing module from the URI's module-path"
KEYHOLD_MODULE="$KH_TMP/none.so" ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)"
ks_fails $E_UNAVAIL "cannot load .*none.so" "missing module from KEYHOLD_MODULE"
KH_FAULTY_TARGET="$KEYHOLD_MODULE" KH_FAULTY_RV=C_Sign:0x30 \
    ks "$KH_TMP/pm.b64" --module "$KH_FAULTY_MODULE" --uri "$(uri ed25519)"
ks_fails $E_UNAVAIL 'CKR_DEVICE_ERROR' "C_Sign answers CKR_DEVICE_ERROR"
KH_FAULTY_TARGET="$KEYHOLD_MODULE" KH_FAULTY_RV=C_Initialize:0x5 \
    ks "$KH_TMP/pm.b64" --module "$KH_FAULTY_MODULE" --uri "$(uri ed25519)"
ks_fails $E_UNAVAIL 'C_Initialize: CKR_GENERAL_ERROR' "C_Initialize fails"

say "other signing errors: exit $E_FAIL"
KH_FAULTY_TARGET="$KEYHOLD_MODULE" KH_FAULTY_RV=C_Sign:0x6 \
    ks "$KH_TMP/pm.b64" --module "$KH_FAULTY_MODULE" --uri "$(uri ed25519)"
ks_fails $E_FAIL 'CKR_FUNCTION_FAILED' "C_Sign answers CKR_FUNCTION_FAILED"
RC=0
timeout -k 5 120 "$KEYHOLD_SIGN" --uri "$(uri ed25519)" <"$KH_TMP/pm.b64" >/dev/full 2>"$ERR" || RC=$?
[ "$RC" -eq $E_FAIL ] || fail "stdout on /dev/full: exit $RC, want $E_FAIL"
grep -q 'cannot write the signature' "$ERR" || fail "stdout on /dev/full: $(cat "$ERR")"
ok "stdout on /dev/full: exit $E_FAIL: $(cat "$ERR")"

say "usage errors: exit $E_USAGE"
ks "$KH_TMP/pm.b64"
ks_fails $E_USAGE 'no key: give --uri' "no URI"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --out pem
ks_fails $E_USAGE "--out: unknown format 'pem'" "--out pem"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --in hex
ks_fails $E_USAGE "unknown format 'hex'" "--in hex"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --timeout-ms 0
ks_fails $E_USAGE "--timeout-ms: '0' is not a whole number" "--timeout-ms 0"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --timeout-ms 5s
ks_fails $E_USAGE "--timeout-ms: '5s' is not" "--timeout-ms 5s"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --pin-file -
ks_fails $E_USAGE "--pin-file: '-' \\(stdin\\) cannot be used" "--pin-file -"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --bogus
ks_fails $E_USAGE 'unknown option' "an unknown option"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --uri "$(uri p256)"
ks_fails $E_USAGE '--uri: given twice' "--uri twice"
ks "$KH_TMP/pm.b64" --uri "token=$TOKEN"
ks_fails $E_USAGE '--uri: not a PKCS#11 URI' "not a pkcs11: URI"
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=$TOKEN"
ks_fails $E_USAGE 'object= or id=' "a URI without object= or id="
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=$TOKEN;object=k-ed25519;type=public"
ks_fails $E_USAGE 'type= must be private' "type=public"
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=$TOKEN;object=k-ed25519;colour=red"
ks_fails $E_USAGE 'unknown URI attribute colour' "an unknown URI attribute"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --mechanism ecdsa-sha256
ks_fails $E_USAGE 'mechanism ecdsa-sha256 does not fit this ed25519 key' "ECDSA on an Ed25519 key"
ks "$KH_TMP/pm.b64" --uri "$(uri p256)" --mechanism bip340
ks_fails $E_USAGE 'mechanism bip340 does not fit this p256 key' "BIP-340 on a P-256 key"
ks "$KH_TMP/pm.b64" --uri "$(uri ed25519)" --mechanism dsa
ks_fails $E_USAGE "--mechanism: unknown mechanism 'dsa'" "an unknown mechanism"
ks "$KH_TMP/pm.b64" --uri "pkcs11:object=k-ed25519"
ks_fails $E_USAGE 'matches 2 tokens' "a URI that matches two tokens"
say "two keys with one CKA_ID (made by pkcs11-tool): a URI naming only the id is ambiguous"
run p11 --token-label "$TOKEN" --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --id 77 --label dup-a
run p11 --token-label "$TOKEN" --login --pin "$PIN" --keypairgen --key-type EC:prime256v1 --id 77 --label dup-b
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=$TOKEN;id=%77"
ks_fails $E_USAGE '2 private keys match id 77 .*must name one' "two keys with id 77"
ks "$KH_TMP/pm.b64" --uri "pkcs11:token=$TOKEN;id=%77;object=dup-b"
ks_ok "id + object"
ok "id=%77;object=dup-b picks one of them"

say "--help: usage on stdout, exit 0"
ks "$KH_TMP/pm.b64" --help
[ "$RC" -eq 0 ] && grep -q 'Usage: keyhold-sign' "$OUT" || fail "--help: exit $RC"
ok "--help"

# ---- the deadline ---------------------------------------------------------------------

# hang_check <where> <timeout-ms> [keyhold-sign args]: the module hangs at
# <where>; keyhold-sign must exit 7 with nothing on stdout within the
# deadline + 1 s.
hang_check() {
    local where="$1" tmo="$2"
    shift 2
    KH_FAULTY_TARGET="$KEYHOLD_MODULE" KH_FAULTY_HANG="$where" \
        ks "$KH_TMP/pm.b64" --module "$KH_FAULTY_MODULE" --uri "$(uri ed25519)" --timeout-ms "$tmo" "$@"
    ks_fails $E_TIMEOUT "timed out after $tmo ms" "module hangs in $where"
    [ "$MS" -le $((tmo + 1000)) ] || fail "module hangs in $where: exited after $MS ms, deadline $tmo ms"
    echo "     exited after $MS ms (deadline $tmo ms)"
}

say "a module that hangs: exit $E_TIMEOUT within the deadline + 1 s, nothing on stdout"
hang_check load 1500
hang_check C_Initialize 1200
hang_check C_Login 1500
hang_check C_FindObjectsInit 1000
hang_check C_Sign 1500
hang_check C_Sign 300
hang_check C_Finalize 1500

say "a gateway that never closes stdin: exit $E_TIMEOUT too"
mkfifo "$KH_TMP/fifo"
sleep 30 >"$KH_TMP/fifo" &
holder=$!
ks "$KH_TMP/fifo" --uri "$(uri ed25519)" --timeout-ms 1000
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
ks_fails $E_TIMEOUT 'timed out after 1000 ms while reading the message' "stdin left open"
[ "$MS" -le 2000 ] || fail "stdin left open: exited after $MS ms"
echo "     exited after $MS ms (deadline 1000 ms)"

say "a slow but working module within the deadline still signs (faulty module passes through)"
KH_FAULTY_TARGET="$KEYHOLD_MODULE" ks "$KH_TMP/pm.b64" --module "$KH_FAULTY_MODULE" \
    --uri "$(uri ed25519)" --out raw --timeout-ms 20000
ks_ok "pass-through"
verify_ed25519 "$OUT" "$KH_TMP/pm" || fail "through the wrapper module: signature does not verify"
ok "signed through the wrapper in $MS ms"
