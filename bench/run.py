"""
Benchmark edgeproxy against a direct backend and against nginx as a reverse proxy.

Everything runs on 127.0.0.1 with ephemeral ports, in a temporary directory:

* a fast backend (nginx, else ``bench/backend.py``) answering every request with a
  fixed body (``--body`` bytes; ``/large`` gets 1 MiB),
* ``twistd -n edgeproxy`` with an https and a plain-http listener (one route,
  ``plain_http=True``), access logging on, its stdout going to a file,
* nginx as a TLS-terminating reverse proxy with a keep-alive upstream pool, when
  nginx is installed (a second, separate nginx instance),

then ``wrk --latency`` (warm-up first) against each target, measuring the CPU
time and peak RSS of the server under test from ``/proc``.  Prints one table per
scenario and writes everything to ``bench/out/results-<timestamp>.json``.

Run: ``.venv/bin/python bench/run.py [--duration 10] [--connections 50]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
TWISTD = str(Path(sys.executable).with_name("twistd"))
HOST = "bench.test"
# The certificate also covers localhost: wrk sends the URL's host as SNI and
# https://bench.test/ would need a DNS entry.
CERT_NAMES = (HOST, "localhost", "127.0.0.1")
LARGE_BODY = 1 << 20
LARGE_PATH = "/large"
SMALL_PATH = "/"
STARTUP_TIMEOUT = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

_LISTENING = re.compile(r"edgeproxy (https|http|admin) listener on ([0-9.:a-f]+):(\d+)")
_ACCESS_STATUS = re.compile(r'"[A-Z]+ \S+ HTTP/[0-9.]+" (\d{3}) ')
_ACCESS_OUTCOME = re.compile(r" outcome=(\S+)")
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[")
_PROBLEM = re.compile(r"#(warn|error|critical)\]|Traceback|Unhandled")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback port that was free a moment ago (nginx cannot report an ephemeral port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def system_cpu_seconds() -> tuple[float, float]:
    """(user + nice + system, steal) of all CPUs, from /proc/stat, in seconds."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, steal = fields[0], fields[1], fields[2], fields[7]
    return (user + nice + system) / CLK_TCK, steal / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this script's waited-for children (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_kib(pids: Sequence[int]) -> int:
    """Sum of VmHWM (peak resident set size) of the given processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


@dataclass
class Server:
    """A process this script started (nginx's workers are found as its children)."""

    name: str
    popen: subprocess.Popen[bytes]
    workdir: Path
    output: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        return [self.pid, *children_of(self.pid)]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        children = children_of(self.pid)
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(5)
        for child in children:  # e.g. nginx workers whose master was killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


class Processes:
    """Every process started, stopped in reverse order by :meth:`stop_all`."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.servers: list[Server] = []

    def command(self, argv: Sequence[str], cpu: str) -> list[str]:
        return ["taskset", "-c", cpu, *argv] if self.pin else list(argv)

    def start(
        self, name: str, argv: Sequence[str], cpu: str, workdir: Path, env: dict[str, str] | None
    ) -> Server:
        output = workdir / f"{name}.out"
        with output.open("wb") as out:
            # A new session: Ctrl-C reaches only this script, which then stops
            # everything in order (and by pid) from its finally block.
            popen = subprocess.Popen(
                self.command(argv, cpu),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        server = Server(name, popen, workdir, output)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        while self.servers:
            server = self.servers.pop()
            try:
                server.stop()
            except Exception as e:
                log(f"warning: stopping {server.name} (pid {server.pid}): {e}")


def http_get(port: int, path: str, tls: bool, timeout: float = 5.0) -> tuple[int, int]:
    """One GET with Host: bench.test; returns (status, body length)."""
    conn: http.client.HTTPConnection
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=timeout)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", HOST)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, len(response.read())
    finally:
        conn.close()


def wait_until_serving(server: Server, port: int, tls: bool = False) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            break
        try:
            http_get(port, SMALL_PATH, tls, timeout=2.0)
            return
        except (OSError, http.client.HTTPException) as e:
            last = e
            time.sleep(0.05)
    raise RuntimeError(
        f"{server.name} did not serve on port {port} ({last}):\n{tail(server.output)}"
    )


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --------------------------------------------------------------------------- nginx

_NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    server_tokens off;
{body}
}}
"""

_NGINX_BACKEND = """\
    open_file_cache max=16 inactive=3600s;
    open_file_cache_valid 3600s;
    etag off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
        location = {large_path} {{ try_files /large.bin =404; }}
        location / {{ {small} }}
    }}
"""

_NGINX_PROXY = """\
    upstream b {{
        server 127.0.0.1:{backend_port};
        keepalive 32;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        listen 127.0.0.1:{https_port} ssl backlog=4096;
        server_name {host} localhost 127.0.0.1;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location / {{
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Relay through memory like edgeproxy does, never spool to a temp file.
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )


def start_nginx(
    procs: Processes,
    nginx: str,
    name: str,
    workdir: Path,
    cpu: str,
    body: str,
    ports: dict[str, int],
    access_log: str = "off",
) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    # As root, nginx's workers would run as nobody and not read the temp dir.
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        _NGINX_MAIN.format(user=user, dir=workdir, access_log=access_log, body=body)
    )
    server = procs.start(
        name, [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)],
        cpu, workdir, env=None,
    )
    server.ports = ports
    return server


def start_nginx_backend(
    procs: Processes, nginx: str, workdir: Path, cpu: str, body_size: int
) -> Server:
    www = workdir / "www"
    www.mkdir(parents=True)
    (www / "large.bin").write_bytes(b"x" * LARGE_BODY)
    if body_size <= 4096:
        small = f'return 200 "{"x" * body_size}";'
    else:
        (www / "small.bin").write_bytes(b"x" * body_size)
        small = "try_files /small.bin =404;"
    for attempt in range(3):
        port = free_port()
        body = _NGINX_BACKEND.format(port=port, dir=workdir, large_path=LARGE_PATH, small=small)
        server = start_nginx(procs, nginx, "backend-nginx", workdir, cpu, body, {"http": port})
        try:
            wait_until_serving(server, port)
            return server
        except RuntimeError:
            if attempt == 2:
                raise
            server.stop()
    raise AssertionError("unreachable")


def start_nginx_proxy(
    procs: Processes,
    nginx: str,
    workdir: Path,
    cpu: str,
    backend_port: int,
    pem: bytes,
    access_log: bool,
) -> Server:
    workdir.mkdir(parents=True)
    key, cert = split_pem(pem)
    (workdir / "key.pem").write_bytes(key)
    (workdir / "cert.pem").write_bytes(cert)
    for attempt in range(3):
        ports = {"http": free_port(), "https": free_port()}
        body = _NGINX_PROXY.format(
            backend_port=backend_port,
            http_port=ports["http"],
            https_port=ports["https"],
            host=HOST,
            dir=workdir,
        )
        server = start_nginx(
            procs, nginx, "proxy-nginx", workdir, cpu, body, ports,
            access_log=f"{workdir}/access.log" if access_log else "off",
        )
        try:
            wait_until_serving(server, ports["http"])
            wait_until_serving(server, ports["https"], tls=True)
            return server
        except RuntimeError:
            if attempt == 2:
                raise
            server.stop()
    raise AssertionError("unreachable")


def split_pem(pem: bytes) -> tuple[bytes, bytes]:
    """(private key, certificates) from a combined PEM file."""
    key = b""
    certs = b""
    for match in re.finditer(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n?", pem, re.S):
        if match.group(1) == b"CERTIFICATE":
            certs += match.group(0)
        else:
            key += match.group(0)
    if not key or not certs:
        raise ValueError("PEM without a key or a certificate")
    return key, certs


# --------------------------------------------------------------------------- backends


def start_python_backend(procs: Processes, workdir: Path, cpu: str, body_size: int) -> Server:
    workdir.mkdir(parents=True)
    argv = [
        sys.executable, str(BENCH_DIR / "backend.py"), "--port", "0",
        "--body", str(body_size), "--large", str(LARGE_BODY),
    ]
    server = procs.start("backend-python", argv, cpu, workdir, env=None)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    pattern = re.compile(r"backend listening on [0-9.]+:(\d+)")
    while time.monotonic() < deadline and server.alive():
        match = pattern.search(server.output.read_text())
        if match:
            server.ports = {"http": int(match.group(1))}
            wait_until_serving(server, server.ports["http"])
            return server
        time.sleep(0.05)
    raise RuntimeError(f"the python backend did not start:\n{tail(server.output)}")


def start_edgeproxy(
    procs: Processes, workdir: Path, cpu: str, backend_port: int, pem: bytes
) -> Server:
    workdir.mkdir(parents=True)
    certs = workdir / "certs"
    certs.mkdir(mode=0o700)
    pem_path = certs / "bench.pem"
    pem_path.write_bytes(pem)
    pem_path.chmod(0o600)
    config = workdir / "bench_site.py"
    config.write_text(
        "from edgeproxy.config import Cluster, Route, VirtualHost\n\n"
        f'bench = Cluster("bench", endpoints=["127.0.0.1:{backend_port}"])\n\n'
        "virtual_hosts = [\n"
        f"    VirtualHost({list(CERT_NAMES)!r}, routes=[Route(\"/\", bench, plain_http=True)]),\n"
        "]\n"
    )
    loopback = "tcp:0:interface=127.0.0.1"
    argv = [
        TWISTD, "--pidfile=", "-n", "edgeproxy",
        "--config", str(config), "--certs", str(certs),
        "--https", loopback, "--http", loopback, "--admin", loopback,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # stdout (startup lines, then one access-log line per request) goes to a file.
    server = procs.start("edgeproxy", argv, cpu, workdir, env=env)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline and server.alive():
        for match in _LISTENING.finditer(server.output.read_text(errors="replace")):
            server.ports.setdefault(match.group(1), int(match.group(3)))
        if {"https", "http", "admin"} <= set(server.ports):
            wait_until_serving(server, server.ports["http"])
            wait_until_serving(server, server.ports["https"], tls=True)
            return server
        time.sleep(0.05)
    raise RuntimeError(f"edgeproxy did not start:\n{tail(server.output)}")


# --------------------------------------------------------------------------- wrk

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: dict[str, int]
    output: str

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


def parse_wrk(output: str) -> WrkResult:
    total = re.search(r"(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", output)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (total and rps and p50 and p99):
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = {}
    if sock:
        socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)
        )
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_duration_ms(total.group(2) + total.group(3)) / 1000.0,
        requests_per_s=float(rps.group(1)),
        p50_ms=_duration_ms(p50.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=socket_errors,
        output=output,
    )


def run_wrk(
    procs: Processes, url: str, duration: float, connections: int, threads: int, cpu: str
) -> WrkResult:
    argv = [
        "wrk", "--latency", "-t", str(threads), "-c", str(connections),
        "-d", f"{max(1, round(duration))}s", "-H", f"Host: {HOST}", url,
    ]
    done = subprocess.run(
        procs.command(argv, cpu), capture_output=True, text=True, timeout=duration + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------- measurement


@dataclass
class Target:
    name: str
    kind: str  # "direct", "edgeproxy" or "nginx"
    scheme: str
    server: Server

    def url(self, path: str) -> str:
        # wrk sends the URL's host as SNI; the certificate covers localhost.
        if self.scheme == "https":
            return f"https://localhost:{self.server.ports['https']}{path}"
        return f"http://127.0.0.1:{self.server.ports['http']}{path}"


@dataclass
class Measurement:
    target: str
    kind: str
    scheme: str
    server_pid: int
    requests: int
    seconds: float
    requests_per_s: float
    mb_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_seconds: float
    cpu_us_per_request: float
    cpu_utilization: float
    peak_rss_kib: int
    other_cpu_utilization: float
    steal_utilization: float
    non_2xx_3xx: int
    socket_errors: dict[str, int]
    sanity_status: int
    sanity_body_bytes: int
    wrk_output: str
    ratio_vs_direct: float | None = None
    ratio_vs_nginx: float | None = None


def measure(
    procs: Processes,
    target: Target,
    path: str,
    body_size: int,
    args: argparse.Namespace,
    connections: int,
) -> Measurement:
    port = target.server.ports[target.scheme]
    status, length = http_get(port, path, target.scheme == "https")
    if status != 200 or length != body_size:
        log(f"warning: {target.name} {path}: status {status}, {length} body bytes "
            f"(expected 200 and {body_size})")
    url = target.url(path)
    if args.warmup > 0:
        run_wrk(procs, url, args.warmup, connections, args.threads, "0")
    pids = target.server.pids()
    ours = sorted({pid for server in procs.servers for pid in server.pids()})
    before = cpu_seconds(pids)
    ours_before, wrk_before, (system_before, steal_before) = (
        cpu_seconds(ours), children_cpu_seconds(), system_cpu_seconds()
    )
    result = run_wrk(procs, url, args.duration, connections, args.threads, "0")
    used = cpu_seconds(pids) - before
    system_after, steal_after = system_cpu_seconds()
    # CPU used by processes this script did not start: a noise indicator.
    other = (system_after - system_before) - (cpu_seconds(ours) - ours_before) - (
        children_cpu_seconds() - wrk_before
    )
    if not target.server.alive():
        raise RuntimeError(f"{target.name} died during the run:\n{tail(target.server.output)}")
    requests = max(result.requests, 1)
    measurement = Measurement(
        target=target.name,
        kind=target.kind,
        scheme=target.scheme,
        server_pid=target.server.pid,
        requests=result.requests,
        seconds=result.seconds,
        requests_per_s=result.requests_per_s,
        mb_per_s=result.requests_per_s * body_size / 1e6,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_seconds=round(used, 3),
        cpu_us_per_request=used / requests * 1e6,
        cpu_utilization=used / result.seconds if result.seconds else 0.0,
        peak_rss_kib=peak_rss_kib(pids),
        other_cpu_utilization=max(0.0, other) / result.seconds if result.seconds else 0.0,
        steal_utilization=(steal_after - steal_before) / result.seconds if result.seconds else 0.0,
        non_2xx_3xx=result.non_2xx_3xx,
        socket_errors=result.socket_errors,
        sanity_status=status,
        sanity_body_bytes=length,
        wrk_output=result.output,
    )
    if result.errors:
        log(f"warning: {target.name}: {result.non_2xx_3xx} non-2xx/3xx responses, "
            f"socket errors {result.socket_errors}")
    log(f"  {target.name:<16} {result.requests_per_s:>10.0f} req/s  "
        f"p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  "
        f"cpu {measurement.cpu_us_per_request:.0f} us/req")
    return measurement


def add_ratios(results: list[Measurement]) -> None:
    direct = next((m for m in results if m.kind == "direct"), None)
    nginx = {m.scheme: m for m in results if m.kind == "nginx"}
    for m in results:
        if direct is not None and m.kind != "direct" and direct.requests_per_s:
            m.ratio_vs_direct = m.requests_per_s / direct.requests_per_s
        if m.kind == "edgeproxy" and m.scheme in nginx and nginx[m.scheme].requests_per_s:
            m.ratio_vs_nginx = m.requests_per_s / nginx[m.scheme].requests_per_s


def run_scenario(
    procs: Processes,
    targets: list[Target],
    path: str,
    body_size: int,
    args: argparse.Namespace,
    connections: int,
) -> list[Measurement]:
    results = [measure(procs, t, path, body_size, args, connections) for t in targets]
    add_ratios(results)
    return results


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: list[Measurement], large: bool) -> str:
    first = "MB/s" if large else "req/s"
    header = (
        f"{'target':<16} {first:>9} {'req/s' if large else '':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU us/req':>10} {'CPU %':>6} {'RSS MiB':>8} {'/direct':>8} {'/nginx':>7} "
        f"{'errors':>6} {'other%':>6}"
    )
    lines = [header, "-" * len(header)]
    for m in results:
        head = f"{m.mb_per_s:>9.1f} {m.requests_per_s:>8.0f}" if large else (
            f"{m.requests_per_s:>9.0f} {'':>8}"
        )
        lines.append(
            f"{m.target:<16} {head} {m.p50_ms:>8.2f} {m.p99_ms:>8.2f} "
            f"{m.cpu_us_per_request:>10.0f} {m.cpu_utilization * 100:>6.0f} "
            f"{m.peak_rss_kib / 1024:>8.1f} {_ratio(m.ratio_vs_direct):>8} "
            f"{_ratio(m.ratio_vs_nginx):>7} {m.non_2xx_3xx + sum(m.socket_errors.values()):>6} "
            f"{m.other_cpu_utilization * 100:>6.0f}"
        )
    return "\n".join(lines)


def markdown_table(results: list[Measurement], large: bool) -> str:
    lines = [
        "| target | " + ("MB/s | " if large else "")
        + "req/s | p50 ms | p99 ms | CPU µs/req | CPU % | peak RSS MiB "
        "| ÷ direct | ÷ nginx | errors | other CPU % |",
        "|---|" + ("---:|" if large else "") + "---:|" * 10,
    ]
    for m in results:
        lines.append(
            f"| {m.target} | " + (f"{m.mb_per_s:.1f} | " if large else "")
            + f"{m.requests_per_s:.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | "
            f"{m.cpu_us_per_request:.0f} | {m.cpu_utilization * 100:.0f} | "
            f"{m.peak_rss_kib / 1024:.1f} | {_ratio(m.ratio_vs_direct)} | "
            f"{_ratio(m.ratio_vs_nginx)} | {m.non_2xx_3xx + sum(m.socket_errors.values())} | "
            f"{m.other_cpu_utilization * 100:.0f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- proxy log


def summarize_proxy_log(path: Path) -> dict[str, Any]:
    """Status and outcome counts of edgeproxy's access-log lines, and every line logged
    at warn level or above (or not a log line at all, e.g. a traceback)."""
    statuses: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    other: list[str] = []
    other_count = 0
    with path.open(errors="replace") as f:
        for line in f:
            status = _ACCESS_STATUS.search(line)
            if status and " outcome=" in line:
                outcome = _ACCESS_OUTCOME.search(line)
                statuses[status.group(1)] += 1
                outcomes[outcome.group(1) if outcome else "?"] += 1
            elif _PROBLEM.search(line) or not _LOG_LINE.match(line):
                other_count += 1
                if len(other) < 40:
                    other.append(line.rstrip("\n"))
    return {
        "access_log_statuses": dict(statuses),
        "access_log_outcomes": dict(outcomes),
        "problem_lines": other_count,
        "problem_sample": other,
    }


# --------------------------------------------------------------------------- main


def machine_info(pin: bool, backend: str) -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {"python": platform.python_version()}
    with contextlib.suppress(Exception):
        import twisted

        versions["twisted"] = twisted.__version__
    nginx = nginx_binary()
    if nginx:
        done = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
        versions["nginx"] = done.stderr.strip()
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    versions["wrk"] = (done.stdout or done.stderr).splitlines()[0].strip()
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = BENCH_DIR.parent
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "edgeproxy"],
                               capture_output=True, text=True, check=True)
        git = {"commit": head.stdout.strip(),
               "edgeproxy_uncommitted_files": len(dirty.stdout.splitlines())}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "pinning": "wrk+backend on CPU 0, proxy on CPU 1" if pin else "none",
        "backend": backend,
        "versions": versions,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark edgeproxy (see bench/README.md).")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--large-connections", type=int, default=10,
                   help="connections for the 1 MiB scenario")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--body", type=int, default=1024, help="small response body, bytes")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--no-large", dest="large", action="store_false",
                   help="skip the 1 MiB-body throughput scenario")
    p.add_argument("--no-nginx-proxy", dest="nginx_proxy", action="store_false",
                   help="do not compare against nginx as a reverse proxy")
    p.add_argument("--nginx-access-log", action="store_true",
                   help="turn nginx-proxy's access log on (edgeproxy's is always on)")
    p.add_argument("--python-backend", action="store_true",
                   help="use bench/backend.py even if nginx is installed")
    p.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.duration < 1 or args.connections < 1 or args.threads < 1 or args.body < 0:
        p.error("--duration must be >= 1, --connections/--threads >= 1, --body >= 0")
    if args.threads > args.connections:
        p.error("--threads must not exceed --connections")
    return args


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the finally block still stops everything;
    SIGINT raises KeyboardInterrupt even if this script was started with it ignored."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("error: wrk is not installed (apt-get install wrk)")
        return 2
    pin = args.pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if args.pin and not pin:
        log("note: not pinning (needs taskset and at least 2 CPUs)")
    nginx = nginx_binary()
    from edgeproxy.devcert import make_dev_certificate

    pem = make_dev_certificate(CERT_NAMES)
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-"))
    procs = Processes(pin)
    report: dict[str, Any] = {}
    try:
        with sigterm_as_exit():
            if nginx and not args.python_backend:
                backend = start_nginx_backend(procs, nginx, tmp / "backend", "0", args.body)
                backend_name = f"nginx ({nginx}, 1 worker, access_log off)"
            else:
                backend = start_python_backend(procs, tmp / "backend", "0", args.body)
                backend_name = "bench/backend.py (asyncio)"
            backend_port = backend.ports["http"]
            edge = start_edgeproxy(procs, tmp / "edgeproxy", "1", backend_port, pem)
            targets = [
                Target("direct", "direct", "http", backend),
                Target("edgeproxy http", "edgeproxy", "http", edge),
                Target("edgeproxy https", "edgeproxy", "https", edge),
            ]
            if nginx and args.nginx_proxy:
                proxy = start_nginx_proxy(
                    procs, nginx, tmp / "nginx-proxy", "1", backend_port, pem,
                    args.nginx_access_log,
                )
                targets += [
                    Target("nginx http", "nginx", "http", proxy),
                    Target("nginx https", "nginx", "https", proxy),
                ]
            info = machine_info(pin, backend_name)
            report = {
                "machine": info,
                "settings": {
                    k: v for k, v in vars(args).items() if k not in ("keep_temp",)
                } | {"pinned": pin, "edgeproxy_access_log": "on (stdout to a file)",
                     "nginx_proxy_access_log": "on" if args.nginx_access_log else "off"},
                "servers": {t.name: t.url(SMALL_PATH) for t in targets},
            }
            log(f"backend: {backend_name} on 127.0.0.1:{backend_port}")
            log(f"edgeproxy: pid {edge.pid}, ports {edge.ports}, access log on -> {edge.output}")
            log(f"pinning: {info['pinning']}")
            log(f"small body ({args.body} B), {args.connections} connections, "
                f"{args.duration:g}s each after {args.warmup:g}s warm-up:")
            small = run_scenario(procs, targets, SMALL_PATH, args.body, args, args.connections)
            report["small"] = [asdict(m) for m in small]
            large: list[Measurement] = []
            if args.large:
                log(f"large body (1 MiB), {args.large_connections} connections:")
                large = run_scenario(
                    procs, targets, LARGE_PATH, LARGE_BODY, args, args.large_connections
                )
                report["large"] = [asdict(m) for m in large]
            report["edgeproxy_log"] = summarize_proxy_log(edge.output)
            report["edgeproxy_alive_at_end"] = edge.alive()
            report["markdown"] = {"small": markdown_table(small, large=False)}
            if large:
                report["markdown"]["large"] = markdown_table(large, large=True)
    finally:
        procs.stop_all()
        if args.keep_temp:
            log(f"temporary files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    OUT_DIR.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"results-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    info = report["machine"]
    print(f"\nedgeproxy benchmark, {info['date']}, {info['nproc']} x {info['cpu_model']}", file=out)
    print(f"backend: {info['backend']}; edgeproxy access log: on (to a file); "
          f"nginx proxy access log: {report['settings']['nginx_proxy_access_log']}; "
          f"pinning: {info['pinning']}", file=out)
    print(f"\nsmall body: {args.body} B, {args.connections} connections, "
          f"{args.threads} wrk thread(s), {args.duration:g} s", file=out)
    print(table(small, large=False), file=out)
    if large:
        print(f"\nlarge body: 1 MiB, {args.large_connections} connections, "
              f"{args.duration:g} s", file=out)
        print(table(large, large=True), file=out)
    print("\nCPU us/req, CPU % and RSS are of the server under test (for 'direct': the "
          "backend); /direct and /nginx are requests/s ratios; other% is CPU used meanwhile "
          "by processes this script did not start (noise).", file=out)
    summary = report["edgeproxy_log"]
    print(f"edgeproxy access log statuses: {summary['access_log_statuses']}, outcomes: "
          f"{summary['access_log_outcomes']}, warnings/errors/tracebacks: "
          f"{summary['problem_lines']}", file=out)
    for line in summary["problem_sample"][:10]:
        print(f"  {line}", file=out)
    print(f"\nresults: {path}", file=out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every started process was stopped")
        sys.exit(130)
