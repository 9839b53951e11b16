"""
Attacks while a normal client keeps asking: is it still served, and what does
the attack cost edgeproxy in memory?

For each attack a fresh edgeproxy (``twistd -n edgeproxy``, the ``run.py``
config, a ``default.pem`` certificate since slowhttptest sends no SNI to an IP
address) runs in front of ``bench/backend.py``, all on loopback:

* ``slowloris``: ``slowhttptest -H`` (headers trickled, one line every 10 s),
* ``slowbody``: ``slowhttptest -B`` (a POST body trickled, 10 bytes every 10 s),
* ``slowread``: ``slowhttptest -X`` (1 MiB asked for three times, read 32
  bytes every 5 s through a 512-1024 byte window),

each with ``--connections`` (1000) opened at ``--rate`` a second from
127.0.0.1, and

* ``handshake``: a TLS handshake flood from 127.0.0.2: this script with
  ``--serve-flood`` in ``--flood-processes`` processes, ``--flood-concurrency``
  handshakes in flight, each connection reset right after its handshake;
  bounded by the attack's time and ``--flood-max`` handshakes.

After ``--ramp`` seconds (the attack opening its connections) a normal client
on 127.0.0.3 sends ``--client-rate`` requests a second for ``--duration``
seconds, each on a new connection (a new visitor: TCP and, over https, a
TLS handshake), ``GET /`` with ``Connection: close``, ``--client-timeout``
per socket operation.  Reported per attack: the client's success rate (200
with the whole body), its p50 / p99 / max latency (successful requests), the
peak RSS of edgeproxy (``VmHWM``) and its RSS at the end of the attack, its
CPU time, the most client connections it had open (its metrics), and what the
attack achieved (slowhttptest's last status, or handshakes completed).

``--proxy-args`` are given to edgeproxy as they are (the shield's options,
e.g. ``--header-timeout 10 --max-connections-per-client 100``); ``--baseline``
also runs every attack on an edgeproxy without them, first.  Prints a table
(``--json``: the report as JSON instead); writes everything to
``bench/out/attack-<UTC timestamp>.json``.

Run: ``.venv/bin/python bench/attack.py [--duration 30] [--proxy-args "..."] [--baseline]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import _common
from _common import (
    HOST,
    Processes,
    Server,
    cpu_model,
    cpu_seconds,
    dev_certificate,
    git_info,
    insecure_tls_context,
    log,
    peak_rss_kib,
    python_versions,
    results_path,
    rss_kib,
    run_main,
    sigterm_as_exit,
    single_route_config,
    start_edgeproxy,
    start_python_backend,
    stop_and_clean,
    summarize_proxy_log,
)
from aborted_readers import active_connections, slowhttptest_version

BENCH_FILE = Path(__file__).resolve()
ATTACKS = ("slowloris", "slowbody", "slowread", "handshake")
#: slowhttptest's arguments for each of its attacks (besides -c, -r, -l, -p, -u).
SLOWHTTPTEST = {
    "slowloris": ["-H", "-i", "10", "-x", "24", "-s", "8192"],
    "slowbody": ["-B", "-i", "10", "-x", "10", "-s", "8192"],
    "slowread": ["-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3"],
}
#: The attacker, the flooder and the normal client each have an address.
FLOOD_SOURCE = "127.0.0.2"
CLIENT_SOURCE = "127.0.0.3"
BODY = 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help=f"comma-separated, of {', '.join(ATTACKS)} (default: all)")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds the normal client runs during each attack (after --ramp)")
    p.add_argument("--ramp", type=float, default=5.0,
                   help="seconds between the attack's start and the client's")
    p.add_argument("--scheme", choices=("https", "http"), default="https",
                   help="the listener attacked and asked (the flood is always https)")
    p.add_argument("--connections", type=int, default=1000, help="slowhttptest -c")
    p.add_argument("--rate", type=int, default=200, help="slowhttptest -r (connections/s)")
    p.add_argument("--flood-concurrency", type=int, default=200,
                   help="TLS handshakes in flight in the flood")
    p.add_argument("--flood-processes", type=int, default=2, help="flooding processes")
    p.add_argument("--flood-max", type=int, default=200_000,
                   help="handshakes at most in the flood")
    p.add_argument("--client-rate", type=float, default=10.0, help="normal requests/s")
    p.add_argument("--client-timeout", type=float, default=5.0,
                   help="the normal client's socket timeout")
    p.add_argument("--proxy-args", default="",
                   help="extra edgeproxy options, as one shell-quoted string")
    p.add_argument("--baseline", action="store_true",
                   help="also run every attack on an edgeproxy without --proxy-args, first")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--twistd", default=_common.TWISTD, help="the twistd to run")
    p.add_argument("--keep-temp", action="store_true")
    # The flood's own processes.
    p.add_argument("--serve-flood", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_flood:
        return args
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = set(attacks) - set(ATTACKS)
    if unknown or not attacks:
        p.error(f"unknown attack(s) {sorted(unknown)}; choose from {', '.join(ATTACKS)}")
    args.attacks = attacks
    if args.duration <= 0 or args.ramp < 0 or args.client_rate <= 0:
        p.error("--duration > 0, --ramp >= 0, --client-rate > 0")
    return args


def raise_open_files() -> int:
    """Raise this process's (and so its children's) open-files limit to the hard
    limit: 1000 attack connections need 1000 descriptors in slowhttptest and 2000
    in edgeproxy (one upstream each, for slow readers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < 4096:
        log(f"warning: open files limited to {soft}; 1000 connections need about 4096")
    return int(soft)


# --------------------------------------------------------------------------- the flood


async def _flood(port: int, seconds: float, concurrency: int, limit: int) -> dict[str, Any]:
    """TLS handshakes from FLOOD_SOURCE to 127.0.0.1:``port``, ``concurrency`` at
    a time, until ``seconds`` pass or ``limit`` were started."""
    loop = asyncio.get_running_loop()
    ctx = insecure_tls_context()
    counts: Counter[str] = Counter()
    started = 0
    deadline = loop.time() + seconds
    linger = struct.pack("ii", 1, 0)

    async def one() -> None:
        sock = socket.socket()
        # Reset on close: no TIME_WAIT, so the source ports last the whole flood.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.setblocking(False)
        try:
            sock.bind((FLOOD_SOURCE, 0))
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="localhost",
                                        ssl_handshake_timeout=5),
                6,
            )
            counts["handshakes"] += 1
            writer.transport.abort()
        except (OSError, TimeoutError, ssl.SSLError) as e:
            counts[type(e).__name__] += 1
            sock.close()

    async def worker() -> None:
        nonlocal started
        while loop.time() < deadline and started < limit:
            started += 1
            await one()

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"started": started, "seconds": round(loop.time() - t0, 2), "outcomes": dict(counts)}


def serve_flood(args: argparse.Namespace) -> int:
    result = asyncio.run(
        _flood(args.serve_flood, args.seconds, args.flood_concurrency, args.flood_max)
    )
    print("FLOOD " + json.dumps(result), flush=True)
    return 0


def start_flood(procs: Processes, workdir: Path, args: argparse.Namespace, port: int,
                seconds: float) -> list[Server]:
    workdir.mkdir(parents=True, exist_ok=True)
    n = max(1, args.flood_processes)
    servers = []
    for i in range(n):
        argv = [
            sys.executable, str(BENCH_FILE), "--serve-flood", str(port),
            "--seconds", str(seconds),
            "--flood-concurrency", str(max(1, args.flood_concurrency // n)),
            "--flood-max", str(max(1, args.flood_max // n)),
        ]
        servers.append(procs.start(f"flood-{i}", argv, "", workdir, env=None))
    return servers


def flood_result(servers: Sequence[Server], timeout: float) -> dict[str, Any]:
    """The flooders' results, summed (each is waited for at most ``timeout``)."""
    outcomes: Counter[str] = Counter()
    started = 0
    seconds = 0.0
    for server in servers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.popen.wait(timeout)
        server.stop()
        text = server.output.read_text(errors="replace")
        match = re.search(r"^FLOOD (.*)$", text, re.MULTILINE)
        if match is None:
            outcomes["flooder_failed"] += 1
            continue
        one = json.loads(match.group(1))
        started += one["started"]
        seconds = max(seconds, one["seconds"])
        outcomes.update(one["outcomes"])
    handshakes = outcomes.get("handshakes", 0)
    return {
        "started": started,
        "seconds": seconds,
        "outcomes": dict(outcomes),
        "handshakes_per_second": round(handshakes / seconds, 1) if seconds else 0.0,
    }


# --------------------------------------------------------------------------- slowhttptest


def slowhttptest_argv(args: argparse.Namespace, attack: str, url: str) -> list[str]:
    return [
        "slowhttptest", *SLOWHTTPTEST[attack],
        "-c", str(args.connections), "-r", str(args.rate),
        "-l", str(round(args.ramp + args.duration)), "-p", "3", "-u", url,
    ]


def slowhttptest_result(server: Server, timeout: float) -> dict[str, Any]:
    """slowhttptest's exit and its last status block (waited for at most ``timeout``)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.popen.wait(timeout)
    server.stop()
    text = _ANSI.sub("", server.output.read_text(errors="replace"))
    last = {
        key: int(value)
        for key, value in re.findall(r"(closed|pending|connected|error):\s+(\d+)", text)[-4:]
    }
    available = re.findall(r"service available:\s+(\w+)", text)
    ended = re.findall(r"Exit status: (.+)", text)
    return {
        "exit": server.popen.returncode,
        "last_status": last,
        "service_available_last": available[-1] if available else None,
        "exit_status": ended[-1].strip() if ended else None,
    }


# --------------------------------------------------------------------------- the normal client


def one_request(port: int, ctx: ssl.SSLContext | None, timeout: float) -> tuple[bool, float, str]:
    """``GET /`` on a new connection from CLIENT_SOURCE (over TLS with ``ctx``):
    (whole 200?, seconds, detail)."""
    t0 = time.monotonic()
    sock: socket.socket | None = None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout,
                                        source_address=(CLIENT_SOURCE, 0))
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.sock = sock
        conn.putrequest("GET", "/", skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", HOST)
        conn.putheader("Connection", "close")
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        ok = response.status == 200 and len(body) == BODY
        return ok, time.monotonic() - t0, str(response.status)
    except (OSError, http.client.HTTPException) as e:
        return False, time.monotonic() - t0, type(e).__name__
    finally:
        if sock is not None:
            sock.close()


def normal_client(port: int, tls: bool, rate: float, duration: float,
                  timeout: float) -> list[dict[str, Any]]:
    """``rate`` requests a second for ``duration`` seconds, on schedule (a slow
    answer does not delay the next request; no catch-up bursts either)."""
    count = max(1, int(duration * rate))
    # Enough threads for every request that may be in flight at once.
    workers = min(count, int(rate * (3 * timeout + 1)) + 1)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    # One context for every request: making one loads the system's CA store,
    # which costs tens of milliseconds.
    ctx = insecure_tls_context() if tls else None
    t0 = time.monotonic()

    def run(i: int) -> None:
        sent = time.monotonic() - t0
        ok, seconds, detail = one_request(port, ctx, timeout)
        with lock:
            results.append({"i": i, "at": round(sent, 3), "ok": ok,
                            "ms": round(seconds * 1000, 2), "detail": detail})

    with ThreadPoolExecutor(workers) as pool:
        for i in range(count):
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            pool.submit(run, i)
    return sorted(results, key=lambda r: r["i"])


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def summarize_client(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["ms"] for r in results if r["ok"]]
    failures = Counter(r["detail"] for r in results if not r["ok"])
    return {
        "requests": len(results),
        "ok": len(ok),
        "success_rate": round(len(ok) / len(results), 4) if results else 0.0,
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
        "max_ms": max(ok) if ok else None,
        "failures": dict(failures),
    }


# --------------------------------------------------------------------------- one attack


class ConnectionSampler:
    """The most client connections edgeproxy had open (its metrics), sampled."""

    def __init__(self, admin_port: int, interval: float = 1.0) -> None:
        self.admin_port = admin_port
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, ValueError):
                self.peak = max(self.peak, active_connections(self.admin_port))

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run_attack(args: argparse.Namespace, attack: str, proxy_args: list[str], procs: Processes,
               workdir: Path, backend_port: int) -> dict[str, Any]:
    edge = start_edgeproxy(procs, workdir / "edgeproxy", "", single_route_config(backend_port),
                           dev_certificate(), pem_name="default.pem", extra_args=proxy_args)
    try:
        port = edge.ports[args.scheme]
        rss_start = rss_kib([edge.pid])
        cpu_start = cpu_seconds([edge.pid])
        attack_seconds = args.ramp + args.duration
        log(f"  {attack}: edgeproxy pid {edge.pid} ({' '.join(proxy_args) or 'no extra args'}),"
            f" RSS {rss_start / 1024:.0f} MiB")
        with ConnectionSampler(edge.ports["admin"]) as sampler:
            if attack == "handshake":
                attackers = start_flood(procs, workdir / "flood", args, edge.ports["https"],
                                        attack_seconds)
                argv = [shlex.join(map(str, s.popen.args)) for s in attackers]  # type: ignore[arg-type]
            else:
                path = "/large" if attack == "slowread" else "/"
                url = f"{args.scheme}://127.0.0.1:{port}{path}"
                command = slowhttptest_argv(args, attack, url)
                argv = [shlex.join(command)]
                (workdir / "slowhttptest").mkdir(parents=True, exist_ok=True)
                attackers = [procs.start("slowhttptest", command, "", workdir / "slowhttptest",
                                         None)]
            time.sleep(args.ramp)
            client = normal_client(port, args.scheme == "https", args.client_rate, args.duration,
                                   args.client_timeout)
            peak = peak_rss_kib([edge.pid])
            rss_end = rss_kib([edge.pid])
            cpu = cpu_seconds([edge.pid]) - cpu_start
            if attack == "handshake":
                achieved = flood_result(attackers, 30.0)
            else:
                achieved = slowhttptest_result(attackers[0], 30.0)
            for attacker in attackers:  # done: leave the stop at the end nothing to do
                procs.servers.remove(attacker)
        summary = summarize_client(client)
        log(f"  {attack}: client {summary['ok']}/{summary['requests']} ok, "
            f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; peak RSS "
            f"{peak / 1024:.0f} MiB; most connections {sampler.peak}; attack {achieved}")
        return {
            "attack": attack,
            "proxy_args": proxy_args,
            "attacker_argv": argv,
            "client": summary,
            "client_requests": client,
            "edgeproxy": {
                "rss_start_kib": rss_start,
                "peak_rss_kib": peak,
                "rss_end_kib": rss_end,
                "cpu_seconds": round(cpu, 2),
                "most_connections": sampler.peak,
                "alive_at_end": edge.alive(),
            },
            "attack_result": achieved,
            "edgeproxy_log": summarize_proxy_log(edge.output),
        }
    finally:
        edge.stop()
        with contextlib.suppress(ValueError):
            procs.servers.remove(edge)


# --------------------------------------------------------------------------- report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _achieved(result: dict[str, Any]) -> str:
    if "handshakes_per_second" in result:
        refused = sum(v for k, v in result["outcomes"].items() if k != "handshakes")
        return (f"{result['outcomes'].get('handshakes', 0)} handshakes "
                f"({result['handshakes_per_second']:g}/s), {refused} failed")
    last = result["last_status"]
    return (f"connected {last.get('connected', '?')} closed {last.get('closed', '?')} "
            f"error {last.get('error', '?')}; {result['exit_status'] or '?'}")


def print_report(report: dict[str, Any], out: TextIO) -> None:
    head = (f"{'edgeproxy':<28} {'attack':<10} {'client ok':>10} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'max ms':>7} {'peak RSS':>9} {'RSS end':>8} {'CPU s':>6} {'conns':>6}  attack")
    print(head, file=out)
    for run in report["runs"]:
        c, e = run["client"], run["edgeproxy"]
        name = " ".join(run["proxy_args"]) or "(defaults)"
        print(
            f"{name[:28]:<28} {run['attack']:<10} {c['success_rate'] * 100:>9.1f}% "
            f"{_ms(c['p50_ms']):>7} {_ms(c['p99_ms']):>7} {_ms(c['max_ms']):>7} "
            f"{e['peak_rss_kib'] / 1024:>5.0f} MiB {e['rss_end_kib'] / 1024:>4.0f} MiB "
            f"{e['cpu_seconds']:>6.1f} {e['most_connections']:>6}  "
            f"{_achieved(run['attack_result'])}",
            file=out,
        )
    print(f"results: {report['path']}", file=out)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if args.serve_flood:
        return serve_flood(args)
    if any(a != "handshake" for a in args.attacks) and shutil.which("slowhttptest") is None:
        log("slowhttptest is not installed (Debian: apt-get install slowhttptest)")
        return 2
    _common.TWISTD = args.twistd
    open_files = raise_open_files()
    extra = shlex.split(args.proxy_args)
    configs: list[list[str]] = ([[]] if args.baseline and extra else []) + [extra]
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-attack-"))
    procs = Processes(pin=False)
    runs: list[dict[str, Any]] = []
    try:
        with sigterm_as_exit():
            backend = start_python_backend(procs, tmp / "backend", "", BODY)
            log(f"backend pid {backend.pid} on {backend.ports['http']}; open files {open_files}")
            for n, proxy_args in enumerate(configs):
                log(f"edgeproxy {' '.join(proxy_args) or '(defaults)'}")
                for attack in args.attacks:
                    workdir = tmp / f"{n}-{attack}"
                    runs.append(run_attack(args, attack, proxy_args, procs, workdir,
                                           backend.ports["http"]))
    finally:
        stop_and_clean(procs, tmp, args.keep_temp)
    report: dict[str, Any] = {
        "machine": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git": git_info(),
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "kernel": platform.release(),
            "load_average": _common.loadavg(),
            "open_files": open_files,
            "versions": python_versions() | {"slowhttptest": slowhttptest_version()},
        },
        "settings": {k: v for k, v in vars(args).items()
                     if k not in ("keep_temp", "serve_flood", "seconds", "json")},
        "runs": runs,
    }
    path = results_path("attack")
    report["path"] = str(path)
    path.write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1), file=out)
    else:
        print_report(report, out)
    return 0 if all(r["edgeproxy"]["alive_at_end"] for r in runs) else 1


if __name__ == "__main__":
    run_main(main)
