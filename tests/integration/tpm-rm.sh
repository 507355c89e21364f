#!/usr/bin/env bash
# The module through a resource manager: tpm2-abrmd (on a private D-Bus
# session bus of this test) in front of swtpm, KEYHOLD_TCTI=tabrmd. A token
# sealed to the TPM, TPM keys made and used by two processes at once, more
# keys than the TPM has slots, and nothing left behind.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

command -v tpm2-abrmd >/dev/null || fail "tpm2-abrmd is not installed (tools/install-deps.sh)"
command -v dbus-daemon >/dev/null || fail "dbus-daemon is not installed (tools/install-deps.sh)"

SO=13579135
PIN=246810
T="$KH_TMP"

swtpm_start
run kh tpm setup

say "a private D-Bus session bus and tpm2-abrmd on it"
dbus-daemon --session --fork --nopidfile --print-address=3 --print-pid=4 3>"$T/bus.addr" 4>"$T/bus.pid" ||
    fail "dbus-daemon did not start"
BUS_PID="$(head -1 "$T/bus.pid")"
export DBUS_SESSION_BUS_ADDRESS="$(head -1 "$T/bus.addr")"
abrmd_args=(--session --tcti="$(swtpm_tcti)")
[ "$(id -u)" -ne 0 ] || abrmd_args+=(--allow-root)
tpm2-abrmd "${abrmd_args[@]}" >"$T/abrmd.log" 2>&1 &
ABRMD_PID=$!
stop_rm() {
    kill "$ABRMD_PID" 2>/dev/null || true
    wait "$ABRMD_PID" 2>/dev/null || true
    kill "$BUS_PID" 2>/dev/null || true
}
trap 'rc=$?; stop_rm; swtpm_stop_all; (exit $rc); kh_cleanup' EXIT
export KEYHOLD_TCTI="tabrmd:bus_type=session" TPM2TOOLS_TCTI="tabrmd:bus_type=session"
for i in $(seq 1 100); do
    tpm2_getrandom 4 >/dev/null 2>&1 && break
    kill -0 "$ABRMD_PID" 2>/dev/null || { cat "$T/abrmd.log"; fail "tpm2-abrmd died"; }
    sleep 0.1
done
run tpm2_getrandom --hex 4
ok "tpm2-abrmd answers on the test's bus"

say "a token sealed to the TPM through the resource manager; six TPM keys"
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label rm
for i in 1 2 3 4 5 6; do
    KEYHOLD_PIN="$PIN" run kh keygen --token rm --type p256 --label "k$i" --backend tpm --id "0$i"
    KEYHOLD_PIN="$PIN" kh pubkey --token rm --label "k$i" --format pem >"$T/k$i.pem"
done
ok "token and keys made through tabrmd"

say "two processes sign with all six keys at once"
head -c 300 /dev/urandom >"$T/msg"
sign_all() {
    local tag="$1" i
    for round in 1 2 3; do
        for i in 1 2 3 4 5 6; do
            p11 --token-label rm --login --pin "$PIN" --sign --id "0$i" -m ECDSA-SHA256 -i "$T/msg" \
                -o "$T/$tag.$i.$round.sig" --signature-format openssl >/dev/null 2>&1 || return 1
            openssl dgst -sha256 -verify "$T/k$i.pem" -signature "$T/$tag.$i.$round.sig" "$T/msg" >/dev/null ||
                return 1
        done
    done
}
sign_all a & A=$!
sign_all b & B=$!
wait "$A" || fail "process a failed to sign"
wait "$B" || fail "process b failed to sign"
ok "36 signatures by two processes, all verified by openssl"

say "nothing left loaded (the resource manager's view and the TPM's)"
t="$(tpm2_getcap handles-transient)"
[ -z "$t" ] || fail "transient objects left: $t"
t="$(TPM2TOOLS_TCTI="$(swtpm_tcti)" tpm2_getcap handles-transient)"
[ -z "$t" ] || fail "transient objects left in the TPM itself: $t"
ok "no transient objects"
