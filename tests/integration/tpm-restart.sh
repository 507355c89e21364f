#!/usr/bin/env bash
# TPM keys survive TPM restarts (tpm-restart.c does the Cryptoki side): the
# swtpm is restarted (orderly and by SIGKILL) between two processes and
# under one running process, stopped for a while, frozen (SIGSTOP), and
# killed in the middle of a burst of signatures. Every key signs again
# afterwards without re-initialising the module; while the TPM is away calls
# fail with CKR_DEVICE_ERROR within the deadline (tpm_timeout), never hang,
# and no call that starts after the TPM is back fails. The token is bound to
# the TPM (a TPM is configured), so its vault keys also need the TPM's RNG.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

: "${KH_TPM_RESTART:?KH_TPM_RESTART must name the built kh-tpm-restart}"
printf 'tpm_timeout = 1000\n' >"$KH_TMP/conf"
export KEYHOLD_CONF="$KH_TMP/conf"

swtpm_start
# Every crash (swtpm_kill) counts as an authorization failure in the TPM's
# dictionary-attack logic; allow more than swtpm's default 3 before lockout.
run tpm2_dictionarylockout -Q -s -n 32 -t 600 -l 600
R() { with_module "$KH_TPM_RESTART" "$@"; }

say "between runs: keys made, the TPM restarted (orderly, then a crash), a new process signs"
R make || fail "make"
swtpm_restart
R sign || fail "sign after an orderly restart"
swtpm_kill
swtpm_start
R sign || fail "sign after a crash"
ok "every key signs in a new process after a restart and after a crash (SRK-template primary re-derived)"

say "the primary persisted afterwards: the same keys load under it"
run kh tpm setup
swtpm_restart
R sign || fail "sign under the persisted primary"
ok "keys made under the on-demand primary sign under the persisted one"

say "one process across restarts (no re-initialisation)"
coproc SRV { with_module "$KH_TPM_RESTART" serve 2>&1; }
# bash unsets SRV and SRV_PID once it reaps the coprocess: keep copies.
exec {to}>&"${SRV[1]}" {from}<&"${SRV[0]}"
srv_pid="$SRV_PID"
ask() { echo "$1" >&"$to"; local l; read -r -t 120 l <&"$from" || fail "no answer to '$1'"; echo "     > $l" >&2; echo "$l"; }
read -r -t 60 line <&"$from" || fail "serve did not start"
[ "$line" = ready ] || fail "serve: $line"
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
expect_all_ok() {
    local r
    r="$(ask sign)"
    [ "$(field "$r" ok)" -eq 5 ] || fail "$1: $r"
}

expect_all_ok "before any restart"
swtpm_restart
expect_all_ok "after an orderly restart"
swtpm_kill
swtpm_start
expect_all_ok "after a crash"
ok "the running process reloads its keys by itself after a restart and after a crash"

say "TPM away: CKR_DEVICE_ERROR, then back"
swtpm_stop
r="$(ask sign)"
[ "$(field "$r" device_error)" -eq 5 ] && [ "$(field "$r" other)" -eq 0 ] || fail "TPM stopped: $r"
swtpm_start
expect_all_ok "after the TPM came back"
ok "while stopped every call fails with CKR_DEVICE_ERROR; afterwards all sign"

say "hardware RNG: vault keys of this TPM-bound token take TPM2_GetRandom output"
[ "$(ask vaultgen)" = "result rv=CKR_OK" ] || fail "vault keygen with the TPM up"
swtpm_stop
r="$(ask vaultgen)"
[ "$r" = "result rv=CKR_DEVICE_ERROR" ] || fail "vault keygen without the TPM: $r, want CKR_DEVICE_ERROR"
swtpm_start
[ "$(ask vaultgen)" = "result rv=CKR_OK" ] || fail "vault keygen after the TPM came back"
ok "vault key generation needs the TPM's randomness on a bound token (fails closed without it)"

say "TPM frozen (SIGSTOP): calls end at the deadline, not never"
kill -STOP "${KH_SWTPM_PID[tpm]}"
r="$(ask sign)"
kill -CONT "${KH_SWTPM_PID[tpm]}"
[ "$(field "$r" device_error)" -eq 5 ] && [ "$(field "$r" other)" -eq 0 ] || fail "TPM frozen: $r"
expect_all_ok "after the TPM thawed"
ok "frozen TPM: CKR_DEVICE_ERROR at the deadline; afterwards all sign"

for how in kill restart; do
    say "TPM taken away in the middle of a burst of signatures ($how)"
    [ "$(ask burst)" = started ] || fail "burst did not start"
    sleep 1
    if [ "$how" = kill ]; then swtpm_kill; sleep 0.5; swtpm_start; else swtpm_restart; fi
    [ "$(ask up)" = noted ] || fail "burst lost"
    sleep 1
    r="$(ask stop)"
    [ "$(field "$r" other)" -eq 0 ] || fail "burst ($how): errors other than CKR_DEVICE_ERROR: $r"
    [ "$(field "$r" after_up_fail)" -eq 0 ] || fail "burst ($how): calls failed after the TPM was back: $r"
    [ "$(field "$r" ok)" -gt 0 ] || fail "burst ($how): nothing signed: $r"
    ok "burst ($how): only CKR_DEVICE_ERROR while away ($(field "$r" device_error) calls), none after"
done

r="$(ask quit)"
[ "$r" = "finalized CKR_OK" ] || fail "serve: $r"
wait "$srv_pid" || fail "serve exited with an error"
ok "C_Finalize after all that"
