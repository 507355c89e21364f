# Helpers for keyhold-signd's integration tests (sourced after lib.sh):
# start a server in the background and wait until it listens, stop it with a
# signal and check it exits 0, and kill whatever is left when the test ends.
#
#   signd_start NAME ARGS...   starts keyhold-signd ARGS --ready-file ...; sets
#                              SIGND_URL[NAME] (the URL it listens on, port 0
#                              resolved) and SIGND_PID[NAME]; log in $KH_TMP/NAME.log
#   signd_stop NAME [SIGNAL]   sends SIGTERM (or SIGNAL), waits for the exit
#                              (deadline $SIGND_STOP_S), fails unless it is 0
#   sjs ARGS...                the protocol client (tests/integration/js/signd.cjs)

: "${KEYHOLD_SIGND:?KEYHOLD_SIGND must name the built keyhold-signd}"

declare -A SIGND_PID SIGND_URL
SIGND_START_S="${SIGND_START_S:-60}"
SIGND_STOP_S="${SIGND_STOP_S:-60}"

signd_kill_all() {
    local n
    for n in "${!SIGND_PID[@]}"; do
        kill -9 "${SIGND_PID[$n]}" 2>/dev/null || true
    done
}
trap 'kh_rc_=$?; signd_kill_all; (exit $kh_rc_); kh_cleanup' EXIT

signd_start() {
    local name="$1"
    shift
    local ready="$KH_TMP/$name.ready" log="$KH_TMP/$name.log" i
    rm -f "$ready"
    echo "   \$ keyhold-signd $* &"
    "$KEYHOLD_SIGND" "$@" --ready-file "$ready" 2>"$log" &
    SIGND_PID[$name]=$!
    for ((i = 0; i < SIGND_START_S * 10; i++)); do
        [ -s "$ready" ] && break
        if ! kill -0 "${SIGND_PID[$name]}" 2>/dev/null; then
            sed 's/^/     | /' "$log" >&2
            unset "SIGND_PID[$name]"
            fail "keyhold-signd ($name) exited before it listened"
        fi
        sleep 0.1
    done
    [ -s "$ready" ] || { sed 's/^/     | /' "$log" >&2; fail "keyhold-signd ($name) did not listen within ${SIGND_START_S}s"; }
    SIGND_URL[$name]="$(cat "$ready")"
    sed 's/^/     | /' "$log"
}

# signd_wait NAME: waits for the process to exit (deadline), returns its status.
signd_wait() {
    local name="$1" pid="${SIGND_PID[$1]}" i rc=0
    for ((i = 0; i < SIGND_STOP_S * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
        fail "keyhold-signd ($name) did not exit within ${SIGND_STOP_S}s"
    fi
    wait "$pid" || rc=$?
    unset "SIGND_PID[$name]"
    return "$rc"
}

signd_stop() {
    local name="$1" sig="${2:-TERM}" rc=0
    kill -"$sig" "${SIGND_PID[$name]}"
    signd_wait "$name" || rc=$?
    sed 's/^/     | /' "$KH_TMP/$name.log" | tail -n 5
    [ "$rc" -eq 0 ] || { sed 's/^/     | /' "$KH_TMP/$name.log" >&2; fail "keyhold-signd ($name) exited $rc after SIG$sig"; }
}

sjs() { timeout -k 5 300 node "$KH_JS_DIR/signd.cjs" "$@"; }
