# Shared helpers for keyhold's integration tests. Sourced by each test script
# (bash, set -euo pipefail). Every test gets its own fresh store.
#
# Environment (set by tests/integration/meson.build):
#   KEYHOLD_MODULE       the built keyhold-pkcs11.so
#   KEYHOLD_TOOL         the built keyhold CLI
#   KEYHOLD_TESTVECTORS  ../shared/testvectors
#   KEYHOLD_KDF_LOG2N    10 (fast PIN KDF for tests)
#   KH_JS_DIR            tests/integration/js (package.json + lock + verifiers)
#   KH_JS_CACHE          where `npm ci` installs node_modules (under the build dir)
#   KH_PRELOAD           sanitizer runtime to LD_PRELOAD into consumers that
#                        dlopen an instrumented module (empty in normal builds)

# One stream: meson's log then shows each failure where it happened.
exec 2>&1

: "${KEYHOLD_MODULE:?KEYHOLD_MODULE must name the built module}"
: "${KEYHOLD_TOOL:?KEYHOLD_TOOL must name the built keyhold CLI}"
export KEYHOLD_KDF_LOG2N="${KEYHOLD_KDF_LOG2N:-10}"

KH_TEST_NAME="$(basename "${0%.sh}")"
KH_CHECKS=0

# A fresh store and scratch space, removed on exit whatever happens.
KH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/keyhold-${KH_TEST_NAME}.XXXXXX")"
chmod 700 "$KH_TMP"
# Not created here: the module makes it (0700) on first use.
export KEYHOLD_STORE="$KH_TMP/store"
# Keep consumers away from the user's own configuration (npm keeps the real
# HOME: its ~/.npmrc may name the registry, proxy or CA to use).
KH_REAL_HOME="${HOME:-/root}"
export HOME="$KH_TMP/home"
mkdir -p "$HOME"
unset KEYHOLD_CONF XDG_DATA_HOME OPENSSL_CONF PKCS11_MODULE_PATH

kh_cleanup() {
    local rc=$?
    rm -rf "$KH_TMP"
    if [ "$rc" -eq 0 ]; then
        echo "== $KH_TEST_NAME: all $KH_CHECKS checks passed"
    else
        echo "== $KH_TEST_NAME: FAILED (exit $rc) after $KH_CHECKS passed checks" >&2
    fi
}
trap kh_cleanup EXIT

# say <text>: announce the next check.
say() { echo "-- $*"; }
# ok <text>: a check passed.
ok() { KH_CHECKS=$((KH_CHECKS + 1)); echo "   ok: $*"; }
# fail <text>: stop the test loudly.
fail() { echo "FAIL [$KH_TEST_NAME]: $*" >&2; exit 1; }

# run <cmd...>: run a command showing it; on failure print its output and fail.
run() {
    local out rc=0
    echo "   \$ $*"
    out="$("$@" 2>&1)" || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '%s\n' "$out" | sed 's/^/     | /' >&2
        fail "command failed (exit $rc): $*"
    fi
    [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/     | /'
}

# must_fail <cmd...>: the command must refuse, i.e. exit non-zero (negative
# checks). A crash, a timeout or a command that could not be run is not a
# refusal: exit 124 and above (timeout, env/exec failures, 128 + signal) fails.
must_fail() {
    local rc=0
    echo "   \$ ! $*"
    "$@" >"$KH_TMP/must_fail.out" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then
        sed 's/^/     | /' "$KH_TMP/must_fail.out" >&2
        [ "$rc" -ne 0 ] || fail "command unexpectedly succeeded: $*"
        fail "command crashed, timed out or did not run (exit $rc) instead of refusing: $*"
    fi
    sed 's/^/     | /' "$KH_TMP/must_fail.out"
}

# Consumers (pkcs11-tool, openssl, ssh-keygen, p11tool) load the module into
# their own process. In the sanitizer build the module needs the ASan runtime
# loaded first, so those commands (and only those) get it preloaded. Leak
# checking is off there: the consumers' own leaks are not ours (the unit tests
# check the module's).
#
# Every such command also runs under a deadline, so a hang fails the test
# with a clear message instead of waiting for meson's timeout.
KH_CMD_TIMEOUT="${KH_CMD_TIMEOUT:-300}"
with_module() {
    local rc=0
    if [ -n "${KH_PRELOAD:-}" ]; then
        LD_PRELOAD="$KH_PRELOAD${LD_PRELOAD:+:$LD_PRELOAD}" \
        ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
            timeout -k 10 "$KH_CMD_TIMEOUT" "$@" || rc=$?
    else
        timeout -k 10 "$KH_CMD_TIMEOUT" "$@" || rc=$?
    fi
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "TIMEOUT: '$*' did not finish within ${KH_CMD_TIMEOUT}s" >&2
    fi
    return "$rc"
}

p11() { with_module pkcs11-tool --module "$KEYHOLD_MODULE" "$@"; }
kh() { with_module "$KEYHOLD_TOOL" "$@"; }

# p11_rejects <pkcs11-tool --verify args...>: C_Verify must refuse the
# signature with CKR_SIGNATURE_INVALID. pkcs11-tool 0.23 reports that as
# "Invalid signature" and may still exit 0, and any other error differently:
# the text is what counts, and a crash or timeout fails.
p11_rejects() {
    local out rc=0
    echo "   \$ ! pkcs11-tool $*"
    out="$(p11 "$@" 2>&1)" || rc=$?
    printf '%s\n' "$out" | sed 's/^/     | /'
    [ "$rc" -lt 124 ] || fail "pkcs11-tool crashed or timed out (exit $rc): $*"
    printf '%s\n' "$out" | has '^Invalid signature' ||
        fail "C_Verify did not report CKR_SIGNATURE_INVALID: pkcs11-tool $*"
}

# has <grep args>: like grep -q but reads all its input, so the writer of a
# pipe never dies of SIGPIPE (which pipefail would turn into a failure).
has() { grep "$@" >/dev/null; }

# Hex helpers (xxd is in the deps).
tohex() { xxd -p "$1" | tr -d '\n'; }
fromhex() { xxd -r -p; }

# digestinfo_sha256 <digest> <out>: the PKCS#1 v1.5 DigestInfo of a SHA-256
# digest (RFC 8017 9.2), built by openssl asn1parse.
digestinfo_sha256() {
    cat >"$2.cnf" <<EOF
asn1 = SEQUENCE:digestinfo
[digestinfo]
alg = SEQUENCE:alg
digest = FORMAT:HEX,OCTETSTRING:$(tohex "$1")
[alg]
oid = OID:sha256
params = NULL
EOF
    openssl asn1parse -genconf "$2.cnf" -out "$2" >/dev/null
}

# flip_byte <in> <out> [offset]: copy in to out with one byte inverted.
flip_byte() {
    local off="${3:-0}"
    cp "$1" "$2"
    local b
    b="$(xxd -p -s "$off" -l 1 "$1")"
    printf '%02x' $((0x$b ^ 0xff)) | xxd -r -p | dd of="$2" bs=1 seek="$off" conv=notrunc status=none
}

# der_len <n>: DER length octets (hex) for n content bytes.
der_len() {
    if [ "$1" -lt 128 ]; then printf '%02x' "$1"
    elif [ "$1" -lt 256 ]; then printf '81%02x' "$1"
    else printf '82%04x' "$1"; fi
}

# export_pubkey <token> <id-hex> <pin> <out.pem>: the public key of the key
# pair with CKA_ID id, as PEM, read by pkcs11-tool (never by keyhold) and
# decoded by openssl.
#
# `pkcs11-tool --read-object --type pubkey` is used where it works (DER for
# EC/RSA, PEM for Ed25519 on 0.23). For EC keys OpenSC 0.23 frees the curve
# name before it uses it (heap-use-after-free): P-384 fails with "cannot
# create EVP_PKEY", and under ASan every EC export aborts. EC keys are then
# rebuilt from the CKA_EC_PARAMS and CKA_EC_POINT that `pkcs11-tool -O`
# prints, as a SubjectPublicKeyInfo that openssl parses (and checks on the curve).
export_pubkey() {
    local token="$1" id="$2" pin="$3" out="$4" raw="$KH_TMP/export.raw" info
    # pkcs11-tool 0.23 -O ignores --id: keep the block of the public key with that ID.
    info="$(p11 --token-label "$token" --login --pin "$pin" --list-objects --type pubkey 2>/dev/null)" ||
        fail "pkcs11-tool cannot list the public keys"
    info="$(printf '%s\n' "$info" | awk -v id="$id" '
        /^[A-Z][A-Za-z ]* Object;/ { if (found) exit; block = $0; next }
        { block = block "\n" $0 }
        /^ *ID:/ { if (tolower($2) == tolower(id)) found = 1 }
        END { if (found) print block }')"
    [ -n "$info" ] || fail "pkcs11-tool -O shows no public key with ID $id"
    local is_ec=0
    case "$info" in "Public Key Object; EC "*) is_ec=1 ;; esac
    if [ "$is_ec" -eq 0 ] || [ -z "${KH_PRELOAD:-}" ]; then
        if p11 --token-label "$token" --login --pin "$pin" --read-object --type pubkey --id "$id" -o "$raw" >/dev/null 2>&1; then
            if head -c 10 "$raw" | grep -- '-----' >/dev/null; then
                cp "$raw" "$out"
            else
                openssl pkey -pubin -inform DER -in "$raw" -out "$out" ||
                    fail "openssl cannot read the public key pkcs11-tool exported (id $id)"
            fi
            echo "     public key $id: pkcs11-tool --read-object"
            return 0
        fi
        [ "$is_ec" -eq 1 ] || fail "pkcs11-tool --read-object --type pubkey --id $id failed"
    fi
    local point params bits
    point="$(printf '%s\n' "$info" | awk '/^ *EC_POINT:/ { print $2; exit }')"
    params="$(printf '%s\n' "$info" | awk '/^ *EC_PARAMS:/ { print $2; exit }')"
    [ -n "$point" ] && [ -n "$params" ] || fail "pkcs11-tool -O shows no EC_POINT/EC_PARAMS for $id"
    # CKA_EC_POINT is a DER OCTET STRING: 04 <len> <point>.
    [ "${point:0:2}" = 04 ] || fail "CKA_EC_POINT of $id is not a DER OCTET STRING: $point"
    case "${point:2:2}" in
    81) point="${point:6}" ;;
    82) point="${point:8}" ;;
    *) point="${point:4}" ;;
    esac
    local alg key spki
    alg="06072a8648ce3d0201$params"                       # id-ecPublicKey, curve
    alg="30$(der_len $((${#alg} / 2)))$alg"
    key="00$point"
    key="03$(der_len $((${#key} / 2)))$key"               # BIT STRING, no unused bits
    spki="$alg$key"
    spki="30$(der_len $((${#spki} / 2)))$spki"
    printf '%s' "$spki" | xxd -r -p >"$raw"
    openssl pkey -pubin -inform DER -in "$raw" -out "$out" ||
        fail "openssl rejects the EC public key built from pkcs11-tool -O for $id"
    echo "     public key $id: CKA_EC_PARAMS + CKA_EC_POINT from pkcs11-tool -O"
}

# first_uninit_slot: id (0x...) of the first slot whose token is not initialised.
first_uninit_slot() {
    p11 -L 2>/dev/null | awk '
        /^Slot [0-9]+ \(0x[0-9a-fA-F]+\)/ { match($0, /\(0x[0-9a-fA-F]+\)/); slot = substr($0, RSTART + 1, RLENGTH - 2) }
        /token state: *uninitialized/ { if (slot != "") { print slot; exit } }'
}

# p11_init_token <label> <so-pin> <pin>: initialise a token through pkcs11-tool
# (C_InitToken on the free slot, then C_InitPIN as SO).
p11_init_token() {
    local label="$1" so="$2" pin="$3" slot
    slot="$(first_uninit_slot)"
    [ -n "$slot" ] || { p11 -L >&2 || true; fail "no uninitialised slot to create token '$label' in"; }
    run p11 --slot "$slot" --init-token --label "$label" --so-pin "$so"
    run p11 --token-label "$label" --init-pin --login --so-pin "$so" --pin "$pin"
}

# js_setup: make sure the JS verifiers' node_modules exist (npm ci into a
# cache dir under the build dir, once, under a lock since tests run in parallel).
js_setup() {
    : "${KH_JS_DIR:?}" "${KH_JS_CACHE:?}"
    command -v node >/dev/null || fail "node is not installed (tools/install-deps.sh)"
    command -v npm >/dev/null || fail "npm is not installed (tools/install-deps.sh)"
    mkdir -p "$KH_JS_CACHE"
    (
        flock 9
        if [ ! -d "$KH_JS_CACHE/node_modules/@noble/curves" ] ||
           ! cmp -s "$KH_JS_DIR/package-lock.json" "$KH_JS_CACHE/package-lock.json"; then
            echo "   installing JS verifiers: npm ci in $KH_JS_CACHE"
            cp "$KH_JS_DIR/package.json" "$KH_JS_DIR/package-lock.json" "$KH_JS_CACHE/"
            (cd "$KH_JS_CACHE" && HOME="$KH_REAL_HOME" npm ci --no-audit --no-fund --loglevel=error) ||
                { rm -f "$KH_JS_CACHE/package-lock.json"; exit 1; }
        fi
    ) 9>"$KH_JS_CACHE/.lock" || fail "npm ci failed"
    export NODE_PATH="$KH_JS_CACHE/node_modules"
}

# js <subcommand> <args...>: run the independent verifier (tests/integration/js/verify.cjs).
js() { node "$KH_JS_DIR/verify.cjs" "$@"; }
