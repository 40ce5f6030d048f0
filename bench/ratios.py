#!/usr/bin/env python3
"""Reads WORKLOADS.md JSON lines (rpcenv's and the anchors') and prints markdown tables:
the figures, then the ratios rpcenv / anchor per workload.

    python3 bench/ratios.py results.jsonl

Throughput ratio: rpcenv ops/s over the anchor's (higher is better). p50 ratio and RSS ratio:
rpcenv's over the anchor's (lower is better); likewise the CPU ratio (cpu_us_per_op, the
whole process's CPU per op). A missing or skipped figure prints as "-".
"""
import json
import sys

WORKLOADS = [
    ("W1", "ask_latency"),
    ("W2", "ask_throughput"),
    ("W3", "send_throughput"),
    ("W4", "ask_large"),
    ("W5", "local_send"),
    ("W6", "fan_in"),
    ("W7", "paced_ask"),
]
ORDER = ["rpcenv", "spark-jvm", "floor", "tonic", "tarpc", "ractor"]


def load(path):
    """The workload lines by (system, workload), and the core round-trip probes by when taken."""
    results, probes = {}, {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("probe") == "core_round_trip":
                probes[row.get("before", "?")] = row["ns"]
                continue
            if "skipped" in row or "workload" not in row:
                continue
            results[(row["system"], row["workload"])] = row
    return results, probes


def rate(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def main():
    results, probes = load(sys.argv[1])
    systems = [s for s in ORDER if any(k[0] == s for k in results)]
    systems += sorted({k[0] for k in results} - set(systems))
    anchors = [s for s in systems if s != "rpcenv"]

    print("Figures (ops/s / p50 µs / peak RSS MiB / CPU µs per op):\n")
    print("| workload | " + " | ".join(systems) + " |")
    print("|---|" + "---|" * len(systems))
    for wid, name in WORKLOADS:
        cells = []
        for s in systems:
            r = results.get((s, name))
            if r is None:
                cells.append("-")
                continue
            p50 = f" / {r['p50_us']:.0f} µs" if r.get("p50_us") is not None else ""
            cpu = r.get("cpu_us_per_op")
            cpu = f" / {cpu:.2f} µs cpu" if cpu is not None else " / - cpu"
            cells.append(f"{rate(r['ops_per_sec'])}{p50} / {r['rss_kb'] / 1024:.0f} MiB{cpu}")
        print(f"| {wid} {name} | " + " | ".join(cells) + " |")

    print("\nRatios rpcenv / anchor (throughput ×, higher is better; p50 ×, RSS × and CPU × per op, lower is better):\n")
    print("| workload | " + " | ".join(f"vs {a}: thr / p50 / rss / cpu" for a in anchors) + " |")
    print("|---|" + "---|" * len(anchors))
    for wid, name in WORKLOADS:
        mine = results.get(("rpcenv", name))
        cells = []
        for a in anchors:
            theirs = results.get((a, name))
            if mine is None or theirs is None:
                cells.append("-")
                continue
            thr = mine["ops_per_sec"] / theirs["ops_per_sec"]
            if mine.get("p50_us") is not None and theirs.get("p50_us"):
                p50 = f"{mine['p50_us'] / theirs['p50_us']:.2f}"
            else:
                p50 = "-"
            rss = mine["rss_kb"] / theirs["rss_kb"] if theirs.get("rss_kb") else None
            rss = f"{rss:.2f}" if rss is not None else "-"
            if mine.get("cpu_us_per_op") is not None and theirs.get("cpu_us_per_op"):
                cpu = f"{mine['cpu_us_per_op'] / theirs['cpu_us_per_op']:.2f}"
            else:
                cpu = "-"
            cells.append(f"{thr:.2f} / {p50} / {rss} / {cpu}")
        print(f"| {wid} {name} | " + " | ".join(cells) + " |")

    if probes:
        # About 55 ns: the two virtual CPUs sit close; about 340 ns: far apart, and every
        # system that hands work between threads runs slower (rpcenv's W2 by about 1.8x).
        print("\nCore round trip before each system (ns; `rpcenv bench --core-rtt`): "
              + ", ".join(f"{k} {v:.0f}" for k, v in probes.items()))


if __name__ == "__main__":
    main()
