#!/usr/bin/env python3
"""Parsing and reporting for tests/load/bench/churn.sh. Standard library only.

    churn_report.py parse-k6 FILE    -> rps,p50_ms,p90_ms,p99_ms,max_ms,failed,dropped,requests
    churn_report.py summarize CSV    -> markdown summary on stdout (medians over rounds)
"""
import csv
import json
import statistics
import sys
from collections import defaultdict

PHASES = ["steady", "churn+load", "churn"]


def parse_k6(path):
    d = json.loads(open(path).read())
    failed = round(d["failed_rate"] * d["reqs"])
    return [d["rps"], d["p50_ms"], d["p90_ms"], d["p99_ms"], d["max_ms"], failed, int(d["dropped"]), int(d["reqs"])]


def med(values):
    return statistics.median(values) if values else float("nan")


def summarize(path):
    rows = list(csv.DictReader(open(path)))
    for r in rows:
        for k, v in r.items():
            if k not in ("binary", "phase"):
                r[k] = float(v)
    binaries = list(dict.fromkeys(r["binary"] for r in rows))
    by = defaultdict(list)
    for r in rows:
        by[(r["binary"], r["phase"])].append(r)
    rounds = int(max(r["round"] for r in rows))

    def m(b, phase, key):
        return med([r[key] for r in by[(b, phase)]])

    def share(r):  # the sidecar's CPU over the phase, as a share of one core
        return 100 * r["cpu_s"] / r["seconds"]

    def ratio(b):  # p99 under churn over steady, per round
        steady = {r["round"]: r["p99_ms"] for r in by[(b, "steady")]}
        return [r["p99_ms"] / steady[r["round"]] for r in by[(b, "churn+load")] if r["round"] in steady]

    out = [f"Medians of {rounds} rounds; per-round values in brackets.", ""]
    out.append("| binary | steady p50 ms | steady p99 ms | churn p50 ms | churn p99 ms | churn p99 / steady p99 | failed / dropped |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for b in binaries:
        rs = ratio(b)
        per = ", ".join(f"{x:.2f}" for x in rs)
        bad = sum(int(r["failed"]) for p in PHASES for r in by[(b, p)])
        dropped = sum(int(r["dropped"]) for p in PHASES for r in by[(b, p)])
        out.append(
            f"| {b} | {m(b, 'steady', 'p50_ms'):.3f} | {m(b, 'steady', 'p99_ms'):.3f} | "
            f"{m(b, 'churn+load', 'p50_ms'):.3f} | {m(b, 'churn+load', 'p99_ms'):.3f} | "
            f"{med(rs):.2f}× ({per}) | {bad} / {dropped} |"
        )
    out.append("")
    out.append("| binary | CPU, steady load | CPU, churn + load | CPU, churn alone | of which the endpoint thread | views swapped / flips (churn alone) | flips a second | CPU per update |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for b in binaries:
        alone = by[(b, "churn")]
        per_round = ", ".join(f"{share(r):.1f}" for r in alone)
        watch = med([100 * r["watch_thread_cpu_s"] / r["seconds"] for r in alone])
        updates = med([r["updates"] for r in alone])
        flips = med([r["flips"] for r in alone])
        per_update = med([1000 * r["cpu_s"] / r["updates"] for r in alone if r["updates"]])
        rate = med([r["flips"] / r["flip_seconds"] for r in alone if r["flip_seconds"]])
        out.append(
            f"| {b} | {med([share(r) for r in by[(b, 'steady')]]):.1f} % | "
            f"{med([share(r) for r in by[(b, 'churn+load')]]):.1f} % | "
            f"{med([share(r) for r in alone]):.1f} % ({per_round}) | {watch:.1f} % | "
            f"{updates:.0f} / {flips:.0f} | {rate:.1f} | {per_update:.2f} ms |"
        )
    out.append("")
    out.append("CPU: utime + stime of the sidecar over the phase, as a share of one core.")
    print("\n".join(out))


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "parse-k6":
        print(",".join(str(x) for x in parse_k6(sys.argv[2])))
    elif cmd == "summarize":
        summarize(sys.argv[2])
    else:
        sys.exit(__doc__)


main()
