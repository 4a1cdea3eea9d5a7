#!/usr/bin/env python3
"""How the proxy's shards share the load: Sluice with `--workers` shards behind one nginx
upstream, `wrk -t1 -c<conns>` for `--duration` s per round; reports each shard thread's CPU
time (utime + stime of `sluice proxy N`, from /proc) as a share of all shards', the open
connections each shard ended the round with, and requests/s. A fresh Sluice per round: the
connections of a round are all accepted at its start, where an uneven split shows.

    python3 benches/load/shards.py                          # 2 shards, -c64, 5 rounds of 5 s
    python3 benches/load/shards.py --sluice /path/to/old/sluice   # the same for another binary
    python3 benches/load/shards.py --close --conns 16       # a new connection per request

Needs nginx and wrk. Loopback only, bounded by rounds x duration.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, Procs, build_release, need, nginx_upstream, start_sluice, thread_ticks  # noqa: E402


def shard_ticks(pid):
    """{shard index: utime + stime in clock ticks} for the threads named `sluice proxy N`."""
    shards = {}
    for name, ticks in thread_ticks(pid).items():
        m = re.fullmatch(r"sluice proxy (\d+)", name)
        if m:
            shards[int(m.group(1))] = ticks
    return shards


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--close", action="store_true", help="a new connection per request (Connection: close)")
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target", "release", "sluice"))
    args = ap.parse_args()
    need("nginx", "wrk")
    build_release("sluice")
    procs = Procs()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        try:
            up = nginx_upstream(procs, work)
            services = f"{work}/services.toml"
            with open(services, "w") as f:
                f.write(f'[services.bench]\ninstances = [{{ id = "real", addr = "127.0.0.1:{up}" }}]\n')
            body = f'[registry]\nkind = "file"\npath = "{services}"\n\n[[routes]]\npath_prefix = "/"\nservice = "bench"\n'
            for round_ in range(1, args.rounds + 1):
                sluice, port, _ = start_sluice(procs, work, body, args.workers, binary=args.sluice)
                time.sleep(0.5)
                before = shard_ticks(sluice.pid)
                out = subprocess.run(
                    ["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}s"]
                    + (["-H", "Connection: close"] if args.close else [])
                    + [f"http://127.0.0.1:{port}/"],
                    capture_output=True, text=True, check=True,
                ).stdout
                after = shard_ticks(sluice.pid)
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                used = [after[i] - before.get(i, 0) for i in sorted(after)]
                total = sum(used) or 1
                shares = [100 * u / total for u in used]
                rows.append((round_, shares, used, rps))
                print(f"round {round_}: shares {' / '.join(f'{s:.0f}' for s in shares)} %, ticks {used}, {rps:,.0f} req/s", flush=True)
                sluice.terminate()
                sluice.wait(timeout=10)
        finally:
            procs.stop()
    worst = [max(r[1]) for r in rows]
    print(f"\n{os.path.basename(args.sluice)}: busiest shard's share of the shards' CPU, median "
          f"{statistics.median(worst):.0f} % (worst {max(worst):.0f} %); requests/s median "
          f"{statistics.median(r[3] for r in rows):,.0f}")


if __name__ == "__main__":
    main()
