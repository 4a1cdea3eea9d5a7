#!/usr/bin/env python3
"""Memory and scale: Sluice's resident memory idle, holding 10 000 open keep-alive client
connections, and serving a 10 000-instance pool.

    python3 benches/load/memory.py       # --connections 10000 --instances 10000

Starts an upstream (nginx, `return 200`) and Sluice (release, file registry). Reads VmRSS
from /proc: idle after start; after `--connections` clients each sent one request and stay
connected; after the services file grows to `--instances` instances (and a request is served
from that pool). Writes `<out>/memory.md`. The pool swap cost at 10 000 instances is the
criterion bench `pool_swap` (docs/benchmarks.md).
"""

import argparse
import asyncio
import datetime
import os
import resource
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, Procs, build_release, free_port, metric, need, rss_kib, start_sluice, wait_http  # noqa: E402


async def hold(port, n):
    """n connections, each with one request answered; returns them open."""
    conns = []
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for start in range(0, n, 500):
        batch = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(min(500, n - start))))
        for reader, writer in batch:
            writer.write(request)
        for reader, writer in batch:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
            await reader.readexactly(length)
        conns += batch
    return conns


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    args = ap.parse_args()
    need("nginx")
    build_release("sluice")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by sluice
    if hard < args.connections + 1000:
        sys.exit(f"open files limit {hard} is too low for {args.connections} connections (each process holds one end)")
    command = "python3 benches/load/memory.py " + " ".join(sys.argv[1:])
    procs = Procs()
    with tempfile.TemporaryDirectory() as work:
        try:
            up = free_port()
            os.makedirs(f"{work}/nginx")
            with open(f"{work}/nginx/nginx.conf", "w") as f:
                f.write(f"""worker_processes 1; daemon off; error_log {work}/nginx/error.log; pid {work}/nginx/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {work}/nginx/b; proxy_temp_path {work}/nginx/p;
  fastcgi_temp_path {work}/nginx/f; uwsgi_temp_path {work}/nginx/u; scgi_temp_path {work}/nginx/s;
  server {{ listen 127.0.0.1:{up}; location / {{ return 200 "ok\\n"; }} }} }}
""")
            procs.spawn(["nginx", "-c", f"{work}/nginx/nginx.conf", "-p", f"{work}/nginx"], f"{work}/nginx.log")
            wait_http(f"http://127.0.0.1:{up}/", "upstream")
            services = f"{work}/services.toml"
            with open(services, "w") as f:
                f.write(f'[services.bench]\ninstances = [{{ id = "real", addr = "127.0.0.1:{up}" }}]\n')
            body = (
                f'[registry]\nkind = "file"\npath = "{services}"\n\n'
                '[[routes]]\npath_prefix = "/"\nservice = "bench"\n'
            )
            # Idle client connections are kept (no header deadline for the held ones: each
            # has sent its request).
            sluice, port, admin = start_sluice(procs, work, body, args.threads)
            time.sleep(1)
            idle = rss_kib(sluice.pid)

            loop = asyncio.new_event_loop()
            conns = loop.run_until_complete(hold(port, args.connections))
            time.sleep(1)
            with_conns = rss_kib(sluice.pid)
            for _, writer in conns:
                writer.close()
            loop.close()
            time.sleep(1)
            after_close = rss_kib(sluice.pid)

            # A big pool: the real instance plus placeholders (never picked: weight 0).
            with open(services + ".tmp", "w") as f:
                f.write(f'[services.bench]\ninstances = [\n  {{ id = "real", addr = "127.0.0.1:{up}" }},\n')
                for i in range(args.instances - 1):
                    f.write(f'  {{ id = "p{i}", addr = "127.0.{(i // 250) % 250 + 1}.{i % 250 + 1}:8080", weight = 0 }},\n')
                f.write("]\n")
            os.replace(services + ".tmp", services)
            deadline = time.time() + 30
            while time.time() < deadline:
                lines = metric(admin, "sluice_pool_instances")
                if sum(float(l.split()[-1]) for l in lines) >= args.instances:
                    break
                time.sleep(0.25)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 200
            time.sleep(1)
            with_pool = rss_kib(sluice.pid)
        finally:
            procs.stop()

    mib = lambda k: f"{k / 1024:.1f} MiB"  # noqa: E731
    lines = [
        "# Memory and scale",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores; sluice threads {args.threads}",
        f"- command: `{command}`",
        "",
        "| state | RSS |",
        "| --- | ---: |",
        f"| idle, after start (1 route, 1 instance) | {mib(idle)} |",
        f"| {args.connections:,} open keep-alive client connections | {mib(with_conns)} ({(with_conns - idle) / args.connections:.1f} KiB per connection) |",
        f"| those connections closed | {mib(after_close)} |",
        f"| {args.instances:,}-instance pool | {mib(with_pool)} ({(with_pool - after_close) * 1024 / args.instances:.0f} bytes per instance) |",
    ]
    with open(os.path.join(args.out, "memory.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
