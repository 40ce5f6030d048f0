#!/usr/bin/env bash
# CI smoke test of `rpcenv bench --quick`: it must complete and print seven valid JSON lines in the
# WORKLOADS.md format (one per workload W1-W7, "system":"rpcenv", each with cpu_us_per_op).
# Timings are not judged.
#
#   bash bench/smoke.sh            # debug build (what CI runs)
#   PROFILE=release bash bench/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${PROFILE:-debug}"
if [ "$PROFILE" = release ]; then cargo build --release -p rpcenv-cli; else cargo build -p rpcenv-cli; fi
TARGET="${CARGO_TARGET_DIR:-target}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
"$TARGET/$PROFILE/rpcenv" bench --quick | tee "$out"
python3 - "$out" <<'PY'
import json, sys

expected = ["ask_latency", "ask_throughput", "send_throughput", "ask_large", "local_send", "fan_in", "paced_ask"]
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
failures = []
if len(lines) != len(expected):
    failures.append(f"{len(lines)} lines, expected {len(expected)}")
keys = ["system", "workload", "payload_bytes", "ops", "secs", "ops_per_sec", "p50_us", "p99_us", "rss_kb", "cpu_us_per_op"]
for i, line in enumerate(lines):
    try:
        row = json.loads(line)
    except ValueError as e:
        failures.append(f"line {i + 1} is not JSON: {e}")
        continue
    name = expected[i] if i < len(expected) else "?"
    if list(row) != keys:
        failures.append(f"line {i + 1}: keys {list(row)}")
        continue
    latency = name in ("ask_latency", "ask_throughput", "ask_large", "fan_in", "paced_ask")
    ok = (
        row["system"] == "rpcenv"
        and row["workload"] == name
        and row["payload_bytes"] == (1 << 20 if name == "ask_large" else 16)
        and row["ops"] > 0 and row["secs"] > 0 and row["ops_per_sec"] > 0 and row["rss_kb"] > 0
        and isinstance(row["cpu_us_per_op"], (int, float)) and row["cpu_us_per_op"] >= 0
        and ((row["p50_us"] is not None and row["p99_us"] is not None) if latency
             else (row["p50_us"] is None and row["p99_us"] is None))
    )
    if not ok:
        failures.append(f"line {i + 1}: unexpected {row}")
for f in failures:
    print("bench smoke:", f)
passed = len(expected) - min(len(expected), len(failures))
print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
PY
