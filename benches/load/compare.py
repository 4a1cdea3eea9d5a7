#!/usr/bin/env python3
"""Sluice against nginx and HAProxy on loopback, same upstreams, same load, same worker count.

    python3 benches/load/compare.py                 # defaults below; ~6 min
    python3 benches/load/compare.py --rounds 1 --duration 5   # quick look

Starts two fast upstream instances (nginx, one worker, `return 200`), then lean-floor (a
minimal hand-written HTTP/1.1 proxy on tokio: a measuring stick, not a proxy), bare pingora (the
smallest pingora proxy: the framework's floor), Sluice (release build; routes for native
round-robin, WASM round-robin and WASM least-conn), nginx
(`least_conn`, upstream keep-alive) and HAProxy (`leastconn`, `http-reuse always`), each with
`--workers` worker threads/processes; nginx and HAProxy add the same X-Forwarded-For, -Proto
and -Host headers Sluice adds. Every round drives every target, in an order rotated each
round, with:

  1. wrk, closed loop (`--conns` connections): the most requests/s it can take, and its
     p50/p99/p99.9 at that load;
  2. oha at a fixed rate (`--rate` requests/s, latency corrected for coordinated omission):
     p50/p99/p99.9 when every target gets the same offered load.

Writes `<out>/compare.md` (machine, versions, command, date, medians over rounds, every
round), `<out>/compare.csv`, and `<out>/compare.png` (gnuplot). Bounded: rounds x targets x
2 x duration of load, loopback only. Needs nginx, haproxy, wrk, oha (`cargo install oha`)
and gnuplot.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, Procs, free_port, gnuplot, haproxy_config, oha, version, wait_http  # noqa: E402

LUA = os.path.join(ROOT, "benches", "load", "percentiles.lua")


class Stack:
    """The upstreams and the three proxies, each on its own loopback ports."""

    def __init__(self, work, workers, sluice_bin):
        self.work = work
        self.procs = Procs()
        self.up = [free_port(), free_port()]
        self.ports = {}
        self.workers = workers
        self.sluice_bin = sluice_bin

    def start(self):
        self._upstreams()
        self._bare(self.workers)
        self._lean(self.workers)
        self._sluice(self.workers, self.sluice_bin)
        self._nginx(self.workers)
        self._haproxy(self.workers)

    def _spawn(self, args, log):
        return self.procs.spawn(args, log)

    def _nginx_conf(self, name, body, workers):
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                f"""worker_processes {workers};
daemon off;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  {body}
}}
"""
            )
        return conf, d

    def _upstreams(self):
        servers = "\n".join(
            f'server {{ listen 127.0.0.1:{p}; location / {{ return 200 "ok\\n"; }} }}'
            for p in self.up
        )
        conf, d = self._nginx_conf("upstreams", servers, 1)
        self._spawn(["nginx", "-c", conf, "-p", d], os.path.join(d, "stderr.log"))
        self.ports["direct"] = self.up[0]
        for p in self.up:
            wait_http(f"http://127.0.0.1:{p}/", "upstream nginx")

    def _floor(self, name, binary, workers):
        port = free_port()
        self._spawn(
            [os.path.join(ROOT, "target", "release", binary), f"127.0.0.1:{port}", str(workers)]
            + [f"127.0.0.1:{p}" for p in self.up],
            os.path.join(self.work, f"{name}.log"),
        )
        wait_http(f"http://127.0.0.1:{port}/", name)
        self.ports[name] = port

    def _bare(self, workers):
        """The floor: the smallest pingora proxy (benches/src/bin/bare-pingora.rs)."""
        self._floor("bare-pingora", "bare-pingora", workers)

    def _lean(self, workers):
        """A measuring stick: a minimal hand-written HTTP/1.1 proxy on tokio
        (benches/src/bin/lean-floor.rs), what a lean path of our own could cost."""
        self._floor("lean-floor", "lean-floor", workers)

    def _sluice(self, workers, sluice_bin):
        port, admin = free_port(), free_port()
        services = os.path.join(self.work, "services.toml")
        with open(services, "w") as f:
            f.write(
                "[services.bench]\ninstances = ["
                + ", ".join(
                    f'{{ id = "{i}", addr = "127.0.0.1:{p}" }}' for i, p in zip("ab", self.up)
                )
                + "]\n"
            )
        routes = ""
        for name in ["native-round-robin", "round-robin", "least-conn"]:
            routes += f'[[routes]]\npath_prefix = "/{name}"\nservice = "bench"\nstrategy = "{name}"\n\n'
        conf = os.path.join(self.work, "sluice.toml")
        with open(conf, "w") as f:
            f.write(
                f'[proxy]\nlisten = ["127.0.0.1:{port}"]\nthreads = {workers}\n\n'
                f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n'
                f'[registry]\nkind = "file"\npath = "{services}"\n\n'
                f'[log]\nlevel = "warn"\n\n{routes}'
            )
        self._spawn([sluice_bin, "serve", "--config", conf], os.path.join(self.work, "sluice.log"))
        wait_http(f"http://127.0.0.1:{admin}/readyz", "sluice")
        self.ports["sluice"] = port
        self.sluice_admin = admin

    def _nginx(self, workers):
        port = free_port()
        body = f"""upstream bench {{
    least_conn;
    server 127.0.0.1:{self.up[0]};
    server 127.0.0.1:{self.up[1]};
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The same forwarding headers Sluice adds, so every proxy does the same work.
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}"""
        conf, d = self._nginx_conf("proxy-nginx", body, workers)
        self._spawn(["nginx", "-c", conf, "-p", d], os.path.join(d, "stderr.log"))
        wait_http(f"http://127.0.0.1:{port}/", "nginx proxy")
        self.ports["nginx"] = port

    def _haproxy(self, workers):
        port = free_port()
        conf = haproxy_config(
            os.path.join(self.work, "haproxy.cfg"), workers, [f"127.0.0.1:{port}"], self.up[:2], balance="leastconn"
        )
        self._spawn(["haproxy", "-f", conf], os.path.join(self.work, "haproxy.log"))
        wait_http(f"http://127.0.0.1:{port}/", "haproxy")
        self.ports["haproxy"] = port

    def url(self, target):
        paths = {
            "sluice-native": ("sluice", "/native-round-robin/"),
            "sluice-wasm-rr": ("sluice", "/round-robin/"),
            "sluice-wasm-lc": ("sluice", "/least-conn/"),
        }
        server, path = paths.get(target, (target, "/"))
        return f"http://127.0.0.1:{self.ports[server]}{path}"

    def stop(self):
        self.procs.stop()


def run_wrk(url, conns, duration, headers=()):
    """wrk -t1 closed loop on `url`, with `headers` ("name: value") on every request."""
    extra = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-s", LUA, *extra, url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"wrk printed no result for {url}:\n{out}")
    fields = dict(kv.split("=") for kv in line.split()[1:])
    return {
        "rps": float(fields["rps"]),
        "p50": int(fields["p50"]) / 1000,
        "p99": int(fields["p99"]) / 1000,
        "p999": int(fields["p999"]) / 1000,
        "errors": int(fields["errors"]),
    }


def chart(rows, targets, out_png, rate):
    """Two panels: closed-loop requests/s, and p99 at the fixed rate (medians)."""
    data = os.path.splitext(out_png)[0] + ".dat"
    with open(data, "w") as f:
        for t in targets:
            rps = statistics.median(r["rps"] for r in rows if r["target"] == t and r["mode"] == "max")
            p99 = statistics.median(r["p99"] for r in rows if r["target"] == t and r["mode"] == "rate")
            f.write(f'"{t}" {rps:.0f} {p99:.3f}\n')
    script = f"""
set terminal pngcairo size 1100,450 font ",10"
set output "{out_png}"
set multiplot layout 1,2
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.7
set xtics rotate by -30
set grid ytics
unset key
set title "Most requests/s (wrk, closed loop)"
set ylabel "requests/s"
set yrange [0:*]
plot "{data}" using 2:xtic(1) lc rgb "#3b7dd8"
set title "p99 latency at {rate} requests/s (oha, fixed rate)"
set ylabel "ms"
plot "{data}" using 3:xtic(1) lc rgb "#d8833b"
unset multiplot
"""
    gnuplot(script)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--conns", type=int, default=64, help="wrk connections")
    ap.add_argument("--rate", type=int, default=5000, help="oha fixed request rate")
    ap.add_argument("--rate-conns", type=int, default=32, help="oha connections")
    ap.add_argument("--workers", type=int, default=1, help="worker threads/processes of each proxy")
    ap.add_argument("--close", action="store_true", help="a new client connection per request (wrk: `Connection: close`; oha: no keep-alive)")
    ap.add_argument(
        "--targets",
        default="direct,lean-floor,bare-pingora,sluice-native,sluice-wasm-rr,sluice-wasm-lc,nginx,haproxy",
    )
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target", "release", "sluice"))
    args = ap.parse_args()
    for tool in ["nginx", "haproxy", "wrk", "oha"]:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (Debian: nginx-light haproxy wrk; oha: cargo install oha)")
    if args.sluice.startswith(ROOT):
        subprocess.run(
            ["cargo", "build", "--release", "-q", "--bin", "sluice", "--bin", "bare-pingora", "--bin", "lean-floor"],
            cwd=ROOT,
            check=True,
        )
    targets = args.targets.split(",")
    os.makedirs(args.out, exist_ok=True)
    command = "python3 benches/load/compare.py " + " ".join(sys.argv[1:])

    rows = []
    with tempfile.TemporaryDirectory() as work:
        stack = Stack(work, args.workers, args.sluice)
        try:
            stack.start()
            for rnd in range(1, args.rounds + 1):
                shift = (rnd - 1) % len(targets)
                order = targets[shift:] + targets[:shift]
                for t in order:
                    url = stack.url(t)
                    m = run_wrk(url, args.conns, args.duration, ["Connection: close"] if args.close else ())
                    rows.append({"round": rnd, "target": t, "mode": "max", **m})
                    print(f"round {rnd} {t:15} max  {m}", flush=True)
                    r = oha(url, args.rate, args.rate_conns, args.duration, close=args.close)
                    rows.append({"round": rnd, "target": t, "mode": "rate", **{k: r[k] for k in ("rps", "p50", "p99", "p999", "errors")}})
                    print(f"round {rnd} {t:15} rate {r}", flush=True)
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.sluice_admin}/metrics") as r:
                fallbacks = [
                    l for l in r.read().decode().splitlines()
                    if l.startswith("sluice_strategy_fallbacks_total") and not l.endswith(" 0")
                ]
        finally:
            stack.stop()

    with open(os.path.join(args.out, "compare.csv"), "w") as f:
        f.write("round,target,mode,rps,p50_ms,p99_ms,p999_ms,errors\n")
        for r in rows:
            f.write(f'{r["round"]},{r["target"]},{r["mode"]},{r["rps"]:.1f},{r["p50"]:.3f},{r["p99"]:.3f},{r["p999"]:.3f},{r["errors"]}\n')

    def med(t, mode, key):
        return statistics.median(r[key] for r in rows if r["target"] == t and r["mode"] == mode)

    lines = [
        "# Sluice vs nginx vs HAProxy",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, {version(['uname', '-r'])}",
        f"- versions: sluice {version([args.sluice, '--version'])}; {version(['nginx', '-v'])}; {version(['haproxy', '-v'])}; {version(['wrk', '-v'])}; {version(['oha', '--version'])}",
        f"- command: `{command}`",
        f"- setup: two upstream instances (nginx, 1 worker, `return 200`); each proxy with {args.workers} worker(s); "
        f"wrk -t1 -c{args.conns} for {args.duration}s (closed loop){'; a new connection per request' if args.close else ''}; oha -q {args.rate} -c{args.rate_conns} for {args.duration}s "
        f"(fixed rate, latency corrected); {args.rounds} rounds, order rotated each round; medians below",
        "",
        f"| target | requests/s (max) | p50 | p99 | p99.9 | at {args.rate}/s: p50 | p99 | p99.9 | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in targets:
        errors = sum(r["errors"] for r in rows if r["target"] == t)
        lines.append(
            f"| {t} | {med(t, 'max', 'rps'):,.0f} | {med(t, 'max', 'p50'):.2f} ms | {med(t, 'max', 'p99'):.2f} ms | {med(t, 'max', 'p999'):.2f} ms"
            f" | {med(t, 'rate', 'p50'):.2f} ms | {med(t, 'rate', 'p99'):.2f} ms | {med(t, 'rate', 'p999'):.2f} ms | {errors} |"
        )
    lines += ["", "Strategy fallbacks during the run (non-zero only): " + (", ".join(fallbacks) or "none"), ""]
    lines += ["Every run:", "", "| round | target | mode | requests/s | p50 | p99 | p99.9 | errors |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f'| {r["round"]} | {r["target"]} | {r["mode"]} | {r["rps"]:,.0f} | {r["p50"]:.2f} | {r["p99"]:.2f} | {r["p999"]:.2f} | {r["errors"]} |')
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    chart(rows, targets, os.path.join(args.out, "compare.png"), args.rate)
    print("\n".join(lines[: 10 + len(targets)]))


if __name__ == "__main__":
    main()
