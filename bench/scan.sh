#!/usr/bin/env bash
# The reachability scan's speed (not a test): how long classifying a large heap
# takes, from memtrace's own measure (the `scan` field of its JSON report).
#
#   bench/scan.sh                  # 1024 MiB of live 4 KiB list nodes, then perl
#   MIB=256 bench/scan.sh          # another heap size
#   MIB=64 NODE=64 bench/scan.sh   # a heap dense with pointers (1M blocks)
#   PERL_KEYS=300000 bench/scan.sh # a bigger perl heap
#   SKIP_PERL=1 bench/scan.sh      # bigheap only
#
# Two heaps. bigheap (fixtures/bigheap.c, -O2): MIB MiB of nodes with one pointer
# each (tracing the 262,144 mallocs of a GiB takes a few seconds; the scan is made at
# exit). perl, ending with a hash of PERL_KEYS array refs: a real heap of a few
# thousand blocks, most of them perl's arenas, where nearly every other word is a
# pointer, most of them into the middle of a block (an SV's body in its arena). That
# second one is what the scan's cost per pointer shows on. For comparison it also
# times valgrind's whole run of bigheap, when SKIP_VALGRIND is not set.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/bench
mkdir -p "$OUT"
MIB=${MIB:-1024}
NODE=${NODE:-4096}
PERL_KEYS=${PERL_KEYS:-100000}

cargo build --release --quiet
cc -O2 -g -Ifixtures -o "$OUT/bigheap" fixtures/bigheap.c

# Runs memtrace on the command given, then prints what the scan read and how fast.
scan() {
    local json=$OUT/scan.json start end
    start=$(date +%s.%N)
    "$ROOT/target/release/memtrace" launch --no-tui --json "$json" -- "$@" \
        2>"$OUT/scan.stderr" >/dev/null
    end=$(date +%s.%N)
    python3 - "$json" "$start" "$end" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
scan = report["scan"]
kinds = {}
for leak in report["leaks"]:
    k = kinds.setdefault(leak["kind"], [0, 0])
    k[0] += leak["blocks"]
    k[1] += leak["bytes"]
ms = scan["ns"] / 1e6
mib = scan["bytes_scanned"] / (1 << 20)
print(f"live blocks        {scan['blocks']:,}")
print(f"bytes scanned      {scan['bytes_scanned']:,} ({mib:,.0f} MiB: roots {scan['roots_bytes']:,}, blocks {scan['block_bytes']:,})")
print(f"scan time          {ms:,.0f} ms ({mib / (ms / 1000):,.0f} MiB/s)")
print(f"whole trace        {float(sys.argv[3]) - float(sys.argv[2]):.1f} s")
for kind, (blocks, nbytes) in sorted(kinds.items()):
    print(f"  {kind:<12} {nbytes:>14,} bytes in {blocks:,} blocks")
PY
}

echo "bigheap $MIB MiB of $NODE-byte nodes:"
scan "$OUT/bigheap" "$MIB" "$NODE"

if [ -z "${SKIP_PERL:-}" ] && command -v perl >/dev/null 2>&1; then
    echo
    echo "perl, a hash of $PERL_KEYS array refs left at exit:"
    scan perl -e 'my %h; $h{$_} = [$_] for 1..$ARGV[0]; print scalar(keys %h), "\n"' "$PERL_KEYS"
fi

if [ -z "${SKIP_VALGRIND:-}" ] && command -v valgrind >/dev/null 2>&1; then
    vg=valgrind
    [ -x /usr/bin/valgrind.bin ] && vg=/usr/bin/valgrind.bin
    start=$(date +%s.%N)
    "$vg" --leak-check=full --show-leak-kinds=all --run-libc-freeres=no \
        --run-cxx-freeres=no "$OUT/bigheap" "$MIB" "$NODE" 2>"$OUT/scan.valgrind" >/dev/null
    end=$(date +%s.%N)
    echo
    echo "valgrind on bigheap, whole run $(python3 -c "print(f'{$end - $start:.1f}')") s:"
    grep -E "definitely|indirectly|possibly|still reachable" "$OUT/scan.valgrind" | grep -v "loss record" || true
fi
