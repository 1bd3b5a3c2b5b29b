#!/usr/bin/env python3
"""Sums the kernel times of an Nsight Compute CSV log (`ncu --metrics gpu__time_duration.sum --csv
--log-file F ...`) by kernel name: total microseconds, launches, mean, and share of the whole.

With --last-call, only the last network call is summed: the last K launches that repeat the K
before them in at least 95% of the names (a program that ends with two CUDA-graph replays, like
`msdm bench --iters 1` on CUDA, whose warm-up call replays its new graph once).

Usage: python3 tools/gpu/ncu_summary.py ncu.csv [--top 40] [--last-call]
"""
import csv
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 40
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    rows = list(csv.DictReader(lines))
    rows = [r for r in rows if r.get("Metric Name") == "gpu__time_duration.sum"]
    if "--last-call" in sys.argv:
        names = [r["Kernel Name"] for r in rows]
        # the last K launches that repeat the K before them, up to a few differing kernels (the
        # eager ops around the last call)
        def repeats(k):
            return sum(a == b for a, b in zip(names[-k:], names[-2 * k:-k])) >= 0.95 * k
        period = next((k for k in range(20, len(names) // 2 + 1) if repeats(k)), None)
        if period is None:
            sys.exit("no repeated call found at the end of the log")
        rows = rows[-period:]
    total = defaultdict(float)
    count = defaultdict(int)
    for r in rows:
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "ns": 1e-3, "us": 1.0, "ms": 1e3}.get(r.get("Metric Unit", "nsecond"), 1e-3)
        name = r["Kernel Name"].split("(")[0][:90]
        total[name] += float(r["Metric Value"].replace(",", "")) * scale
        count[name] += 1
    whole = sum(total.values())
    print(f"{sum(count.values())} kernel launches, {whole / 1e3:.2f} ms of GPU time")
    for name, us in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{us / 1e3:9.3f} ms {count[name]:6d} x {us / count[name]:8.1f} us {100 * us / whole:5.1f}%  {name}")


if __name__ == "__main__":
    main()
