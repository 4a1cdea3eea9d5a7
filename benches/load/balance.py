#!/usr/bin/env python3
"""Balancing quality, after Linkerd's "Beyond Round Robin", in the cases that hurt: 10
instances, a steady offered load, a 1 s route timeout and client timeout, no retries, passive
ejection off (the strategy alone decides; `--passive` turns the default ejection back on).

- `slow`: one instance (`i0`) answers after `--slow-ms` (2 s: beyond the timeout, so every
  request sent to it fails with a 504). Score: the share of requests that succeed within 1 s.
- `degrade`: every instance is fast until half-way through the run, when `i1` starts
  answering `--degrade-ms` late (0.5 s: within the timeout, only its latency tells). Score:
  the share of requests sent to `i1` from 1 s after the degradation to the end of the run
  (from the gateway's `sluice_upstream_picks_total`).

    python3 benches/load/balance.py       # --rounds 3 --duration 15 --rate 1000 --conns 200

Starts 10 test upstreams (`sluice-test-upstream`, release; their delay is changed through
their standard input), Sluice with one route and one service per strategy, scenario and round
(so every run starts from fresh live state: no EWMA learned in an earlier run), and drives
each with oha at a fixed rate, the strategies in an order rotated each round. Writes
`<out>/balance.md`, `<out>/balance.csv` and `<out>/balance.png`. Bounded: rounds x 2 x 3 x
duration of load.
"""

import argparse
import datetime
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    ROOT, Procs, build_release, gnuplot, need, oha_result, oha_start, set_delay, start_sluice, start_upstream,
    version,
)

STRATEGIES = ["round-robin", "least-conn", "p2c-ewma"]
SCENARIOS = ["slow", "degrade"]


def picks(admin, service):
    """`sluice_upstream_picks_total` of `service`, by instance id."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics") as r:
        text = r.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("sluice_upstream_picks_total{") and f'service="{service}"' in line:
            m = re.search(r'instance_id="([^"]+)"', line)
            if m:
                found[m.group(1)] = float(line.rsplit(" ", 1)[1])
    return found


def run(args, admin, port, upstreams, scenario, strategy, rnd):
    service = f"{scenario}-{strategy}-{rnd}"
    set_delay(upstreams[0], args.slow_ms if scenario == "slow" else 0)
    set_delay(upstreams[1], 0)
    url = f"http://127.0.0.1:{port}/{service}/"
    load = oha_start(url, args.rate, args.conns, args.duration, timeout="1s")
    share = None
    if scenario == "degrade":
        half = args.duration / 2
        time.sleep(half)
        set_delay(upstreams[1], args.degrade_ms)
        time.sleep(1)
        before = picks(admin, service)
    r = oha_result(load, url, args.duration)
    if scenario == "degrade":
        set_delay(upstreams[1], 0)
        after = picks(admin, service)
        total = sum(after.values()) - sum(before.values())
        share = 100.0 * (after.get("i1", 0) - before.get("i1", 0)) / max(total, 1)
    else:
        share = 100.0 * picks(admin, service).get("i0", 0) / max(r["total"], 1)
    r.update(round=rnd, scenario=scenario, strategy=strategy, success=100.0 * r["ok"] / max(r["total"], 1), share=share)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--slow-ms", type=int, default=2000)
    ap.add_argument("--degrade-ms", type=int, default=500)
    ap.add_argument("--passive", action="store_true", help="keep passive ejection on (the default of a service)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sluice", help="another sluice binary to measure (e.g. an earlier build); default: this tree's release build")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    if any(s not in SCENARIOS for s in scenarios):
        sys.exit(f"--scenarios: any of {SCENARIOS}")
    need("oha")
    build_release("sluice-test-upstream", *([] if args.sluice else ["sluice"]))
    os.makedirs(args.out, exist_ok=True)
    command = "python3 benches/load/balance.py " + " ".join(sys.argv[1:])
    rows = []
    procs = Procs()
    with tempfile.TemporaryDirectory() as work:
        try:
            started = [start_upstream(procs, work, f"i{i}", controlled=True) for i in range(args.instances)]
            ports = [port for port, _ in started]
            upstreams = [proc for _, proc in started]
            names = [f"{sc}-{st}-{r}" for sc in scenarios for st in STRATEGIES for r in range(1, args.rounds + 1)]
            with open(os.path.join(work, "services.toml"), "w") as f:
                for name in names:
                    f.write(f"[services.{name}]\ninstances = [\n")
                    for i, port in enumerate(ports):
                        f.write(f'  {{ id = "i{i}", addr = "127.0.0.1:{port}" }},\n')
                    f.write("]\n\n")
            body = f'[registry]\nkind = "file"\npath = "{work}/services.toml"\n\n'
            for name in names:
                strategy = next(s for s in STRATEGIES if f"-{s}-" in name)
                body += (
                    f'[[routes]]\npath_prefix = "/{name}"\nservice = "{name}"\nstrategy = "{strategy}"\n'
                    'timeout = "1s"\nretries = 0\n\n'
                )
                if not args.passive:
                    body += f"[services.{name}]\npassive = false\n\n"
            _, port, admin = start_sluice(procs, work, body, args.threads, args.sluice)
            for rnd in range(1, args.rounds + 1):
                shift = (rnd - 1) % len(STRATEGIES)
                for scenario in scenarios:
                    for s in STRATEGIES[shift:] + STRATEGIES[:shift]:
                        r = run(args, admin, port, upstreams, scenario, s, rnd)
                        rows.append(r)
                        print(f"round {rnd} {scenario:8} {s:12} {r}", flush=True)
        finally:
            procs.stop()

    with open(os.path.join(args.out, "balance.csv"), "w") as f:
        f.write("round,scenario,strategy,rps,p50_ms,p99_ms,p999_ms,success_pct,share_pct\n")
        for r in rows:
            f.write(
                f'{r["round"]},{r["scenario"]},{r["strategy"]},{r["rps"]:.1f},{r["p50"]:.3f},{r["p99"]:.3f},'
                f'{r["p999"]:.3f},{r["success"]:.3f},{r["share"]:.3f}\n'
            )

    def med(scenario, s, key):
        return statistics.median(r[key] for r in rows if r["strategy"] == s and r["scenario"] == scenario)

    ejection = "on (5 failures, 30 s)" if args.passive else "off"
    lines = [
        "# Balancing quality: a slow instance beyond the timeout, and one that degrades mid-run",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores; {version([args.sluice or os.path.join(ROOT, 'target/release/sluice'), '--version'])}; {version(['oha', '--version'])}",
        f"- command: `{command}`",
        f"- setup: {args.instances} instances (test upstream, hyper); oha at {args.rate} requests/s over {args.conns} connections for {args.duration} s, 1 s client timeout, latency corrected; route timeout 1 s, no retries, passive ejection {ejection}; a fresh service per run; {args.rounds} rounds, order rotated; medians",
        f"- `slow`: `i0` answers after {args.slow_ms} ms for the whole run (every request it gets fails); `degrade`: `i1` answers {args.degrade_ms} ms late from half-way; its share is of the requests from 1 s after that to the end",
        "",
        "| scenario | strategy | p50 | p99 | p99.9 | success within 1 s | share sent to the slow / degraded instance |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario in scenarios:
        for s in STRATEGIES:
            lines.append(
                f"| {scenario} | {s} | {med(scenario, s, 'p50'):.2f} ms | {med(scenario, s, 'p99'):.2f} ms | "
                f"{med(scenario, s, 'p999'):.2f} ms | {med(scenario, s, 'success'):.3f} % | {med(scenario, s, 'share'):.3f} % |"
            )
    summary = len(lines)
    lines += ["", "Every run:", "",
              "| round | scenario | strategy | requests/s | p50 | p99 | p99.9 | success | share |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f'| {r["round"]} | {r["scenario"]} | {r["strategy"]} | {r["rps"]:,.0f} | {r["p50"]:.2f} | {r["p99"]:.2f} | '
            f'{r["p999"]:.2f} | {r["success"]:.3f} % | {r["share"]:.3f} % |'
        )
    with open(os.path.join(args.out, "balance.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    if "slow" in scenarios:
        data = os.path.join(args.out, "balance.dat")
        with open(data, "w") as f:
            for s in STRATEGIES:
                f.write(f'"{s}" {med("slow", s, "p50"):.3f} {med("slow", s, "p99"):.3f} {med("slow", s, "p999"):.3f}\n')
        gnuplot(f"""
set terminal pngcairo size 800,450 font ",10"
set output "{os.path.join(args.out, 'balance.png')}"
set title "Latency with one instance in {args.instances} beyond the 1 s timeout, {args.rate} req/s"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "ms"
set logscale y
set grid ytics
set key top left
plot "{data}" using 2:xtic(1) title "p50", "" using 3 title "p99", "" using 4 title "p99.9"
""")
    print("\n".join(lines[:summary]))


if __name__ == "__main__":
    main()
