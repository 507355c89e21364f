#!/usr/bin/env bash
# bench-smoke: keyhold-bench runs end to end with tiny durations, against
# keyhold and, in the same run, SoftHSM2 and tpm2-pkcs11 (on its own swtpm),
# and every signature it checked verified. Timings are printed, never judged.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

: "${KEYHOLD_BENCH:?KEYHOLD_BENCH must name the built keyhold-bench}"
out="$KH_TMP/bench.json"

say "keyhold-bench: every figure, 2 threads, tiny cells, --vs softhsm --vs tpm2-pkcs11"
# The bench is built with the module's sanitizers (if any) and dlopens the
# module itself; the other modules' own leaks are not ours.
rc=0
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    timeout -k 10 300 "$KEYHOLD_BENCH" --json --seconds 0.05 --threads 2 \
    --sizes 10,200 --vs-sizes 10 --runs 1 --vs softhsm --vs tpm2-pkcs11 >"$out" || rc=$?
sed 's/^/     | /' "$out"
[ "$rc" -eq 0 ] || fail "keyhold-bench exited $rc"
ok "keyhold-bench exited 0"

jq -e . "$out" >/dev/null || fail "the output is not one JSON object per line"
ok "one JSON object per line"

q() { jq -rs "$1" "$out"; }

# Every keyhold sign cell was measured and its signatures verified.
for alg in secp256k1-ecdsa bip340 p256-ecdsa ed25519 p384-ecdsa rsa2048-pkcs1; do
    for t in 1 2; do
        n="$(q "[.[] | select(.figure==\"sign\" and .module==\"keyhold\" and .name==\"$alg\" and .threads==$t and .mode==\"own\" and .verified==true and .checked>=$t and .ops>0)] | length")"
        [ "$n" -eq 1 ] || fail "keyhold $alg, $t thread(s): no verified cell"
    done
    n="$(q "[.[] | select(.figure==\"floor\" and .name==\"$alg\" and .verified==true)] | length")"
    [ "$n" -ge 2 ] || fail "floor $alg: no verified cells"
done
ok "keyhold: 6 figures x 1..2 threads signed, each thread's first signature verified"

n="$(q '[.[] | select(.figure=="sign" and .module=="keyhold" and .mode=="shared" and .verified==true)] | length')"
[ "$n" -eq 6 ] || fail "shared-session cells: $n of 6 verified"
ok "shared-session mode verified"

n="$(q '[.[] | select(.figure=="keygen" and .module=="keyhold" and .name=="p256" and .ops>0)] | length')"
[ "$n" -eq 1 ] || fail "no keyhold keygen figure"
ok "keygen measured"

for k in 10 200; do
    n="$(q "[.[] | select(.figure==\"scale\" and .module==\"keyhold\" and .keys==$k)] | length")"
    [ "$n" -eq 9 ] || fail "scale at $k keys: $n of 9 steps"
done
ok "scale: 9 steps at 10 and 200 keys (fresh processes, first signature verified)"

# The other modules: SoftHSM2 lacks BIP-340 (skipped, said so) but signs P-256;
# tpm2-pkcs11 signs P-256 on swtpm and lacks secp256k1 and Ed25519.
n="$(q '[.[] | select(.figure=="sign" and .module=="softhsm2" and .name=="p256-ecdsa" and .verified==true)] | length')"
[ "$n" -ge 1 ] || fail "no verified SoftHSM2 P-256 cell"
n="$(q '[.[] | select(.figure=="sign" and .module=="softhsm2" and .name=="bip340" and .skipped==true)] | length')"
[ "$n" -eq 1 ] || fail "SoftHSM2 BIP-340 is not reported as skipped"
ok "softhsm2: P-256 measured and verified; BIP-340 skipped with a reason"
n="$(q '[.[] | select(.figure=="sign" and .module=="tpm2-pkcs11" and .name=="p256-ecdsa" and .verified==true)] | length')"
[ "$n" -ge 1 ] || fail "no verified tpm2-pkcs11 P-256 cell"
n="$(q '[.[] | select(.figure=="sign" and .module=="tpm2-pkcs11" and .name=="ed25519" and .skipped==true)] | length')"
[ "$n" -eq 1 ] || fail "tpm2-pkcs11 Ed25519 is not reported as skipped"
ok "tpm2-pkcs11: P-256 measured and verified on swtpm; Ed25519 skipped with a reason"

n="$(q '[.[] | select(.figure=="ratio" and (.name|test("vs floor")))] | length')"
[ "$n" -eq 6 ] || fail "expected 6 keyhold/floor ratios, got $n"
n="$(q '[.[] | select(.figure=="ratio" and (.name|test("vs softhsm2")))] | length')"
[ "$n" -ge 1 ] || fail "no keyhold/softhsm2 ratio"
ok "ratios printed"

checked="$(q '.[] | select(.figure=="verify") | .checked')"
failed="$(q '.[] | select(.figure=="verify") | .failed_cells + .errors')"
[ "$checked" -gt 0 ] && [ "$failed" -eq 0 ] || fail "verify summary: $checked checked, $failed failures"
ok "verify summary: $checked signatures checked, none failed"

say "keyhold-bench --key: an existing key by PKCS#11 URI"
export KEYHOLD_SO_PIN=12345678 KEYHOLD_PIN=123456
run kh init --label bench-key
run kh keygen --token bench-key --type secp256k1 --label nostr
rc=0
timeout -k 10 120 "$KEYHOLD_BENCH" --json --seconds 0.05 --threads 1 \
    --key "pkcs11:token=bench-key;object=nostr;type=private" sign >"$out" || rc=$?
sed 's/^/     | /' "$out"
[ "$rc" -eq 0 ] || fail "keyhold-bench --key exited $rc"
n="$(q '[.[] | select(.figure=="sign" and (.name=="secp256k1-ecdsa" or .name=="bip340") and .verified==true)] | length')"
[ "$n" -eq 2 ] || fail "--key: expected verified ECDSA and BIP-340 cells, got $n"
n="$(q '[.[] | select(.figure=="sign" and .name=="p256-ecdsa")] | length')"
[ "$n" -eq 0 ] || fail "--key: a P-256 figure ran on a secp256k1 key"
ok "--key by URI: the key's two mechanisms measured and verified"

say "usage errors"
must_fail "$KEYHOLD_BENCH" --seconds 0
must_fail "$KEYHOLD_BENCH" --algs nope
must_fail "$KEYHOLD_BENCH" sideways
ok "bad arguments are refused"
