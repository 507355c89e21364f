#!/usr/bin/env bash
# Run every keyhold test: a normal build (build/) and a sanitizer build
# (build-asan/: address + undefined), `meson test` on both, then one line per
# test and, last, the totals: `N passed, N failed` (`, N skipped` if any).
# Each meson test of each build counts once; a build that does not compile
# counts as one failure. Exits non-zero when anything failed.
#
# Usage: tests/run-all.sh [extra `meson test` arguments, e.g. --suite unit]
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

jobs="$(nproc 2>/dev/null || echo 2)"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

# record <build> <result> <name> [duration]
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$results"; }

# run_build <dir> <meson test extra args...> -- <meson setup options...>
run_build() {
    local dir="$1"
    shift
    local test_args=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do test_args+=("$1"); shift; done
    [ "$#" -gt 0 ] && shift
    local setup_opts=("$@")

    echo
    echo "==== $dir: configure (${setup_opts[*]:-defaults})"
    if [ -f "$dir/build.ninja" ]; then
        if [ "${#setup_opts[@]}" -gt 0 ]; then
            meson configure "$dir" "${setup_opts[@]}" || { record "$dir" FAIL "configure"; return; }
        fi
    else
        meson setup "$dir" "${setup_opts[@]}" || { record "$dir" FAIL "configure"; return; }
    fi

    echo "==== $dir: build"
    ninja -C "$dir" || { record "$dir" FAIL "compile"; return; }

    echo "==== $dir: meson test"
    local log="$dir/meson-logs/testlog.json" rc=0
    rm -f "$log"
    meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes "$jobs" \
        "${test_args[@]}" "${MESON_TEST_ARGS[@]}" || rc=$?
    if [ ! -s "$log" ]; then
        record "$dir" FAIL "meson test (exit $rc, no $log)"
        return
    fi
    local before
    before="$(grep -c -P '\tFAIL\t' "$results" || true)"
    python3 - "$dir" "$log" >>"$results" <<'EOF'
import json, sys
build, log = sys.argv[1], sys.argv[2]
with open(log, encoding="utf-8", errors="replace") as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        t = json.loads(line)
        res = t.get("result", "ERROR")
        kind = {"OK": "PASS", "EXPECTEDFAIL": "PASS", "SKIP": "SKIP"}.get(res, "FAIL")
        name = t.get("name", "?")
        # "keyhold:integration / cli" -> "integration/cli"
        name = name.split(":", 1)[-1].replace(" / ", "/")
        if kind == "FAIL" and res != "FAIL":
            name += " (" + res + ")"
        print("%s\t%s\t%s\t%.1fs" % (build, kind, name, float(t.get("duration") or 0)))
EOF
    local after
    after="$(grep -c -P '\tFAIL\t' "$results" || true)"
    if [ "$rc" -ne 0 ] && [ "$after" -eq "$before" ]; then
        record "$dir" FAIL "meson test exited $rc with no failing test"
    fi
}

MESON_TEST_ARGS=("$@")

run_build build --

# Sanitizer build: halt on the first error, ASan and UBSan alike. The
# integration tests preload the ASan runtime into uninstrumented consumers
# (pkcs11-tool, openssl, ...) themselves (tests/integration/lib.sh).
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:print_summary=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1"
run_build build-asan --timeout-multiplier 3 -- \
    -Db_sanitize=address,undefined -Db_lundef=false
unset ASAN_OPTIONS UBSAN_OPTIONS

echo
echo "==== results"
passed=0 failed=0 skipped=0
while IFS=$'\t' read -r build kind name dur; do
    printf '%-4s  %-10s  %s%s\n' "$kind" "$build" "$name" "${dur:+  $dur}"
    case "$kind" in
    PASS) passed=$((passed + 1)) ;;
    SKIP) skipped=$((skipped + 1)) ;;
    *) failed=$((failed + 1)) ;;
    esac
done <"$results"

summary="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && summary="$summary, $skipped skipped"
echo "$summary"
[ "$failed" -eq 0 ]
