#!/usr/bin/env bash
# 64 TPM keys used round robin by 2 processes x 2 threads against one swtpm
# with no resource manager (three object slots), plus fork and C_Finalize
# behaviour (tpm-load.c) — once with a persistent primary (keyhold tpm
# setup), once with the SRK-template primary made on demand by each process.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/swtpm.sh"

: "${KH_TPM_LOAD:?KH_TPM_LOAD must name the built kh-tpm-load}"

say "persistent primary at 0x81000001"
swtpm_start
run kh tpm setup
with_module "$KH_TPM_LOAD" || fail "tpm-load with a persistent primary"
ok "no error with a persistent primary"

say "no persistent primary: every process makes the SRK-template primary itself"
swtpm_start other
KEYHOLD_TCTI="$(swtpm_tcti other)" TPM2TOOLS_TCTI="$(swtpm_tcti other)" KEYHOLD_STORE="$KH_TMP/store2" \
    KH_TPM_LOAD_ROUNDS=2 with_module "$KH_TPM_LOAD" || fail "tpm-load with transient primaries"
ok "no error with transient primaries"
