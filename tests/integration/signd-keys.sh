#!/usr/bin/env bash
# keyhold-signd's methods for keyhold's remote backend (keys, public_key,
# sign), checked outside keyhold:
#  - keys lists every served key with its type; public_key equals
#    `keyhold pubkey --format hex`;
#  - sign with every algorithm of README's protocol (ecdsa on secp256k1,
#    P-256 and P-384, ecdsa_recoverable, bip340, eddsa, rsa_pkcs1, rsa_pss)
#    verifies with node's crypto (OpenSSL) or noble from the public key the
#    protocol returned, and a flipped byte does not;
#  - wrong algorithm for a key, bad lengths, bad parameters: clear errors;
#  - another PKCS#11 module (SoftHSM2) as the token: keyhold-signd signs
#    Ethereum transactions through plain CKM_ECDSA (finding the recovery id
#    itself), and ethers recovers the address pkcs11-tool's public key gives.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/signd-lib.sh"

export KEYHOLD_SO_PIN=10203040 KEYHOLD_PIN=50607080
TOKEN=keys

say "JS client installed (npm ci)"
js_setup
ok "node $(node --version)"

say "a token with secp256k1, P-256, P-384, Ed25519 and RSA-2048 keys (keyhold keygen)"
run kh init --label "$TOKEN"
for t in secp256k1 p256 p384 ed25519 rsa2048; do
    run kh keygen --token "$TOKEN" --type "$t" --label "k-$t"
done
ok "five keys"

say "keyhold-signd on a unix socket"
signd_start keys --listen "unix:$KH_TMP/keys.sock" --token "$TOKEN"
URL="${SIGND_URL[keys]}"
ok "listening"

say "keys and public_key agree with keyhold pubkey --format hex"
out="$(sjs call "$URL" '[{"method":"keys","id":"k"}]')"
echo "     $out"
[ "$(printf '%s' "$out" | jq -r .id)" = k ] || fail "keys: the reply's id is not the request's"
for t in secp256k1 p256 p384 ed25519 rsa2048; do
    want_type="$t"
    [ "$t" = rsa2048 ] && want_type=rsa
    got_type="$(printf '%s' "$out" | jq -r --arg k "k-$t" '.result.keys[] | select(.key == $k) | .type')"
    [ "$got_type" = "$want_type" ] || fail "keys: k-$t has type '$got_type', want $want_type"
    pk="$(sjs call "$URL" "[{\"method\":\"public_key\",\"params\":{\"key\":\"k-$t\"}}]")"
    if [ "$t" = rsa2048 ]; then
        got="$(printf '%s' "$pk" | jq -r .result.n)"
    else
        got="$(printf '%s' "$pk" | jq -r .result.public_key)"
    fi
    want="$(kh pubkey --token "$TOKEN" --label "k-$t" --format hex)"
    [ "${got,,}" = "${want,,}" ] || fail "public_key of k-$t: $got, keyhold pubkey says $want"
done
ok "five keys listed with their types; public keys match"

say "sign with every algorithm; verified by node's crypto / noble"
for pair in k-secp256k1:ecdsa k-secp256k1:ecdsa_recoverable k-secp256k1:bip340 k-p256:ecdsa k-p384:ecdsa \
            k-ed25519:eddsa k-rsa2048:rsa_pkcs1 k-rsa2048:rsa_pss; do
    run sjs sign-verify "$URL" "${pair%%:*}" "${pair#*:}"
done
ok "eight key/algorithm pairs verified; flipped signatures rejected"

say "refusals: algorithm for another key type, lengths, parameters"
D32=$(printf 'ab%.0s' {1..32})
out="$(sjs call "$URL" '[
  {"method":"sign","params":{"key":"k-p256","algorithm":"eddsa","message":"00"}},
  {"method":"sign","params":{"key":"k-ed25519","algorithm":"ecdsa","digest":"'"$D32"'"}},
  {"method":"sign","params":{"key":"k-secp256k1","algorithm":"ecdsa","digest":"abcd"}},
  {"method":"sign","params":{"key":"k-secp256k1","algorithm":"bip340","message":"'"$D32"'","aux":"00"}},
  {"method":"sign","params":{"key":"k-rsa2048","algorithm":"rsa_pss","digest":"'"$D32"'","hash":"md5","mgf_hash":"sha256","salt_len":32}},
  {"method":"sign","params":{"key":"k-rsa2048","algorithm":"rsa_pss","digest":"'"$D32"'","hash":"sha256","mgf_hash":"sha256"}},
  {"method":"sign","params":{"key":"k-ed25519","algorithm":"eddsa","message":"00","message_b64":"AA=="}},
  {"method":"sign","params":{"key":"k-p256","algorithm":"ecdsa","digest":"xyz"}},
  {"method":"sign","params":{"key":"k-p256","algorithm":"ecdsa_sha256","digest":"'"$D32"'"}},
  {"method":"sign","params":{"key":"k-p256","digest":"'"$D32"'"}},
  {"method":"sign","params":{"key":"nope","algorithm":"ecdsa","digest":"'"$D32"'"}},
  {"method":"public_key","params":{"key":5}}
]')"
printf '%s\n' "$out" | sed 's/^/     | /'
codes="$(printf '%s\n' "$out" | jq -r .error.code | tr '\n' ' ')"
[ "$codes" = "4 4 -32602 -32602 -32602 -32602 -32602 -32602 4 -32602 1 -32602 " ] ||
    fail "error codes: $codes"
ok "unsupported (4), invalid_params (-32602), unknown_key (1) as README says"

signd_stop keys

say "SoftHSM2 as the token: keyhold-signd serves another PKCS#11 module"
SOFTHSM_LIB=""
for f in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
    [ -e "$f" ] && SOFTHSM_LIB="$f" && break
done
[ -n "$SOFTHSM_LIB" ] || fail "SoftHSM2 is not installed (tools/install-deps.sh)"
mkdir -p "$KH_TMP/softhsm/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$KH_TMP/softhsm/tokens" \
    >"$KH_TMP/softhsm/softhsm2.conf"
export SOFTHSM2_CONF="$KH_TMP/softhsm/softhsm2.conf"
run softhsm2-util --init-token --free --label sh --so-pin 1111 --pin 2222
SH=(pkcs11-tool --module "$SOFTHSM_LIB" --token-label sh --login --pin 2222)
run "${SH[@]}" --keypairgen --key-type EC:secp256k1 --id 01 --label eth
"${SH[@]}" --read-object --type pubkey --id 01 -o "$KH_TMP/sh-eth.der" >/dev/null 2>&1 ||
    fail "pkcs11-tool cannot export SoftHSM's public key"
point="$(openssl pkey -pubin -inform DER -in "$KH_TMP/sh-eth.der" -outform DER | tail -c 65 | xxd -p -c 65)"
sh_addr="$(js eth-address-pub "$point")"
ok "SoftHSM token with a secp256k1 key, address $sh_addr (pkcs11-tool + openssl + noble)"

# SoftHSM's own allocations at exit are not keyhold's: no leak report for this server.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" KEYHOLD_PIN=2222 \
    signd_start sh --listen "unix:$KH_TMP/sh.sock" --module "$SOFTHSM_LIB" --token sh
run sjs eth "${SIGND_URL[sh]}" "$sh_addr"
out="$(sjs call "${SIGND_URL[sh]}" '[{"method":"status"}]')"
[ "$(printf '%s' "$out" | jq -r .result.mode)" = pkcs11 ] || fail "status.mode for a foreign module: $out"
signd_stop sh
ok "transactions and EIP-191 signatures from SoftHSM recover to its key's address (ethers)"
