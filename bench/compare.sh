#!/usr/bin/env bash
# Runs rpcenv's own bench and the anchors (../shared/anchors: Spark's NettyRpcEnv on the JVM, the
# hand-written TCP floor, tonic, tarpc) back to back, in one run on one machine, and prints a
# table of ratios rpcenv / anchor per workload: throughput (higher is better), p50 latency and
# peak RSS (lower is better).
#
#   bench/compare.sh                    # everything: rpcenv, spark-jvm, floor, tonic, tarpc
#   bench/compare.sh W1 W4              # a subset of the workloads
#   ANCHORS="floor tarpc" bench/compare.sh   # a subset of the anchors (spark-jvm floor tonic tarpc ractor)
#   RESULTS=/tmp/x bench/compare.sh     # where to keep the raw JSON lines (default bench/results)
#
# Release builds only. Figures drift by tens of percent between runs on a shared machine: compare
# within one run (which is what this script does) and run it when the machine is quiet.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_DIR:-$ROOT/../shared}"
[ -d "$SHARED/anchors" ] || SHARED="$ROOT/shared"
ANCHORS_DIR="$SHARED/anchors"
[ -d "$ANCHORS_DIR" ] || { echo "compare.sh: no anchors at $ANCHORS_DIR (set SHARED_DIR)" >&2; exit 2; }
ANCHORS="${ANCHORS:-spark-jvm floor tonic tarpc}"
RESULTS="${RESULTS:-$HERE/results}"
mkdir -p "$RESULTS"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
raw="$RESULTS/compare-$stamp.jsonl"
: > "$raw"

workloads=("$@")
echo "[compare] load before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" >&2

# 1. rpcenv (build first, so no build runs while anything is measured).
(cd "$ROOT" && cargo build --release -p rpcenv-cli >&2)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
rust_peers=()
for a in $ANCHORS; do
  case "$a" in floor|tonic|tarpc|ractor) rust_peers+=("$a") ;; esac
done
if [ ${#rust_peers[@]} -gt 0 ]; then
  # Build the Rust anchors before measuring anything (run.sh builds only if needed).
  RP_WORKLOADS=none "$ANCHORS_DIR/rust-peers/run.sh" "${rust_peers[@]}" >/dev/null 2>&1 || true
fi

# The round trip of a cache line between the two cores, before each system and at the end: the
# host moves it between about 55 and 340 ns, and throughput with it (`rpcenv bench --core-rtt`).
probe() {
  "$TARGET/release/rpcenv" bench --core-rtt | python3 -c '
import json, sys
row = json.loads(sys.stdin.read()); row["before"] = sys.argv[1]; print(json.dumps(row))' "$1" | tee -a "$raw" >&2
}

probe rpcenv
echo "[compare] rpcenv" >&2
"$TARGET/release/rpcenv" bench "${workloads[@]}" | tee -a "$raw"

# 2. the anchors, back to back.
for a in $ANCHORS; do
  probe "$a"
  echo "[compare] $a" >&2
  case "$a" in
    spark-jvm) "$ANCHORS_DIR/spark-jvm/run.sh" "${workloads[@]}" | tee -a "$raw" || echo "[compare] spark-jvm failed" >&2 ;;
    floor|tonic|tarpc|ractor)
      RP_WORKLOADS="${workloads[*]}" "$ANCHORS_DIR/rust-peers/run.sh" "$a" | tee -a "$raw" || echo "[compare] $a failed" >&2 ;;
    *) echo "[compare] unknown anchor $a" >&2 ;;
  esac
done
probe end
echo "[compare] load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# 3. the tables.
python3 "$HERE/ratios.py" "$raw" | tee "$RESULTS/latest.md"
echo "[compare] raw lines: $raw; table: $RESULTS/latest.md" >&2
