#!/usr/bin/env bash
# TPM keys on a real swtpm (no resource manager): pkcs11-tool generates
# P-256, P-384, RSA-2048 and RSA-3072 keys on a token whose default backend
# is tpm, `keyhold keygen --backend tpm` on a vault token; every standard
# mechanism signs in the TPM and OpenSSL verifies; what a TPM cannot do is
# refused with a precise CK_RV; mechanism info reflects the TPM; the keys
# survive a new process; nothing stays loaded in the TPM after C_Finalize.
# (That a TPM key does not sign without a login is checked in C by
# tpm-load: pkcs11-tool asks for the PIN before it would call C_Sign.)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

PIN=246810
SO=13579135

swtpm_start
# Tokens made while this configuration is in effect put new keys in the TPM.
printf 'default_backend = tpm\n' >"$KH_TMP/tpm.conf"

say "a token whose default backend is tpm (pkcs11-tool --init-token)"
KEYHOLD_CONF="$KH_TMP/tpm.conf" p11_init_token tpm "$SO" "$PIN"
ok "token 'tpm' initialised"
P=(--token-label tpm --login --pin "$PIN")

head -c 1000 /dev/urandom >"$KH_TMP/msg"
openssl dgst -sha256 -binary "$KH_TMP/msg" >"$KH_TMP/digest"
openssl dgst -sha384 -binary "$KH_TMP/msg" >"$KH_TMP/digest384"
digestinfo_sha256 "$KH_TMP/digest" "$KH_TMP/digestinfo"

keygen() {
    local type="$1" id="$2" label="$3"
    say "pkcs11-tool --keypairgen --key-type $type (into the TPM)"
    run p11 "${P[@]}" --keypairgen --key-type "$type" --id "$id" --label "$label" --usage-sign
    export_pubkey tpm "$id" "$PIN" "$KH_TMP/$label.pem"
    ok "$type key pair generated in the TPM, public key exported"
}
p11sign() {
    local id="$1" mech="$2" in="$3" out="$4"
    shift 4
    run p11 "${P[@]}" --sign --id "$id" -m "$mech" -i "$in" -o "$out" "$@"
}
# backend_of <label>: the backend keyhold list reports for the private key.
backend_of() {
    KEYHOLD_PIN="$PIN" kh list --token "$2" --json |
        jq -r --arg l "$1" '.[] | select(.label == $l and .class == "private") | .backend'
}

keygen EC:prime256v1 01 p256
[ "$(backend_of p256 tpm)" = tpm ] || fail "p256 is not a tpm key"
ok "CKA_KH_BACKEND of p256 is tpm"
keygen EC:secp384r1 02 p384
keygen rsa:2048 03 rsa2048
keygen rsa:3072 04 rsa3072

for k in p256:01 p384:02; do
    label="${k%%:*}" id="${k##*:}" pem="$KH_TMP/${k%%:*}.pem"
    say "$label: CKM_ECDSA on a SHA-256 digest, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384 (signed in the TPM)"
    p11sign "$id" ECDSA "$KH_TMP/digest" "$KH_TMP/$label.ecdsa" --signature-format openssl
    run openssl pkeyutl -verify -pubin -inkey "$pem" -in "$KH_TMP/digest" -sigfile "$KH_TMP/$label.ecdsa"
    p11sign "$id" ECDSA-SHA256 "$KH_TMP/msg" "$KH_TMP/$label.sha256" --signature-format openssl
    run openssl dgst -sha256 -verify "$pem" -signature "$KH_TMP/$label.sha256" "$KH_TMP/msg"
    p11sign "$id" ECDSA-SHA384 "$KH_TMP/msg" "$KH_TMP/$label.sha384" --signature-format openssl
    run openssl dgst -sha384 -verify "$pem" -signature "$KH_TMP/$label.sha384" "$KH_TMP/msg"
    flip_byte "$KH_TMP/msg" "$KH_TMP/msg.bad" 10
    must_fail openssl dgst -sha384 -verify "$pem" -signature "$KH_TMP/$label.sha384" "$KH_TMP/msg.bad"
    ok "$label: three ECDSA signatures verify with openssl, a modified message does not"
done

say "p384: CKM_ECDSA on a SHA-384 digest and on a SHA-256 digest"
p11sign 02 ECDSA "$KH_TMP/digest384" "$KH_TMP/p384.raw384" --signature-format openssl
run openssl pkeyutl -verify -pubin -inkey "$KH_TMP/p384.pem" -in "$KH_TMP/digest384" -sigfile "$KH_TMP/p384.raw384"
ok "raw ECDSA of both digest sizes verifies"

PSSV=(-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256)
for k in rsa2048:03 rsa3072:04; do
    label="${k%%:*}" id="${k##*:}" pem="$KH_TMP/${k%%:*}.pem"
    say "$label: SHA256-RSA-PKCS, RSA-PKCS on a DigestInfo, SHA256-RSA-PKCS-PSS, RSA-PKCS-PSS"
    p11sign "$id" SHA256-RSA-PKCS "$KH_TMP/msg" "$KH_TMP/$label.pkcs"
    run openssl dgst -sha256 -verify "$pem" -signature "$KH_TMP/$label.pkcs" "$KH_TMP/msg"
    p11sign "$id" RSA-PKCS "$KH_TMP/digestinfo" "$KH_TMP/$label.raw"
    run openssl dgst -sha256 -verify "$pem" -signature "$KH_TMP/$label.raw" "$KH_TMP/msg"
    p11sign "$id" SHA256-RSA-PKCS-PSS "$KH_TMP/msg" "$KH_TMP/$label.pss" --mgf MGF1-SHA256
    run openssl dgst -sha256 "${PSSV[@]}" -verify "$pem" -signature "$KH_TMP/$label.pss" "$KH_TMP/msg"
    p11sign "$id" RSA-PKCS-PSS "$KH_TMP/digest" "$KH_TMP/$label.rawpss" --hash-algorithm SHA256 --mgf MGF1-SHA256
    run openssl dgst -sha256 "${PSSV[@]}" -verify "$pem" -signature "$KH_TMP/$label.rawpss" "$KH_TMP/msg"
    flip_byte "$KH_TMP/$label.pss" "$KH_TMP/$label.pss.bad" 40
    must_fail openssl dgst -sha256 "${PSSV[@]}" -verify "$pem" -signature "$KH_TMP/$label.pss.bad" "$KH_TMP/msg"
    ok "$label: four RSA signatures verify with openssl, a flipped one does not"
done

say "what a TPM cannot do is refused precisely"
out="$(p11 "${P[@]}" --keypairgen --key-type EC:secp256k1 --id 09 --label k1 2>&1 || true)"
echo "$out" | sed 's/^/     | /'
echo "$out" | has -E "CKR_CURVE_NOT_SUPPORTED|\(0x140\)" || fail "secp256k1 in the TPM: expected CKR_CURVE_NOT_SUPPORTED"
out="$(p11 "${P[@]}" --keypairgen --key-type EC:edwards25519 --id 09 --label ed 2>&1 || true)"
echo "$out" | has -E "CKR_CURVE_NOT_SUPPORTED|\(0x140\)" || fail "Ed25519 in the TPM: expected CKR_CURVE_NOT_SUPPORTED"
out="$(p11 "${P[@]}" --sign --id 03 -m SHA256-RSA-PKCS-PSS --mgf MGF1-SHA256 --salt-len 20 -i "$KH_TMP/msg" -o "$KH_TMP/x" 2>&1 || true)"
echo "$out" | sed 's/^/     | /'
echo "$out" | has CKR_MECHANISM_PARAM_INVALID || fail "PSS salt 20: expected CKR_MECHANISM_PARAM_INVALID"
out="$(p11 "${P[@]}" --sign --id 03 -m RSA-PKCS -i "$KH_TMP/digest" -o "$KH_TMP/x" 2>&1 || true)"
echo "$out" | sed 's/^/     | /'
echo "$out" | has CKR_DATA_INVALID || fail "RSA-PKCS on raw data: expected CKR_DATA_INVALID"
n="$(p11 "${P[@]}" --list-objects 2>/dev/null | grep -cE '^(Private|Public) Key Object')"
[ "$n" -eq 8 ] || fail "a refused request left objects behind: $n key objects, want 8"
ok "secp256k1/Ed25519: CKR_CURVE_NOT_SUPPORTED; PSS salt != hash: CKR_MECHANISM_PARAM_INVALID; raw RSA: CKR_DATA_INVALID; nothing stored"

say "mechanism info of the tpm token reflects the TPM"
mechs="$(p11 --token-label tpm -M)"
echo "$mechs" | grep -E 'EC-KEY-PAIR-GEN|RSA-PKCS-KEY-PAIR-GEN|ECDSA-SHA256' | sed 's/^/     | /'
echo "$mechs" | grep 'ECDSA-SHA256' | has 'keySize={256,384}' || fail "ECDSA-SHA256 sizes are not the TPM's P-256..P-384"
caps="$(tpm2_getcap ecc-curves)"
echo "$caps" | has NIST_P384 || fail "this swtpm lacks P-384 (unexpected)"
ok "ECDSA key sizes 256..384 as TPM2_GetCapability(ECC_CURVES) reports"

say "a vault token with 'keyhold keygen --backend tpm'; the key signs in a new process"
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label mixed
KEYHOLD_PIN="$PIN" run kh keygen --token mixed --type p256 --label tk --backend tpm --id 0a
KEYHOLD_PIN="$PIN" run kh keygen --token mixed --type p256 --label vk --id 0b
[ "$(backend_of tk mixed)" = tpm ] && [ "$(backend_of vk mixed)" = vault ] ||
    fail "backends: tk=$(backend_of tk mixed) vk=$(backend_of vk mixed)"
KEYHOLD_PIN="$PIN" kh pubkey --token mixed --label tk --format pem >"$KH_TMP/tk.pem"
run p11 --token-label mixed --login --pin "$PIN" --sign --id 0a -m ECDSA-SHA256 -i "$KH_TMP/msg" \
    -o "$KH_TMP/tk.sig" --signature-format openssl
run openssl dgst -sha256 -verify "$KH_TMP/tk.pem" -signature "$KH_TMP/tk.sig" "$KH_TMP/msg"
ok "tpm and vault keys side by side; the tpm key signs"

say "nothing stays loaded in the TPM after the processes ended (C_Finalize flushed)"
t="$(tpm2_getcap handles-transient)"
[ -z "$t" ] || fail "transient objects left in the TPM: $t"
ok "no transient object left"
