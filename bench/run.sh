#!/usr/bin/env bash
# The benchmark (not a test): what tracing costs, memtrace side by side with
# valgrind (memcheck), heaptrack and ltrace, in one run.
#
#   bench/run.sh              # a few minutes
#   RUNS=5 bench/run.sh       # more repetitions per measurement (the median is shown)
#   SKIP_PROGRAMS=1 bench/run.sh   # the churn tables only
#   SKIP_CHURN=1 bench/run.sh      # the real programs only
#
# 1. churn (fixtures/churn.c, -O2): a malloc/free churn, with 1 and with 4 threads,
#    natively, under memtrace recording inline (the default) and with --stops (a
#    ptrace stop per call), valgrind, heaptrack and ltrace. Each tool gets an
#    iteration count that keeps it to a few seconds; results are per allocator call:
#
#      calls per run = 2 * ITERATIONS + 64 * THREADS  (one free and one malloc per
#                      iteration, then the ring of 64 blocks per thread is freed; the
#                      first 64 frees per thread are free(NULL), intercepted all the same)
#      ns/call       = wall time / calls
#      extra ns/call = ns/call - native ns/call   (what the tool adds to each call)
#      slowdown      = ns/call / native ns/call
#
# 2. real programs, each with a workload of its own that allocates: perl building a
#    100,000-entry hash, sqlite3 inserting 100,000 rows into an in-memory table and
#    indexing them, python3 building and parsing a large JSON document, sort with a
#    64 KiB buffer (GNU sort allocates little: its buffers; this is its busiest
#    setting), and git showing the patches of this repository's history. Natively,
#    under memtrace (both modes), valgrind and heaptrack: the slowdown against native,
#    the allocator calls memtrace counted, and whether the two modes' totals are equal
#    (they must be). Hash seeds are fixed so that every run allocates the same.
#
# Missing tools are installed with apt-get when running as root; a tool that still
# cannot be found is skipped with a note. hyperfine is used when present.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/bench
mkdir -p "$OUT"

RUNS=${RUNS:-3}
# --stops runs of the real programs take tens of seconds each: fewer of them.
SLOW_RUNS=${SLOW_RUNS:-1}
NATIVE_ITERATIONS=${NATIVE_ITERATIONS:-3000000}
MEMTRACE_ITERATIONS=${MEMTRACE_ITERATIONS:-1000000}
STOPS_ITERATIONS=${STOPS_ITERATIONS:-100000}
VALGRIND_ITERATIONS=${VALGRIND_ITERATIONS:-1000000}
HEAPTRACK_ITERATIONS=${HEAPTRACK_ITERATIONS:-1000000}
LTRACE_ITERATIONS=${LTRACE_ITERATIONS:-2000}
THREAD_VARIANTS=${THREAD_VARIANTS:-"1 4"}

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
# median_seconds RUNS COMMAND... : the median wall time of RUNS runs, in seconds, or
# "failed" when the command exits non-zero. Standard input is /dev/null unless
# STDIN_FILE names a file.
STDIN_FILE=/dev/null
median_seconds() {
    local runs=$1
    shift
    if [ "$HAVE_HYPERFINE" -eq 1 ] && [ "$STDIN_FILE" = /dev/null ]; then
        local json=$OUT/hyperfine.json
        if ! hyperfine --style none --runs "$runs" --export-json "$json" \
            --command-name run -- "$(printf '%q ' "$@")" >/dev/null 2>&1; then
            echo failed
            return
        fi
        sed -n 's/.*"median": *\([0-9.e+-]*\).*/\1/p' "$json" | head -n 1
        return
    fi
    local times=() start end i
    for ((i = 0; i < runs; i++)); do
        start=$(date +%s%N)
        if ! "$@" >/dev/null 2>&1 <"$STDIN_FILE"; then
            echo failed
            return
        fi
        end=$(date +%s%N)
        times+=("$((end - start))")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{ t[NR] = $1 } END { printf "%.6f\n", t[int((NR + 1) / 2)] / 1e9 }'
}

# json_field FILE KEY: the first number after "KEY": in a JSON file.
json_field() { # FILE NAME: the first field NAME (totals and stats come before the leaks)
    tr -d ' \n' <"$1" | grep -o "\"$2\":[0-9]*" | head -n 1 | cut -d: -f2
}

# totals FILE: the report's totals, as one comparable line.
totals() {
    tr -d ' \n' <"$1" | sed -n 's/.*"totals":{\([^}]*\)}.*/\1/p' | sed 's/"peak_live_bytes":[0-9]*,\{0,1\}//'
}

SUMMARY=()

# --- 1. churn ---------------------------------------------------------------------
calls_for() { # iterations threads
    echo $((2 * $1 + 64 * $2))
}

ROWS=()
NATIVE_NS=""
measure() { # NAME ITERATIONS THREADS RUNS COMMAND... (the workload's arguments are appended)
    local name=$1 iterations=$2 threads=$3 runs=$4
    shift 4
    note "  $name: $iterations iterations ..."
    local seconds calls
    seconds=$(median_seconds "$runs" "$@" "$CHURN" "$iterations" "$threads")
    calls=$(calls_for "$iterations" "$threads")
    if [ "$seconds" = failed ]; then
        ROWS+=("$(printf '%-22s %11s %10s %10s %12s %14s %10s' "$name" "$iterations" "$calls" failed - - -)")
        return
    fi
    local ns
    ns=$(awk -v s="$seconds" -v c="$calls" 'BEGIN { printf "%.1f", s * 1e9 / c }')
    if [ -z "$NATIVE_NS" ]; then NATIVE_NS=$ns; fi
    local extra slowdown
    extra=$(awk -v n="$ns" -v b="$NATIVE_NS" 'BEGIN { printf "%.1f", n - b }')
    slowdown=$(awk -v n="$ns" -v b="$NATIVE_NS" 'BEGIN { printf "%.1fx", n / b }')
    ROWS+=("$(printf '%-22s %11s %10s %10.3f %12s %14s %10s' "$name" "$iterations" "$calls" "$seconds" "$ns" "$extra" "$slowdown")")
    eval "NS_${name//[^a-zA-Z0-9]/_}=$ns"
}

print_table() { # title
    printf '\n%s\n' "$1"
    printf '%-22s %11s %10s %10s %12s %14s %10s\n' tool iterations calls 'time (s)' 'ns/call' 'extra ns/call' slowdown
    printf '%s\n' "${ROWS[@]}"
}

if [ -z "${SKIP_CHURN:-}" ]; then
    for threads in $THREAD_VARIANTS; do
        note "churn with $threads thread(s):"
        ROWS=()
        NATIVE_NS=""
        NS_memtrace="" NS_valgrind__memcheck_="" NS_heaptrack=""
        measure native "$NATIVE_ITERATIONS" "$threads" "$RUNS"
        measure memtrace "$MEMTRACE_ITERATIONS" "$threads" "$RUNS" \
            "$MEMTRACE" launch --no-tui --json "$OUT/memtrace-$threads.json" --
        measure "memtrace --stops" "$STOPS_ITERATIONS" "$threads" "$RUNS" \
            "$MEMTRACE" launch --no-tui --stops --
        if [ "$HAVE_VALGRIND" -eq 1 ]; then
            measure "valgrind (memcheck)" "$VALGRIND_ITERATIONS" "$threads" "$RUNS" \
                "$VALGRIND" --tool=memcheck --leak-check=full -q --log-file=/dev/null
        fi
        if [ "$HAVE_HEAPTRACK" -eq 1 ]; then
            measure heaptrack "$HEAPTRACK_ITERATIONS" "$threads" "$RUNS" heaptrack -o "$OUT/heaptrack-$threads"
        fi
        if [ "$HAVE_LTRACE" -eq 1 ]; then
            measure ltrace "$LTRACE_ITERATIONS" "$threads" "$RUNS" ltrace -f -o /dev/null -e malloc+free
        fi
        print_table "churn, $threads thread(s): $RUNS runs each, median"
        if [ -f "$OUT/memtrace-$threads.json" ]; then
            json=$OUT/memtrace-$threads.json
            printf 'memtrace: %s allocs, %s frees counted; the program waited for room in the ring %s times (%s ms)\n' \
                "$(json_field "$json" allocs)" "$(json_field "$json" frees)" \
                "$(json_field "$json" ring_waits)" "$(($(json_field "$json" ring_wait_ns) / 1000000))"
        fi
        if [ -n "${NS_memtrace:-}" ]; then
            SUMMARY+=("$(awk -v m="$NS_memtrace" -v n="$NATIVE_NS" -v v="${NS_valgrind__memcheck_:-}" \
                -v h="${NS_heaptrack:-}" -v t="$threads" 'BEGIN {
                printf "churn, %d thread(s): memtrace adds %.0f ns per call (target <= 1000)", t, m - n
                if (v != "") printf "; valgrind adds %.0f", v - n
                if (h != "") printf "; heaptrack adds %.0f", h - n
            }')")
        fi
    done
fi

# --- 2. real programs ----------------------------------------------------------------
if [ -z "${SKIP_PROGRAMS:-}" ]; then
    note "real programs:"
    W=$OUT/workloads
    mkdir -p "$W"
    cat >"$W/hash.pl" <<'EOF'
my %h;
for my $i (1 .. 100000) { $h{"key$i"} = [ $i, "value $i" ]; }
my $n = 0;
for my $k (keys %h) { $n += length($h{$k}[1]); }
print "$n\n";
EOF
    cat >"$W/inserts.sql" <<'EOF'
CREATE TABLE t(a INTEGER, b TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000)
INSERT INTO t SELECT x, printf('%08d-%s', (x * 7919) % 100003, hex(x)) FROM c;
CREATE INDEX tb ON t(b);
SELECT count(*), sum(length(b)) FROM t;
EOF
    # 300,000 lines of five words each, the same every time.
    awk 'BEGIN { srand(7); for (i = 0; i < 300000; i++) {
        line = ""; for (j = 0; j < 5; j++) line = line sprintf(" w%05d", int(rand() * 20000));
        print substr(line, 2) } }' >"$W/lines.txt"
    PYTHON=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)
    export PERL_HASH_SEED=0 PERL_PERTURB_KEYS=0 PYTHONHASHSEED=0
    PROGRAMS=()
    command -v perl >/dev/null 2>&1 && PROGRAMS+=(perl)
    ensure_tool sqlite3 sqlite3 && PROGRAMS+=(sqlite3)
    [ -n "$PYTHON" ] && PROGRAMS+=(python3)
    command -v sort >/dev/null 2>&1 && PROGRAMS+=(sort)
    command -v git >/dev/null 2>&1 && git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1 && PROGRAMS+=(git)
    PY_CODE="import json; d=[{'k%d' % i: 'x' * 600, 'n': list(range(20))} for i in range(60000)]; print(len(json.loads(json.dumps(d))))"
    program() { # NAME: sets CMD (an array) and STDIN_FILE for that workload
        STDIN_FILE=/dev/null
        case $1 in
        perl) CMD=(perl "$W/hash.pl") ;;
        sqlite3) CMD=(sqlite3 :memory:); STDIN_FILE=$W/inserts.sql ;;
        python3) CMD=("$PYTHON" -c "$PY_CODE") ;;
        sort) CMD=(sort -S 64K "$W/lines.txt") ;;
        git) CMD=(git -C "$ROOT" log -p --stat) ;;
        esac
    }
    PROWS=()
    for name in "${PROGRAMS[@]}"; do
        program "$name"
        note "  $name ..."
        native=$(median_seconds "$RUNS" "${CMD[@]}")
        inline=$(median_seconds "$RUNS" "$MEMTRACE" launch --no-tui --json "$OUT/$name-inline.json" -- "${CMD[@]}")
        stops=$(median_seconds "$SLOW_RUNS" "$MEMTRACE" launch --no-tui --stops --json "$OUT/$name-stops.json" -- "${CMD[@]}")
        vg=-
        [ "$HAVE_VALGRIND" -eq 1 ] && vg=$(median_seconds "$SLOW_RUNS" "$VALGRIND" --tool=memcheck --leak-check=full -q --log-file=/dev/null "${CMD[@]}")
        ht=-
        [ "$HAVE_HEAPTRACK" -eq 1 ] && ht=$(median_seconds "$RUNS" heaptrack -o "$OUT/heaptrack-$name" "${CMD[@]}")
        ratio() { awk -v t="$1" -v n="$native" 'BEGIN { if (t == "-" || t == "failed") print t; else printf "%.1fx", t / n }'; }
        calls=$(json_field "$OUT/$name-inline.json" calls)
        same=no
        [ "$(totals "$OUT/$name-inline.json")" = "$(totals "$OUT/$name-stops.json")" ] && same=yes
        PROWS+=("$(printf '%-8s %9s %10s %9s %9s %9s %9s %10s %8s' "$name" "${calls:-?}" "$native" \
            "$(ratio "$inline")" "$(ratio "$stops")" "$(ratio "$vg")" "$(ratio "$ht")" \
            "$(json_field "$OUT/$name-inline.json" stacks_unwound)" "$same")")
    done
    printf '\nreal programs: slowdown against native (%s runs each, median; --stops and valgrind %s)\n' "$RUNS" "$SLOW_RUNS"
    printf '%-8s %9s %10s %9s %9s %9s %9s %10s %8s\n' program calls 'native s' memtrace '--stops' valgrind heaptrack unwound 'totals='
    printf '%s\n' "${PROWS[@]}"
    printf '(calls: allocator calls memtrace recorded; unwound: stacks it unwound; totals=: inline and --stops totals equal)\n'
fi

printf '\n'
printf '%s\n' "${SUMMARY[@]}"
[ "$HAVE_HYPERFINE" -eq 1 ] || note "(timed with date +%s%N; install hyperfine for its statistics)"
