#!/usr/bin/env bash
# `ninja -C build bench-backends` (not a test): keyhold-bench on keys that
# live in the TPM and in a remote signer; the figures behind README's TPM and
# remote tables. The bench-backends test runs the same with tiny cells.
#
#  - TPM: a swtpm on TCP loopback with keyhold's persistent primary
#    (`keyhold tpm setup`); keyhold's TPM keys beside vault keys of the same
#    types and beside tpm2-pkcs11 on the same swtpm (--tpm2-tcti): sign on
#    1 and 2 threads, and P-256 key generation.
#  - Remote: keyhold → keyhold-signd on a unix socket → vault key, one key
#    per type, each beside a vault key of its type.
#
# Env: KH_BENCH_SECONDS (1) per cell, KH_BENCH_REPEAT (3) rounds.
set -euo pipefail
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/../integration/bench-lib.sh"

: "${KEYHOLD_BENCH:?KEYHOLD_BENCH must name the built keyhold-bench}"
common=(--seconds "${KH_BENCH_SECONDS:-1}" --repeat "${KH_BENCH_REPEAT:-3}" --modes own --quiet)

say "TPM keys beside vault keys and tpm2-pkcs11, one swtpm"
swtpm_start
run kh tpm setup
"$KEYHOLD_BENCH" "${common[@]}" --backend tpm --vs tpm2-pkcs11 --tpm2-tcti "$(swtpm_tcti)" \
    --algs p256-ecdsa,p384-ecdsa,rsa2048-pkcs1 --keygen-algs p256 sign keygen
swtpm_stop
unset KEYHOLD_TCTI TPM2TOOLS_TCTI

say "remote keys through keyhold-signd on a unix socket, beside vault keys"
types=(p256 secp256k1 ed25519 p384 rsa2048)
bench_remote_setup "${types[@]}"
for t in "${types[@]}"; do
    "$KEYHOLD_BENCH" "${common[@]}" --key "r-$t" --token client sign
done
signd_stop signd
