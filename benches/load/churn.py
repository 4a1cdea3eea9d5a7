#!/usr/bin/env python3
"""Churn: at least a million requests while instances leave and rejoin etcd every 100 ms and
the strategy's `.wasm` is replaced every second; every request must succeed.

    python3 benches/load/churn.py        # --requests 1000000 --conns 32 --instances 4

Starts a real etcd, four fast upstreams (nginx, `return 200`), and Sluice (release) watching
etcd with a user strategy loaded from a file. While wrk drives the route: every 100 ms one
instance's key is deleted and the one deleted before is put back (so 3 of 4 are registered at
any time, and each instance leaves and rejoins every 400 ms); every second the strategy file
is atomically replaced, alternating the round-robin and least-conn plugins. wrk runs until
the request budget is reached (bounded by --max-seconds). Writes `<out>/churn.md`.
"""

import argparse
import base64
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    ROOT, Procs, build_release, free_port, metric, need, start_sluice, version, wait_http,
)

LUA = os.path.join(ROOT, "benches", "load", "percentiles.lua")
PLUGINS = os.path.join(ROOT, "target", "wasm32-unknown-unknown", "wasm-plugin")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-seconds", type=int, default=180)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    args = ap.parse_args()
    need("etcd", "nginx", "wrk")
    build_release("sluice")
    subprocess.run(
        ["cargo", "build", "-q", "--profile", "wasm-plugin", "--target", "wasm32-unknown-unknown",
         "-p", "sluice-strategy-round-robin", "-p", "sluice-strategy-least-conn"],
        cwd=ROOT, check=True,
    )
    wasm = [os.path.join(PLUGINS, f"sluice_strategy_{n}.wasm") for n in ("round_robin", "least_conn")]
    os.makedirs(args.out, exist_ok=True)
    command = "python3 benches/load/churn.py " + " ".join(sys.argv[1:])
    procs = Procs()
    stop = threading.Event()
    counts = {"leave": 0, "join": 0, "swaps": 0}
    with tempfile.TemporaryDirectory() as work:
        try:
            client, peer = free_port(), free_port()
            procs.spawn(
                ["etcd", "--name", "bench", "--data-dir", f"{work}/etcd",
                 "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"bench=http://127.0.0.1:{peer}", "--log-level", "warn"],
                f"{work}/etcd.log",
            )
            wait_http(f"http://127.0.0.1:{client}/health", "etcd")
            endpoint = f"http://127.0.0.1:{client}"

            def etcd(op, key, value=None):
                # etcd's JSON gateway (v3): no process per call, so the 100 ms period holds.
                body = {"key": base64.b64encode(key.encode()).decode()}
                if value is not None:
                    body["value"] = base64.b64encode(value.encode()).decode()
                request = urllib.request.Request(
                    f"{endpoint}/v3/kv/{op}", data=json.dumps(body).encode(), method="POST"
                )
                with urllib.request.urlopen(request, timeout=5) as r:
                    r.read()

            ups = [free_port() for _ in range(args.instances)]
            servers = "\n".join(f'server {{ listen 127.0.0.1:{p}; location / {{ return 200 "ok\\n"; }} }}' for p in ups)
            os.makedirs(f"{work}/nginx", exist_ok=True)
            with open(f"{work}/nginx/nginx.conf", "w") as f:
                f.write(f"""worker_processes 1; daemon off; error_log {work}/nginx/error.log; pid {work}/nginx/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {work}/nginx/b; proxy_temp_path {work}/nginx/p; fastcgi_temp_path {work}/nginx/f;
  uwsgi_temp_path {work}/nginx/u; scgi_temp_path {work}/nginx/s;
  {servers} }}
""")
            procs.spawn(["nginx", "-c", f"{work}/nginx/nginx.conf", "-p", f"{work}/nginx"], f"{work}/nginx.log")
            for p in ups:
                wait_http(f"http://127.0.0.1:{p}/", "upstream")

            def value(i):
                return '{"addr":"127.0.0.1:%d"}' % ups[i]

            for i in range(args.instances):
                etcd("put", f"/services/bench/i{i}", value(i))
            strategy = f"{work}/strategy.wasm"
            with open(wasm[0], "rb") as src, open(strategy, "wb") as dst:
                dst.write(src.read())
            body = (
                f'[registry]\nkind = "etcd"\nendpoints = ["{endpoint}"]\nprefix = "/services/"\n\n'
                f'[strategies.swapped]\nwasm = "{strategy}"\n\n'
                '[[routes]]\npath_prefix = "/"\nservice = "bench"\nstrategy = "swapped"\n'
            )
            sluice, port, admin = start_sluice(procs, work, body, args.threads)

            def churn():
                gone = None
                i = 0
                start = time.time()
                while not stop.is_set():
                    leaving = i % args.instances
                    etcd("deleterange", f"/services/bench/i{leaving}")
                    counts["leave"] += 1
                    if gone is not None:
                        etcd("put", f"/services/bench/i{gone}", value(gone))
                        counts["join"] += 1
                    gone = leaving
                    i += 1
                    # On a fixed 100 ms grid, whatever the calls cost.
                    stop.wait(max(0.0, start + i * 0.1 - time.time()))

            def swap():
                n = 0
                while not stop.wait(1.0):
                    n += 1
                    tmp = f"{strategy}.tmp"
                    with open(wasm[n % 2], "rb") as src, open(tmp, "wb") as dst:
                        dst.write(src.read())
                    os.replace(tmp, strategy)
                    counts["swaps"] += 1

            threads = [threading.Thread(target=churn), threading.Thread(target=swap)]
            for t in threads:
                t.start()
            # Measure the rate for 3 s, then size the main run to the request budget.
            probe = subprocess.run(["wrk", "-t1", f"-c{args.conns}", "-d3s", "-s", LUA, f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
            rate = float(next(l for l in probe.splitlines() if l.startswith("RESULT")).split()[1].split("=")[1])
            seconds = min(args.max_seconds, int(args.requests / max(rate, 1) * 1.15) + 5)
            started = time.time()
            out = subprocess.run(["wrk", "-t1", f"-c{args.conns}", f"-d{seconds}s", "-s", LUA, f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
            elapsed = time.time() - started
            stop.set()
            for t in threads:
                t.join()
            fields = dict(kv.split("=") for kv in next(l for l in out.splitlines() if l.startswith("RESULT")).split()[1:])
            probe_fields = dict(kv.split("=") for kv in next(l for l in probe.splitlines() if l.startswith("RESULT")).split()[1:])
            reloads = [l for l in metric(admin, "sluice_strategy_reloads_total") if not l.endswith(" 0")]
            fallbacks = [l for l in metric(admin, "sluice_strategy_fallbacks_total") if not l.endswith(" 0")]
            swaps_applied = metric(admin, "sluice_pool_swaps_total")
            rss = open(f"/proc/{sluice.pid}/status").read().split("VmRSS:")[1].split()[0]
        finally:
            stop.set()
            procs.stop()

    total = int(fields["requests"]) + int(probe_fields["requests"])
    errors = int(fields["errors"]) + int(probe_fields["errors"])
    lines = [
        "# Churn",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores; {version(['etcd', '--version'])}; sluice threads {args.threads}",
        f"- command: `{command}`",
        f"- setup: {args.instances} upstreams (nginx), etcd; every 100 ms one instance leaves and the previous one rejoins; the strategy file replaced every second (round-robin <-> least-conn, atomic rename); wrk -t1 -c{args.conns}",
        "",
        "| requests | failed (socket errors + non-2xx) | duration | requests/s | p50 | p99 | p99.9 | leaves | rejoins | .wasm swaps |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {total:,} | {errors} | {elapsed + 3:.0f} s | {float(fields['rps']):,.0f} | {int(fields['p50']) / 1000:.2f} ms | {int(fields['p99']) / 1000:.2f} ms | {int(fields['p999']) / 1000:.2f} ms | {counts['leave']} | {counts['join']} | {counts['swaps']} |",
        "",
        "From the gateway's metrics at the end: " + "; ".join(reloads + swaps_applied) + ". Fallbacks: " + (", ".join(fallbacks) or "none") + f". RSS at the end: {int(rss) / 1024:.1f} MiB.",
    ]
    with open(os.path.join(args.out, "churn.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
