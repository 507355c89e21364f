#!/usr/bin/env bash
# bench-backends: keyhold-bench measures keys that live in the TPM and in a
# remote signer, with tiny cells. Timings are printed, never judged.
#
#  - --backend tpm with --vs tpm2-pkcs11 on the same swtpm (--tpm2-tcti):
#    keyhold's P-256 keys are TPM keys (the cells say so), they and
#    tpm2-pkcs11's sign and verify on 1 and 2 threads, keyhold's key
#    generation is measured, and the summary has the ≥ 5× tpm2-pkcs11 ratio
#    and the ratio to a vault key of the same type. The modules take turns
#    on the TPM's three object slots: before they did, tpm2-pkcs11 failed
#    with TPM_RC_OBJECT_MEMORY.
#  - --key on remote keys (keyhold → keyhold-signd over a unix socket →
#    vault key): every figure of the key's type signs and verifies beside a
#    vault reference key, the summary has the ≥ 0.5× ratio, and the
#    reference keys the bench made in the client token are gone afterwards.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/bench-lib.sh"

: "${KEYHOLD_BENCH:?KEYHOLD_BENCH must name the built keyhold-bench}"
out="$KH_TMP/bench.json"
q() { jq -rs "$1" "$out"; }
# bench ARGS...: keyhold-bench --json with tiny cells into $out; must exit 0.
# (Built with the module's sanitizers, if any; the other modules' leaks are
# not ours.)
bench() {
    local rc=0
    echo "   \$ keyhold-bench --json --seconds 0.05 $*"
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        timeout -k 10 300 "$KEYHOLD_BENCH" --json --seconds 0.05 "$@" >"$out" || rc=$?
    sed 's/^/     | /' "$out"
    [ "$rc" -eq 0 ] || fail "keyhold-bench $* exited $rc"
    jq -e . "$out" >/dev/null || fail "the output is not one JSON object per line"
}
# cells MODULE NAME THREADS: verified own-session sign cells of MODULE for NAME.
cells() {
    q "[.[] | select(.figure==\"sign\" and .module==\"$1\" and .name==\"$2\" and .threads==$3
        and .mode==\"own\" and .verified==true and .checked>=$3 and .ops>0)] | length"
}

say "TPM keys beside tpm2-pkcs11 on one swtpm"
# No persistent primary (`keyhold tpm setup`): keyhold keeps the SRK loaded
# beside its key, two of the TPM's three object slots, the tightest case.
swtpm_start
bench --backend tpm --vs tpm2-pkcs11 --tpm2-tcti "$(swtpm_tcti)" --algs p256-ecdsa \
    --threads 2 --modes own sign keygen
for t in 1 2; do
    [ "$(cells keyhold p256-ecdsa $t)" -eq 1 ] || fail "keyhold TPM P-256, $t thread(s): no verified cell"
    [ "$(cells keyhold-vault p256-ecdsa $t)" -eq 1 ] || fail "vault reference, $t thread(s): no verified cell"
    [ "$(cells tpm2-pkcs11 p256-ecdsa $t)" -eq 1 ] || fail "tpm2-pkcs11 P-256, $t thread(s): no verified cell"
done
n="$(q '[.[] | select(.module=="keyhold" and (.detail|test("backend tpm$")))] | length')"
[ "$n" -eq 3 ] || fail "keyhold's cells do not all say their keys are TPM keys ($n of 3)"
ok "keyhold (TPM keys), its vault reference and tpm2-pkcs11: P-256 signed and verified, 1 and 2 threads"
n="$(q '[.[] | select(.figure=="keygen" and .module=="keyhold" and .ops>0 and (.verified!=false))] | length')"
[ "$n" -eq 1 ] || fail "no keyhold TPM keygen figure"
n="$(q '[.[] | select(.figure=="keygen" and .module=="tpm2-pkcs11" and .ops>0)] | length')"
[ "$n" -eq 1 ] || fail "no tpm2-pkcs11 keygen figure"
ok "key generation measured on both modules"
n="$(q '[.[] | select(.figure=="ratio" and .name=="P-256 ECDSA, 1 thread, ops/s vs tpm2-pkcs11" and .target==">= 5 x tpm2-pkcs11")] | length')"
[ "$n" -eq 1 ] || fail "no P-256 ratio against tpm2-pkcs11 with its target"
n="$(q '[.[] | select(.figure=="ratio" and (.name|test("tpm key vs vault key")))] | length')"
[ "$n" -eq 2 ] || fail "no TPM-key/vault-key ratios"
n="$(q '[.[] | select(.figure=="ratio" and (.name|test("/ 1 thread")) and has("target"))] | length')"
[ "$n" -eq 0 ] || fail "the vault's 2-thread target was applied to TPM keys"
ok "summary: the ≥ 5x tpm2-pkcs11 target, ratios to the vault key, no vault targets on TPM keys"
[ "$(q '.[] | select(.figure=="verify") | .failed_cells + .errors')" -eq 0 ] || fail "verify summary has failures"
swtpm_stop
unset KEYHOLD_TCTI TPM2TOOLS_TCTI   # the remote part is vault only

say "remote keys through keyhold-signd on a unix socket"
types=(p256 secp256k1 ed25519)
bench_remote_setup "${types[@]}"
before="$(kh list --token client | sort)"
declare -A ALGS=([p256]="p256-ecdsa" [secp256k1]="secp256k1-ecdsa bip340" [ed25519]="ed25519")
for t in "${types[@]}"; do
    bench --key "r-$t" --token client --threads 2 --modes own sign
    for alg in ${ALGS[$t]}; do
        for n in 1 2; do
            [ "$(cells keyhold "$alg" $n)" -eq 1 ] || fail "remote $alg, $n thread(s): no verified cell"
            [ "$(cells keyhold-vault "$alg" $n)" -eq 1 ] || fail "vault reference $alg, $n thread(s): no verified cell"
        done
    done
    n="$(q '[.[] | select(.figure=="sign" and .module=="keyhold" and ((.detail|test("backend remote$"))|not))] | length')"
    [ "$(q '[.[] | select(.figure=="sign" and .module=="keyhold")] | length')" -gt 0 ] || fail "no keyhold cells"
    [ "$n" -eq 0 ] || fail "$n keyhold cells do not say their key is remote"
    n="$(q '[.[] | select(.figure=="ratio" and (.name|test("remote key vs vault key")) and .target==">= 0.5 x vault")] | length')"
    [ "$n" -eq $((2 * $(wc -w <<<"${ALGS[$t]}"))) ] || fail "$t: ratios to the vault key: $n"
    [ "$(q '.[] | select(.figure=="verify") | .failed_cells + .errors')" -eq 0 ] || fail "verify summary has failures"
    ok "remote $t: ${ALGS[$t]} signed and verified on 1 and 2 threads beside a vault key; ratios printed"
done
after="$(kh list --token client | sort)"
[ "$after" = "$before" ] || fail "the client token's objects changed: $(diff <(echo "$before") <(echo "$after") | tr '\n' ' ')"
ok "the bench's vault reference keys are gone from the client token"
signd_stop signd
