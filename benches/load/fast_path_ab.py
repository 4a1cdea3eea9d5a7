#!/usr/bin/env python3
"""The fast path A/B: one Sluice binary run twice on the same upstreams, `proxy.fast_path = true`
and `false`, driven in alternating rounds with the same wrk load; reports requests/s, p99 and
the gateway's CPU time per request (utime + stime of all its threads, from /proc).

    python3 benches/load/fast_path_ab.py                # 4 rounds, 1 worker, 5 s per run
    python3 benches/load/fast_path_ab.py --workers 2 --rounds 6
    python3 benches/load/fast_path_ab.py --baseline /path/to/old/sluice   # before/after

With `--baseline BIN` the second gateway is that binary with the same config (fast path on):
a before/after of a change to the request path, in alternating rounds.

Needs nginx (the upstreams) and wrk. Loopback only, bounded by rounds x 2 x duration.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Stack, run_wrk  # noqa: E402
from harness import ROOT, cpu_ticks, free_port, wait_http  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target", "release", "sluice"))
    ap.add_argument("--baseline", help="another sluice binary to compare with, same config")
    args = ap.parse_args()
    if args.sluice.startswith(ROOT):
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "sluice"], cwd=ROOT, check=True)
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory() as work:
        stack = Stack(work, args.workers, args.sluice)
        try:
            stack._upstreams()
            stack._sluice(args.workers, args.sluice)
            on_pid = next(p.pid for p in stack.procs.procs if p.args[0] == args.sluice)
            # The same config with the fast path off, on its own ports.
            conf = open(os.path.join(work, "sluice.toml")).read()
            port, admin = free_port(), free_port()
            conf = re.sub(r'(\[proxy\]\nlisten = )\["[^"]+"\]', rf'\1["127.0.0.1:{port}"]', conf)
            conf = re.sub(r'(\[admin\]\nlisten = )"[^"]+"', rf'\1"127.0.0.1:{admin}"', conf)
            if not args.baseline:
                conf = conf.replace("[proxy]\n", "[proxy]\nfast_path = false\n", 1)
            off_conf = os.path.join(work, "sluice-off.toml")
            with open(off_conf, "w") as f:
                f.write(conf)
            other = args.baseline or args.sluice
            off = stack.procs.spawn([other, "serve", "--config", off_conf], os.path.join(work, "off.log"))
            wait_http(f"http://127.0.0.1:{admin}/readyz", "the second sluice")
            names = ("this", "baseline") if args.baseline else ("true", "false")
            on_url = stack.url("sluice-native")
            off_url = on_url.replace(f":{stack.ports['sluice']}/", f":{port}/")
            print(f"# {args.rounds} rounds, {args.workers} worker(s), wrk -t1 -c{args.conns} -d{args.duration}s", flush=True)
            column = "binary" if args.baseline else "fast_path"
            print(f"| round | {column} | requests/s | p99 | CPU per request |\n| ---: | --- | ---: | ---: | ---: |", flush=True)
            for rnd in range(1, args.rounds + 1):
                runs = [(names[0], on_url, on_pid), (names[1], off_url, off.pid)]
                if rnd % 2 == 0:
                    runs.reverse()
                for name, url, pid in runs:
                    before = cpu_ticks(pid)
                    m = run_wrk(url, args.conns, args.duration)
                    used = (cpu_ticks(pid) - before) / hz
                    per_request = used / (m["rps"] * args.duration) * 1e6
                    print(f"| {rnd} | {name} | {m['rps']:,.0f} | {m['p99']:.2f} ms | {per_request:.1f} µs |", flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
