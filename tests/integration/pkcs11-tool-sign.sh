#!/usr/bin/env bash
# pkcs11-tool generates P-256, secp256k1, Ed25519 and RSA-2048 key pairs in
# the module, signs and verifies with every standard mechanism, and OpenSSL
# verifies each signature independently from the public key pkcs11-tool
# exported. A flipped byte must be rejected by both.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PIN=246810
SO=13579135
TOKEN=sign

say "token init through pkcs11-tool (C_InitToken + C_InitPIN)"
p11_init_token "$TOKEN" "$SO" "$PIN"
ok "token '$TOKEN' initialised"

P=(--token-label "$TOKEN" --login --pin "$PIN")

# Data, its SHA-256 digest and that digest as a PKCS#1 v1.5 DigestInfo.
head -c 1000 /dev/urandom >"$KH_TMP/msg"
openssl dgst -sha256 -binary "$KH_TMP/msg" >"$KH_TMP/digest"
digestinfo_sha256 "$KH_TMP/digest" "$KH_TMP/digestinfo"

# keygen <key-type> <id> <label>; then export the public key as PEM to $KH_TMP/<label>.pem
keygen() {
    local type="$1" id="$2" label="$3"
    say "pkcs11-tool --keypairgen --key-type $type"
    run p11 "${P[@]}" --keypairgen --key-type "$type" --id "$id" --label "$label" --usage-sign
    export_pubkey "$TOKEN" "$id" "$PIN" "$KH_TMP/$label.pem"
    openssl pkey -pubin -in "$KH_TMP/$label.pem" -noout -text | sed -n 1p
    ok "$type key pair generated, public key exported and parsed by openssl"
}

# p11sign <id> <mech> <in> <out> [extra pkcs11-tool args...]
p11sign() {
    local id="$1" mech="$2" in="$3" out="$4"
    shift 4
    run p11 "${P[@]}" --sign --id "$id" -m "$mech" -i "$in" -o "$out" "$@"
}

# p11verify <id> <mech> <in> <sig> [extra...]: C_Verify in the module must accept,
# and must reject the same signature with one byte flipped.
p11verify() {
    local id="$1" mech="$2" in="$3" sig="$4"
    shift 4
    run p11 "${P[@]}" --verify --id "$id" -m "$mech" -i "$in" --signature-file "$sig" "$@"
    flip_byte "$sig" "$sig.bad" 5
    p11_rejects "${P[@]}" --verify --id "$id" -m "$mech" -i "$in" --signature-file "$sig.bad" "$@"
    ok "module C_Verify: $mech accepts the signature, rejects a flipped byte"
}

# rs_to_der <rs> <der>: raw r||s -> DER ECDSA-Sig-Value, built by openssl itself.
rs_to_der() {
    local h n
    h="$(tohex "$1")"
    n=$((${#h} / 2))
    printf 'asn1 = SEQUENCE:sig\n[sig]\nr = INTEGER:0x%s\ns = INTEGER:0x%s\n' \
        "${h:0:$n}" "${h:$n}" >"$2.cnf"
    openssl asn1parse -genconf "$2.cnf" -out "$2" >/dev/null
}

# ossl_ok / ossl_bad <description> <cmd...>: openssl must accept / reject.
ossl_ok() {
    local what="$1"
    shift
    run "$@"
    ok "openssl verifies: $what"
}
ossl_bad() {
    local what="$1"
    shift
    must_fail "$@"
    ok "openssl rejects: $what"
}

ec_checks() {
    local id="$1" label="$2" pem="$KH_TMP/$2.pem" s="$KH_TMP/$2"

    say "$label: CKM_ECDSA on a SHA-256 digest (raw r||s)"
    p11sign "$id" ECDSA "$KH_TMP/digest" "$s.ecdsa.rs"
    p11verify "$id" ECDSA "$KH_TMP/digest" "$s.ecdsa.rs"
    rs_to_der "$s.ecdsa.rs" "$s.ecdsa.der"
    ossl_ok "$label ECDSA (r||s converted to DER)" \
        openssl pkeyutl -verify -pubin -inkey "$pem" -in "$KH_TMP/digest" -sigfile "$s.ecdsa.der"
    flip_byte "$s.ecdsa.rs" "$s.ecdsa.rs.bad" 7
    rs_to_der "$s.ecdsa.rs.bad" "$s.ecdsa.der.bad"
    ossl_bad "$label ECDSA with a flipped byte" \
        openssl pkeyutl -verify -pubin -inkey "$pem" -in "$KH_TMP/digest" -sigfile "$s.ecdsa.der.bad"

    say "$label: CKM_ECDSA with --signature-format openssl (DER from pkcs11-tool)"
    p11sign "$id" ECDSA "$KH_TMP/digest" "$s.ecdsa2.der" --signature-format openssl
    ossl_ok "$label ECDSA (pkcs11-tool DER)" \
        openssl pkeyutl -verify -pubin -inkey "$pem" -in "$KH_TMP/digest" -sigfile "$s.ecdsa2.der"

    say "$label: CKM_ECDSA_SHA256 on the message"
    p11sign "$id" ECDSA-SHA256 "$KH_TMP/msg" "$s.sha256.rs"
    p11verify "$id" ECDSA-SHA256 "$KH_TMP/msg" "$s.sha256.rs"
    p11sign "$id" ECDSA-SHA256 "$KH_TMP/msg" "$s.sha256.der" --signature-format openssl
    ossl_ok "$label ECDSA-SHA256 (openssl dgst)" \
        openssl dgst -sha256 -verify "$pem" -signature "$s.sha256.der" "$KH_TMP/msg"
    flip_byte "$KH_TMP/msg" "$s.msg.bad" 100
    ossl_bad "$label ECDSA-SHA256 over a modified message" \
        openssl dgst -sha256 -verify "$pem" -signature "$s.sha256.der" "$s.msg.bad"
}

keygen EC:prime256v1 01 p256
ec_checks 01 p256
keygen EC:secp256k1 02 k256
ec_checks 02 k256

keygen EC:edwards25519 03 ed25519
say "ed25519: CKM_EDDSA on the message"
p11sign 03 EDDSA "$KH_TMP/msg" "$KH_TMP/ed25519.sig"
[ "$(stat -c %s "$KH_TMP/ed25519.sig")" -eq 64 ] || fail "EdDSA signature is not 64 bytes"
p11verify 03 EDDSA "$KH_TMP/msg" "$KH_TMP/ed25519.sig"
ossl_ok "Ed25519 (pkeyutl -rawin)" \
    openssl pkeyutl -verify -pubin -inkey "$KH_TMP/ed25519.pem" -rawin -in "$KH_TMP/msg" -sigfile "$KH_TMP/ed25519.sig"
flip_byte "$KH_TMP/ed25519.sig" "$KH_TMP/ed25519.sig.bad" 40
ossl_bad "Ed25519 with a flipped byte" \
    openssl pkeyutl -verify -pubin -inkey "$KH_TMP/ed25519.pem" -rawin -in "$KH_TMP/msg" -sigfile "$KH_TMP/ed25519.sig.bad"

keygen rsa:2048 04 rsa
R="$KH_TMP/rsa"
say "rsa: CKM_SHA256_RSA_PKCS on the message"
p11sign 04 SHA256-RSA-PKCS "$KH_TMP/msg" "$R.pkcs"
p11verify 04 SHA256-RSA-PKCS "$KH_TMP/msg" "$R.pkcs"
ossl_ok "SHA256-RSA-PKCS (openssl dgst)" \
    openssl dgst -sha256 -verify "$KH_TMP/rsa.pem" -signature "$R.pkcs" "$KH_TMP/msg"
flip_byte "$R.pkcs" "$R.pkcs.bad" 17
ossl_bad "SHA256-RSA-PKCS with a flipped byte" \
    openssl dgst -sha256 -verify "$KH_TMP/rsa.pem" -signature "$R.pkcs.bad" "$KH_TMP/msg"

say "rsa: raw CKM_RSA_PKCS on a DigestInfo"
p11sign 04 RSA-PKCS "$KH_TMP/digestinfo" "$R.raw"
p11verify 04 RSA-PKCS "$KH_TMP/digestinfo" "$R.raw"
ossl_ok "RSA-PKCS over DigestInfo = SHA256 PKCS#1 v1.5 signature of the message" \
    openssl dgst -sha256 -verify "$KH_TMP/rsa.pem" -signature "$R.raw" "$KH_TMP/msg"
run openssl pkeyutl -verifyrecover -pubin -inkey "$KH_TMP/rsa.pem" -in "$R.raw" -out "$R.recovered"
cmp "$R.recovered" "$KH_TMP/digestinfo" || fail "RSA-PKCS: recovered data differs from the signed DigestInfo"
ok "openssl recovers exactly the signed DigestInfo"

# pkcs11-tool 0.23 takes --hash-algorithm only with raw RSA-PKCS-PSS (the
# SHA256- variant implies it) and fills CK_RSA_PKCS_PSS_PARAMS from these.
PSS=(--mgf MGF1-SHA256)
RAWPSS=(--hash-algorithm SHA256 --mgf MGF1-SHA256)
PSSV=(-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256)
say "rsa: CKM_SHA256_RSA_PKCS_PSS on the message (MGF1-SHA256, salt 32)"
p11sign 04 SHA256-RSA-PKCS-PSS "$KH_TMP/msg" "$R.pss" "${PSS[@]}"
p11verify 04 SHA256-RSA-PKCS-PSS "$KH_TMP/msg" "$R.pss" "${PSS[@]}"
ossl_ok "SHA256-RSA-PKCS-PSS (openssl dgst, pss, salt 32)" \
    openssl dgst -sha256 "${PSSV[@]}" -verify "$KH_TMP/rsa.pem" -signature "$R.pss" "$KH_TMP/msg"
flip_byte "$R.pss" "$R.pss.bad" 33
ossl_bad "SHA256-RSA-PKCS-PSS with a flipped byte" \
    openssl dgst -sha256 "${PSSV[@]}" -verify "$KH_TMP/rsa.pem" -signature "$R.pss.bad" "$KH_TMP/msg"

say "rsa: raw CKM_RSA_PKCS_PSS on a SHA-256 digest"
p11sign 04 RSA-PKCS-PSS "$KH_TMP/digest" "$R.rawpss" "${RAWPSS[@]}"
p11verify 04 RSA-PKCS-PSS "$KH_TMP/digest" "$R.rawpss" "${RAWPSS[@]}"
PSSK=(-pkeyopt rsa_padding_mode:pss -pkeyopt digest:sha256 -pkeyopt rsa_pss_saltlen:32 -pkeyopt rsa_mgf1_md:sha256)
ossl_ok "RSA-PKCS-PSS over the digest (pkeyutl, pss, salt 32)" \
    openssl pkeyutl -verify -pubin -inkey "$KH_TMP/rsa.pem" "${PSSK[@]}" -in "$KH_TMP/digest" -sigfile "$R.rawpss"
ossl_ok "the same PSS signature as a signature of the message (openssl dgst)" \
    openssl dgst -sha256 "${PSSV[@]}" -verify "$KH_TMP/rsa.pem" -signature "$R.rawpss" "$KH_TMP/msg"
flip_byte "$R.rawpss" "$R.rawpss.bad" 100
ossl_bad "RSA-PKCS-PSS with a flipped byte" \
    openssl pkeyutl -verify -pubin -inkey "$KH_TMP/rsa.pem" "${PSSK[@]}" -in "$KH_TMP/digest" -sigfile "$R.rawpss.bad"

say "the token lists all eight key objects"
run p11 "${P[@]}" --list-objects
n="$(p11 "${P[@]}" --list-objects 2>/dev/null | grep -cE '^(Private|Public) Key Object')"
[ "$n" -eq 8 ] || fail "expected 8 key objects (4 pairs), found $n"
ok "8 key objects listed"
