#!/usr/bin/env bash
# The benchmark (not a test): the cost of tracing a malloc/free churn workload.
#
#   bench/run.sh            # about a minute or two
#   RUNS=5 bench/run.sh     # more repetitions per measurement (the median is shown)
#
# Builds fixtures/churn.c (-O2) and memtrace (release), then times, side by side in
# one run: the workload natively, under memtrace, valgrind (memcheck), heaptrack and
# ltrace, with 1 thread and with 4 threads. Then the cost of full stacks: the same
# workload STACK_DEPTH calls deep under memtrace with every frame (the default
# --depth 32) and with --depth 1 (the caller only), and memtrace's own measure of the
# time it spent unwinding (trace.unwind_ns in its JSON report). Each tool gets an iteration count that
# keeps it to a few seconds (ltrace is very slow); results are per allocator call, so
# the counts do not need to match:
#
#   calls per run = 2 * ITERATIONS + 64 * THREADS  (one free and one malloc per
#                   iteration, then the ring of 64 blocks per thread is freed; the
#                   first 64 frees per thread are free(NULL), intercepted all the same)
#   ns/call       = wall time / calls
#   extra ns/call = ns/call - native ns/call   (what the tool adds to each call)
#   slowdown      = ns/call / native ns/call
#
# Missing tools are installed with apt-get when running as root; a tool that still
# cannot be found is skipped with a note. hyperfine is used when present.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/bench
mkdir -p "$OUT"

RUNS=${RUNS:-3}
NATIVE_ITERATIONS=${NATIVE_ITERATIONS:-3000000}
MEMTRACE_ITERATIONS=${MEMTRACE_ITERATIONS:-100000}
VALGRIND_ITERATIONS=${VALGRIND_ITERATIONS:-1000000}
HEAPTRACK_ITERATIONS=${HEAPTRACK_ITERATIONS:-1000000}
LTRACE_ITERATIONS=${LTRACE_ITERATIONS:-2000}
THREAD_VARIANTS=${THREAD_VARIANTS:-"1 4"}
# Extra frames below the allocator calls for the stack-capture comparison.
STACK_DEPTH=${STACK_DEPTH:-30}

note() { printf '%s\n' "$*" >&2; }

# --- tools ------------------------------------------------------------------------
APT_UPDATED=0
ensure_tool() { # command package
    local command=$1 package=$2
    if command -v "$command" >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" -ne 0 ]; then
        note "note: $command is missing and this is not root: skipping it"
        return 1
    fi
    note "installing $package ..."
    if [ "$APT_UPDATED" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1 || true
    if command -v "$command" >/dev/null 2>&1; then return 0; fi
    note "note: could not install $package: skipping $command"
    return 1
}

HAVE_VALGRIND=0 HAVE_HEAPTRACK=0 HAVE_LTRACE=0 HAVE_HYPERFINE=0
ensure_tool valgrind valgrind && HAVE_VALGRIND=1
ensure_tool heaptrack heaptrack && HAVE_HEAPTRACK=1
ensure_tool ltrace ltrace && HAVE_LTRACE=1
command -v hyperfine >/dev/null 2>&1 && HAVE_HYPERFINE=1
# Debian's valgrind is a wrapper script that changes the environment; run the tool.
VALGRIND=valgrind
[ -x /usr/bin/valgrind.bin ] && VALGRIND=/usr/bin/valgrind.bin

# --- build ------------------------------------------------------------------------
note "building memtrace (release) and the churn workload ..."
cargo build --release --quiet --bin memtrace
MEMTRACE=$ROOT/target/release/memtrace
CHURN=$OUT/churn
cc -O2 -g -pthread -Wall -o "$CHURN" fixtures/churn.c

# --- timing -----------------------------------------------------------------------
# median_seconds COMMAND... : the median wall time of $RUNS runs, in seconds, or
# "failed" when the command exits non-zero.
median_seconds() {
    if [ "$HAVE_HYPERFINE" -eq 1 ]; then
        local json=$OUT/hyperfine.json
        if ! hyperfine --style none --runs "$RUNS" --export-json "$json" \
            --command-name run -- "$(printf '%q ' "$@")" >/dev/null 2>&1; then
            echo failed
            return
        fi
        sed -n 's/.*"median": *\([0-9.e+-]*\).*/\1/p' "$json" | head -n 1
        return
    fi
    local times=() start end i
    for ((i = 0; i < RUNS; i++)); do
        start=$(date +%s%N)
        if ! "$@" >/dev/null 2>&1 </dev/null; then
            echo failed
            return
        fi
        end=$(date +%s%N)
        times+=("$((end - start))")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{ t[NR] = $1 } END { printf "%.6f\n", t[int((NR + 1) / 2)] / 1e9 }'
}

calls_for() { # iterations threads
    echo $((2 * $1 + 64 * $2))
}

ROWS=()
NATIVE_NS=""
# More arguments for the workload, after ITERATIONS and THREADS.
CHURN_EXTRA=""
# measure NAME ITERATIONS THREADS COMMAND... (the workload's arguments are appended)
measure() {
    local name=$1 iterations=$2 threads=$3
    shift 3
    note "  $name: $iterations iterations ..."
    local seconds calls
    seconds=$(median_seconds "$@" "$CHURN" "$iterations" "$threads" $CHURN_EXTRA)
    calls=$(calls_for "$iterations" "$threads")
    if [ "$seconds" = failed ]; then
        ROWS+=("$(printf '%-26s %11s %10s %10s %12s %14s %10s' "$name" "$iterations" "$calls" failed - - -)")
        return
    fi
    local ns
    ns=$(awk -v s="$seconds" -v c="$calls" 'BEGIN { printf "%.1f", s * 1e9 / c }')
    if [ -z "$NATIVE_NS" ]; then NATIVE_NS=$ns; fi
    local extra slowdown
    extra=$(awk -v n="$ns" -v b="$NATIVE_NS" 'BEGIN { printf "%.1f", n - b }')
    slowdown=$(awk -v n="$ns" -v b="$NATIVE_NS" 'BEGIN { printf "%.1fx", n / b }')
    ROWS+=("$(printf '%-26s %11s %10s %10.3f %12s %14s %10s' "$name" "$iterations" "$calls" "$seconds" "$ns" "$extra" "$slowdown")")
    eval "NS_${name//[^a-zA-Z0-9]/_}=$ns"
}

print_table() { # title
    printf '\n%s\n' "$1"
    printf '%-26s %11s %10s %10s %12s %14s %10s\n' tool iterations calls 'time (s)' 'ns/call' 'extra ns/call' slowdown
    printf '%s\n' "${ROWS[@]}"
}

SUMMARY=()
for threads in $THREAD_VARIANTS; do
    note "churn with $threads thread(s):"
    ROWS=()
    NATIVE_NS=""
    NS_memtrace="" NS_ltrace=""
    measure native "$NATIVE_ITERATIONS" "$threads"
    measure memtrace "$MEMTRACE_ITERATIONS" "$threads" \
        "$MEMTRACE" launch --no-tui --json "$OUT/memtrace-$threads.json" --
    # The tracer sleeping in waitpid between stops (no polling window): every stop
    # must wake it, often on the other CPU.
    measure "memtrace --poll-us 0" "$MEMTRACE_ITERATIONS" "$threads" \
        "$MEMTRACE" launch --no-tui --poll-us 0 --
    # Tracer and target on one CPU: a ptrace stop need not wake the other CPU.
    if command -v taskset >/dev/null 2>&1; then
        measure "memtrace (taskset -c 0)" "$MEMTRACE_ITERATIONS" "$threads" \
            taskset -c 0 "$MEMTRACE" launch --no-tui --
    fi
    if [ "$HAVE_VALGRIND" -eq 1 ]; then
        measure "valgrind (memcheck)" "$VALGRIND_ITERATIONS" "$threads" \
            "$VALGRIND" --tool=memcheck --leak-check=full -q --log-file=/dev/null
    fi
    if [ "$HAVE_HEAPTRACK" -eq 1 ]; then
        measure heaptrack "$HEAPTRACK_ITERATIONS" "$threads" heaptrack -o "$OUT/heaptrack-$threads"
    fi
    if [ "$HAVE_LTRACE" -eq 1 ]; then
        measure ltrace "$LTRACE_ITERATIONS" "$threads" ltrace -f -o /dev/null -e malloc+free
    fi
    print_table "churn, $threads thread(s): $RUNS runs each, median"

    # memtrace's own count of what it intercepted, as a cross-check of "calls".
    if [ -f "$OUT/memtrace-$threads.json" ]; then
        counted=$(tr -d ' \n' <"$OUT/memtrace-$threads.json" |
            sed -n 's/.*"totals":{"allocs":\([0-9]*\),"frees":\([0-9]*\).*/\1 \2/p')
        [ -n "$counted" ] && printf 'memtrace counted allocs, frees: %s (plus %s free(NULL) calls)\n' \
            "$counted" "$((64 * threads))"
    fi
    if [ -n "${NS_memtrace:-}" ]; then
        line=$(awk -v m="$NS_memtrace" -v n="$NATIVE_NS" -v l="${NS_ltrace:-}" -v t="$threads" 'BEGIN {
            extra = (m - n) / 1000
            printf "%d thread(s): memtrace adds %.2f us per intercepted call (target <= 20 us)", t, extra
            if (l != "") printf "; ltrace is %.1fx slower per call (target >= 10x)", l / m
        }')
        SUMMARY+=("$line")
    fi
done

# --- the cost of full stacks ---------------------------------------------------------
CHURN_EXTRA=$STACK_DEPTH
note "churn $STACK_DEPTH calls deep, 1 thread: full stacks against --depth 1"
ROWS=()
NATIVE_NS=""
measure native "$NATIVE_ITERATIONS" 1
measure "memtrace (full stacks)" "$MEMTRACE_ITERATIONS" 1 \
    "$MEMTRACE" launch --no-tui --json "$OUT/memtrace-deep.json" --
measure "memtrace --depth 1" "$MEMTRACE_ITERATIONS" 1 \
    "$MEMTRACE" launch --no-tui --depth 1 --json "$OUT/memtrace-depth1.json" --
print_table "churn $STACK_DEPTH calls deep, 1 thread: $RUNS runs each, median"
unwind_line() { # JSON
    tr -d ' \n' <"$1" | awk '{
        n = 0; f = 0; t = 0
        if (match($0, /"stacks_captured":[0-9]+/)) n = substr($0, RSTART + 18, RLENGTH - 18)
        if (match($0, /"frames_captured":[0-9]+/)) f = substr($0, RSTART + 18, RLENGTH - 18)
        if (match($0, /"unwind_ns":[0-9]+/)) t = substr($0, RSTART + 12, RLENGTH - 12)
        if (n > 0) printf "%d stacks, %.1f frames each, %.2f us unwinding each", n, f / n, t / n / 1000
    }'
}
for variant in deep depth1; do
    json=$OUT/memtrace-$variant.json
    [ -f "$json" ] && SUMMARY+=("stacks ($variant, from memtrace's report): $(unwind_line "$json")")
done
if [ -n "${NS_memtrace__full_stacks_:-}" ] && [ -n "${NS_memtrace___depth_1:-}" ]; then
    SUMMARY+=("$(awk -v a="$NS_memtrace__full_stacks_" -v b="$NS_memtrace___depth_1" -v d="$STACK_DEPTH" 'BEGIN {
        printf "full stacks %d calls deep cost %.2f us per call more than --depth 1 (wall clock)", d, (a - b) / 1000 }')")
fi

printf '\n'
printf '%s\n' "${SUMMARY[@]}"
[ "$HAVE_HYPERFINE" -eq 1 ] || note "(timed with date +%s%N; install hyperfine for its statistics)"
