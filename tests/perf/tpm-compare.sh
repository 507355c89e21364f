#!/usr/bin/env bash
# Benchmark (not a test; `meson test -C build --benchmark tpm-compare -v`):
# warm-key P-256 signatures per second and P-256 key generations per second,
# keyhold against tpm2-pkcs11 (Debian's libtpm2-pkcs11-1), on one swtpm in
# one run, through the same standard Cryptoki calls (kh-tpm-bench).
#
# Both talk to swtpm directly (TCP, as TPM2_PKCS11_TCTI=swtpm:port=N) with
# their keys under the same persistent primary at 0x81000001. tpm2-pkcs11
# keeps every key it makes loaded, so without a resource manager it makes
# one key per process: its keygen figure here is one key per process
# (averaged over KH_BENCH_PROCS processes, start-up excluded), and, when
# tpm2-abrmd is installed, both modules' keygen is also measured through it
# (a resource manager, as tpm2-pkcs11 expects). Timings are printed only.
#
# Env: KH_TPM_BENCH (kh-tpm-bench), KEYHOLD_MODULE, KEYHOLD_TOOL;
#      KH_BENCH_SIGNS (3000), KH_BENCH_KEYS (20), KH_BENCH_RUNS (3),
#      KH_BENCH_PROCS (10), KH_SWTPM_TRANSPORT (tcp).
set -euo pipefail
. "$(dirname "$0")/../integration/lib.sh"
export KH_SWTPM_TRANSPORT="${KH_SWTPM_TRANSPORT:-tcp}"
. "$(dirname "$0")/../integration/swtpm.sh"

: "${KH_TPM_BENCH:?KH_TPM_BENCH must name kh-tpm-bench}"
TPM2P11=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
[ -f "$TPM2P11" ] || fail "tpm2-pkcs11 is not installed (libtpm2-pkcs11-1)"
command -v tpm2_ptool >/dev/null || fail "tpm2_ptool is not installed (libtpm2-pkcs11-tools)"
SIGNS="${KH_BENCH_SIGNS:-3000}" KEYS="${KH_BENCH_KEYS:-20}" RUNS="${KH_BENCH_RUNS:-3}" PROCS="${KH_BENCH_PROCS:-10}"
T="$KH_TMP"
PIN=123456
SO=12345678

swtpm_start
run kh tpm setup
echo "swtpm at $(swtpm_tcti); keys under 0x81000001"

say "keyhold: a token whose keys go to the TPM"
printf 'default_backend = tpm\n' >"$T/kh.conf"
KEYHOLD_CONF="$T/kh.conf" KEYHOLD_SO_PIN="$SO" KEYHOLD_PIN="$PIN" run kh init --label khbench

say "tpm2-pkcs11: tpm2_ptool init/addtoken (tools flushed after each call: no resource manager)"
mkdir -p "$T/p11store" "$T/wrap"
for t in /usr/bin/tpm2_*; do
    n="$(basename "$t")"
    [ "$n" = tpm2_flushcontext ] && continue
    printf '#!/bin/sh\n"%s" "$@"\nrc=$?\n/usr/bin/tpm2_flushcontext -t >/dev/null 2>&1\n/usr/bin/tpm2_flushcontext -s >/dev/null 2>&1\nexit $rc\n' \
        "$t" >"$T/wrap/$n"
    chmod +x "$T/wrap/$n"
done
export TPM2_PKCS11_STORE="$T/p11store" TPM2_PKCS11_TCTI="$(swtpm_tcti)"
PATH="$T/wrap:$PATH" run tpm2_ptool init --primary-handle=0x81000001 --path "$T/p11store"
PATH="$T/wrap:$PATH" run tpm2_ptool addtoken --pid=1 --sopin="$SO" --userpin="$PIN" --label=p11bench --path "$T/p11store"
tpm2_flushcontext -t

# bench <label> <module> <token> <signs> <keys> [env...]: the two figures.
bench() {
    local label="$1" module="$2" token="$3" signs="$4" keys="$5" out
    shift 5
    out="$(env "$@" "$KH_TPM_BENCH" "$module" "$token" "$PIN" "$signs" "$keys" 2>&1)" ||
        { echo "$out"; fail "$label: bench failed"; }
    tpm2_flushcontext -t
    echo "$out" | sed "s/^/   $label: /"
    echo "$out" | awk -v l="$label" '/^keygen/ { k = $(NF-1) } /^sign/ { s = $(NF-1) } END { print l, s, k }' >>"$T/figures"
}

: >"$T/figures"
for r in $(seq 1 "$RUNS"); do
    say "run $r of $RUNS"
    bench keyhold "$KEYHOLD_MODULE" khbench "$SIGNS" "$KEYS"
    bench tpm2-pkcs11 "$TPM2P11" p11bench "$SIGNS" 1
done
# tpm2-pkcs11 one key per process (it cannot make a second without a resource manager)
: >"$T/p11keys"
for i in $(seq 1 "$PROCS"); do
    out="$("$KH_TPM_BENCH" "$TPM2P11" p11bench "$PIN" 1 1 2>&1)" || { echo "$out"; fail "tpm2-pkcs11 keygen"; }
    tpm2_flushcontext -t
    echo "$out" | awk '/^keygen/ { print $(NF-1) }' >>"$T/p11keys"
done

say "summary (medians of $RUNS runs; swtpm over TCP, no resource manager)"
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for l in keyhold tpm2-pkcs11; do
    s="$(awk -v l="$l" '$1 == l { print $2 }' "$T/figures" | median)"
    k="$(awk -v l="$l" '$1 == l { print $3 }' "$T/figures" | median)"
    echo "   $l: sign $s ops/s (warm P-256 key, CKM_ECDSA), keygen $k keys/s"
done
echo "   tpm2-pkcs11 keygen, one key per process over $PROCS processes: median $(median <"$T/p11keys") keys/s"

if command -v tpm2-abrmd >/dev/null && command -v dbus-daemon >/dev/null; then
    say "through tpm2-abrmd (a resource manager): $KEYS keys each"
    dbus-daemon --session --fork --nopidfile --print-address=3 --print-pid=4 3>"$T/bus.addr" 4>"$T/bus.pid"
    export DBUS_SESSION_BUS_ADDRESS="$(head -1 "$T/bus.addr")"
    args=(--session --tcti="$(swtpm_tcti)")
    [ "$(id -u)" -ne 0 ] || args+=(--allow-root)
    tpm2-abrmd "${args[@]}" >"$T/abrmd.log" 2>&1 &
    ABRMD=$!
    for i in $(seq 1 100); do TPM2TOOLS_TCTI=tabrmd:bus_type=session tpm2_getrandom 4 >/dev/null 2>&1 && break; sleep 0.1; done
    bench keyhold+abrmd "$KEYHOLD_MODULE" khbench 1000 "$KEYS" KEYHOLD_TCTI=tabrmd:bus_type=session
    # tabrmd holds at most 27 objects per connection: tpm2-pkcs11 keeps them all
    bench tpm2-pkcs11+abrmd "$TPM2P11" p11bench 1000 10 TPM2_PKCS11_TCTI=tabrmd:bus_type=session
    kill "$ABRMD" 2>/dev/null || true
    wait "$ABRMD" 2>/dev/null || true
    kill "$(head -1 "$T/bus.pid")" 2>/dev/null || true
fi
ok "figures printed"
