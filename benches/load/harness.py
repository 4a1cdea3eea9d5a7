"""Shared pieces of the load benchmarks: free ports, waiting for HTTP or a listener, the
HAProxy configuration every comparison uses, tool versions, the release `sluice` and the test
upstream binary, and gnuplot charts."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLUICE = os.path.join(ROOT, "target", "release", "sluice")
UPSTREAM = os.path.join(ROOT, "target", "release", "sluice-test-upstream")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, what, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} did not answer at {url}")


def wait_port(port, timeout=10.0):
    """Waits until something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def haproxy_config(path, threads, binds, servers, balance=None, proto_rules=None):
    """Writes HAProxy's configuration to `path`: `threads` threads, a frontend on each of
    `binds` (the text after `bind `), a backend of `servers` (ports on 127.0.0.1, named a, b,
    ...) that adds the forwarding headers Sluice adds, so every proxy does the same work.
    `proto_rules`: the `X-Forwarded-Proto` rules (default: always `http`)."""
    proto_rules = proto_rules or ["http-request set-header X-Forwarded-Proto http"]
    with open(path, "w") as f:
        f.write(
            f"""global
  nbthread {threads}
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
"""
            + "".join(f"  bind {b}\n" for b in binds)
            + "  default_backend be\nbackend be\n"
            + (f"  balance {balance}\n" if balance else "")
            + "  option forwardfor\n"
            + "".join(f"  {r}\n" for r in proto_rules)
            + "  http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
            + "".join(f"  server {chr(ord('a') + i)} 127.0.0.1:{p}\n" for i, p in enumerate(servers))
        )
    return path


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def build_release(*packages):
    """Release builds of the named binaries (`sluice`, `sluice-test-upstream`)."""
    args = ["cargo", "build", "--release", "-q"]
    for p in packages:
        args += ["--bin", p]
    subprocess.run(args, cwd=ROOT, check=True)


def need(*tools):
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (Debian: nginx-light haproxy wrk gnuplot-nox etcd-server etcd-client; oha: cargo install oha)")


def metric(admin, prefix):
    """Lines of /metrics starting with `prefix`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics") as r:
        return [l for l in r.read().decode().splitlines() if l.startswith(prefix)]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def thread_ticks(pid):
    """{thread name: utime + stime in clock ticks} of `pid`'s threads (threads of one name
    summed); threads that end while being read are skipped."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    return ticks


def cpu_ticks(*pids):
    """utime + stime of every thread of `pids`, in clock ticks."""
    return sum(sum(thread_ticks(pid).values()) for pid in pids)


def children(pid):
    """The pids of `pid`'s child processes (nginx's workers)."""
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            continue
    return kids


class Procs:
    """Child processes, stopped together."""

    def __init__(self):
        self.procs = []

    def spawn(self, args, log, **kw):
        p = subprocess.Popen(args, stdout=kw.pop("stdout", subprocess.DEVNULL), stderr=open(log, "w"), **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def start_upstream(procs, work, name, delay_ms=0, controlled=False):
    """The test upstream (hyper) as a process, optionally slow; returns its port, or with
    `controlled` (port, process) where `set_delay(process, ms)` changes its delay."""
    port = free_port()
    p = procs.spawn(
        [UPSTREAM, name, f"127.0.0.1:{port}", str(delay_ms)], os.path.join(work, f"{name}.log"),
        stdout=subprocess.PIPE, stdin=subprocess.PIPE if controlled else subprocess.DEVNULL, text=True,
    )
    if p.stdout.readline().strip() != "ready":
        sys.exit(f"upstream {name} did not start")
    return (port, p) if controlled else port


def set_delay(upstream, ms):
    """Every answer of a `controlled` test upstream waits `ms` from now on."""
    upstream.stdin.write(f"delay {ms}\n")
    upstream.stdin.flush()


def nginx_upstream(procs, work):
    """An upstream answering `200 ok` to everything (nginx, one worker) on a free port under
    `work/nginx`; returns the port."""
    port = free_port()
    d = os.path.join(work, "nginx")
    os.makedirs(d)
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; daemon off; error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p;
  fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }} }}
""")
    procs.spawn(["nginx", "-c", f"{d}/nginx.conf", "-p", d], os.path.join(work, "nginx.log"))
    wait_http(f"http://127.0.0.1:{port}/", "upstream")
    return port


def start_sluice(procs, work, config_body, threads=1, binary=None):
    """`sluice serve` (release) with `[proxy]` and `[admin]` on free ports plus `config_body`;
    returns (process, proxy port, admin port)."""
    port, admin = free_port(), free_port()
    conf = os.path.join(work, "sluice.toml")
    with open(conf, "w") as f:
        f.write(
            f'[proxy]\nlisten = ["127.0.0.1:{port}"]\nthreads = {threads}\n\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n[log]\nlevel = "warn"\n\n{config_body}'
        )
    p = procs.spawn([binary or SLUICE, "serve", "--config", conf], os.path.join(work, "sluice.log"))
    wait_http(f"http://127.0.0.1:{admin}/readyz", "sluice")
    return p, port, admin


def oha(url, rate, conns, duration, timeout=None, close=False):
    """A fixed-rate run; returns rps, p50/p99/p99.9 (ms), successes and total. With `close`,
    a new connection per request."""
    return oha_result(oha_start(url, rate, conns, duration, timeout, close), url, duration)


def oha_start(url, rate, conns, duration, timeout=None, close=False):
    """Starts the run of `oha` and returns at once; `oha_result` waits for it."""
    args = ["oha", "-z", f"{duration}s", "-q", str(rate), "-c", str(conns), "--latency-correction", "--no-tui", "--output-format", "json"]
    if timeout:
        args += ["-t", timeout]
    if close:
        args += ["--disable-keepalive"]
    return subprocess.Popen(args + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def oha_result(run, url, duration):
    import json

    stdout, stderr = run.communicate(timeout=duration + 120)
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        sys.exit(f"oha printed no JSON for {url}:\n{stdout}\n{stderr}")
    pct = report["latencyPercentiles"]
    codes = report.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    # Requests still in flight when the run's time is up are aborted by oha itself and
    # reported as "aborted due to deadline": not failures of the target.
    failures = {k: v for k, v in report.get("errorDistribution", {}).items() if "deadline" not in k}
    total = sum(codes.values()) + sum(failures.values())
    return {
        "rps": report["summary"]["requestsPerSec"],
        "p50": (pct.get("p50") or 0) * 1000,
        "p99": (pct.get("p99") or 0) * 1000,
        "p999": (pct.get("p99.9") or 0) * 1000,
        "ok": ok,
        "total": total,
        "errors": total - ok,
    }


def gnuplot(script):
    if shutil.which("gnuplot") is None:
        print("gnuplot not found: no chart", file=sys.stderr)
        return
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
