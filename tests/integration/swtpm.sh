# swtpm helpers for keyhold's TPM tests. Source after lib.sh:
#
#     . "$(dirname "$0")/lib.sh"
#     . "$(dirname "$0")/swtpm.sh"
#     swtpm_start            # instance "tpm": exports KEYHOLD_TCTI and TPM2TOOLS_TCTI
#     swtpm_start other      # a second, independent TPM (its own state directory)
#
# Each instance is a real `swtpm socket --tpm2` with its own state directory
# under the test's $KH_TMP, started with `--flags not-need-init,startup-clear`
# (so it is usable at once, and every start is a TPM2_Startup(CLEAR), as after
# a reboot). It listens on unix sockets inside $KH_TMP by default, so tests
# running in parallel never share a TPM or race for a port; with
# KH_SWTPM_TRANSPORT=tcp it listens on 127.0.0.1, on a free port pair (server
# port P, control port P+1) found by trying random ports. Every instance is
# stopped when the test exits, whatever happens.
#
#   swtpm_start [NAME]     start NAME (default "tpm"); wait until it answers
#   swtpm_tcti [NAME]      print its TCTI string (swtpm:path=... or swtpm:host=...,port=...)
#   swtpm_stop [NAME]      TPM2_Shutdown(CLEAR), then SIGTERM and wait: an orderly
#                          shutdown, as an OS does before a reboot
#   swtpm_kill [NAME]      SIGKILL (a crash; persistent objects survive, they are in
#                          NV; the TPM counts the unclean restart as an authorization
#                          failure, so dictionary-attack lockout comes closer)
#   swtpm_restart [NAME]   stop, then start again on the same state and address
#   swtpm_running [NAME]   true while it runs
#   swtpm_stop_all         stop every instance (done at exit)
#
# The first instance started (or any instance named "tpm") also sets
# KEYHOLD_TCTI (read by the module) and TPM2TOOLS_TCTI (read by tpm2-tools).

command -v swtpm >/dev/null || fail "swtpm is not installed (tools/install-deps.sh)"
command -v swtpm_ioctl >/dev/null || fail "swtpm_ioctl is not installed (swtpm-tools)"

declare -A KH_SWTPM_PID=() KH_SWTPM_TCTI=() KH_SWTPM_STATE=() KH_SWTPM_CTRL=() KH_SWTPM_ADDR=()

# tpm2-tss logs warnings to stderr by default; the tests print their own.
export TSS2_LOG="${TSS2_LOG:-all+NONE}"
KH_SWTPM_TRANSPORT="${KH_SWTPM_TRANSPORT:-unix}"

# _swtpm_launch NAME: start the swtpm process of NAME on its recorded
# address (or a new one); 0 when it answers on its control channel.
_swtpm_launch() {
    local name="$1" state="${KH_SWTPM_STATE[$1]}" log="${KH_SWTPM_STATE[$1]}.log"
    local server ctrl ctrl_arg
    if [ "$KH_SWTPM_TRANSPORT" = tcp ]; then
        local port="${KH_SWTPM_ADDR[$name]:-}"
        [ -n "$port" ] || port=$(( (RANDOM % 19000) * 2 + 21000 ))
        server="type=tcp,port=$port,bindaddr=127.0.0.1"
        ctrl="type=tcp,port=$((port + 1)),bindaddr=127.0.0.1"
        ctrl_arg=(--tcp "127.0.0.1:$((port + 1))")
        KH_SWTPM_ADDR[$name]="$port"
        KH_SWTPM_TCTI[$name]="swtpm:host=127.0.0.1,port=$port"
    else
        server="type=unixio,path=$state.sock"
        ctrl="type=unixio,path=$state.sock.ctrl"
        ctrl_arg=(--unix "$state.sock.ctrl")
        rm -f "$state.sock" "$state.sock.ctrl"
        KH_SWTPM_TCTI[$name]="swtpm:path=$state.sock"
    fi
    KH_SWTPM_CTRL[$name]="${ctrl_arg[*]}"
    swtpm socket --tpm2 --tpmstate "dir=$state" --server "$server" --ctrl "$ctrl" \
        --flags not-need-init,startup-clear --log "file=$log,level=1" </dev/null >>"$log" 2>&1 &
    local pid=$!
    KH_SWTPM_PID[$name]="$pid"
    local i
    for i in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            unset 'KH_SWTPM_PID[$name]'
            return 1
        fi
        if swtpm_ioctl "${ctrl_arg[@]}" -g >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'KH_SWTPM_PID[$name]'
    return 1
}

swtpm_start() {
    local name="${1:-tpm}" tries=1
    [ -z "${KH_SWTPM_PID[$name]:-}" ] || fail "swtpm '$name' is already running"
    if [ -z "${KH_SWTPM_STATE[$name]:-}" ]; then
        KH_SWTPM_STATE[$name]="$KH_TMP/swtpm-$name"
        mkdir -p "${KH_SWTPM_STATE[$name]}"
        # A new TCP instance looks for a free port pair; a restart keeps its port.
        [ "$KH_SWTPM_TRANSPORT" != tcp ] || tries=20
    fi
    local t
    for t in $(seq 1 "$tries"); do
        if _swtpm_launch "$name"; then
            echo "   swtpm '$name' (pid ${KH_SWTPM_PID[$name]}) at ${KH_SWTPM_TCTI[$name]}"
            if [ "$name" = tpm ] || [ -z "${KEYHOLD_TCTI:-}" ]; then
                export KEYHOLD_TCTI="${KH_SWTPM_TCTI[$name]}" TPM2TOOLS_TCTI="${KH_SWTPM_TCTI[$name]}"
            fi
            return 0
        fi
        [ "$KH_SWTPM_TRANSPORT" != tcp ] || [ "$tries" -eq 1 ] || unset 'KH_SWTPM_ADDR[$name]'
    done
    sed 's/^/     | /' "${KH_SWTPM_STATE[$name]}.log" >&2 || true
    fail "swtpm '$name' did not start"
}

swtpm_tcti() { echo "${KH_SWTPM_TCTI[${1:-tpm}]:?no swtpm named ${1:-tpm}}"; }

swtpm_running() {
    local pid="${KH_SWTPM_PID[${1:-tpm}]:-}"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# _swtpm_end NAME SIGNAL: send SIGNAL and reap; SIGKILL after 10 s.
_swtpm_end() {
    local name="$1" sig="$2" pid="${KH_SWTPM_PID[$1]:-}" i
    [ -n "$pid" ] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'KH_SWTPM_PID[$name]'
}

swtpm_stop() {
    local name="${1:-tpm}"
    if swtpm_running "$name"; then
        env -u LD_PRELOAD TPM2TOOLS_TCTI="${KH_SWTPM_TCTI[$name]}" timeout 10 tpm2_shutdown -c >/dev/null 2>&1 || true
    fi
    _swtpm_end "$name" TERM
}
swtpm_kill() { _swtpm_end "${1:-tpm}" KILL; }

swtpm_restart() {
    local name="${1:-tpm}"
    swtpm_stop "$name"
    swtpm_start "$name"
}

swtpm_stop_all() {
    local name
    for name in "${!KH_SWTPM_PID[@]}"; do
        _swtpm_end "$name" TERM
    done
}

# Stop every swtpm before lib.sh's cleanup removes their state, keeping the
# test's exit status for it.
_kh_swtpm_exit() {
    local rc=$?
    swtpm_stop_all
    (exit "$rc")
    kh_cleanup
}
trap _kh_swtpm_exit EXIT
