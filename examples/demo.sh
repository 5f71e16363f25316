#!/usr/bin/env bash
# Builds memtrace and the bundled leaking example, then runs one under the other.
#   bash examples/demo.sh            # the simple leak (fixtures/leak.c)
#   bash examples/demo.sh threads    # any fixture name: fixtures/NAME.c or NAME.cc
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
name=${1:-leak}
out="$top/target/demo"
mkdir -p "$out"
cargo build --release --quiet --manifest-path "$top/Cargo.toml"
if [ -f "$top/fixtures/$name.cc" ]; then
    c++ -std=c++17 -g -O0 -pthread -I"$top/fixtures" -o "$out/$name" "$top/fixtures/$name.cc"
else
    cc -g -O0 -pthread -I"$top/fixtures" -o "$out/$name" "$top/fixtures/$name.c" -ldl
fi
echo "\$ memtrace launch --no-tui --json $out/$name.json -- $out/$name"
exec "$top/target/release/memtrace" launch --no-tui --json "$out/$name.json" -- "$out/$name"
