#!/usr/bin/env bash
# keyhold-signd's policy and limits, driven by the protocol client
# (tests/integration/js/signd.cjs) over a unix socket and TCP:
#  - per-key policy from a JSON configuration: allowed methods, chain ids,
#    recipients, 4-byte selectors, max value, sign algorithms; keys the file
#    does not list are not served; each denial is error 2 "denied: <why>";
#  - a per-key request rate (token bucket): the burst passes, then
#    rate_limited (3); the count is bounded by what the bucket can refill in
#    the measured time, not by a timing assertion;
#  - the connection cap: one connection over it gets "unavailable: too many
#    connections" and is closed; the others keep being served;
#  - garbage and oversized frames: an error reply or a closed connection, and
#    the server keeps serving;
#  - the idle timeout closes a silent connection;
#  - SIGTERM drains: a request whose frame is half sent at the signal is
#    answered, idle connections are closed, new ones refused, exit 0; SIGINT
#    stops cleanly too;
#  - the log has one line per request and no payload.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/signd-lib.sh"

export KEYHOLD_SO_PIN=55667788 KEYHOLD_PIN=98765432
TOKEN=policy

say "JS client installed (npm ci)"
js_setup
ok "node $(node --version)"

say "a token with four keys: hot, ratey, unlisted (secp256k1) and cold (P-256)"
run kh init --label "$TOKEN"
for k in hot ratey unlisted; do
    run kh keygen --token "$TOKEN" --type secp256k1 --label "$k"
done
run kh keygen --token "$TOKEN" --type p256 --label cold
ok "keys made"

cat >"$KH_TMP/signd.json" <<'EOF'
{
  "default_key": "hot",
  "max_connections": 3,
  "io_timeout_ms": 5000,
  "keys": {
    "hot": {
      "methods": ["address", "sign_transaction"],
      "chain_ids": [1],
      "to": ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"],
      "selectors": ["0xa9059cbb"],
      "max_value": "1000000000000000000"
    },
    "cold": { "methods": ["public_key", "sign"], "algorithms": ["ecdsa"] },
    "ratey": { "methods": ["address"], "rate_per_second": 1, "burst": 3 }
  }
}
EOF

say "a configuration with a typo is refused at start"
sed 's/"chain_ids"/"chain_id"/' "$KH_TMP/signd.json" >"$KH_TMP/typo.json"
must_fail "$KEYHOLD_SIGND" --listen "unix:$KH_TMP/typo.sock" --token "$TOKEN" --config "$KH_TMP/typo.json"
printf '{"keys": {"missing": {}}}\n' >"$KH_TMP/missing.json"
must_fail "$KEYHOLD_SIGND" --listen "unix:$KH_TMP/typo.sock" --token "$TOKEN" --config "$KH_TMP/missing.json"
ok "unknown member and a key not on the token: both refused"

say "keyhold-signd with the configuration, on a unix socket and on TCP"
signd_start unix --listen "unix:$KH_TMP/signd.sock" --token "$TOKEN" --config "$KH_TMP/signd.json"
signd_start tcp --listen tcp://127.0.0.1:0 --token "$TOKEN" --config "$KH_TMP/signd.json"
ok "listening on ${SIGND_URL[unix]} and ${SIGND_URL[tcp]}"

for n in unix tcp; do
    say "$n: policy denials (chain, recipient, creation, selector, value, method, algorithm, unlisted key)"
    run sjs policy "${SIGND_URL[$n]}"
    ok "$n: allowed requests sign, each denial is 'denied' with its reason"
done

say "rate limit: ratey allows 1 request per second with a burst of 3"
run sjs rate "${SIGND_URL[unix]}" ratey 12 3 1
ok "the burst passed, the rest were rate_limited"

say "connection cap (3): the fourth connection is refused, the others still served"
run sjs conncap "${SIGND_URL[unix]}" 3
run sjs conncap "${SIGND_URL[tcp]}" 3
ok "cap enforced on both transports"

say "garbage and oversized frames"
run sjs garbage "${SIGND_URL[unix]}"
run sjs garbage "${SIGND_URL[tcp]}"
ok "every bad frame got an error or a closed connection; the servers kept serving"

say "the idle timeout closes a silent connection, the io deadline a stalled frame"
signd_start idle --listen "unix:$KH_TMP/idle.sock" --token "$TOKEN" --idle-timeout-ms 300 --io-timeout-ms 300
run sjs idle "${SIGND_URL[idle]}"
grep -q 'closed: idle for 300 ms' "$KH_TMP/idle.log" || fail "no idle-close line in the log"
grep -q 'outcome=timeout' "$KH_TMP/idle.log" || fail "no timeout line for the stalled frame"
ok "the idle connection and the stalled frame were closed by the server"

say "SIGINT stops a server cleanly"
signd_stop idle INT
ok "exit 0 after SIGINT"

say "SIGTERM drains: the request in flight is answered, then the server exits 0"
signd_start drain --listen "unix:$KH_TMP/drain.sock" --token "$TOKEN" --key hot
run sjs drain "${SIGND_URL[drain]}" "${SIGND_PID[drain]}"
rc=0
signd_wait drain || rc=$?
sed 's/^/     | /' "$KH_TMP/drain.log"
[ "$rc" -eq 0 ] || fail "keyhold-signd exited $rc after the drain"
grep -q 'method=sign_message_defunct key=hot outcome=ok' "$KH_TMP/drain.log" ||
    fail "the drained request is not in the log"
[ ! -e "$KH_TMP/drain.sock" ] || fail "the socket file outlived the server"
ok "drained and exited 0"

say "the other servers stop with SIGTERM, exit 0"
signd_stop unix
signd_stop tcp
ok "stopped"

say "the log: one line per request with method, key, outcome and duration; no payload"
cat "$KH_TMP/unix.log" "$KH_TMP/tcp.log" >"$KH_TMP/all.log"
grep -q 'method=sign_transaction key=hot outcome=denied ms=' "$KH_TMP/all.log" || fail "no denied line"
grep -q 'method=address key=ratey outcome=rate_limited ms=' "$KH_TMP/all.log" || fail "no rate_limited line"
grep -q 'outcome=unavailable (too many connections)' "$KH_TMP/all.log" || fail "no connection-cap line"
grep -q 'outcome=too_large' "$KH_TMP/all.log" || fail "no too_large line"
grep -q 'outcome=parse_error' "$KH_TMP/all.log" || fail "no parse_error line"
! grep -q "$KEYHOLD_PIN" "$KH_TMP/all.log" || fail "the PIN appears in a log"
! grep -qi 'a9059cbb\|5aaeb6053f3e94c9' "$KH_TMP/all.log" || fail "transaction fields appear in a log"
! grep -q 'GET /' "$KH_TMP/all.log" || fail "frame contents appear in a log"
grep -c ' outcome=' "$KH_TMP/all.log" | sed 's/^/     request lines: /'
ok "log lines as specified"
