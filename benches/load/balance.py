#!/usr/bin/env python3
"""Balancing quality, after Linkerd's "Beyond Round Robin": 10 instances, one of them slow
(every answer +200 ms), a steady offered load, and a 1 s client timeout. For each strategy:
p50/p99/p99.9 and the share of requests that succeed within the timeout.

    python3 benches/load/balance.py       # --rounds 3 --duration 15 --rate 1000 --conns 200

Starts 10 test upstreams (`sluice-test-upstream`, release; one with a 200 ms delay), Sluice
with one route per strategy (round-robin, least-conn, p2c-ewma), and drives each route with
oha at a fixed rate, in an order rotated each round. Writes `<out>/balance.md`,
`<out>/balance.csv` and `<out>/balance.png`. Bounded: rounds x 3 x duration of load.
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    ROOT, Procs, build_release, gnuplot, need, oha, start_sluice, start_upstream, version, metric,
)

STRATEGIES = ["round-robin", "least-conn", "p2c-ewma"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--slow-ms", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    args = ap.parse_args()
    need("oha")
    build_release("sluice", "sluice-test-upstream")
    os.makedirs(args.out, exist_ok=True)
    command = "python3 benches/load/balance.py " + " ".join(sys.argv[1:])
    rows = []
    procs = Procs()
    with tempfile.TemporaryDirectory() as work:
        try:
            ports = [
                start_upstream(procs, work, f"i{i}", args.slow_ms if i == 0 else 0)
                for i in range(args.instances)
            ]
            with open(os.path.join(work, "services.toml"), "w") as f:
                f.write("[services.bench]\ninstances = [\n")
                for i, port in enumerate(ports):
                    f.write(f'  {{ id = "i{i}", addr = "127.0.0.1:{port}" }},\n')
                f.write("]\n")
            body = f'[registry]\nkind = "file"\npath = "{work}/services.toml"\n\n'
            for s in STRATEGIES:
                body += f'[[routes]]\npath_prefix = "/{s}"\nservice = "bench"\nstrategy = "{s}"\ntimeout = "1s"\nretries = 0\n\n'
            _, port, admin = start_sluice(procs, work, body, args.threads)
            for rnd in range(1, args.rounds + 1):
                shift = (rnd - 1) % len(STRATEGIES)
                for s in STRATEGIES[shift:] + STRATEGIES[:shift]:
                    r = oha(f"http://127.0.0.1:{port}/{s}/", args.rate, args.conns, args.duration, timeout="1s")
                    r.update(round=rnd, strategy=s, success=100.0 * r["ok"] / max(r["total"], 1))
                    rows.append(r)
                    print(f"round {rnd} {s:12} {r}", flush=True)
            slow_picks = metric(admin, 'sluice_upstream_picks_total{instance_id="i0"')
        finally:
            procs.stop()

    with open(os.path.join(args.out, "balance.csv"), "w") as f:
        f.write("round,strategy,rps,p50_ms,p99_ms,p999_ms,success_pct\n")
        for r in rows:
            f.write(f'{r["round"]},{r["strategy"]},{r["rps"]:.1f},{r["p50"]:.3f},{r["p99"]:.3f},{r["p999"]:.3f},{r["success"]:.3f}\n')

    def med(s, key):
        return statistics.median(r[key] for r in rows if r["strategy"] == s)

    lines = [
        "# Balancing quality: one slow instance in ten",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores; sluice {version([os.path.join(ROOT, 'target/release/sluice'), '--version'])}; {version(['oha', '--version'])}",
        f"- command: `{command}`",
        f"- setup: {args.instances} instances (test upstream, hyper), `i0` answers {args.slow_ms} ms late; oha at {args.rate} requests/s over {args.conns} connections for {args.duration} s, 1 s client timeout, latency corrected; route timeout 1 s, no retries; {args.rounds} rounds, order rotated; medians",
        "",
        "| strategy | p50 | p99 | p99.9 | success within 1 s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for s in STRATEGIES:
        lines.append(f"| {s} | {med(s, 'p50'):.2f} ms | {med(s, 'p99'):.2f} ms | {med(s, 'p999'):.2f} ms | {med(s, 'success'):.3f} % |")
    lines += ["", "Picks of the slow instance over the whole run: " + "; ".join(slow_picks), "", "Every run:", "",
              "| round | strategy | requests/s | p50 | p99 | p99.9 | success |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f'| {r["round"]} | {r["strategy"]} | {r["rps"]:,.0f} | {r["p50"]:.2f} | {r["p99"]:.2f} | {r["p999"]:.2f} | {r["success"]:.3f} % |')
    with open(os.path.join(args.out, "balance.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    data = os.path.join(args.out, "balance.dat")
    with open(data, "w") as f:
        for s in STRATEGIES:
            f.write(f'"{s}" {med(s, "p50"):.3f} {med(s, "p99"):.3f} {med(s, "p999"):.3f}\n')
    gnuplot(f"""
set terminal pngcairo size 800,450 font ",10"
set output "{os.path.join(args.out, 'balance.png')}"
set title "Latency with one instance in {args.instances} slow (+{args.slow_ms} ms), {args.rate} req/s"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "ms"
set logscale y
set grid ytics
set key top left
plot "{data}" using 2:xtic(1) title "p50", "" using 3 title "p99", "" using 4 title "p99.9"
""")
    print("\n".join(lines[: 8 + len(STRATEGIES)]))


if __name__ == "__main__":
    main()
