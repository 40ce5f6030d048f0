#!/usr/bin/env bash
# Runs two or more rpcenv builds (or settings) in alternation on the same workloads and prints
# the median of each figure per variant: the way to tell a change from the machine's drift.
# One run of each figure moves by tens of percent on a shared 2-core machine; alternating the
# variants round by round spreads that drift over all of them, and the median of several
# rounds is what a change is judged by (issue 15: "before/after binaries run alternately").
#
#   bench/alternate.sh W3 W5 -- before=/tmp/rpcenv-before after=target/release/rpcenv
#   ROUNDS=8 bench/alternate.sh W2 W6 -- \
#       io2=target/release/rpcenv 'io1=target/release/rpcenv --conf rpc.io.threads=1'
#
# Each variant is LABEL=COMMAND: an rpcenv binary, then arguments added after `bench WORKLOADS`
# (settings, say). ROUNDS (default 5) rounds run every variant once, in the order given. The raw
# lines, each with a "variant" field added, are kept in $RESULTS (default bench/results) as
# alternate-<UTC stamp>.jsonl. Nothing is built: name release binaries. Before and after each
# run the cores' round trip is probed (`rpcenv bench --core-rtt` of $PROBE, default the repo's
# release build); the larger is kept as "core_rtt_ns", and the table counts runs over 150 ns.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS="${ROUNDS:-5}"
RESULTS="${RESULTS:-$HERE/results}"
PROBE="${PROBE:-$HERE/../target/release/rpcenv}"

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

workloads=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  workloads+=("$1")
  shift
done
[ $# -gt 0 ] || usage
shift
[ ${#workloads[@]} -gt 0 ] && [ $# -ge 1 ] || usage
labels=()
commands=()
for v in "$@"; do
  case "$v" in
    *=*) labels+=("${v%%=*}"); commands+=("${v#*=}") ;;
    *) echo "alternate.sh: '$v' is not LABEL=COMMAND" >&2; usage ;;
  esac
done
for c in "${commands[@]}"; do
  read -r -a words <<< "$c"
  [ -x "${words[0]}" ] || { echo "alternate.sh: ${words[0]} is not an executable" >&2; exit 2; }
done

[ -x "$PROBE" ] || { echo "alternate.sh: $PROBE (the core round-trip probe, PROBE=) is not built: cargo build --release -p rpcenv-cli" >&2; exit 2; }
rtt() { "$PROBE" bench --core-rtt | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["ns"])'; }
mkdir -p "$RESULTS"
raw="$RESULTS/alternate-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: > "$raw"
echo "[alternate] ${#labels[@]} variants x $ROUNDS rounds of ${workloads[*]}; load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" >&2
for round in $(seq "$ROUNDS"); do
  for i in "${!labels[@]}"; do
    read -r -a words <<< "${commands[$i]}"
    echo "[alternate] round $round: ${labels[$i]}" >&2
    # The cores' round trip just before and just after the run (`rpcenv bench --core-rtt`): the
    # host can move the cores during a run, so the larger of the two is kept.
    before="$(rtt)"
    out="$("${words[0]}" bench "${workloads[@]}" "${words[@]:1}")"
    after="$(rtt)"
    printf '%s\n' "$out" | python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        row = json.loads(line)
        row["variant"] = sys.argv[1]
        row["core_rtt_ns"] = max(float(sys.argv[2]), float(sys.argv[3]))
        print(json.dumps(row))' "${labels[$i]}" "$before" "$after" >> "$raw"
  done
done

python3 - "$raw" "${labels[@]}" <<'PY'
import json, statistics, sys

path, labels = sys.argv[1], sys.argv[2:]
rows = {}
for line in open(path):
    row = json.loads(line)
    if "skipped" in row:
        continue
    rows.setdefault((row["workload"], row["variant"]), []).append(row)

def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def fmt(v, unit=""):
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M{unit}"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k{unit}"
    return f"{v:.2f}{unit}"

print("| workload | variant | runs | ops/s median [min-max] | vs first | p50 µs median | CPU µs/op median | runs with the cores far apart |")
print("|---|---|---|---|---|---|---|---|")
for workload in dict.fromkeys(w for w, _ in rows):
    base = med(rows.get((workload, labels[0]), []), "ops_per_sec")
    for label in labels:
        rs = rows.get((workload, label), [])
        if not rs:
            continue
        ops = [r["ops_per_sec"] for r in rs]
        m = med(rs, "ops_per_sec")
        ratio = f"{m / base:.2f}x" if base else "-"
        # A core round trip over 150 ns: the host had put the two virtual CPUs far apart (about
        # 340 ns, against 55 near), which slows every thread hand-off (W2 by about 1.8x).
        far = sum(1 for r in rs if r.get("core_rtt_ns", 0) > 150)
        print(f"| {workload} | {label} | {len(rs)} | {fmt(m)} [{fmt(min(ops))}-{fmt(max(ops))}] | "
              f"{ratio} | {fmt(med(rs, 'p50_us'))} | {fmt(med(rs, 'cpu_us_per_op'))} | {far} |")
PY
echo "[alternate] raw lines: $raw" >&2
