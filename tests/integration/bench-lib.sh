# Keys on keyhold's TPM and remote backends for keyhold-bench (sourced after
# lib.sh by the bench-backends test and by tests/perf/bench-backends.sh):
#
#   swtpm_start (swtpm.sh)    swtpms listen on TCP loopback here: tpm2-pkcs11's
#                             swtpm TCTI speaks TCP only
#   bench_remote_setup TYPE…  a signer store with a token "vault" holding a
#                             vault key k-TYPE per type, keyhold-signd serving
#                             it on a unix socket, and in the default store a
#                             token "client" with the remote keys r-TYPE
#                             (`keyhold remote add`)
#
# Both use KEYHOLD_SO_PIN / KEYHOLD_PIN (set here when unset). Every swtpm and
# keyhold-signd started is stopped when the script exits.
export KH_SWTPM_TRANSPORT=tcp
. "$(dirname "${BASH_SOURCE[0]}")/swtpm.sh"
. "$(dirname "${BASH_SOURCE[0]}")/signd-lib.sh"
# swtpm.sh and signd-lib.sh each set an EXIT trap; keep both.
trap 'kh_rc_=$?; signd_kill_all; (exit $kh_rc_); _kh_swtpm_exit' EXIT

export KEYHOLD_SO_PIN="${KEYHOLD_SO_PIN:-11223344}" KEYHOLD_PIN="${KEYHOLD_PIN:-55667788}"

bench_remote_setup() {
    local t signer="$KH_TMP/signer-store"
    KEYHOLD_STORE="$signer" run kh init --label vault
    for t in "$@"; do
        KEYHOLD_STORE="$signer" run kh keygen --token vault --type "$t" --label "k-$t"
    done
    KEYHOLD_STORE="$signer" signd_start signd --listen "unix:$KH_TMP/signd.sock" --token vault
    run kh init --label client
    for t in "$@"; do
        run kh remote add --token client --url "${SIGND_URL[signd]}" --key "k-$t" --label "r-$t"
    done
}
