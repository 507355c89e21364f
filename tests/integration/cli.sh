#!/usr/bin/env bash
# The keyhold CLI end to end: init, keygen of every type, import of hex,
# nsec and PEM keys (PEMs made by openssl genpkey), list and list --json,
# pubkey in every format, delete. Every answer is checked against something
# keyhold did not compute: openssl's view of the same key, pkcs11-tool
# signatures verified by openssl, ssh-keygen's conversion, and @noble/curves
# (JS) for Ethereum addresses and Nostr keys.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

TOKEN=cli
export KEYHOLD_SO_PIN=12121212
export KEYHOLD_PIN=343434
P=(--token-label "$TOKEN" --login --pin "$KEYHOLD_PIN")

js_setup

say "keyhold init"
run kh init --label "$TOKEN"
p11 -L | has "token label *: $TOKEN\$" || fail "pkcs11-tool does not list token '$TOKEN'"
ok "token '$TOKEN' created"

say "keyhold init refuses a second token with the same label"
must_fail kh init --label "$TOKEN"
ok "duplicate label refused"

# CKA_ID (hex) of the private key labelled $1, from `keyhold list --json`.
json_id() {
    kh list --token "$TOKEN" --json | jq -r --arg l "$1" \
        '[.[] | select(.label == $l and .class == "private")][0].id // empty'
}

# sign_and_verify <label> <openssl-public-pem> <kind>: sign with pkcs11-tool
# through the module, verify with openssl against the given public key.
sign_and_verify() {
    local label="$1" pem="$2" kind="$3" id
    id="$(json_id "$label")"
    [ -n "$id" ] || fail "$label: no private key in keyhold list --json"
    head -c 300 /dev/urandom >"$KH_TMP/m"
    case "$kind" in
    ec)
        run p11 "${P[@]}" --sign --id "$id" -m ECDSA-SHA256 --signature-format openssl -i "$KH_TMP/m" -o "$KH_TMP/s"
        run openssl dgst -sha256 -verify "$pem" -signature "$KH_TMP/s" "$KH_TMP/m"
        ;;
    ed)
        run p11 "${P[@]}" --sign --id "$id" -m EDDSA -i "$KH_TMP/m" -o "$KH_TMP/s"
        run openssl pkeyutl -verify -pubin -inkey "$pem" -rawin -in "$KH_TMP/m" -sigfile "$KH_TMP/s"
        ;;
    rsa)
        run p11 "${P[@]}" --sign --id "$id" -m SHA256-RSA-PKCS -i "$KH_TMP/m" -o "$KH_TMP/s"
        run openssl dgst -sha256 -verify "$pem" -signature "$KH_TMP/s" "$KH_TMP/m"
        ;;
    esac
    flip_byte "$KH_TMP/m" "$KH_TMP/m.bad" 150
    case "$kind" in
    ed) must_fail openssl pkeyutl -verify -pubin -inkey "$pem" -rawin -in "$KH_TMP/m.bad" -sigfile "$KH_TMP/s" ;;
    *) must_fail openssl dgst -sha256 -verify "$pem" -signature "$KH_TMP/s" "$KH_TMP/m.bad" ;;
    esac
    ok "$label: module signature verified by openssl (and not over a modified message)"
}

# spki_der <pem>: canonical DER SubjectPublicKeyInfo of a public or private PEM.
spki_der() {
    if grep -q 'PUBLIC KEY' "$1"; then
        openssl pkey -pubin -in "$1" -outform DER
    else
        openssl pkey -in "$1" -pubout -outform DER
    fi
}

# spki_point_hex <spki-der>: the subjectPublicKey BIT STRING's content (EC
# point) in hex, located by openssl asn1parse.
spki_point_hex() {
    local l
    l="$(openssl asn1parse -inform DER -in "$1" | awk '/BIT STRING/ { sub(/.*l= */, ""); sub(/ .*/, ""); n = $0 } END { print n }')"
    [ -n "$l" ] || fail "no BIT STRING in $1"
    tail -c $((l - 1)) "$1" | xxd -p -c 200
}

# ssh_line_ed25519 <spki-der-file>: OpenSSH line built here from RFC 8709.
ssh_line_ed25519() {
    {
        printf '\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20'
        tail -c 32 "$1"
    } | base64 -w0 | sed 's/^/ssh-ed25519 /'
}

# check_pubkey <label> <kind> <openssl pem (private or public)>
check_pubkey() {
    local label="$1" kind="$2" ref="$3"
    say "$label: keyhold pubkey in every format against openssl"
    kh pubkey --token "$TOKEN" --label "$label" --format pem >"$KH_TMP/$label.kh.pem" ||
        fail "keyhold pubkey --format pem $label failed"
    cmp <(spki_der "$KH_TMP/$label.kh.pem") <(spki_der "$ref") ||
        fail "$label: keyhold pubkey --format pem differs from openssl's public key"
    spki_der "$ref" >"$KH_TMP/$label.spki"
    ok "$label: pem equals openssl's public key"

    local hex want
    hex="$(kh pubkey --token "$TOKEN" --label "$label" --format hex)"
    case "$kind" in
    ec | k1) want="$(spki_point_hex "$KH_TMP/$label.spki")" ;;
    ed) want="$(tail -c 32 "$KH_TMP/$label.spki" | xxd -p -c 64)" ;;
    rsa) want="$(openssl rsa -pubin -inform DER -in "$KH_TMP/$label.spki" -noout -modulus | sed 's/^Modulus=//' | tr 'A-F' 'a-f')" ;;
    esac
    [ "${hex,,}" = "$want" ] || fail "$label: pubkey --format hex = $hex, openssl says $want"
    ok "$label: hex equals openssl's"

    if [ "$kind" = k1 ]; then
        local x="${want:2:64}"
        [ "$(kh pubkey --token "$TOKEN" --label "$label" --format xonly)" = "$x" ] || fail "$label: xonly differs"
        [ "$(kh pubkey --token "$TOKEN" --label "$label" --format npub)" = "$(js bech32 npub "$x")" ] ||
            fail "$label: npub differs from JS bech32"
        local eth js_eth
        eth="$(kh pubkey --token "$TOKEN" --label "$label" --format eth)"
        js_eth="$(js eth-address-pub "$want")"
        [ "$eth" = "$js_eth" ] || fail "$label: eth $eth, JS (EIP-55) $js_eth"
        ok "$label: xonly, npub and EIP-55 eth address equal JS's ($eth)"
        must_fail kh pubkey --token "$TOKEN" --label "$label" --format ssh
        ok "$label: no OpenSSH form for secp256k1"
    else
        must_fail kh pubkey --token "$TOKEN" --label "$label" --format eth
        must_fail kh pubkey --token "$TOKEN" --label "$label" --format xonly
        ok "$label: eth/xonly refused for a non-secp256k1 key"
        local line want_ssh
        line="$(kh pubkey --token "$TOKEN" --label "$label" --format ssh | awk '{ print $1, $2 }')"
        if [ "$kind" = ed ]; then
            want_ssh="$(ssh_line_ed25519 "$KH_TMP/$label.spki")"
        else
            openssl pkey -pubin -inform DER -in "$KH_TMP/$label.spki" -out "$KH_TMP/$label.pub.pem"
            want_ssh="$(ssh-keygen -i -m PKCS8 -f "$KH_TMP/$label.pub.pem" | awk '{ print $1, $2 }')"
        fi
        [ "$line" = "$want_ssh" ] || fail "$label: ssh line
  keyhold: $line
  expected: $want_ssh"
        ok "$label: OpenSSH line equals ssh-keygen's / RFC 8709 encoding"
    fi
}

# ---- keygen ----
declare -A KIND=([secp256k1]=k1 [p256]=ec [p384]=ec [ed25519]=ed [rsa2048]=rsa)
for type in secp256k1 p256 p384 ed25519 rsa2048; do
    label="gen-$type"
    say "keyhold keygen --type $type"
    uri="$(kh keygen --token "$TOKEN" --type "$type" --label "$label")" || fail "keygen $type failed"
    echo "     $uri"
    case "$uri" in pkcs11:*"object=$label"*) ;; *) fail "keygen did not print the key's PKCS#11 URI: $uri" ;; esac
    ok "$type generated: $uri"
    # The reference public key comes from pkcs11-tool's export, decoded by openssl.
    id="$(json_id "$label")"
    export_pubkey "$TOKEN" "$id" "$KEYHOLD_PIN" "$KH_TMP/$label.ref.pem"
    check_pubkey "$label" "${KIND[$type]}" "$KH_TMP/$label.ref.pem"
    kind="${KIND[$type]}"
    [ "$kind" = k1 ] && kind=ec
    sign_and_verify "$label" "$KH_TMP/$label.ref.pem" "$kind"
done

# ---- import --hex ----
say "keyhold import --hex (a secp256k1 secret known to the test)"
priv="$(head -c 32 /dev/urandom | xxd -p -c 64)"
printf '%s\n' "$priv" >"$KH_TMP/k.hex"
run kh import --token "$TOKEN" --label imp-hex --hex "$KH_TMP/k.hex"
# openssl's own view of that secret: an ECPrivateKey built from the hex (RFC 5915).
cat >"$KH_TMP/k1.cnf" <<EOF
asn1 = SEQUENCE:ecpk
[ecpk]
version = INTEGER:1
key = FORMAT:HEX,OCTETSTRING:$priv
params = EXPLICIT:0,OID:secp256k1
EOF
openssl asn1parse -genconf "$KH_TMP/k1.cnf" -out "$KH_TMP/k1.der" >/dev/null
openssl ec -inform DER -in "$KH_TMP/k1.der" -out "$KH_TMP/k1.pem" 2>/dev/null
check_pubkey imp-hex k1 "$KH_TMP/k1.pem"
js_eth="$(js eth-address-priv "$priv")"
kh_eth="$(kh pubkey --token "$TOKEN" --label imp-hex --format eth)"
[ "$kh_eth" = "$js_eth" ] || fail "imported hex key: keyhold eth $kh_eth, JS from the private key $js_eth"
ok "imported hex key: Ethereum address equals JS's derivation from the secret ($kh_eth)"
openssl pkey -in "$KH_TMP/k1.pem" -pubout -out "$KH_TMP/k1.pub.pem"
sign_and_verify imp-hex "$KH_TMP/k1.pub.pem" ec

say "keyhold import --hex from stdin with a 0x prefix"
priv2="$(head -c 32 /dev/urandom | xxd -p -c 64)"
printf '0x%s\n' "$priv2" | kh import --token "$TOKEN" --label imp-hex0x --hex - || fail "import --hex - (0x...) failed"
[ "$(kh pubkey --token "$TOKEN" --label imp-hex0x --format eth)" = "$(js eth-address-priv "$priv2")" ] ||
    fail "import --hex with 0x: wrong key"
ok "0x-prefixed hex on stdin imported"

say "keyhold import --hex refuses malformed input"
printf '%s\n' "${priv:0:63}" >"$KH_TMP/short.hex"
must_fail kh import --token "$TOKEN" --label bad-hex --hex "$KH_TMP/short.hex"
printf '%s\n' "${priv:0:62}zz" >"$KH_TMP/nonhex.hex"
must_fail kh import --token "$TOKEN" --label bad-hex --hex "$KH_TMP/nonhex.hex"
printf '%064d\n' 0 >"$KH_TMP/zero.hex"
must_fail kh import --token "$TOKEN" --label bad-hex --hex "$KH_TMP/zero.hex"
[ -z "$(json_id bad-hex)" ] || fail "a refused import left an object behind"
ok "short, non-hex and zero secrets refused, nothing stored"

# ---- import --nsec ----
say "keyhold import --nsec"
priv3="$(head -c 32 /dev/urandom | xxd -p -c 64)"
js bech32 nsec "$priv3" >"$KH_TMP/k.nsec"
cat "$KH_TMP/k.nsec"
run kh import --token "$TOKEN" --label imp-nsec --nsec "$KH_TMP/k.nsec"
x="$(js schnorr-pub "$priv3")"
[ "$(kh pubkey --token "$TOKEN" --label imp-nsec --format xonly)" = "$x" ] || fail "imported nsec: xonly differs from JS"
[ "$(kh pubkey --token "$TOKEN" --label imp-nsec --format npub)" = "$(js bech32 npub "$x")" ] || fail "imported nsec: npub differs"
ok "nsec imported: x-only key and npub equal JS's derivation"
js bech32 npub "$x" >"$KH_TMP/not-nsec"
must_fail kh import --token "$TOKEN" --label bad-nsec --nsec "$KH_TMP/not-nsec"
ok "an npub given as --nsec is refused"

# ---- import --pem ----
declare -A GEN=(
    [p256]="-algorithm EC -pkeyopt ec_paramgen_curve:P-256"
    [p384]="-algorithm EC -pkeyopt ec_paramgen_curve:P-384"
    [secp256k1]="-algorithm EC -pkeyopt ec_paramgen_curve:secp256k1"
    [ed25519]="-algorithm ED25519"
    [rsa2048]="-algorithm RSA -pkeyopt rsa_keygen_bits:2048"
)
for type in p256 p384 secp256k1 ed25519 rsa2048; do
    label="imp-pem-$type"
    say "keyhold import --pem ($type, openssl genpkey, PKCS#8)"
    # shellcheck disable=SC2086
    openssl genpkey ${GEN[$type]} -out "$KH_TMP/$type.pem" 2>/dev/null
    run kh import --token "$TOKEN" --label "$label" --pem "$KH_TMP/$type.pem"
    openssl pkey -in "$KH_TMP/$type.pem" -pubout -out "$KH_TMP/$type.pub.pem"
    check_pubkey "$label" "${KIND[$type]}" "$KH_TMP/$type.pem"
    kind="${KIND[$type]}"
    [ "$kind" = k1 ] && kind=ec
    sign_and_verify "$label" "$KH_TMP/$type.pub.pem" "$kind"
done

say "keyhold import --pem of a traditional (SEC1 / PKCS#1) PEM"
openssl pkey -in "$KH_TMP/p256.pem" -traditional -out "$KH_TMP/p256.trad.pem" 2>/dev/null ||
    openssl ec -in "$KH_TMP/p256.pem" -out "$KH_TMP/p256.trad.pem"
head -n 1 "$KH_TMP/p256.trad.pem"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | openssl pkey -traditional -out "$KH_TMP/rsa.trad.pem"
head -n 1 "$KH_TMP/rsa.trad.pem"
# The same P-256 key again, under another label (keyhold does not refuse a
# second copy of a key): SEC1 must parse to the same key as PKCS#8.
run kh import --token "$TOKEN" --label imp-trad-p256 --pem "$KH_TMP/p256.trad.pem"
check_pubkey imp-trad-p256 ec "$KH_TMP/p256.pem"
run kh import --token "$TOKEN" --label imp-trad-rsa --pem "$KH_TMP/rsa.trad.pem"
check_pubkey imp-trad-rsa rsa "$KH_TMP/rsa.trad.pem"
ok "traditional PEMs imported"

say "keyhold import --pem refuses a public key and garbage"
must_fail kh import --token "$TOKEN" --label bad-pem --pem "$KH_TMP/p256.pub.pem"
printf -- '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n' >"$KH_TMP/garbage.pem"
must_fail kh import --token "$TOKEN" --label bad-pem --pem "$KH_TMP/garbage.pem"
[ -z "$(json_id bad-pem)" ] || fail "a refused PEM import left an object behind"
ok "public-key PEM and garbage refused"

# ---- list ----
say "keyhold list (URIs) and list --json"
run kh list --token "$TOKEN"
kh list --token "$TOKEN" >"$KH_TMP/list.txt"
kh list --token "$TOKEN" --json >"$KH_TMP/list.json"
jq . "$KH_TMP/list.json" >/dev/null || fail "list --json is not valid JSON"
jq -c '.[]' "$KH_TMP/list.json" | sed 's/^/     | /'
labels="gen-secp256k1 gen-p256 gen-p384 gen-ed25519 gen-rsa2048 imp-hex imp-hex0x imp-nsec imp-pem-p256 imp-pem-p384 imp-pem-secp256k1 imp-pem-ed25519 imp-pem-rsa2048 imp-trad-rsa"
for l in $labels; do
    for c in private public; do
        n="$(jq --arg l "$l" --arg c "$c" '[.[] | select(.label == $l and .class == $c)] | length' "$KH_TMP/list.json")"
        [ "$n" -eq 1 ] || fail "list --json: $n $c objects labelled $l, want 1"
    done
    grep -q "object=$l;" "$KH_TMP/list.txt" || fail "list: no URI with object=$l"
done
declare -A WANT_TYPE=([gen-secp256k1]=secp256k1 [gen-p256]=p256 [gen-p384]=p384 [gen-ed25519]=ed25519 [gen-rsa2048]=rsa2048)
for l in "${!WANT_TYPE[@]}"; do
    t="$(jq -r --arg l "$l" '[.[] | select(.label == $l and .class == "private")][0].key_type' "$KH_TMP/list.json")"
    [ "$t" = "${WANT_TYPE[$l]}" ] || fail "list --json: $l has key_type $t, want ${WANT_TYPE[$l]}"
done
b="$(jq -r '[.[] | select(.class == "private") | .backend] | unique | join(",")' "$KH_TMP/list.json")"
[ "$b" = vault ] || fail "list --json: private key backends are '$b', want vault"
# Every URI must name a key pkcs11-tool can find by the same id.
for uri in $(jq -r '.[] | select(.class == "private") | .uri' "$KH_TMP/list.json"); do
    case "$uri" in "pkcs11:"*"token=$TOKEN"*"type=private"*) ;; *) fail "unexpected URI $uri" ;; esac
done
ok "every key listed once per class, types and backend right, URIs well formed"

say "keyhold list without a PIN shows no private objects"
n="$(with_module env -u KEYHOLD_PIN "$KEYHOLD_TOOL" list --token "$TOKEN" --json </dev/null | jq '[.[] | select(.class == "private")] | length')"
[ "$n" -eq 0 ] || fail "list without PIN shows $n private objects"
ok "no private objects without a PIN"

# ---- wrong PIN, bad arguments ----
say "wrong PIN and usage errors"
KEYHOLD_PIN=000000 must_fail kh keygen --token "$TOKEN" --type p256 --label wrong-pin
grep -qi 'PIN' "$KH_TMP/must_fail.out" || fail "a wrong PIN must be reported as such"
rc=0
kh keygen --token "$TOKEN" --type p521 --label bad-type >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "unknown key type: exit $rc, want 2 (usage error)"
rc=0
kh pubkey --token "$TOKEN" --label gen-p256 --format pgp >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "unknown format: exit $rc, want 2 (usage error)"
must_fail kh pubkey --token "$TOKEN" --label no-such-key --format pem
must_fail kh pubkey --token no-such-token --label gen-p256 --format pem
ok "wrong PIN, unknown type/format, missing key/token all refused"

# ---- delete ----
say "keyhold delete"
before="$(p11 "${P[@]}" --list-objects 2>/dev/null | grep -cE '^(Private|Public) Key Object')"
run kh delete --token "$TOKEN" --label imp-hex
after="$(p11 "${P[@]}" --list-objects 2>/dev/null | grep -cE '^(Private|Public) Key Object')"
[ "$after" -eq $((before - 2)) ] || fail "delete: $before objects before, $after after (want 2 fewer)"
[ -z "$(json_id imp-hex)" ] || fail "imp-hex still listed after delete"
must_fail kh pubkey --token "$TOKEN" --label imp-hex --format eth
must_fail kh delete --token "$TOKEN" --label imp-hex
[ -n "$(json_id imp-nsec)" ] || fail "delete removed another key"
ok "key pair deleted, others kept, deleting again fails"

say "keyhold doctor"
run kh doctor
ok "doctor reports no failure"

# ---- leaks (sanitizer build) ----
# The CLI is our own instrumented program: in the ASan build it runs once more
# with leak detection on (everything above ran with it off, so memory errors
# were still caught while a leak does not hide the other checks). A leak
# report names what C_Finalize or the CLI failed to free.
if [ -n "${KH_PRELOAD:-}" ]; then
    say "LeakSanitizer: keyhold init, keygen, import, list, pubkey, delete leak nothing"
    leak() {
        echo "   \$ keyhold $* (detect_leaks=1)"
        ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1" \
            timeout -k 10 "$KH_CMD_TIMEOUT" "$KEYHOLD_TOOL" "$@" >"$KH_TMP/leak.out" 2>&1 || {
            sed 's/^/     | /' "$KH_TMP/leak.out" | head -n 60
            fail "keyhold $1 failed or leaked under LeakSanitizer"
        }
    }
    leak init --label leakcheck
    leak keygen --token leakcheck --type secp256k1 --label l1
    leak keygen --token leakcheck --type rsa2048 --label l2
    leak import --token leakcheck --label l3 --pem "$KH_TMP/ed25519.pem"
    leak list --token leakcheck --json
    leak pubkey --token leakcheck --label l1 --format npub
    leak pubkey --token leakcheck --label l2 --format ssh
    leak delete --token leakcheck --label l3
    leak doctor
    ok "no leaks"
fi
