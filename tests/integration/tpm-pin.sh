#!/usr/bin/env bash
# PINs sealed to the TPM: with a TPM configured, a new token's PIN wraps are
# bound to it (a TPM-sealed secret per PIN, unsealed with a PIN-derived auth
# value). Wrong PINs count against the TPM's dictionary-attack lockout; in
# lockout even the right PIN gives CKR_PIN_LOCKED until it is cleared, and
# C_GetTokenInfo flags both PINs locked meanwhile; the
# store copied to another TPM does not open with the right PIN; without its
# TPM a token cannot log in (CKR_DEVICE_ERROR) and nothing is counted;
# tpm_seal = off makes unbound tokens.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

SO=13579135
PIN=246810
T="$KH_TMP"

swtpm_start
# Known DA parameters: 5 tries, no self-healing during the test.
run tpm2_dictionarylockout -Q -s -n 5 -t 1000 -l 1000

lockout_counter() { tpm2_getcap properties-variable | awk '/TPM2_PT_LOCKOUT_COUNTER/ { print $2 }'; }
# login_rv <pin> [env...]: the CK_RV name of a C_Login with pin ("OK" on success).
login_rv() {
    local pin="$1" out
    shift
    if out="$([ "$#" -eq 0 ] || export "$@"; p11 --token-label sealed --login --pin "$pin" --list-objects 2>&1)"; then
        echo OK
    else
        echo "$out" | grep -o 'CKR_[A-Z_]*' | head -1
    fi
}
flags_of() {
    p11 -L 2>/dev/null | awk -v l="$1" '
        /^Slot / { lab = "" }
        /token label *:/ { sub(/^ *token label *: */, ""); lab = $0 }
        /token flags *:/ { if (lab == l) { print; exit } }'
}
model_of() { p11 -L 2>/dev/null | awk '/token label *: *'"$1"'$/ { f = 1 } f && /token model/ { print $NF; exit }'; }

say "a token made with a TPM configured is bound to it"
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label sealed
[ "$(model_of sealed)" = "vault+tpm" ] || fail "token model is '$(model_of sealed)', want vault+tpm"
KEYHOLD_PIN="$PIN" run kh keygen --token sealed --type p256 --label v1
KEYHOLD_PIN="$PIN" run kh keygen --token sealed --type p256 --label t1 --backend tpm
[ "$(login_rv "$PIN")" = OK ] || fail "the right PIN does not log in"
ok "bound (model vault+tpm); keys made; the right PIN logs in"

say "a wrong PIN is counted by the TPM"
c0="$(lockout_counter)"
[ "$(login_rv 000000)" = CKR_PIN_INCORRECT ] || fail "wrong PIN: $(login_rv 000000)"
c1="$(lockout_counter)"
echo "     TPM lockout counter $c0 -> $c1"
[ "$((c1))" -gt "$((c0))" ] || fail "the TPM's lockout counter did not move ($c0 -> $c1)"
[ "$(login_rv "$PIN")" = OK ] || fail "the right PIN no longer logs in"
ok "TPM2_PT_LOCKOUT_COUNTER rose with the wrong PINs"

say "in the TPM's lockout even the right PIN gives CKR_PIN_LOCKED, until it is cleared"
for i in 1 2 3 4 5 6; do
    r="$(login_rv 000000)"
    [ "$r" = CKR_PIN_INCORRECT ] || [ "$r" = CKR_PIN_LOCKED ] || fail "wrong PIN #$i: $r"
done
tpm2_getcap properties-variable | grep -E 'inLockout|LOCKOUT_COUNTER' | sed 's/^/     | /'
tpm2_getcap properties-variable | has -E 'inLockout: +1' || fail "the TPM is not in lockout"
r="$(login_rv "$PIN")"
[ "$r" = CKR_PIN_LOCKED ] || fail "right PIN during the TPM's lockout: $r, want CKR_PIN_LOCKED"
f="$(flags_of sealed)"
echo "     $f"
has 'user PIN locked' <<<"$f" && has 'SO PIN locked' <<<"$f" ||
    fail "C_GetTokenInfo does not say the PINs are locked during the TPM's lockout: $f"
kh doctor >"$T/doc" 2>&1 || true
has -E '^FAIL +TPM lockout' "$T/doc" || fail "doctor does not report the lockout"
run tpm2_dictionarylockout -Q -c
f="$(flags_of sealed)"
has 'PIN locked' <<<"$f" && fail "the PINs are still flagged locked once the lockout was cleared: $f"
[ "$(login_rv "$PIN")" = OK ] || fail "the right PIN does not log in after the lockout was cleared"
ok "CKR_PIN_LOCKED and CKF_USER/SO_PIN_LOCKED during lockout (doctor says so); the right PIN works once cleared"

say "the store copied to another TPM does not open, even with the right PIN"
cp -a "$KEYHOLD_STORE" "$T/copy"
swtpm_start other
r="$(login_rv "$PIN" KEYHOLD_STORE="$T/copy" KEYHOLD_TCTI="$(swtpm_tcti other)")"
[ "$r" = CKR_FUNCTION_FAILED ] || fail "the copy on another TPM: $r, want CKR_FUNCTION_FAILED"
r="$(login_rv 000000 KEYHOLD_STORE="$T/copy" KEYHOLD_TCTI="$(swtpm_tcti other)")"
[ "$r" = CKR_FUNCTION_FAILED ] || fail "wrong PIN on the copy on another TPM: $r"
r="$(login_rv "$PIN" KEYHOLD_STORE="$T/copy")"
[ "$r" = OK ] || fail "the copy does not open on its own TPM: $r"
ok "another TPM: CKR_FUNCTION_FAILED for any PIN; the same copy opens on its own TPM"

say "without its TPM: CKR_DEVICE_ERROR, nothing counted"
swtpm_stop
r="$(login_rv "$PIN")"
[ "$r" = CKR_DEVICE_ERROR ] || fail "TPM away: $r, want CKR_DEVICE_ERROR"
r="$(login_rv 000000)"
[ "$r" = CKR_DEVICE_ERROR ] || fail "TPM away, wrong PIN: $r, want CKR_DEVICE_ERROR"
flags_of sealed | has 'count low' && fail "attempts without the TPM were counted: $(flags_of sealed)"
swtpm_start
[ "$(login_rv "$PIN")" = OK ] || fail "the right PIN does not log in after the TPM came back"
ok "CKR_DEVICE_ERROR while the TPM is away (not counted); works when it is back"

say "the SO PIN is bound too; C_SetPIN keeps the binding"
r="$(p11 --token-label sealed --login --login-type so --so-pin 99999999 --init-pin --pin 111111 2>&1 || true)"
echo "$r" | has CKR_PIN_INCORRECT || fail "wrong SO PIN: $r"
c2="$(lockout_counter)"
[ "$((c2))" -gt 0 ] || fail "the wrong SO PIN was not counted by the TPM ($c2)"
run p11 --token-label sealed --login --pin "$PIN" --change-pin --new-pin 135791
[ "$(login_rv 135791)" = OK ] || fail "the new PIN does not log in"
[ "$(model_of sealed)" = "vault+tpm" ] || fail "the token lost its binding"
ok "SO PIN checked by the TPM; new user PIN works and stays bound"

say "tpm_seal = off: an unbound token, usable without the TPM"
printf 'tpm_seal = off\n' >"$T/off.conf"
KEYHOLD_CONF="$T/off.conf" KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label plain
[ "$(model_of plain)" = vault ] || fail "tpm_seal = off made '$(model_of plain)'"
swtpm_stop
KEYHOLD_PIN="$PIN" run kh keygen --token plain --type p256 --label p1
ok "unbound token: logs in and makes vault keys with the TPM away"
