#!/usr/bin/env python3
"""Instructions per request, per route and request path, counted by callgrind: repeatable
where wrk's requests/s move by ±5 % between runs on a shared host. The gateway of
filters_ab.py (the same routes and filters) runs under `valgrind --tool=callgrind` with one
worker; for each route the counters are zeroed after a warm-up, then keep-alive clients send
`--requests` requests and the user-space instruction total is read from the dump.

    python3 benches/load/instructions.py                      # both paths, plain/filtered/edge
    python3 benches/load/instructions.py --paths pingora --requests 4000 --keep /tmp/cg
    python3 benches/load/instructions.py --paths fast --misses   # + cache and branch misses
    python3 benches/load/instructions.py --paths fast --routes plain --protocol h2c
    python3 benches/load/instructions.py --paths fast,haproxy --routes plain --protocol h2c

`--paths haproxy` counts HAProxy (one thread, the same upstreams and forwarding headers, the
plain route only) the same way: the reference the issue's goals are set against.

`--protocol h2c` sends the requests as HTTP/2 streams with prior knowledge instead (h2load,
`-c4 -m10`: four connections, ten streams in flight on each), so an HTTP/2 stream's cost is
counted as repeatably as an HTTP/1.1 request's.

`--misses` adds callgrind's cache and branch simulation (several times slower): per request,
the first-level instruction-cache misses and the mispredicted conditional and indirect
branches, which the instruction count does not show and a short request pays for in cycles.

Needs valgrind (callgrind_control), nginx (the upstreams); h2load (nghttp2-client) for h2c;
haproxy for `--paths haproxy`.
Loopback only; bounded by paths x routes x requests. `--keep DIR` leaves the dumps for `callgrind_annotate`.
"""

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import filters_ab  # noqa: E402
from compare import Stack  # noqa: E402
from harness import ROOT, free_port, haproxy_config, wait_http, wait_port  # noqa: E402

ROUTES = ("plain", "filtered", "edge")


def drive(port, route, requests, clients=4):
    """`requests` keep-alive GETs of /route/ over `clients` connections; every answer a 200."""
    request = (
        f"GET /{route}/ HTTP/1.1\r\nHost: bench\r\nx-api-key: {filters_ab.KEY}\r\n"
        f"origin: {filters_ab.ORIGIN}\r\nuser-agent: instructions.py\r\n\r\n"
    ).encode()
    failures = []

    def client(count):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            reader = s.makefile("rb")
            for _ in range(count):
                s.sendall(request)
                status = reader.readline()
                length = 0
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if not status.startswith(b"HTTP/1.1 200"):
                    failures.append(status)
                    return
                reader.read(length)

    threads = [threading.Thread(target=client, args=(requests // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"/{route}/: {failures[0]!r}")
    return requests // clients * clients


def drive_h2c(port, route, requests, clients=4):
    """`requests` GETs of /route/ as HTTP/2 streams (prior knowledge) over `clients`
    connections, ten in flight on each; every answer a 200."""
    requests = requests // clients * clients
    out = subprocess.run(
        ["h2load", f"-n{requests}", f"-c{clients}", "-m10", "-t1",
         "-H", f"x-api-key: {filters_ab.KEY}", "-H", f"origin: {filters_ab.ORIGIN}",
         "-H", "user-agent: instructions.py", f"http://127.0.0.1:{port}/{route}/"],
        capture_output=True, text=True, timeout=600,
    ).stdout
    m = re.search(r"status codes: (\d+) 2xx", out)
    if not m or int(m.group(1)) != requests:
        sys.exit(f"/{route}/ over h2c: not every stream answered 2xx:\n{out}")
    return requests


# The events of a dump reported per request, by callgrind's names.
EVENTS = {"Ir": "instructions", "I1mr": "L1i misses", "Bcm": "mispredicted branches", "Bim": "mispredicted indirect calls"}


def dump_events(dump):
    """The dump's totals, by event name (`Ir`, and with the simulations `I1mr`, `Bcm`, ...)."""
    names = None
    with open(dump) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            m = re.match(r"(?:summary|totals): ([\d ]+)", line)
            if m and names:
                return dict(zip(names, (int(v) for v in m.group(1).split())))
    sys.exit(f"no totals in {dump}")


def write_gateway_config(work, path, port, admin):
    """`path`.toml in `work`: one worker, the plain, filtered and edge routes of filters_ab.py,
    the fast path on for `fast`, off for `pingora`."""
    with open(os.path.join(work, f"{path}.toml"), "w") as f:
        f.write(
            f'[proxy]\nlisten = ["127.0.0.1:{port}"]\nthreads = 1\nfast_path = {str(path == "fast").lower()}\n\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n'
            f'[registry]\nkind = "file"\npath = "{os.path.join(work, "services.toml")}"\n\n'
            '[log]\nlevel = "warn"\n\n'
            + "".join(
                f'[[routes]]\npath_prefix = "/{name}"\nservice = "bench"\nstrategy = "native-round-robin"\n'
                f"filters = {filters}\n\n"
                for name, filters in (
                    ("plain", "[]"),
                    ("filtered", '["keys", "limit", "rid"]'),
                    ("edge", '["hdrs", "web", "rid", "trace"]'),
                )
            )
            + filters_ab.FILTERS.split("[filters.shared]")[0]
        )


def measure(stack, work, path, routes, requests, keep, misses=False, drive=drive, protocol="http1"):
    port, admin = free_port(), free_port()
    if path == "haproxy":
        # One thread in front of the `plain` route's upstreams, no filters.
        bind = f"127.0.0.1:{port}" + (" proto h2" if protocol == "h2c" else "")
        conf = haproxy_config(os.path.join(work, "haproxy.cfg"), 1, [bind], stack.up, balance="roundrobin")
        command = ["haproxy", "-db", "-f", conf]
    else:
        write_gateway_config(work, path, port, admin)
        command = [stack.sluice_bin, "serve", "--config", os.path.join(work, f"{path}.toml")]
    out = os.path.join(work, f"callgrind.{path}")
    proc = stack.procs.spawn(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no"]
        + (["--cache-sim=yes", "--branch-sim=yes"] if misses else [])
        + command,
        os.path.join(work, f"{path}.log"),
    )
    if path == "haproxy":
        wait_port(port, 60)
    else:
        wait_http(f"http://127.0.0.1:{admin}/readyz", f"{path} gateway under valgrind", timeout=120)
    figures = {}
    for route in routes:
        drive(port, route, 2000)
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
        served = drive(port, route, requests)
        before = set(glob.glob(f"{out}.{proc.pid}*"))
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            new = set(glob.glob(f"{out}.{proc.pid}*")) - before
            if new:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        dumps = sorted(new)
        if not dumps:
            sys.exit("callgrind wrote no dump")
        totals = {}
        for d in dumps:
            for name, value in dump_events(d).items():
                totals[name] = totals.get(name, 0) + value
        figures[route] = {name: value / served for name, value in totals.items()}
        if keep:
            os.makedirs(keep, exist_ok=True)
            for d in dumps:
                shutil.copy(d, os.path.join(keep, f"{path}-{route}-{os.path.basename(d)}"))
        for d in dumps:
            os.remove(d)
    proc.terminate()
    proc.wait(timeout=30)
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--paths", default="fast,pingora",
                    help="fast, pingora (Sluice's two request paths) and haproxy (HAProxy, plain route only)")
    ap.add_argument("--routes", default=",".join(ROUTES), help="which of " + ", ".join(ROUTES))
    ap.add_argument("--keep", help="a directory to copy the callgrind dumps to")
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target", "release", "sluice"))
    ap.add_argument("--misses", action="store_true", help="also simulate the caches and branch predictor")
    ap.add_argument("--protocol", choices=["http1", "h2c"], default="http1",
                    help="HTTP/1.1 keep-alive requests, or HTTP/2 streams with prior knowledge")
    args = ap.parse_args()
    routes = [r for r in args.routes.split(",") if r]
    if "plain" not in routes or any(r not in ROUTES for r in routes):
        sys.exit(f"--routes: plain and any of {ROUTES}")
    paths = [p for p in args.paths.split(",") if p]
    if any(p not in ("fast", "pingora", "haproxy") for p in paths):
        sys.exit("--paths: any of fast, pingora, haproxy")
    needs = ("valgrind", "callgrind_control", "nginx") + (("h2load",) if args.protocol == "h2c" else ())
    for tool in needs + (("haproxy",) if "haproxy" in paths else ()):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (Debian: valgrind nginx-light)")
    with tempfile.TemporaryDirectory() as work:
        stack = Stack(work, 1, args.sluice)
        try:
            stack._upstreams()
            filters_ab.write_services(work, stack.up)
            events = list(EVENTS) if args.misses else ["Ir"]
            print(f"# user-space events per request (callgrind, {args.protocol}), {args.requests} requests per route")
            print("| path | route | " + " | ".join(f"{EVENTS[e]} per request" for e in events) + " | instructions: route / plain |")
            print("| --- | --- | " + " | ".join("---:" for _ in events) + " | ---: |")
            for path in paths:
                # HAProxy has one route: the plain one's upstreams, no filters.
                served = ["plain"] if path == "haproxy" else routes
                figures = measure(stack, work, path, served, args.requests, args.keep, args.misses,
                                  drive_h2c if args.protocol == "h2c" else drive, args.protocol)
                for route in served:
                    row = figures[route]
                    cells = " | ".join(f"{row.get(e, 0):,.0f}" for e in events)
                    ratio = row["Ir"] / figures["plain"]["Ir"]
                    print(f"| {path} | {route} | {cells} | {ratio:.3f} |", flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
