"""The medians of a benchmark CSV, one line per group of rows.

    medians.py CSV --by COL[,COL...] --median COL[,COL...] [--sum COL[,COL...]] [--rounds COL]

Groups the rows by the --by columns, and prints for each group the median of
every --median column, the sum of every --sum column and, with --rounds, the
values of that column round by round. Empty cells are left out of a median.
"""

import argparse
import csv
import statistics


def number(v):
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--by", required=True)
    ap.add_argument("--median", required=True)
    ap.add_argument("--sum", default="")
    ap.add_argument("--rounds", default="")
    a = ap.parse_args()
    by, med, tot = a.by.split(","), a.median.split(","), [c for c in a.sum.split(",") if c]
    groups = {}
    for row in csv.DictReader(open(a.csv)):
        groups.setdefault(tuple(row[c] for c in by), []).append(row)
    cols = by + [f"median {c}" for c in med] + [f"sum {c}" for c in tot] + ([f"{a.rounds} per round"] if a.rounds else [])
    lines = [cols]
    for key, rows in sorted(groups.items()):
        line = list(key)
        for c in med:
            vals = [float(r[c]) for r in rows if r[c] not in ("", "None")]
            line.append(number(statistics.median(vals)) if vals else "-")
        for c in tot:
            line.append(str(sum(int(float(r[c] or 0)) for r in rows)))
        if a.rounds:
            line.append(", ".join(r[a.rounds] for r in rows))
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


if __name__ == "__main__":
    main()
