#!/usr/bin/env bash
# The swtpm harness itself (swtpm.sh): an instance answers tpm2-tools, a
# restart on the same state keeps persistent objects and drops transient
# ones (a reboot), two instances are independent TPMs, the TCP transport
# finds a free port pair, and every instance is gone after stop.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

say "start an swtpm on unix sockets; tpm2-tools reach it"
swtpm_start
tpm2_getcap properties-fixed | has TPM2_PT_FAMILY_INDICATOR || fail "tpm2_getcap failed"
tpm2_getrandom --hex 16 >"$KH_TMP/r1" || fail "tpm2_getrandom failed"
[ "$(wc -c <"$KH_TMP/r1")" -eq 32 ] || fail "expected 16 random bytes in hex"
ok "swtpm answers at $(swtpm_tcti)"

say "a persistent object survives a restart, a transient one does not"
run tpm2_createprimary -Q -C o -G ecc -c "$KH_TMP/p.ctx"
run tpm2_evictcontrol -Q -C o -c "$KH_TMP/p.ctx" 0x81000001
tpm2_getcap handles-transient | has 0x80 || fail "the transient primary is not loaded"
name1="$(tpm2_readpublic -c 0x81000001 | awk '/^name:/ { print $2 }')"
swtpm_restart
tpm2_getcap handles-persistent | has 0x81000001 || fail "0x81000001 lost across the restart"
if tpm2_getcap handles-transient | has 0x80; then fail "transient objects survived the restart"; fi
name2="$(tpm2_readpublic -c 0x81000001 | awk '/^name:/ { print $2 }')"
[ -n "$name1" ] && [ "$name1" = "$name2" ] || fail "persistent object changed: '$name1' vs '$name2'"
ok "0x81000001 kept (name $name1), transient objects flushed"

say "a second instance is an independent TPM"
swtpm_start other
if TPM2TOOLS_TCTI="$(swtpm_tcti other)" tpm2_getcap handles-persistent | has 0x81000001; then
    fail "the second swtpm sees the first one's persistent object"
fi
[ "$(swtpm_tcti other)" != "$(swtpm_tcti)" ] || fail "both instances have the same address"
ok "instance 'other' at $(swtpm_tcti other) is empty"

say "SIGKILL (a crash) keeps NV state"
swtpm_kill
swtpm_running && fail "swtpm still runs after SIGKILL"
swtpm_start
tpm2_getcap handles-persistent | has 0x81000001 || fail "0x81000001 lost after a crash"
ok "persistent object still there after SIGKILL and start"

say "the TCP transport finds a free port pair"
(
    KH_SWTPM_TRANSPORT=tcp
    swtpm_start tcp1
    swtpm_start tcp2
    t1="$(swtpm_tcti tcp1)" t2="$(swtpm_tcti tcp2)"
    case "$t1" in swtpm:host=127.0.0.1,port=*) ;; *) fail "unexpected TCTI $t1" ;; esac
    [ "$t1" != "$t2" ] || fail "two TCP instances share $t1"
    TPM2TOOLS_TCTI="$t1" tpm2_getrandom --hex 4 >/dev/null || fail "no answer at $t1"
    TPM2TOOLS_TCTI="$t2" tpm2_getrandom --hex 4 >/dev/null || fail "no answer at $t2"
    swtpm_restart tcp1
    [ "$(swtpm_tcti tcp1)" = "$t1" ] || fail "restart moved tcp1 from $t1 to $(swtpm_tcti tcp1)"
    TPM2TOOLS_TCTI="$t1" tpm2_getrandom --hex 4 >/dev/null || fail "no answer at $t1 after restart"
    swtpm_stop_all
) || fail "TCP transport"
ok "two TCP instances on distinct free ports, restart keeps the port"

say "stop ends the process"
pid="${KH_SWTPM_PID[tpm]}"
swtpm_stop
if kill -0 "$pid" 2>/dev/null; then fail "swtpm $pid still runs"; fi
ok "swtpm $pid stopped"
