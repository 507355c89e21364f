#!/usr/bin/env bash
# keyhold-signd's Ethereum methods, checked by an independent library
# (ethers v6, tests/integration/js): a fresh store with two secp256k1 keys
# imported through the keyhold CLI (the EIP-155 example key 0x46..46 and a
# random one), keyhold-signd serving them over a unix socket, TCP (free port)
# and TLS, and for each:
#  - address/status agree with `keyhold pubkey --format eth` and with the
#    address noble derives from the private key;
#  - legacy (EIP-155), EIP-2930 and EIP-1559 transactions (calls, a contract
#    creation, an access list, 128-bit values, a chain id over 64 bits) parse
#    with ethers, field by field, and their recovered sender is the address;
#  - EIP-191 signatures over 32-byte hashes recover to the address;
#  - malformed requests get clear errors on a connection that keeps serving;
#  - the EIP-155 example transaction signs to exactly the EIP's raw bytes
#    (the vault's RFC 6979 nonces are deterministic);
#  - SIGTERM stops each server with exit status 0.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/signd-lib.sh"

export KEYHOLD_SO_PIN=31313131 KEYHOLD_PIN=424242
TOKEN=eth-signer
EIP155_KEY=4646464646464646464646464646464646464646464646464646464646464646
EIP155_RAW=0xf86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83

say "JS verifiers installed (npm ci)"
js_setup
ok "node $(node --version), ethers $(node -e "console.log(require('ethers').version)")"

say "a fresh token and two secp256k1 keys imported through the keyhold CLI"
run kh init --label "$TOKEN"
printf '%s\n' "$EIP155_KEY" >"$KH_TMP/eip155.hex"
run kh import --token "$TOKEN" --label eip155 --hex "$KH_TMP/eip155.hex"
priv="$(head -c 32 /dev/urandom | xxd -p -c 64)"
printf '%s\n' "$priv" >"$KH_TMP/rand.hex"
run kh import --token "$TOKEN" --label hot --hex "$KH_TMP/rand.hex"
rm -f "$KH_TMP/rand.hex"
addr_eip155="$(kh pubkey --token "$TOKEN" --label eip155 --format eth)"
addr_hot="$(kh pubkey --token "$TOKEN" --label hot --format eth)"
[ "$addr_eip155" = "$(js eth-address-priv "$EIP155_KEY")" ] || fail "eip155 key: keyhold and noble disagree on the address"
[ "$addr_hot" = "$(js eth-address-priv "$priv")" ] || fail "random key: keyhold and noble disagree on the address"
ok "addresses $addr_eip155 (EIP-155 key) and $addr_hot agree with noble"

say "a TLS certificate for 127.0.0.1 (openssl CLI)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=keyhold-test-ca \
    -keyout "$KH_TMP/ca.key" -out "$KH_TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$KH_TMP/srv.key" -out "$KH_TMP/srv.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$KH_TMP/san.ext"
openssl x509 -req -in "$KH_TMP/srv.csr" -CA "$KH_TMP/ca.pem" -CAkey "$KH_TMP/ca.key" -CAcreateserial \
    -days 2 -extfile "$KH_TMP/san.ext" -out "$KH_TMP/srv.pem" 2>/dev/null
export KH_TLS_CA="$KH_TMP/ca.pem"
ok "CA and server certificate"

say "keyhold-signd on a unix socket, on TCP (free port) and on TLS (free port)"
signd_start unix --listen "unix:$KH_TMP/signd.sock" --token "$TOKEN" --key hot
signd_start tcp --listen tcp://127.0.0.1:0 --token "$TOKEN" --key hot --pin-file <(printf '%s\n' "$KEYHOLD_PIN")
signd_start tls --listen tls://127.0.0.1:0 --token "$TOKEN" --key hot \
    --tls-cert "$KH_TMP/srv.pem" --tls-key "$KH_TMP/srv.key"
for n in unix tcp tls; do
    echo "     $n: ${SIGND_URL[$n]}"
done
case "${SIGND_URL[tcp]}" in tcp://127.0.0.1:[1-9]*) ;; *) fail "tcp URL ${SIGND_URL[tcp]} has no port" ;; esac
ok "three servers listening"

for n in unix tcp tls; do
    say "$n: address, three transaction types, EIP-191 and refusals, checked by ethers"
    run sjs eth "${SIGND_URL[$n]}" "$addr_hot"
    ok "$n: every transaction and message recovers to $addr_hot"
done

for n in unix tcp tls; do
    say "$n: requests written back to back in one write are all answered"
    run sjs pipeline "${SIGND_URL[$n]}" 3
    ok "$n: pipelined requests answered"
done

say "tls: a client that connects and never starts its handshake delays nobody else"
# The handshake deadline is far longer than the other client's own deadline:
# if a stalled handshake held the accepting thread, that client would fail.
signd_start tlsslow --listen tls://127.0.0.1:0 --token "$TOKEN" --key hot \
    --tls-cert "$KH_TMP/srv.pem" --tls-key "$KH_TMP/srv.key" --handshake-timeout-ms 60000
slow_port="${SIGND_URL[tlsslow]##*:}"
exec {stall_fd}<>"/dev/tcp/127.0.0.1/$slow_port"
out="$(KH_CLIENT_DEADLINE_MS=10000 sjs call "${SIGND_URL[tlsslow]}" '[{"method":"address"}]')"
[ "$(printf '%s\n' "$out" | jq -r .result.address)" = "$addr_hot" ] ||
    fail "a request behind a stalled TLS handshake got '$out'"
exec {stall_fd}>&-
for ((i = 0; i < 100; i++)); do
    grep -q 'closed: TLS handshake' "$KH_TMP/tlsslow.log" && break
    sleep 0.1
done
grep 'closed: TLS handshake' "$KH_TMP/tlsslow.log" | sed 's/^/     | /'
grep -q 'conn=1 closed: TLS handshake' "$KH_TMP/tlsslow.log" ||
    fail "the stalled connection's thread did not end its handshake when the client left"
signd_stop tlsslow
ok "served while another connection's handshake stalled; that one ended in its own thread"

say "the EIP-155 example transaction, signed by the imported example key"
run sjs eip155 "${SIGND_URL[unix]}" eip155 "$EIP155_RAW"
ok "raw_tx equals the EIP-155 text byte for byte"

say "no default key when the token has two secp256k1 keys and none is named"
signd_start nodefault --listen "unix:$KH_TMP/nodefault.sock" --token "$TOKEN"
out="$(sjs call "${SIGND_URL[nodefault]}" '[{"method":"address"},{"method":"status"},{"method":"address","params":{"key":"eip155"}}]')"
printf '%s\n' "$out" | sed 's/^/     | /'
[ "$(printf '%s\n' "$out" | sed -n 1p | jq -r .error.code)" = 1 ] || fail "address without a default key is not unknown_key"
[ "$(printf '%s\n' "$out" | sed -n 2p | jq -r .result.address)" = null ] || fail "status shows an address without a default key"
[ "$(printf '%s\n' "$out" | sed -n 3p | jq -r .result.address)" = "$addr_eip155" ] || fail "address of a named key"
signd_stop nodefault
ok "no default key: address is unknown_key, status.address is null, named keys work"

say "bad start-up: wrong PIN, unknown token, unknown default key, bad URL, TLS without a certificate"
must_fail env KEYHOLD_PIN=000000 "$KEYHOLD_SIGND" --listen "unix:$KH_TMP/x.sock" --token "$TOKEN"
must_fail "$KEYHOLD_SIGND" --listen "unix:$KH_TMP/x.sock" --token no-such-token
must_fail "$KEYHOLD_SIGND" --listen "unix:$KH_TMP/x.sock" --token "$TOKEN" --key no-such-key
must_fail "$KEYHOLD_SIGND" --listen "http://127.0.0.1:1" --token "$TOKEN"
must_fail "$KEYHOLD_SIGND" --listen "tls://127.0.0.1:0" --token "$TOKEN"
must_fail "$KEYHOLD_SIGND" --token "$TOKEN"
[ ! -e "$KH_TMP/x.sock" ] || fail "a failed start left a socket file"
ok "each refused with a message and a non-zero exit"

say "SIGTERM: every server exits 0"
for n in unix tcp tls; do
    signd_stop "$n"
done
[ ! -e "$KH_TMP/signd.sock" ] || fail "the unix socket file is still there after the stop"
ok "all stopped cleanly; the socket file is gone"

say "the logs: one line per request, no PIN, no hash, no signature"
cat "$KH_TMP"/{unix,tcp,tls}.log >"$KH_TMP/all.log"
n_req="$(grep -c ' method=sign_transaction key=hot outcome=ok ' "$KH_TMP/all.log" || true)"
[ "$n_req" -ge 18 ] || fail "expected at least 18 logged sign_transaction requests, found $n_req"
! grep -q "$KEYHOLD_PIN" "$KH_TMP/all.log" || fail "the PIN appears in a log"
! grep -q "${EIP155_RAW:10:40}" "$KH_TMP/unix.log" || fail "a signature appears in a log"
! grep -qi "3535353535353535" "$KH_TMP/unix.log" || fail "a transaction field appears in a log"
grep ' outcome=' "$KH_TMP/unix.log" | head -n 3 | sed 's/^/     | /'
ok "$n_req sign_transaction lines; no PIN, payload or signature"
