#!/usr/bin/env python3
"""What filters cost: one Sluice gateway, four routes to the same upstreams — `/plain` without
filters, `/filtered` with `key-auth` + `rate-limit` (local store, a budget no run exhausts)
+ `request-id` (issue 14's goal), `/edge` with `headers` + `cors` + `request-id` +
`trace-context` (issue 15's; every request carries a browser's `Origin`), and `/redis` with a `rate-limit` on a Redis (`store = "redis"`, a
redis-server this script starts on loopback) — driven in alternating rounds with the same wrk
load, on the fast path and on pingora's path (`proxy.fast_path = false`, a second gateway).
Reports requests/s, p99, the gateway's CPU time per request (and Redis's, for `/redis`), and
each route's ratio to plain per path.

    python3 benches/load/filters_ab.py                 # 4 rounds, 1 worker, 5 s per run
    python3 benches/load/filters_ab.py --rounds 6 --workers 2

With fewer workers than CPUs the gateways are pinned to the first `--workers` CPUs and wrk,
nginx and Redis to the others (`--no-pin`: not). Each route's ratio to plain is given two
ways: of the medians, and the median of each round's ratio (runs of one round are seconds
apart, so a drift of the host's speed hits both).

Needs nginx (the upstreams), wrk and redis-server. Loopback only, bounded by rounds x 6 x
duration.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import Stack  # noqa: E402
from fast_path_ab import cpu_ticks  # noqa: E402
from harness import ROOT, free_port, wait_http  # noqa: E402

KEY = "bench-key-0123456789"

FILTERS = f"""
[filters.keys]
kind = "key-auth"
consumers = [{{ name = "bench", key = "{KEY}" }}]

[filters.limit]
kind = "rate-limit"
rate = 1000000000
per = "1s"
key = "consumer"

[filters.rid]
kind = "request-id"

[filters.hdrs]
kind = "headers"
request = {{ set = {{ "x-env" = "bench", "x-client" = "${{client_ip}}" }}, remove = ["x-debug"] }}
response = {{ set = {{ "x-served-by" = "sluice" }}, remove = ["server"] }}

[filters.web]
kind = "cors"
allow_origins = ["https://app.example.com"]
expose_headers = ["x-request-id"]

[filters.trace]
kind = "trace-context"

[filters.shared]
kind = "rate-limit"
rate = 1000000000
per = "1s"
store = "redis"
redis = {{ url = "redis://127.0.0.1:REDIS_PORT" }}
"""

ROUTES = ("plain", "filtered", "edge", "redis")
ORIGIN = "https://app.example.com"


def descendants(pid):
    """`pid` and every process below it (nginx's workers under its master)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def pin(pids, cpus):
    """Every thread of `pids` (and their descendants) onto `cpus`."""
    for pid in pids:
        for p in descendants(pid):
            for task in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task") else []:
                try:
                    os.sched_setaffinity(int(task), cpus)
                except OSError:
                    pass


def run_wrk(url, conns, duration):
    """compare.run_wrk with the API key; a run with errors (a filter refusing) is no figure."""
    m = compare.run_wrk(url, conns, duration, headers=[f"x-api-key: {KEY}", f"origin: {ORIGIN}"])
    if m["errors"]:
        sys.exit(f"{url}: {m['errors']} errors (non-2xx or socket)")
    return m


def write_services(work, ports):
    """`services.toml` in `work`: service `bench`, instances `a` and `b` on `ports`."""
    with open(os.path.join(work, "services.toml"), "w") as f:
        f.write(
            "[services.bench]\ninstances = ["
            + ", ".join(f'{{ id = "{i}", addr = "127.0.0.1:{p}" }}' for i, p in zip("ab", ports))
            + "]\n"
        )


def start_redis(stack, work):
    """A redis-server on a free loopback port, without persistence; its process and port."""
    port = free_port()
    proc = stack.procs.spawn(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        os.path.join(work, "redis.log"),
    )
    for _ in range(200):
        try:
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
                return proc, port
        except FileNotFoundError:
            sys.exit("redis-cli not found (Debian: apt-get install redis-server)")
        time.sleep(0.05)
    sys.exit("redis-server did not start")


def gateway(stack, work, name, fast_path, workers, sluice, redis_port):
    port, admin = free_port(), free_port()
    services = os.path.join(work, "services.toml")
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(
            f'[proxy]\nlisten = ["127.0.0.1:{port}"]\nthreads = {workers}\nfast_path = {str(fast_path).lower()}\n\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n'
            f'[registry]\nkind = "file"\npath = "{services}"\n\n'
            f'[log]\nlevel = "warn"\n\n'
            '[[routes]]\npath_prefix = "/plain"\nservice = "bench"\nstrategy = "native-round-robin"\n\n'
            '[[routes]]\npath_prefix = "/filtered"\nservice = "bench"\nstrategy = "native-round-robin"\n'
            'filters = ["keys", "limit", "rid"]\n\n'
            '[[routes]]\npath_prefix = "/edge"\nservice = "bench"\nstrategy = "native-round-robin"\n'
            'filters = ["hdrs", "web", "rid", "trace"]\n\n'
            '[[routes]]\npath_prefix = "/redis"\nservice = "bench"\nstrategy = "native-round-robin"\n'
            'filters = ["shared"]\n'
            + FILTERS.replace("REDIS_PORT", str(redis_port))
        )
    proc = stack.procs.spawn([sluice, "serve", "--config", conf], os.path.join(work, f"{name}.log"))
    wait_http(f"http://127.0.0.1:{admin}/readyz", name)
    return proc, port


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--routes", default=",".join(ROUTES), help="which of " + ", ".join(ROUTES))
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target", "release", "sluice"))
    ap.add_argument("--no-pin", action="store_true", help="leave CPU placement to the scheduler")
    args = ap.parse_args()
    routes = [r for r in args.routes.split(",") if r]
    if "plain" not in routes or any(r not in ROUTES for r in routes):
        sys.exit(f"--routes: plain and any of {ROUTES}")
    if args.sluice.startswith(ROOT):
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "sluice"], cwd=ROOT, check=True)
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory() as work:
        stack = Stack(work, args.workers, args.sluice)
        try:
            stack._upstreams()
            write_services(work, stack.up)
            redis, redis_port = start_redis(stack, work)
            gateways = {
                "fast": gateway(stack, work, "fast", True, args.workers, args.sluice, redis_port),
                "pingora": gateway(stack, work, "pingora", False, args.workers, args.sluice, redis_port),
            }
            cpus = sorted(os.sched_getaffinity(0))
            pinned = not args.no_pin and len(cpus) > args.workers
            if pinned:
                # The gateways on their own cores, the load and the upstreams on the rest: the
                # scheduler then cannot put wrk beside the gateway under test for one run and
                # not the next, which moved the ratios by more than the filters cost.
                gateway_cpus, rest = set(cpus[: args.workers]), set(cpus[args.workers :])
                pin([proc.pid for proc, _ in gateways.values()], gateway_cpus)
                pin([p.pid for p in stack.procs.procs if p.pid not in {g.pid for g, _ in gateways.values()}], rest)
                os.sched_setaffinity(0, rest)
            runs = [(path, route) for path in gateways for route in routes]
            placement = f"gateway on CPU {sorted(gateway_cpus)}, wrk and upstreams on {sorted(rest)}" if pinned else "not pinned"
            print(
                f"# {args.rounds} rounds, {args.workers} worker(s), wrk -t1 -c{args.conns} -d{args.duration}s, {placement}",
                flush=True,
            )
            print(
                "| round | path | route | requests/s | p99 | gateway CPU per request | Redis CPU per request |\n"
                "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
                flush=True,
            )
            results = {run: [] for run in runs}
            round_ratios = {run: [] for run in runs}
            for rnd in range(1, args.rounds + 1):
                order = runs if rnd % 2 else list(reversed(runs))
                this_round = {}
                for path, route in order:
                    proc, port = gateways[path]
                    before, redis_before = cpu_ticks(proc.pid), cpu_ticks(redis.pid)
                    m = run_wrk(f"http://127.0.0.1:{port}/{route}/", args.conns, args.duration)
                    served = m["rps"] * args.duration
                    per_request = (cpu_ticks(proc.pid) - before) / hz / served * 1e6
                    redis_per_request = (cpu_ticks(redis.pid) - redis_before) / hz / served * 1e6
                    results[(path, route)].append((m["rps"], m["p99"], per_request, redis_per_request))
                    this_round[(path, route)] = m["rps"]
                    print(
                        f"| {rnd} | {path} | {route} | {m['rps']:,.0f} | {m['p99']:.2f} ms | {per_request:.1f} µs | "
                        f"{redis_per_request:.1f} µs |",
                        flush=True,
                    )
                for path, route in runs:
                    round_ratios[(path, route)].append(this_round[(path, route)] / this_round[(path, "plain")])
            print(
                "\n| path | route | median requests/s | median p99 | median gateway CPU per request | "
                "median Redis CPU per request | route / plain (medians) | route / plain (median of rounds) |\n"
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
            )
            for path in gateways:
                plain = statistics.median(r[0] for r in results[(path, "plain")])
                for route in routes:
                    rows = results[(path, route)]
                    rps = statistics.median(r[0] for r in rows)
                    print(
                        f"| {path} | {route} | {rps:,.0f} | {statistics.median(r[1] for r in rows):.2f} ms | "
                        f"{statistics.median(r[2] for r in rows):.1f} µs | {statistics.median(r[3] for r in rows):.1f} µs | "
                        f"{rps / plain:.3f} | {statistics.median(round_ratios[(path, route)]):.3f} |"
                    )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
