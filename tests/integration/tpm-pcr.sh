#!/usr/bin/env bash
# TPM keys with a PCR policy: `keyhold keygen --backend tpm --pcr sha256:7`
# makes a key that signs only while PCR 7 holds its value of key generation.
# Extending PCR 7 (tpm2_pcrextend) makes its signatures fail with
# CKR_KEY_FUNCTION_NOT_PERMITTED while keys without a policy still sign; after
# a TPM restart (PCRs reset) it signs again. Bad selections are refused.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

SO=13579135
PIN=246810
T="$KH_TMP"

swtpm_start
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label pcr
head -c 200 /dev/urandom >"$T/msg"

# sign_rv <id> <mech> <out>: sign msg with pkcs11-tool; prints OK or the CKR_ name.
sign_rv() {
    local out
    if out="$(p11 --token-label pcr --login --pin "$PIN" --sign --id "$1" -m "$2" -i "$T/msg" -o "$3" \
        --signature-format openssl 2>&1)"; then
        echo OK
    else
        echo "$out" | grep -o 'CKR_[A-Z_]*' | head -1
    fi
}
pem_of() { KEYHOLD_PIN="$PIN" kh pubkey --token pcr --label "$1" --format pem >"$T/$1.pem"; }

say "keys bound to PCR 7, to PCRs 0 and 7, and one without a policy"
KEYHOLD_PIN="$PIN" run kh keygen --token pcr --type p256 --label p7 --backend tpm --pcr sha256:7 --id 07
KEYHOLD_PIN="$PIN" run kh keygen --token pcr --type rsa2048 --label p07 --backend tpm --pcr sha256:0,7 --id 08
KEYHOLD_PIN="$PIN" run kh keygen --token pcr --type p256 --label free --backend tpm --id 09
for k in p7 p07 free; do pem_of "$k"; done
[ "$(sign_rv 07 ECDSA-SHA256 "$T/p7.sig")" = OK ] || fail "p7 does not sign"
run openssl dgst -sha256 -verify "$T/p7.pem" -signature "$T/p7.sig" "$T/msg"
[ "$(sign_rv 08 SHA256-RSA-PKCS "$T/p07.sig")" = OK ] || fail "p07 does not sign"
run openssl dgst -sha256 -verify "$T/p07.pem" -signature "$T/p07.sig" "$T/msg"
ok "policy keys sign while the PCRs hold their values"

say "PCR 7 extended: p7 and p07 refuse, the key without a policy signs"
run tpm2_pcrextend 7:sha256=0000000000000000000000000000000000000000000000000000000000000001
r="$(sign_rv 07 ECDSA-SHA256 "$T/x.sig")"
[ "$r" = CKR_KEY_FUNCTION_NOT_PERMITTED ] || fail "p7 after extending PCR 7: $r"
r="$(sign_rv 08 SHA256-RSA-PKCS "$T/x.sig")"
[ "$r" = CKR_KEY_FUNCTION_NOT_PERMITTED ] || fail "p07 after extending PCR 7: $r"
[ "$(sign_rv 09 ECDSA-SHA256 "$T/free.sig")" = OK ] || fail "the key without a policy stopped signing"
run openssl dgst -sha256 -verify "$T/free.pem" -signature "$T/free.sig" "$T/msg"
ok "CKR_KEY_FUNCTION_NOT_PERMITTED for the policy keys; the other signs"

say "PCR 0 extended only: p7 signs, p07 refuses"
swtpm_restart
[ "$(sign_rv 07 ECDSA-SHA256 "$T/p7b.sig")" = OK ] || fail "p7 after the restart (PCRs reset)"
run openssl dgst -sha256 -verify "$T/p7.pem" -signature "$T/p7b.sig" "$T/msg"
run tpm2_pcrextend 0:sha256=00000000000000000000000000000000000000000000000000000000000000ff
[ "$(sign_rv 07 ECDSA-SHA256 "$T/p7c.sig")" = OK ] || fail "p7 with only PCR 0 extended"
r="$(sign_rv 08 SHA256-RSA-PKCS "$T/x.sig")"
[ "$r" = CKR_KEY_FUNCTION_NOT_PERMITTED ] || fail "p07 with PCR 0 extended: $r"
ok "after a restart (PCRs reset) p7 signs again; PCR 0 only affects p07"

say "bad PCR selections are refused"
for sel in sha256:24 sha256: md5:7 sha256:7+sha256:8 7; do
    rc=0
    KEYHOLD_PIN="$PIN" kh keygen --token pcr --type p256 --label bad --backend tpm --pcr "$sel" >"$T/out" 2>&1 || rc=$?
    [ "$rc" -ne 0 ] || fail "--pcr $sel accepted"
    has CKR_ATTRIBUTE_VALUE_INVALID "$T/out" || { cat "$T/out"; fail "--pcr $sel: no CKR_ATTRIBUTE_VALUE_INVALID"; }
done
n="$(KEYHOLD_PIN="$PIN" kh list --token pcr --json | jq '[.[] | select(.label == "bad")] | length')"
[ "$n" -eq 0 ] || fail "refused keys were stored"
ok "out of range, empty, unknown bank, bank twice, no bank: CKR_ATTRIBUTE_VALUE_INVALID, nothing stored"
