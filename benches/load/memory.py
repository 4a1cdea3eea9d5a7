#!/usr/bin/env python3
"""Memory per connection, Sluice against nginx and HAProxy in the same run: resident memory
idle, holding `--connections` idle keep-alive client connections (each after one answered
request), and holding `--tunnels` open WebSocket tunnels (each after one echo); then
Sluice's memory with a `--instances`-instance pool.

    python3 benches/load/memory.py       # --connections 8000 --tunnels 2000 --instances 10000
    python3 benches/load/memory.py --settle 15   # read RSS 15 s after the clients are held

Starts an HTTP upstream (nginx, `return 200`) and a WebSocket echo upstream (this script, in
a child process: answers the upgrade with 101 and echoes the tunnel's bytes), then each proxy
in turn with `--workers` workers (Sluice release build with a file registry; nginx with
`proxy_http_version 1.1` and the Upgrade headers; HAProxy in http mode). RSS is VmRSS from
/proc, summed over a proxy's processes (nginx's master and workers), read `--settle` seconds
after the clients are held, so what a burst freed may be given back the same way by each.
Writes `<out>/memory.md`. The pool swap cost at 10 000 instances is the criterion bench
`pool_swap` (docs/benchmarks.md). Loopback only; needs nginx and haproxy.
"""

import argparse
import asyncio
import datetime
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, Procs, build_release, free_port, metric, need, nginx_upstream, rss_kib, start_sluice, version, wait_http  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
# A masked text frame, "hello": the echo upstream sends the bytes back as they came.
FRAME = bytes([0x81, 0x85, 1, 2, 3, 4]) + bytes(b ^ (1, 2, 3, 4)[i % 4] for i, b in enumerate(b"hello"))
BATCH = 500


async def echo_upstream(port):
    """Answers any upgrade with 101, then echoes whatever the tunnel carries."""

    async def serve(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            )
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def answered(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    await reader.readexactly(length)


async def hold(port, n, tunnels):
    """n connections, each with one request answered (or, with `tunnels`, upgraded and one
    frame echoed); returns them open."""
    conns = []
    for start in range(0, n, BATCH):
        batch = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(min(BATCH, n - start))))
        for _, writer in batch:
            writer.write(UPGRADE if tunnels else REQUEST)
        for reader, writer in batch:
            if tunnels:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101"), head
                writer.write(FRAME)
                assert await reader.readexactly(len(FRAME)) == FRAME
            else:
                await answered(reader)
        conns += batch
    return conns


def group_rss(pids):
    return sum(rss_kib(p) for p in pids)


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def measure(name, start, args):
    """RSS with the held connections and with the held tunnels, each on a freshly started
    proxy (KiB): what one phase left in a proxy's pools does not count in the next."""
    result = {}
    for kind, n, tunnels in (("conns", args.connections, False), ("tunnels", args.tunnels, True)):
        port, pids_of, stop = start()
        time.sleep(1)
        idle = group_rss(pids_of())
        result.setdefault("idle", idle)
        loop = asyncio.new_event_loop()
        held = loop.run_until_complete(hold(port, n, tunnels))
        time.sleep(args.settle)
        result[kind] = group_rss(pids_of())
        result[kind + "_per"] = (result[kind] - idle) / n
        for _, writer in held:
            writer.close()
        loop.run_until_complete(asyncio.sleep(0.5))
        loop.close()
        stop()
    print(f"{name}: {result}", flush=True)
    return result


def stopper(p):
    def stop():
        p.terminate()
        p.wait(timeout=10)

    return stop


def nginx_proxy(procs, work, workers, up, ws):
    port = free_port()
    d = os.path.join(work, f"proxy-nginx-{port}")
    os.makedirs(d)
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(f"""worker_processes {workers}; daemon off; error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 16384; }}
http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p;
  fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  upstream bench {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location /ws {{ proxy_pass http://127.0.0.1:{ws}; proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; proxy_read_timeout 1h; }}
  }} }}
""")
    p = procs.spawn(["nginx", "-c", f"{d}/nginx.conf", "-p", d], f"{d}/stderr.log")
    wait_http(f"http://127.0.0.1:{port}/", "nginx proxy")
    return port, lambda: [p.pid] + children(p.pid), stopper(p)


def haproxy_proxy(procs, work, workers, up, ws):
    port = free_port()
    conf = os.path.join(work, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread {workers}
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  use_backend ws if {{ path_beg /ws }}
  default_backend be
backend be
  server a 127.0.0.1:{up}
backend ws
  server w 127.0.0.1:{ws}
""")
    p = procs.spawn(["haproxy", "-f", conf], os.path.join(work, "haproxy.log"))
    wait_http(f"http://127.0.0.1:{port}/", "haproxy")
    return port, lambda: [p.pid], stopper(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=8_000)
    ap.add_argument("--tunnels", type=int, default=2_000)
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between holding the clients and reading RSS")
    ap.add_argument("--proxies", default="sluice,nginx,haproxy")
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target", "release", "sluice"), help="the Sluice binary (a before/after)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    args = ap.parse_args()
    need("nginx", "haproxy")
    build_release("sluice")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the proxies
    if hard < args.connections + 1000 or hard < 2 * args.tunnels + 1000:
        sys.exit(f"open files limit {hard} is too low for {args.connections} connections")
    command = "python3 benches/load/memory.py " + " ".join(sys.argv[1:])
    procs = Procs()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        try:
            up, ws = nginx_upstream(procs, work), free_port()
            echo = procs.spawn(
                [sys.executable, os.path.abspath(__file__), "--echo-upstream", str(ws)], f"{work}/echo.log",
                stdout=subprocess.PIPE, text=True,
            )
            if echo.stdout.readline().strip() != "ready":
                sys.exit("the WebSocket echo upstream did not start")

            services = f"{work}/services.toml"
            with open(services, "w") as f:
                f.write(
                    f'[services.bench]\ninstances = [{{ id = "real", addr = "127.0.0.1:{up}" }}]\n'
                    f'[services.ws]\ninstances = [{{ id = "echo", addr = "127.0.0.1:{ws}" }}]\n'
                )
            body = (
                f'[registry]\nkind = "file"\npath = "{services}"\n\n'
                '[[routes]]\npath_prefix = "/ws"\nservice = "ws"\ntimeout = "1h"\n\n'
                '[[routes]]\npath_prefix = "/"\nservice = "bench"\n'
            )

            def sluice():
                p, port, admin = start_sluice(procs, work, body, args.workers, binary=args.sluice)
                return port, lambda: [p.pid], stopper(p)

            starters = {
                "sluice": sluice,
                "nginx": lambda: nginx_proxy(procs, work, args.workers, up, ws),
                "haproxy": lambda: haproxy_proxy(procs, work, args.workers, up, ws),
            }
            for name in args.proxies.split(","):
                results[name] = measure(name, starters[name], args)
            if "sluice" in results:
                p, port, admin = start_sluice(procs, work, body, args.workers, binary=args.sluice)
                results["pool"] = pool(services, up, admin, port, p, args)
        finally:
            procs.stop()

    mib = lambda k: f"{k / 1024:.1f} MiB"  # noqa: E731
    lines = [
        "# Memory per connection",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores; {args.workers} workers each",
        f"- versions: {version(['nginx', '-v'])}; {version(['haproxy', '-v'])}",
        f"- command: `{command}`; RSS read {args.settle:g} s after the clients are held",
        "",
        f"| proxy | idle | {args.connections:,} idle keep-alive connections | per connection | {args.tunnels:,} WebSocket tunnels | per tunnel |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in args.proxies.split(","):
        r = results[name]
        lines.append(
            f"| {name} | {mib(r['idle'])} | {mib(r['conns'])} | {r['conns_per']:.1f} KiB | {mib(r['tunnels'])} | {r['tunnels_per']:.1f} KiB |"
        )
    if "pool" in results:
        before, after = results["pool"]
        lines += [
            "",
            f"Sluice with a {args.instances:,}-instance pool: {mib(before)} → {mib(after)} "
            f"({(after - before) * 1024 / args.instances:.0f} bytes per instance).",
        ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "memory.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def pool(services, up, admin, port, sluice, args):
    """RSS before and after the services file grows to `--instances` instances."""
    before = rss_kib(sluice.pid)
    # The real instance plus placeholders (never picked: weight 0).
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
    return before, rss_kib(sluice.pid)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-upstream":
        asyncio.run(echo_upstream(int(sys.argv[2])))
    else:
        main()
