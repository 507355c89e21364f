#!/usr/bin/env bash
# pkcs11-tool's own self tests pass against the module: `--test` with login
# (random, digests, signatures and verification with every key on the
# token), `--test-fork` (C_Initialize in a forked child) and `--test-threads`
# (C_Initialize with OS locking, concurrent calls from threads; pkcs11-tool
# itself waits 30 s there). The token is created with the keyhold CLI.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PIN=31415926
SO=27182818
TOKEN=selftest

say "token init through the keyhold CLI"
KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label "$TOKEN"
p11 -L | has "token label *: $TOKEN\$" || fail "pkcs11-tool -L does not show the token made by keyhold init"
ok "token '$TOKEN' visible to pkcs11-tool"
P=(--token-label "$TOKEN" --login --pin "$PIN")

say "one key pair of each type"
run p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --id 41 --label st-p256 --usage-sign
run p11 "${P[@]}" --keypairgen --key-type EC:secp256k1 --id 42 --label st-k1 --usage-sign
run p11 "${P[@]}" --keypairgen --key-type EC:edwards25519 --id 43 --label st-ed --usage-sign
run p11 "${P[@]}" --keypairgen --key-type rsa:2048 --id 44 --label st-rsa --usage-sign
ok "4 key pairs generated"

# selftest <what> <pkcs11-tool args...>: must exit 0 and report no error.
selftest() {
    local what="$1" rc=0
    shift
    say "pkcs11-tool $what"
    echo "   \$ pkcs11-tool $*"
    p11 "$@" >"$KH_TMP/out" 2>&1 || rc=$?
    sed 's/^/     | /' "$KH_TMP/out"
    [ "$rc" -eq 0 ] || fail "pkcs11-tool $what exited $rc"
    if grep -E -i '(^|[^a-z])(error|failed|ERR)([^a-z]|$)' "$KH_TMP/out" | grep -v -i 'errors: *0'; then
        fail "pkcs11-tool $what reported an error"
    fi
    ok "pkcs11-tool $what passed"
}

selftest "--test --login" "${P[@]}" --test
selftest "--test-fork" "${P[@]}" --test-fork
selftest "--use-locking --test-threads" --token-label "$TOKEN" --use-locking \
    --test-threads ILGISLT0 --test-threads ILGISLT0 --test-threads ILGISLT0 -L
