#!/usr/bin/env python3
"""TLS, HTTP/2 and plain HTTP/1.1: Sluice against nginx and HAProxy, same run, same upstream,
same workers.

    python3 benches/load/tls.py                      # 3 rounds of 5 s per row; ~4 min
    python3 benches/load/tls.py --key rsa            # RSA-2048 certificate (default ECDSA P-256)
    python3 benches/load/tls.py --sluice /tmp/old/sluice --proxies sluice   # another build
    python3 benches/load/tls.py --rows new-http --syscalls   # + system calls per request (perf)

Starts one upstream (nginx, one worker, `return 200`), then each proxy with `--workers`
workers, TLS 1.3 on all three with the same certificate, ALPN h2 and http/1.1, a
cleartext port that takes h2 with prior knowledge (h2c) and one for plain HTTP/1.1 (Sluice
takes both on one port). Every round drives every proxy, in an order rotated each round,
with:

  http-ka     wrk -t1 -c32, plain HTTP/1.1 keep-alive
  new-http    wrk -t1 -c16 with `Connection: close`: a plain connection per request

  https-ka    wrk -t1 -c32, HTTPS/1.1 keep-alive
  h2-tls      h2load -c16 -m10, HTTP/2 over TLS
  h2c         h2load -c16 -m10, HTTP/2 cleartext, prior knowledge
  new-tls     wrk -t1 -c16 with `Connection: close`: a TLS connection per request (wrk keeps
              the session of its last connection, so these resume when the server lets it)
  full-hs     tls-handshakes (benches/src/bin) 16 loops of connect, full handshake (no session
              offered), one request, close
  resumed-hs  the same, offering a ticket the server sent earlier on every connection (the
              column `resumed` says how many the server took)

and reads the proxy's CPU (utime + stime of all its processes and threads) around each run:
CPU per request or per handshake is the figure a 2-core box shared with the load generator
can compare fairly. Prints a markdown table of medians and every round. Loopback only; needs
nginx, haproxy, wrk, h2load (nghttp2-client) and openssl (the certificate).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, Procs, build_release, children, cpu_ticks, free_port, haproxy_config, need, nginx_upstream, start_sluice, version, wait_port  # noqa: E402

LUA = os.path.join(ROOT, "benches", "load", "percentiles.lua")
HANDSHAKES = os.path.join(ROOT, "target", "release", "tls-handshakes")
ROWS = ["http-ka", "new-http", "https-ka", "h2-tls", "h2c", "new-tls", "full-hs", "resumed-hs"]
PROXIES = ["sluice", "nginx", "haproxy"]


def certificate(work, key):
    """A self-signed certificate for localhost and 127.0.0.1; returns (cert, key, both in one
    file for HAProxy)."""
    cert, keyfile, both = (os.path.join(work, n) for n in ("cert.pem", "key.pem", "both.pem"))
    algo = ["-newkey", "rsa:2048"] if key == "rsa" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(
        ["openssl", "req", "-x509", *algo, "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", keyfile, "-out", cert],
        check=True, capture_output=True,
    )
    with open(both, "w") as f:
        f.write(open(cert).read() + open(keyfile).read())
    return cert, keyfile, both


class Proxy:
    """One proxy under test: its TLS and cleartext ports and the pids whose CPU is its own."""

    def __init__(self, name, tls_port, plain_port, h1_port, pids, process):
        self.name, self.tls_port, self.plain_port, self.h1_port = name, tls_port, plain_port, h1_port
        self.pids, self.process = pids, process

    def ticks(self):
        return cpu_ticks(*self.pids())

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def start_sluice_tls(procs, work, workers, up, cert, key, binary):
    services = os.path.join(work, "services.toml")
    with open(services, "w") as f:
        f.write(f'[services.bench]\ninstances = [{{ id = "a", addr = "127.0.0.1:{up}" }}]\n')
    tls_port = free_port()
    body = (
        f'[proxy.tls]\nlisten = ["127.0.0.1:{tls_port}"]\nh2 = true\n'
        f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n\n'
        f'[registry]\nkind = "file"\npath = "{services}"\n\n'
        '[[routes]]\npath_prefix = "/"\nservice = "bench"\nstrategy = "native-round-robin"\n'
    )
    p, port, _ = start_sluice(procs, work, body, workers, binary=binary)
    # One cleartext port: HTTP/1.1, or h2 by its preface.
    return Proxy("sluice", tls_port, port, port, lambda: [p.pid], p)


def start_nginx_tls(procs, work, workers, up, cert, key):
    tls_port, plain_port, h1_port = free_port(), free_port(), free_port()
    d = os.path.join(work, "proxy-nginx")
    os.makedirs(d, exist_ok=True)
    location = """location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }"""
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(f"""worker_processes {workers}; daemon off; error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p;
  fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  keepalive_requests 1000000; http2_max_requests 1000000;
  upstream bench {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{tls_port} ssl http2;
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    {location}
  }}
  server {{ listen 127.0.0.1:{plain_port} http2; {location} }}
  server {{ listen 127.0.0.1:{h1_port}; {location} }}
}}
""")
    p = procs.spawn(["nginx", "-c", f"{d}/nginx.conf", "-p", d], os.path.join(d, "stderr.log"))
    wait_port(tls_port)
    return Proxy("nginx", tls_port, plain_port, h1_port, lambda: [p.pid, *children(p.pid)], p)


def start_haproxy_tls(procs, work, workers, up, both):
    tls_port, plain_port, h1_port = free_port(), free_port(), free_port()
    conf = haproxy_config(
        os.path.join(work, "haproxy.cfg"),
        workers,
        [f"127.0.0.1:{tls_port} ssl crt {both} alpn h2,http/1.1", f"127.0.0.1:{plain_port} proto h2", f"127.0.0.1:{h1_port}"],
        [up],
        proto_rules=[
            "http-request set-header X-Forwarded-Proto https if { ssl_fc }",
            "http-request set-header X-Forwarded-Proto http unless { ssl_fc }",
        ],
    )
    p = procs.spawn(["haproxy", "-f", conf], os.path.join(work, "haproxy.log"))
    wait_port(tls_port)
    return Proxy("haproxy", tls_port, plain_port, h1_port, lambda: [p.pid], p)


def wrk(url, conns, duration, close):
    extra = ["-H", "Connection: close"] if close else []
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-s", LUA, *extra, url],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"wrk printed no result for {url}:\n{out}")
    fields = dict(kv.split("=") for kv in line.split()[1:])
    rps = float(fields["rps"])
    return {"rate": rps, "count": rps * duration, "p99": int(fields["p99"]) / 1000, "errors": int(fields["errors"])}


def h2load(url, duration):
    out = subprocess.run(
        ["h2load", "-c16", "-m10", "-t1", "-D", str(duration), url],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not done or not rate:
        sys.exit(f"h2load printed no result for {url}:\n{out}")
    return {"rate": float(rate.group(1)), "count": int(done.group(2)), "p99": None,
            "errors": int(done.group(3)) + int(done.group(4))}


def handshakes(port, duration, mode):
    """benches/src/bin/tls-handshakes: 16 loops of connect, handshake, one request, close."""
    out = subprocess.run(
        [HANDSHAKES, f"127.0.0.1:{port}", "16", str(duration), mode],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"tls-handshakes printed no result for {port}:\n{out}")
    fields = dict(kv.split("=") for kv in line.split()[1:])
    count = int(fields["connections"])
    return {"rate": count / float(fields["seconds"]), "count": count, "p99": None,
            "errors": int(fields["errors"]), "resumed": int(fields["resumed"])}


SYSCALLS = ["accept4", "epoll_wait", "epoll_ctl", "recvfrom", "read", "readv", "sendto", "write", "writev",
            "setsockopt", "getsockopt", "shutdown", "close"]


def context_switches(pids):
    """Voluntary plus involuntary context switches of every thread of `pids`."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                status = open(f"/proc/{pid}/task/{task}/status").read()
            except FileNotFoundError:
                continue
            total += sum(int(n) for n in re.findall(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", status, re.M))
    return total


def count_syscalls(pids, seconds):
    """`perf stat` of the syscall tracepoints in SYSCALLS on `pids` for `seconds`: a Popen."""
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    return subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids)),
                             "--", "sleep", str(seconds)], stderr=subprocess.PIPE, text=True)


def syscall_counts(perf):
    """What `count_syscalls` counted, by syscall."""
    counts = {}
    for line in perf.communicate()[1].splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit() and "sys_enter_" in fields[2]:
            counts[fields[2].split("sys_enter_")[1]] = int(fields[0])
    return counts


def drive(proxy, row, duration, syscalls=False):
    tls, plain = f"https://127.0.0.1:{proxy.tls_port}/", f"http://127.0.0.1:{proxy.plain_port}/"
    h1 = f"http://127.0.0.1:{proxy.h1_port}/"
    runs = {
        "http-ka": lambda: wrk(h1, 32, duration, close=False),
        "new-http": lambda: wrk(h1, 16, duration, close=True),
        "https-ka": lambda: wrk(tls, 32, duration, close=False),
        "h2-tls": lambda: h2load(tls, duration),
        "h2c": lambda: h2load(plain, duration),
        "new-tls": lambda: wrk(tls, 16, duration, close=True),
        "full-hs": lambda: handshakes(proxy.tls_port, duration, "full"),
        "resumed-hs": lambda: handshakes(proxy.tls_port, duration, "resumed"),
    }
    hz = os.sysconf("SC_CLK_TCK")
    # Counted over the run's middle (its first and last half second left out).
    window = max(duration - 1, 1)
    switches = context_switches(proxy.pids()) if syscalls else 0
    before = proxy.ticks()
    perf_started = []
    if syscalls:
        start = threading.Timer(0.5, lambda: perf_started.append(count_syscalls(proxy.pids(), window)))
        start.start()
    result = runs[row]()
    used = (proxy.ticks() - before) / hz
    result["cpu_us"] = used / max(result["count"], 1) * 1e6
    if syscalls:
        start.join()
        perf = perf_started[0]
        counts = syscall_counts(perf)
        in_window = max(result["rate"] * window, 1)
        result["syscalls"] = {name: n / in_window for name, n in counts.items() if n}
        result["switches"] = (context_switches(proxy.pids()) - switches) / max(result["count"], 1)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--key", choices=["ecdsa", "rsa"], default="ecdsa")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--proxies", default=",".join(PROXIES))
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target", "release", "sluice"))
    ap.add_argument("--syscalls", action="store_true",
                    help="also count each proxy's system calls (perf stat, needs root or "
                         "perf_event_paranoid <= -1) and context switches per request")
    args = ap.parse_args()
    need("nginx", "haproxy", "wrk", "h2load", "openssl", *(["perf"] if args.syscalls else []))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "sluice-benches", "--bin", "tls-handshakes"], cwd=ROOT, check=True)
    if args.sluice.startswith(ROOT):
        build_release("sluice")
    rows, proxies = args.rows.split(","), args.proxies.split(",")
    results = {}  # (proxy, row) -> [result per round]
    procs = Procs()
    with tempfile.TemporaryDirectory() as work:
        try:
            up = nginx_upstream(procs, work)
            cert, key, both = certificate(work, args.key)
            start = {
                "sluice": lambda: start_sluice_tls(procs, work, args.workers, up, cert, key, args.sluice),
                "nginx": lambda: start_nginx_tls(procs, work, args.workers, up, cert, key),
                "haproxy": lambda: start_haproxy_tls(procs, work, args.workers, up, both),
            }
            for round_ in range(args.rounds):
                order = proxies[round_ % len(proxies):] + proxies[:round_ % len(proxies)]
                for name in order:
                    proxy = start[name]()
                    time.sleep(0.5)
                    for row in rows:
                        r = drive(proxy, row, args.duration, args.syscalls)
                        results.setdefault((name, row), []).append(r)
                        p99 = f", p99 {r['p99']:.2f} ms" if r["p99"] is not None else ""
                        if "resumed" in r:
                            p99 += f", {r['resumed']} of {r['count']} resumed"
                        print(f"round {round_ + 1} {name:8} {row:10} {r['rate']:9,.0f}/s  "
                              f"{r['cpu_us']:6.1f} us CPU each{p99}, errors {r['errors']}", flush=True)
                        if "syscalls" in r:
                            calls = " ".join(f"{k} {v:.2f}" for k, v in sorted(r["syscalls"].items()))
                            print(f"    per request: {sum(r['syscalls'].values()):.1f} system calls ({calls}); "
                                  f"{r['switches']:.2f} context switches", flush=True)
                    proxy.stop()
        finally:
            procs.stop()
    print(f"\n{args.rounds} rounds x {args.duration} s, {args.workers} workers each, {args.key} key; "
          f"{version(['nginx', '-v'])}; {version(['haproxy', '-v'])}; {version(['openssl', 'version'])}\n")
    print("| traffic | " + " | ".join(f"{p} /s | {p} CPU µs" for p in proxies) + " |")
    print("| --- |" + " ---: | ---: |" * len(proxies))
    for row in rows:
        cells = []
        for p in proxies:
            rs = results.get((p, row), [])
            cells.append(f"{statistics.median(r['rate'] for r in rs):,.0f}" if rs else "-")
            cells.append(f"{statistics.median(r['cpu_us'] for r in rs):.1f}" if rs else "-")
        print(f"| {row} | " + " | ".join(cells) + " |")
    if args.syscalls:
        print("\nSystem calls per request (median of rounds):\n")
        print("| traffic | " + " | ".join(proxies) + " |")
        print("| --- |" + " ---: |" * len(proxies))
        for row in rows:
            cells = [f"{statistics.median(sum(r['syscalls'].values()) for r in results[(p, row)]):.1f}"
                     if results.get((p, row)) else "-" for p in proxies]
            print(f"| {row} | " + " | ".join(cells) + " |")
    p99s = [(p, row, statistics.median(r["p99"] for r in results[(p, row)]))
            for row in rows for p in proxies if results.get((p, row)) and results[(p, row)][0]["p99"] is not None]
    if p99s:
        print("\np99 (wrk, median of rounds): " + "; ".join(f"{row} {p} {v:.2f} ms" for p, row, v in p99s))


if __name__ == "__main__":
    main()
