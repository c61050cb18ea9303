#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log (bench/gpu_run.sh kernels, kernelsA)
per kernel name: total ms, share, launches. Usage: ncu_summary.py FILE.csv [TITLE]."""
import collections
import csv
import sys


def main():
    path = sys.argv[1]
    title = sys.argv[2] if len(sys.argv) > 2 else path
    with open(path) as f:
        # ncu prints its own log lines before the CSV header.
        lines = [l for l in f if l.startswith('"')]
    rows = list(csv.reader(lines))
    head = rows[0]
    name_at, value_at = head.index("Kernel Name"), head.index("Metric Value")
    per = collections.defaultdict(lambda: [0.0, 0])
    for r in rows[1:]:
        ns = float(r[value_at].replace(",", ""))
        name = r[name_at].split("(")[0].split("<")[0]
        per[name][0] += ns
        per[name][1] += 1
    total = sum(v for v, _ in per.values())
    print(f"== {title}: {len(rows) - 1} kernels, {total / 1e6:.1f} ms")
    for name, (ns, n) in sorted(per.items(), key=lambda x: -x[1][0]):
        print(f"  {ns / 1e6:8.2f} ms {100 * ns / total:5.1f}% {n:6d}  {name}")


if __name__ == "__main__":
    main()
