#!/usr/bin/env bash
# OpenSSL's libp11 engine (libengine-pkcs11-openssl) signs through the module:
# `openssl dgst -engine pkcs11 -keyform engine -sign pkcs11:...` with a P-256
# and an RSA key, verified by plain openssl from the exported public key.
# The token holds EC P-256/RSA keys only: libp11 0.4.12 crashes while
# enumerating a token with an Ed25519 key (README, known limitations).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PIN=11223344
SO=44332211
TOKEN=engine

engine_so=""
for f in $(dpkg -L libengine-pkcs11-openssl 2>/dev/null | grep -E '/engines-[0-9]+/(lib)?pkcs11\.so$'); do
    [ -e "$f" ] && { engine_so="$f"; break; }
done
[ -n "$engine_so" ] || fail "libengine-pkcs11-openssl: no engines-*/pkcs11.so installed (tools/install-deps.sh)"
echo "   engine: $engine_so"

# A private openssl.cnf: the engine with our module, nothing else from the system.
cat >"$KH_TMP/openssl.cnf" <<EOF2
openssl_conf = openssl_init

[openssl_init]
engines = engine_section

[engine_section]
pkcs11 = pkcs11_section

[pkcs11_section]
engine_id = pkcs11
dynamic_path = $engine_so
MODULE_PATH = $KEYHOLD_MODULE
init = 0
EOF2
eng() { OPENSSL_CONF="$KH_TMP/openssl.cnf" with_module openssl "$@"; }

say "token init through the keyhold CLI"
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label "$TOKEN"
ok "token '$TOKEN' initialised by keyhold init"
P=(--token-label "$TOKEN" --login --pin "$PIN")

say "P-256 and RSA-2048 key pairs (pkcs11-tool)"
run p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --id 31 --label eng-p256 --usage-sign
run p11 "${P[@]}" --keypairgen --key-type rsa:2048 --id 32 --label eng-rsa --usage-sign
ok "key pairs generated"

head -c 4096 /dev/urandom >"$KH_TMP/msg"

for spec in eng-p256:31 eng-rsa:32; do
    label="${spec%%:*}" id="${spec##*:}"
    export_pubkey "$TOKEN" "$id" "$PIN" "$KH_TMP/$label.pem"

    say "$label: the engine loads the public key (same as pkcs11-tool's)"
    eng pkey -engine pkcs11 -inform engine -pubin -in "pkcs11:token=$TOKEN;object=$label;type=public" \
        -pubout -out "$KH_TMP/$label.engine.pem" >"$KH_TMP/eng.out" 2>&1 || {
        cat "$KH_TMP/eng.out" >&2
        fail "engine could not load the public key of $label"
    }
    cmp <(openssl pkey -pubin -in "$KH_TMP/$label.pem" -outform DER) \
        <(openssl pkey -pubin -in "$KH_TMP/$label.engine.pem" -outform DER) ||
        fail "$label: engine and pkcs11-tool public keys differ"
    ok "$label: same public key through the engine"

    say "$label: openssl dgst -sha256 -engine pkcs11 -keyform engine -sign"
    uri="pkcs11:token=$TOKEN;object=$label;type=private;pin-value=$PIN"
    eng dgst -sha256 -engine pkcs11 -keyform engine -sign "$uri" -out "$KH_TMP/$label.sig" "$KH_TMP/msg" \
        >"$KH_TMP/eng.out" 2>&1 || {
        cat "$KH_TMP/eng.out" >&2
        fail "engine signing with $label failed"
    }
    [ -s "$KH_TMP/$label.sig" ] || fail "$label: empty signature"
    run openssl dgst -sha256 -verify "$KH_TMP/$label.pem" -signature "$KH_TMP/$label.sig" "$KH_TMP/msg"
    ok "$label: engine signature verified by openssl"
    flip_byte "$KH_TMP/msg" "$KH_TMP/msg.bad" 2000
    must_fail openssl dgst -sha256 -verify "$KH_TMP/$label.pem" -signature "$KH_TMP/$label.sig" "$KH_TMP/msg.bad"
    ok "$label: the signature does not verify over a modified message"
done

say "a wrong PIN in the URI is refused"
must_fail eng dgst -sha256 -engine pkcs11 -keyform engine \
    -sign "pkcs11:token=$TOKEN;object=eng-p256;type=private;pin-value=000000" \
    -out "$KH_TMP/bad.sig" "$KH_TMP/msg" </dev/null
has 'PIN incorrect' "$KH_TMP/must_fail.out" || fail "wrong PIN: the engine does not report CKR_PIN_INCORRECT"
ok "wrong PIN refused"
