#!/usr/bin/env python3
"""Parsing and reporting for tests/load/bench.sh. Standard library only.

    report.py parse-wrk FILE      -> rps,p50_ms,p90_ms,p99_ms,errors,dropped,requests
    report.py parse-k6 FILE       -> the same fields from rate.js's summary
    report.py summarize DIR SVG   -> markdown summary on stdout, chart to SVG
"""
import csv
import json
import re
import statistics
import sys
from collections import defaultdict

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    pct = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    return [rps, ms(pct.get("50", "nan")), ms(pct.get("90", "nan")), ms(pct.get("99", "nan")), errors, 0, requests]


def parse_k6(path):
    d = json.loads(open(path).read())
    failed = round(d["failed_rate"] * d["reqs"])
    return [d["rps"], d["p50_ms"], d["p90_ms"], d["p99_ms"], failed, int(d["dropped"]), int(d["reqs"])]


def fmt(v, nd=0):
    return f"{v:,.{nd}f}"


# Display order and labels.
TARGETS = [
    ("direct", "direct to the backend"),
    ("stickyd-local", "stickyd, local path"),
    ("stickyd-forwarded", "stickyd, forwarded path"),
    ("stickyd-new", "stickyd, new session"),
    ("haproxy-pinned", "HAProxy, cookie pinned"),
    ("haproxy-new", "HAProxy, new session"),
    ("envoy-pinned", "Envoy, cookie pinned"),
    ("envoy-new", "Envoy, new session"),
    ("nginx", "nginx, plain proxy"),
    ("before-local", "stickyd before, local path"),
    ("before-forwarded", "stickyd before, forwarded path"),
    ("before-new", "stickyd before, new session"),
]
LABEL = dict(TARGETS)
COLOR = {"direct": "#9e9e9e", "stickyd": "#00897b", "before": "#80cbc4", "haproxy": "#1e88e5", "envoy": "#8e24aa", "nginx": "#6d4c41"}


def color(target):
    return COLOR[target.split("-")[0]]


def load_runs(d):
    runs = defaultdict(list)  # (tool, target) -> rows
    with open(f"{d}/runs.csv") as f:
        for row in csv.DictReader(f):
            for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_s", "cpu_first_s", "duration_s"):
                row[k] = float(row[k])
            for k in ("errors", "dropped", "requests", "peak_rss_kib", "round"):
                row[k] = int(row[k])
            runs[(row["tool"], row["target"])].append(row)
    return runs


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def verdict(ok):
    return "**met**" if ok else "**missed**"


def summarize(d, svg_path):
    runs = load_runs(d)
    out = []
    w = lambda s="": out.append(s)
    rounds = max(r["round"] for rows in runs.values() for r in rows)

    w(f"### Peak throughput (wrk, medians of {rounds} rounds)")
    w()
    w("| path | req/s | min–max req/s | p50 ms | p99 ms | proxy CPU % | CPU µs/req | peak RSS MiB | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, label in TARGETS:
        rows = runs.get(("wrk", t))
        if not rows:
            continue
        cpu_per_req = statistics.median(r["cpu_s"] / r["requests"] * 1e6 for r in rows)
        cpu_pct = statistics.median(r["cpu_s"] / r["duration_s"] * 100 for r in rows)
        cpu_txt = f"{cpu_per_req:.1f}"
        if t == "stickyd-forwarded":
            first = statistics.median(r["cpu_first_s"] / r["requests"] * 1e6 for r in rows)
            cpu_txt += f" ({first:.1f} pod-a)"
        w(
            f"| {label} | {fmt(med(rows, 'rps'))} | {fmt(min(r['rps'] for r in rows))}–{fmt(max(r['rps'] for r in rows))}"
            f" | {med(rows, 'p50_ms'):.2f} | {med(rows, 'p99_ms'):.2f} | {cpu_pct:.0f} | {cpu_txt}"
            f" | {med(rows, 'peak_rss_kib') / 1024:.1f} | {sum(r['errors'] for r in rows)} |"
        )
    w()
    rate = None
    k6rows = [r for (tool, _), rows in runs.items() if tool == "k6" for r in rows]
    if k6rows:
        rate = round(statistics.median(r["requests"] / r["duration_s"] for r in k6rows), -2)
        w(f"### Latency at a fixed rate (k6 constant-arrival-rate, ~{fmt(rate)} req/s, medians of {rounds} rounds)")
        w()
        w("| path | p50 ms | p90 ms | p99 ms | proxy CPU % | peak RSS MiB | failed / dropped |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for t, label in TARGETS:
            rows = runs.get(("k6", t))
            if not rows:
                continue
            cpu_pct = statistics.median(r["cpu_s"] / r["duration_s"] * 100 for r in rows)
            w(
                f"| {label} | {med(rows, 'p50_ms'):.3f} | {med(rows, 'p90_ms'):.3f} | {med(rows, 'p99_ms'):.3f}"
                f" | {cpu_pct:.0f} | {med(rows, 'peak_rss_kib') / 1024:.1f}"
                f" | {sum(r['errors'] for r in rows)} / {sum(r['dropped'] for r in rows)} |"
            )
        w()

    mem = defaultdict(dict)
    with open(f"{d}/memory.csv") as f:
        for row in csv.DictReader(f):
            mem[row["target"]][row["state"]] = int(row["rss_kib"])
    ready = []
    with open(f"{d}/ready.csv") as f:
        ready = [row for row in csv.DictReader(f)]
    ka_state = next((s for s in mem.get("stickyd", {}) if s.startswith("keepalive_")), None)
    w("### Memory (RSS, MiB)")
    w()
    n_ka = ka_state.split("_")[1] if ka_state else "?"
    w(f"| proxy | idle, before the load | idle, after the load | holding {n_ka} keep-alive connections (after the load) |")
    w("|---|---:|---:|---:|")
    names = {"stickyd": "stickyd (pod-a)", "nginx": "nginx (worker)"}
    for p in ("stickyd", "haproxy", "envoy", "nginx"):
        m = mem.get(p, {})
        g = lambda s: f"{m[s] / 1024:.1f}" if s in m else "–"
        w(f"| {names.get(p, p)} | {g('idle')} | {g('after_load')} | {g(ka_state)} |")
    fresh = mem.get("stickyd-fresh", {})
    if ka_state in fresh:
        w()
        w(
            f"A fresh stickyd that served nothing else: {fresh['idle'] / 1024:.1f} MiB idle, "
            f"{fresh[ka_state] / 1024:.1f} MiB holding {n_ka} keep-alive connections "
            f"({(fresh[ka_state] - fresh['idle']) / int(n_ka):.1f} KiB per connection), "
            f"{fresh.get('after_close', 0) / 1024:.1f} MiB once they had all closed."
        )
    w()
    ready_ms = [float(r["ready_ms"]) for r in ready]
    ready_rss = [int(r["idle_rss_kib"]) for r in ready]
    if ready:
        w(
            f"stickyd start to `/readyz` 200: median {statistics.median(ready_ms):.1f} ms "
            f"(runs: {', '.join(f'{x:.1f}' for x in ready_ms)}); idle RSS 1 s after start: median "
            f"{statistics.median(ready_rss) / 1024:.1f} MiB."
        )
        w()

    try:
        with open(f"{d}/instructions.csv") as f:
            instr = {row["target"]: int(row["instructions_per_request"]) for row in csv.DictReader(f)}
    except FileNotFoundError:
        instr = {}
    if instr:
        base = instr.get("haproxy-pinned")
        w("### User-space instructions per request (callgrind, `tests/load/bench/instructions.sh`)")
        w()
        w("| path | instructions / request | vs HAProxy pinned |")
        w("|---|---:|---:|")
        for t, label in TARGETS:
            if t in instr:
                rel = f"{instr[t] / base:.2f}×" if base else "–"
                note = " (pod-a only)" if t == "stickyd-forwarded" else ""
                w(f"| {label}{note} | {fmt(instr[t])} | {rel} |")
        w()

    # Targets.
    w("### Targets")
    w()
    w("| target | measured | verdict |")
    w("|---|---|---|")

    def per_round(tool, a, b, key="rps"):
        ra = {r["round"]: r[key] for r in runs.get((tool, a), [])}
        rb = {r["round"]: r[key] for r in runs.get((tool, b), [])}
        return [ra[k] / rb[k] for k in sorted(ra) if k in rb and rb[k]]

    def ratio_line(name, a, b, goal):
        if ("wrk", a) not in runs or ("wrk", b) not in runs:
            return
        ratio = med(runs[("wrk", a)], "rps") / med(runs[("wrk", b)], "rps")
        rounds_ = ", ".join(f"{x:.2f}" for x in per_round("wrk", a, b))
        gap = ratio / goal - 1
        how = f"{gap:+.0%} against the goal"
        w(f"| {name} ≥ {goal}× | {ratio:.2f}× (per round: {rounds_}); {how} | {verdict(ratio >= goal)} |")

    ratio_line("local req/s vs HAProxy (pinned)", "stickyd-local", "haproxy-pinned", 1.1)
    ratio_line("local req/s vs Envoy (pinned)", "stickyd-local", "envoy-pinned", 3)
    ratio_line("forwarded req/s vs local", "stickyd-forwarded", "stickyd-local", 0.5)
    ratio_line("local req/s vs HAProxy (pinned), the build before", "before-local", "haproxy-pinned", 1.0)
    ratio_line("local req/s after vs before", "stickyd-local", "before-local", 1.0)
    ratio_line("forwarded req/s after vs before", "stickyd-forwarded", "before-forwarded", 1.0)
    ratio_line("new-session req/s after vs before", "stickyd-new", "before-new", 1.0)
    if ("k6", "stickyd-local") in runs and ("k6", "haproxy-pinned") in runs:
        a = med(runs[("k6", "stickyd-local")], "p99_ms")
        b = med(runs[("k6", "haproxy-pinned")], "p99_ms")
        rr = ", ".join(f"{x:.2f}" for x in per_round("k6", "stickyd-local", "haproxy-pinned", "p99_ms"))
        w(
            f"| local p99 at {fmt(rate)} req/s ≤ HAProxy's | {a:.3f} ms vs {b:.3f} ms ({a / b:.2f}×; per round: {rr}) "
            f"| {verdict(a <= b)} |"
        )
    if ready:
        idle = statistics.median(ready_rss) / 1024
        w(f"| idle RSS ≤ 8 MiB | {idle:.1f} MiB ({idle / 8:.0%} of the budget) | {verdict(idle <= 8)} |")
    if ka_state:
        ka = mem.get("stickyd-fresh", mem["stickyd"])[ka_state] / 1024
        w(f"| RSS with {n_ka} keep-alive connections ≤ 40 MiB | {ka:.1f} MiB ({ka / 40:.0%} of the budget) | {verdict(ka <= 40)} |")
    if ready:
        r = statistics.median(ready_ms)
        w(f"| ready ≤ 100 ms after start | {r:.1f} ms | {verdict(r <= 100)} |")
    w()
    w("The keep-alive row uses the fresh stickyd; the idle row the median of the 5 fresh starts.")
    w()
    print("\n".join(out))
    write_svg(runs, rate, rounds, svg_path)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_svg(runs, rate, rounds, path):
    rows_t = [(t, l) for t, l in TARGETS if ("wrk", t) in runs]
    bar_h, gap, left, width = 20, 8, 190, 420
    panel_h = len(rows_t) * (bar_h + gap) + 40
    total_w = left + width + 90 + left + width + 90
    total_h = panel_h + 70
    s = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
        f'viewBox="0 0 {total_w} {total_h}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{total_w}" height="{total_h}" fill="white"/>',
        f'<text x="12" y="22" font-size="15" font-weight="bold">stickyd vs HAProxy, Envoy, nginx: one worker each, '
        f"loopback, same backend (medians of {rounds} rounds)</text>",
    ]

    def panel(x0, title, values, unit, nd, note):
        y0 = 60
        s.append(f'<text x="{x0}" y="{y0 - 14}" font-size="13" font-weight="bold">{esc(title)}</text>')
        top = max(v[2] for v in values.values()) or 1
        for i, (t, label) in enumerate(rows_t):
            if t not in values:
                continue
            v, lo, hi = values[t]
            y = y0 + i * (bar_h + gap)
            bw = width * v / top
            s.append(f'<text x="{x0 + left - 8}" y="{y + bar_h * 0.72}" text-anchor="end">{esc(label)}</text>')
            s.append(f'<rect x="{x0 + left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{color(t)}"/>')
            # min–max whisker over the rounds
            xl, xh = x0 + left + width * lo / top, x0 + left + width * hi / top
            ym = y + bar_h / 2
            s.append(f'<line x1="{xl:.1f}" y1="{ym}" x2="{xh:.1f}" y2="{ym}" stroke="black" stroke-width="1"/>')
            for xx in (xl, xh):
                s.append(f'<line x1="{xx:.1f}" y1="{ym - 4}" x2="{xx:.1f}" y2="{ym + 4}" stroke="black" stroke-width="1"/>')
            s.append(f'<text x="{max(xh, x0 + left + bw) + 6:.1f}" y="{y + bar_h * 0.72}">{fmt(v, nd)}{unit}</text>')
        s.append(
            f'<line x1="{x0 + left}" y1="{y0 - 4}" x2="{x0 + left}" y2="{y0 + len(rows_t) * (bar_h + gap)}" stroke="#444"/>'
        )
        s.append(f'<text x="{x0 + left}" y="{y0 + len(rows_t) * (bar_h + gap) + 16}" fill="#555">{esc(note)}</text>')

    def stats(tool, key):
        out = {}
        for t, _ in rows_t:
            rows = runs.get((tool, t))
            if rows:
                vals = [r[key] for r in rows]
                out[t] = (statistics.median(vals), min(vals), max(vals))
        return out

    panel(12, "Peak throughput, req/s (wrk -t1 -c50), higher is better", stats("wrk", "rps"), "", 0,
          "bar: median; whisker: min–max over rounds")
    if rate:
        panel(12 + left + width + 90, f"p99 latency at {fmt(rate)} req/s (k6), ms, lower is better",
              stats("k6", "p99_ms"), " ms", 2, "bar: median; whisker: min–max over rounds")
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


def main():
    cmd = sys.argv[1]
    if cmd == "parse-wrk":
        print(",".join(str(x) for x in parse_wrk(sys.argv[2])))
    elif cmd == "parse-k6":
        print(",".join(str(x) for x in parse_k6(sys.argv[2])))
    elif cmd == "summarize":
        summarize(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


main()
