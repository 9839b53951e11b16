"""
What the benchmark scripts (``run.py``, ``compare.py``, ``resilience.py``,
``backend.py``) share: starting and stopping processes by pid, CPU and RSS from
``/proc``, the test certificate, nginx and edgeproxy set-ups, the asyncio backend
server, wrk's command line and output, the proxy-log summary and the machine info.

Not a script; the others import it with ``bench/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
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
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- /proc


def free_port() -> int:
    """A loopback port that was free a moment ago (nginx cannot report an ephemeral port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
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


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status_kib(pids: Sequence[int], key: str) -> int:
    """Sum of one ``/proc/PID/status`` field (``VmHWM:``, ``VmRSS:``) of the given processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key):
                    total += int(line.split()[1])
    return total


def peak_rss_kib(pids: Sequence[int]) -> int:
    """Sum of VmHWM (peak resident set size) of the given processes."""
    return _status_kib(pids, "VmHWM:")


def rss_kib(pids: Sequence[int]) -> int:
    """Sum of VmRSS (current resident set size) of the given processes."""
    return _status_kib(pids, "VmRSS:")


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


# --------------------------------------------------------------------------- processes


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

    def our_pids(self) -> list[int]:
        """Every process started (and their children), sorted."""
        return sorted({pid for server in self.servers for pid in server.pids()})

    def stop_all(self) -> None:
        while self.servers:
            server = self.servers.pop()
            try:
                server.stop()
            except Exception as e:
                log(f"warning: stopping {server.name} (pid {server.pid}): {e}")


class Meter:
    """CPU of the server under test, and CPU used meanwhile by processes this script did
    not start (noise), between :meth:`start` and :meth:`stop`.  ``count_self``: this
    script's own CPU time is not noise either (else it counts as "other")."""

    def __init__(self, procs: Processes, pids: list[int], count_self: bool = True) -> None:
        self.procs = procs
        self.pids = pids
        self.count_self = count_self
        self.ours = procs.our_pids()

    def _self(self) -> float:
        return self_cpu_seconds() if self.count_self else 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = cpu_seconds(self.pids)
        self.ours0 = cpu_seconds(self.ours)
        self.kids0 = children_cpu_seconds()
        self.self0 = self._self()
        self.sys0, self.steal0 = system_cpu_seconds()

    def deltas(self) -> tuple[float, float, float, float]:
        """(wall, CPU of the server under test, other processes' CPU, steal), seconds."""
        wall = time.monotonic() - self.t0
        used = cpu_seconds(self.pids) - self.cpu0
        sys1, steal1 = system_cpu_seconds()
        other = (sys1 - self.sys0) - (cpu_seconds(self.ours) - self.ours0) - (
            children_cpu_seconds() - self.kids0) - (self._self() - self.self0)
        return wall, used, other, steal1 - self.steal0

    def stop(self) -> dict[str, float]:
        wall, used, other, steal = self.deltas()
        return {
            "wall_seconds": wall,
            "cpu_seconds": used,
            "cpu_utilization": used / wall if wall else 0.0,
            "other_cpu_utilization": max(0.0, other) / wall if wall else 0.0,
            "steal_utilization": steal / wall if wall else 0.0,
        }


def insecure_tls_context() -> ssl.SSLContext:
    """A client context that accepts the self-signed test certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(tls: bool, port: int, timeout: float) -> http.client.HTTPConnection:
    """An HTTP(S) connection to 127.0.0.1 (``localhost``, the certificate's name, for TLS)."""
    if tls:
        return http.client.HTTPSConnection(
            "localhost", port, context=insecure_tls_context(), timeout=timeout
        )
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def target_url(scheme: str, port: int, path: str) -> str:
    # wrk sends the URL's host as SNI; the certificate covers localhost.
    if scheme == "https":
        return f"https://localhost:{port}{path}"
    return f"http://127.0.0.1:{port}{path}"


def http_get(port: int, path: str, tls: bool, timeout: float = 5.0) -> tuple[int, int]:
    """One GET with Host: bench.test; returns (status, body length)."""
    conn = connect(tls, port, timeout)
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


def wait_for_output(server: Server, ready: Callable[[str], bool], interval: float) -> bool:
    """Poll ``server``'s output file until ``ready(text)`` (True), it dies or
    STARTUP_TIMEOUT passes (False)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline and server.alive():
        if ready(server.output.read_text(errors="replace")):
            return True
        time.sleep(interval)
    return False


def start_on_free_ports(
    names: Sequence[str], start: Callable[[dict[str, int]], Server]
) -> Server:
    """``start(ports)`` with fresh free ports (one per name) until the server serves on
    all of them (``https`` with TLS); three attempts, as a port may be taken meanwhile."""
    for attempt in range(3):
        ports = {name: free_port() for name in names}
        server = start(ports)
        server.ports = ports
        try:
            for name in names:
                wait_until_serving(server, ports[name], tls=name == "https")
            return server
        except RuntimeError:
            if attempt == 2:
                raise
            server.stop()
    raise AssertionError("unreachable")


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


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


def add_noise_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a benchmark that waits out and retries other load (compare.py, cache.py)."""
    p.add_argument("--max-other-cpu", type=float, default=10.0,
                   help="%% CPU of processes this script did not start above which a "
                   "measurement is retried (this machine is shared)")
    p.add_argument("--retries", type=int, default=1, help="retries of a noisy measurement")
    p.add_argument("--quiet-wait", type=float, default=15.0,
                   help="seconds to wait at most for the machine to quieten before each")
    p.add_argument("--noise-budget", type=float, default=300.0,
                   help="seconds spent at most, over the whole run, on waiting and retrying "
                   "(then every measurement is taken as it comes and flagged if noisy)")


def can_pin(requested: bool) -> bool:
    """Pinning needs taskset and at least 2 CPUs."""
    return requested and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def stop_and_clean(procs: Processes, tmp: Path, keep_temp: bool) -> None:
    """The scripts' finally block: stop every process, remove (or keep) the temp dir."""
    procs.stop_all()
    if keep_temp:
        log(f"temporary files kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def results_path(prefix: str) -> Path:
    """``bench/out/PREFIX-<UTC timestamp>.json`` (the directory created)."""
    OUT_DIR.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return OUT_DIR / f"{prefix}-{stamp}.json"


def run_main(main: Callable[[], int]) -> None:
    """``sys.exit(main())``; Ctrl-C exits 130 (every process was stopped by then)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every started process was stopped")
        sys.exit(130)


# --------------------------------------------------------------------------- certificates


def dev_certificate() -> bytes:
    """A self-signed ECDSA P-256 key + certificate (PEM) for CERT_NAMES."""
    from edgeproxy.tls.devcert import make_dev_certificate

    return make_dev_certificate(CERT_NAMES)


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


def write_key_and_cert(workdir: Path, pem: bytes) -> None:
    """``key.pem`` and ``cert.pem`` in ``workdir`` (created) from a combined PEM."""
    workdir.mkdir(parents=True)
    key, cert = split_pem(pem)
    (workdir / "key.pem").write_bytes(key)
    (workdir / "cert.pem").write_bytes(cert)


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
{extra}    }}
"""

_NGINX_UPSTREAM = """\
    upstream b {{
        server 127.0.0.1:{backend_port};
        keepalive 32;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
"""

_NGINX_PROXY_SERVER = """\
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        listen 127.0.0.1:{https_port} ssl backlog=4096;
        server_name {host} localhost 127.0.0.1;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        # The same protocol edgeproxy's clients negotiate (nginx 1.22 stops at 1.2).
        ssl_protocols TLSv1.2 TLSv1.3;
"""

# What every nginx proxy location does: the keep-alive pool, relaying through memory.
_NGINX_PROXY_PASS = """\
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Relay through memory like edgeproxy does, never spool to a temp file.
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
"""

_NGINX_PROXY = (
    _NGINX_UPSTREAM + _NGINX_PROXY_SERVER
    + "        location / {{\n" + _NGINX_PROXY_PASS + "        }}\n    }}\n"
)

# bench/cache.py's nginx: _NGINX_PROXY, plus /cached/ through proxy_cache (a zone in the
# temp dir; freshness from the origin's Cache-Control, so no proxy_cache_valid), with
# $upstream_cache_status in a header so that hits can be checked before measuring.
# proxy_max_temp_file_size 0 does not stop caching: nginx writes a cacheable response to
# its cache file whatever that limit says.  tcp_nopush off for the hits: nginx 1.22 sends a
# hit from its cache file with sendfile, and with TCP_CORK (tcp_nopush on) a 100 KiB hit
# over plain http stalls ~40 ms on loopback (about 220 req/s on one connection instead of
# ~19 000); proxied responses never use sendfile, so the pass location is unaffected.
_NGINX_CACHE_PROXY = (
    "    proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:10m max_size=256m "
    "inactive=1d use_temp_path=off;\n"
    + _NGINX_UPSTREAM + _NGINX_PROXY_SERVER
    + "        location / {{\n" + _NGINX_PROXY_PASS + "        }}\n"
    + "        location /cached/ {{\n" + _NGINX_PROXY_PASS
    + "            proxy_cache bench;\n"
    + "            tcp_nopush off;\n"
    + "            add_header X-Cache-Status $upstream_cache_status always;\n"
    + "        }}\n    }}\n"
)


def sbin_binary(name: str) -> str | None:
    """``name`` on PATH, else in /usr/sbin (often not on a user's PATH)."""
    return shutil.which(name) or (
        f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None
    )


def nginx_binary() -> str | None:
    return sbin_binary("nginx")


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
    procs: Processes, nginx: str, workdir: Path, cpu: str, body_size: int,
    cacheable: dict[str, int] | None = None,
) -> Server:
    """The backend nginx: ``/`` answers ``body_size`` bytes, ``/large`` 1 MiB.

    ``cacheable`` (bench/cache.py): for each ``NAME: size``, every path ending in
    ``/NAME`` answers ``size`` bytes with ``Cache-Control: max-age=3600``."""
    www = workdir / "www"
    www.mkdir(parents=True)
    (www / "large.bin").write_bytes(b"x" * LARGE_BODY)
    if body_size <= 4096:
        small = f'return 200 "{"x" * body_size}";'
    else:
        (www / "small.bin").write_bytes(b"x" * body_size)
        small = "try_files /small.bin =404;"
    extra = ""
    for name, size in (cacheable or {}).items():
        if not re.fullmatch(r"[a-z0-9]+", name):
            raise ValueError(f"cacheable object name {name!r}: [a-z0-9]+ only")
        (www / f"{name}.bin").write_bytes(b"x" * size)
        extra += (
            f"        location ~ /{name}$ {{ add_header Cache-Control \"max-age=3600\"; "
            f"try_files /{name}.bin =404; }}\n"
        )

    def start(ports: dict[str, int]) -> Server:
        body = _NGINX_BACKEND.format(
            port=ports["http"], dir=workdir, large_path=LARGE_PATH, small=small, extra=extra
        )
        return start_nginx(procs, nginx, "backend-nginx", workdir, cpu, body, ports)

    return start_on_free_ports(("http",), start)


def start_nginx_proxy(
    procs: Processes,
    nginx: str,
    workdir: Path,
    cpu: str,
    backend_port: int,
    pem: bytes,
    access_log: bool,
    name: str = "proxy-nginx",
    template: str = _NGINX_PROXY,
) -> Server:
    """nginx as a TLS-terminating reverse proxy (``template``: its server block)."""
    write_key_and_cert(workdir, pem)

    def start(ports: dict[str, int]) -> Server:
        body = template.format(
            backend_port=backend_port,
            http_port=ports["http"],
            https_port=ports["https"],
            host=HOST,
            dir=workdir,
        )
        return start_nginx(
            procs, nginx, name, workdir, cpu, body, ports,
            access_log=f"{workdir}/access.log" if access_log else "off",
        )

    return start_on_free_ports(("http", "https"), start)


# --------------------------------------------------------------------------- backends


def start_python_backend(procs: Processes, workdir: Path, cpu: str, body_size: int) -> Server:
    workdir.mkdir(parents=True)
    argv = [
        sys.executable, str(BENCH_DIR / "backend.py"), "--port", "0",
        "--body", str(body_size), "--large", str(LARGE_BODY),
    ]
    server = procs.start("backend-python", argv, cpu, workdir, env=None)
    pattern = re.compile(r"backend listening on [0-9.]+:(\d+)")
    found: list[re.Match[str]] = []

    def ready(text: str) -> bool:
        match = pattern.search(text)
        if match:
            found.append(match)
        return match is not None

    if wait_for_output(server, ready, 0.05):
        server.ports = {"http": int(found[0].group(1))}
        wait_until_serving(server, server.ports["http"])
        return server
    raise RuntimeError(f"the python backend did not start:\n{tail(server.output)}")


_HEADER_END = b"\r\n\r\n"


class KeepAliveProtocol(asyncio.Protocol):
    """An HTTP/1.1 keep-alive server connection answering every request (GETs only,
    no bodies) with the pre-built response ``respond(request head)``."""

    def __init__(self, respond: Callable[[bytes], bytes]) -> None:
        self._respond = respond
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buffer = self._buffer + data
        out: list[bytes] = []
        while True:
            end = buffer.find(_HEADER_END)
            if end < 0:
                break
            head = buffer[:end]
            buffer = buffer[end + len(_HEADER_END) :]
            out.append(self._respond(head))
            if b"\r\nconnection: close" in head.lower():
                self._transport.write(b"".join(out))
                self._transport.close()
                return
        self._buffer = buffer
        if out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))


async def serve_http(
    respond: Callable[[bytes], bytes], port: int, backlog: int, label: str
) -> None:
    """Serve on 127.0.0.1:``port``; print ``LABEL listening on HOST:PORT`` once accepting;
    until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: KeepAliveProtocol(respond), "127.0.0.1", port, backlog=backlog,
        reuse_address=True,
    )
    address = server.sockets[0].getsockname()
    print(f"{label} listening on {address[0]}:{address[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


# --------------------------------------------------------------------------- edgeproxy


def single_route_config(backend_port: int) -> str:
    """An edgeproxy site config: one cluster of one backend, one route with plain http."""
    return (
        "from edgeproxy.config import Cluster, Route, VirtualHost\n\n"
        f'bench = Cluster("bench", endpoints=["127.0.0.1:{backend_port}"])\n\n'
        "virtual_hosts = [\n"
        f"    VirtualHost({list(CERT_NAMES)!r}, routes=[Route(\"/\", bench, plain_http=True)]),\n"
        "]\n"
    )


def start_edgeproxy(
    procs: Processes,
    workdir: Path,
    cpu: str,
    config_text: str,
    pem: bytes,
    pem_name: str = "bench.pem",
    config_name: str = "bench_site.py",
    extra_args: Sequence[str] = (),
) -> Server:
    """``twistd -n edgeproxy`` with https, http and admin listeners on ephemeral loopback
    ports (read from its output); returns once it serves http and https."""
    workdir.mkdir(parents=True)
    certs = workdir / "certs"
    certs.mkdir(mode=0o700)
    pem_path = certs / pem_name
    pem_path.write_bytes(pem)
    pem_path.chmod(0o600)
    config = workdir / config_name
    config.write_text(config_text)
    loopback = "tcp:0:interface=127.0.0.1"
    argv = [
        TWISTD, "--pidfile=", "-n", "edgeproxy",
        "--config", str(config), "--certs", str(certs),
        "--https", loopback, "--http", loopback, "--admin", loopback,
        *extra_args,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # stdout (startup lines, then one access-log line per request) goes to a file.
    server = procs.start("edgeproxy", argv, cpu, workdir, env=env)

    def ready(text: str) -> bool:
        for match in _LISTENING.finditer(text):
            server.ports.setdefault(match.group(1), int(match.group(3)))
        return {"https", "http", "admin"} <= set(server.ports)

    if wait_for_output(server, ready, 0.05):
        wait_until_serving(server, server.ports["http"])
        wait_until_serving(server, server.ports["https"], tls=True)
        return server
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


def wrk_argv(
    procs: Processes, url: str, duration: float, connections: int, threads: int, cpu: str
) -> list[str]:
    return procs.command(
        ["wrk", "--latency", "-t", str(threads), "-c", str(connections),
         "-d", f"{max(1, round(duration))}s", "-H", f"Host: {HOST}", url],
        cpu,
    )


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


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def python_versions() -> dict[str, str]:
    """Python's and Twisted's versions, and which interpreter build runs edgeproxy."""
    versions: dict[str, str] = {
        "python": platform.python_version(),
        "interpreter": interpreter_build(),
    }
    with contextlib.suppress(Exception):
        import twisted

        versions["twisted"] = twisted.__version__
    return versions


def interpreter_build() -> str:
    """The interpreter the benchmarks run edgeproxy on (the venv's, via its twistd).

    The build matters for a Python proxy as much as -O2 does for nginx: on the
    reference VM Debian's python3.11 (profile-guided, link-time optimised, static)
    runs edgeproxy's hot path ~15-25% faster than a default pyenv build
    (``--enable-shared``, no PGO/LTO).  See bench/README.md."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
    linked = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        ldd = subprocess.run(["ldd", base], capture_output=True, text=True, timeout=10).stdout
        linked = "links libpython" if "libpython" in ldd else "static"
    return f"{base} ({linked}; sysconfig Py_ENABLE_SHARED={int(shared)})"


def git_info(short: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """HEAD and how many files under edgeproxy/ differ from it ({} outside a checkout)."""
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = str(BENCH_DIR.parent)
        rev = ["rev-parse", "--short", "HEAD"] if short else ["rev-parse", "HEAD"]
        head = subprocess.run(["git", "-C", root, *rev],
                              capture_output=True, text=True, check=True, timeout=timeout)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "edgeproxy"],
                               capture_output=True, text=True, check=True, timeout=timeout)
        git = {"commit": head.stdout.strip(),
               "edgeproxy_uncommitted_files": len(dirty.stdout.splitlines())}
    return git


def machine_info(pin: bool, backend: str) -> dict[str, Any]:
    """run.py's (and resilience.py's) machine section: with nginx's and wrk's versions."""
    versions = python_versions()
    nginx = nginx_binary()
    if nginx:
        done = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
        versions["nginx"] = done.stderr.strip()
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    versions["wrk"] = (done.stdout or done.stderr).splitlines()[0].strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_info(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "pinning": "wrk+backend on CPU 0, proxy on CPU 1" if pin else "none",
        "backend": backend,
        "versions": versions,
    }
