"""
Idle keep-alive TLS connections: how much memory does edgeproxy keep per
connection, and does it still serve while holding them?

Everything runs on 127.0.0.1 in a temporary directory: a backend (nginx, else
``bench/backend.py``) and ``twistd -n edgeproxy``
(``_common.start_edgeproxy``, ``--keepalive-timeout`` and ``--header-timeout``
raised so that no held connection times out during the run), both with
``RLIMIT_NOFILE`` raised (inherited from this process, checked in
``/proc/PID/limits``). This process (asyncio + ``ssl``, pinned to CPU 0 with
the backend; edgeproxy alone on CPU 1) then opens ``--connections`` TLS
connections in steps of ``--step``. Each connection does a full handshake (no
session resumption) and one keep-alive ``GET /``, reads the response and stays
open and idle. In each step all new connections first do their handshake, then
their request (``--concurrency`` at a time), so edgeproxy's CPU time is
measured for the handshakes and for the requests separately.

After each step (and ``--settle`` seconds): edgeproxy's ``VmRSS``, its open
fds, and ``--probes`` fresh clients (new connection, handshake, ``GET /``,
close) that must get a 200.  At the end the connections are held idle for
``--hold`` seconds (edgeproxy's CPU meanwhile), a sample of them sends a second
request (still usable?), and after closing them all the RSS is read again.

Prints a table; writes everything to ``bench/out/idle-<UTC timestamp>.json``.

Run: ``.venv/bin/python bench/idle.py [--connections 10000] [--step 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from _common import (
    HOST,
    Processes,
    Server,
    can_pin,
    cpu_seconds,
    dev_certificate,
    insecure_tls_context,
    log,
    machine_info,
    nginx_binary,
    results_path,
    rss_kib,
    run_main,
    sigterm_as_exit,
    single_route_config,
    start_edgeproxy,
    start_nginx_backend,
    start_python_backend,
    stop_and_clean,
    summarize_proxy_log,
)

REQUEST = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
TARGET_KIB = 50_000 / 1024  # "at most 50 KB of RSS each" (50 KB = 48.8 KiB)


# --------------------------------------------------------------------------- limits


def raise_nofile(want: int) -> dict[str, Any]:
    """Raise this process's RLIMIT_NOFILE: soft to the hard limit, and both to ``want``
    if the hard limit is lower and we may (root).  Children (edgeproxy, the backend)
    inherit it."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return {"before": list(before), "after": list(resource.getrlimit(resource.RLIMIT_NOFILE))}


def proc_nofile(pid: int) -> list[str] | None:
    """(soft, hard) 'Max open files' of ``pid`` from /proc/PID/limits."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3:5]
    return None


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return -1


def kernel_tcp() -> dict[str, int]:
    """TCP sockets in use and the kernel's TCP buffer memory (KiB), from /proc/net/sockstat
    (not part of any process's RSS)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                values = dict(zip(fields[::2], map(int, fields[1::2]), strict=True))
                out = {"inuse": values["inuse"], "mem_kib": values["mem"] * 4}
    return out


class Proxy:
    """edgeproxy's /proc readings."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pid = server.pid

    def sample(self) -> dict[str, Any]:
        return {
            "rss_kib": rss_kib([self.pid]),
            "rss_anon_kib": status_kib(self.pid, "RssAnon:"),
            "hwm_kib": status_kib(self.pid, "VmHWM:"),
            "fds": open_fds(self.pid),
            "cpu_s": cpu_seconds([self.pid]),
            "alive": self.server.alive(),
            "kernel_tcp": kernel_tcp(),
        }


# --------------------------------------------------------------------------- client


class Conn(asyncio.Protocol):
    """One client connection: sends a GET when asked, reads one response, then idles."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.open = False
        self.closed_by_us = False
        self.lost_error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        status = _complete_response(self.buffer)
        if status is not None:
            self.buffer.clear()
            self.waiter.set_result(status)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if exc is not None:
            self.lost_error = type(exc).__name__
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed before the response"))

    async def get(self, timeout: float) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(REQUEST)
        return await asyncio.wait_for(self.waiter, timeout)

    def close(self) -> None:
        if self.transport is not None and self.open:
            self.closed_by_us = True
            self.transport.close()


def _complete_response(buffer: bytearray) -> int | None:
    """The status of the complete HTTP/1.1 response in ``buffer``, or None if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").lower()
    body = len(buffer) - end - 4
    status = int(head.split(None, 2)[1])
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name == "content-length":
            return status if body >= int(value) else None
        if name == "transfer-encoding" and "chunked" in value:
            return status if buffer.endswith(b"0\r\n\r\n") else None
    return status


def _error_name(e: BaseException) -> str:
    if isinstance(e, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, OSError) and e.errno:
        return f"{type(e).__name__}[{os.strerror(e.errno)}]"
    return type(e).__name__


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


class Client:
    def __init__(self, port: int, timeout: float, concurrency: int) -> None:
        self.port = port
        self.timeout = timeout
        self.concurrency = concurrency
        self.ctx: ssl.SSLContext = insecure_tls_context()

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                Conn, "127.0.0.1", self.port, ssl=self.ctx, server_hostname="localhost",
                ssl_handshake_timeout=self.timeout,
            ),
            self.timeout,
        )
        return conn

    async def open_many(self, count: int) -> tuple[list[Conn], list[float], Counter[str]]:
        """``count`` handshakes, ``concurrency`` at a time: (connections, latencies, errors)."""
        sem = asyncio.Semaphore(self.concurrency)
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        conns: list[Conn] = []

        async def one() -> None:
            async with sem:
                t0 = time.monotonic()
                try:
                    conn = await self.connect()
                except Exception as e:
                    errors[_error_name(e)] += 1
                    return
                latencies.append(time.monotonic() - t0)
                conns.append(conn)

        await asyncio.gather(*(one() for _ in range(count)))
        return conns, latencies, errors

    async def request_many(
        self, conns: list[Conn]
    ) -> tuple[list[Conn], list[float], Counter[str]]:
        """One GET on each: (connections answered 200, latencies, statuses and errors)."""
        sem = asyncio.Semaphore(self.concurrency)
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()
        ok: list[Conn] = []

        async def one(conn: Conn) -> None:
            async with sem:
                t0 = time.monotonic()
                try:
                    status = await conn.get(self.timeout)
                except Exception as e:
                    outcomes[_error_name(e)] += 1
                    conn.close()
                    return
                latencies.append(time.monotonic() - t0)
                outcomes[str(status)] += 1
                if status == 200:
                    ok.append(conn)
                else:
                    conn.close()

        await asyncio.gather(*(one(c) for c in conns))
        return ok, latencies, outcomes

    async def probe(self) -> dict[str, Any]:
        """A fresh client: connect + handshake, GET /, close."""
        t0 = time.monotonic()
        try:
            conn = await self.connect()
            t1 = time.monotonic()
            status = await conn.get(self.timeout)
            t2 = time.monotonic()
            conn.close()
        except Exception as e:
            return {"status": None, "error": _error_name(e),
                    "total_ms": round((time.monotonic() - t0) * 1000, 2)}
        return {"status": status, "handshake_ms": round((t1 - t0) * 1000, 2),
                "request_ms": round((t2 - t1) * 1000, 2), "total_ms": round((t2 - t0) * 1000, 2)}


# --------------------------------------------------------------------------- scenario


async def probes(client: Client, count: int) -> dict[str, Any]:
    results = [await client.probe() for _ in range(count)]
    totals = [r["total_ms"] for r in results if r["status"] == 200]
    return {
        "served": sum(r["status"] == 200 for r in results),
        "count": count,
        "median_ms": round(statistics.median(totals), 2) if totals else None,
        "max_ms": max(totals) if totals else None,
        "results": results,
    }


def _kib_per_conn(delta_kib: float, conns: int) -> float | None:
    return round(delta_kib / conns, 2) if conns else None


async def scenario(args: argparse.Namespace, proxy: Proxy, port: int) -> dict[str, Any]:
    client = Client(port, args.timeout, args.concurrency)
    await asyncio.sleep(args.settle)
    baseline = proxy.sample()
    baseline["probe"] = await probes(client, args.probes)
    await asyncio.sleep(args.settle)
    base_rss = proxy.sample()["rss_kib"]
    log(f"baseline: RSS {base_rss / 1024:.1f} MiB, {baseline['fds']} fds; fresh client "
        f"{baseline['probe']['median_ms']} ms")
    held: list[Conn] = []
    steps: list[dict[str, Any]] = []
    stopped: str | None = None
    started = time.monotonic()
    targets = [*range(args.step, args.connections, args.step), args.connections]
    for target in targets:
        count = target - len(held)
        t0 = time.monotonic()
        before = proxy.sample()
        conns, hs_lat, hs_errors = await client.open_many(count)
        await asyncio.sleep(0.5)  # the proxy finishes reading the last clients' Finished
        mid = proxy.sample()
        t1 = time.monotonic()
        ok, rq_lat, outcomes = await client.request_many(conns)
        held.extend(ok)
        t2 = time.monotonic()
        await asyncio.sleep(args.settle)
        after = proxy.sample()
        probe = await probes(client, args.probes)
        still_open = sum(c.open for c in held)
        handshake_cpu = mid["cpu_s"] - before["cpu_s"]
        request_cpu = after["cpu_s"] - mid["cpu_s"]
        failed = count - len(ok)
        step = {
            "target": target,
            "opened": len(conns),
            "answered_200": len(ok),
            "held": len(held),
            "still_open": still_open,
            "handshake_errors": dict(hs_errors),
            "request_outcomes": dict(outcomes),
            "handshake_seconds": round(t1 - t0, 2),
            "request_seconds": round(t2 - t1, 2),
            "client_handshake_ms": {"p50": _ms(hs_lat, 0.5), "p99": _ms(hs_lat, 0.99)},
            "client_request_ms": {"p50": _ms(rq_lat, 0.5), "p99": _ms(rq_lat, 0.99)},
            "proxy_cpu_handshakes_s": round(handshake_cpu, 3),
            "proxy_cpu_requests_s": round(request_cpu, 3),
            "proxy_cpu_ms_per_handshake": round(handshake_cpu / len(conns) * 1000, 3)
            if conns else None,
            "proxy_cpu_ms_per_request": round(request_cpu / len(conns) * 1000, 3)
            if conns else None,
            "rss_after_handshakes_kib": mid["rss_kib"],
            "before": before,
            "after": after,
            "rss_delta_kib": after["rss_kib"] - base_rss,
            "kib_per_conn": _kib_per_conn(after["rss_kib"] - base_rss, still_open),
            "step_kib_per_conn": _kib_per_conn(after["rss_kib"] - before["rss_kib"], len(ok)),
            "probe": probe,
        }
        steps.append(step)
        log(f"{still_open:6d} held ({failed} failed: {dict(hs_errors)} {dict(outcomes)}): "
            f"RSS {after['rss_kib'] / 1024:.1f} MiB, {step['kib_per_conn']} KiB/conn; "
            f"CPU {step['proxy_cpu_ms_per_handshake']} ms/handshake, "
            f"{step['proxy_cpu_ms_per_request']} ms/request; fresh client "
            f"{probe['served']}/{probe['count']} served, {probe['median_ms']} ms; "
            f"step took {t2 - t0:.1f} s")
        if not after["alive"]:
            stopped = "edgeproxy died"
        elif failed:
            stopped = f"{failed} of {count} new connections failed at step {target}"
        elif time.monotonic() - started > args.time_budget and target != targets[-1]:
            stopped = f"--time-budget {args.time_budget:g} s used up"
        if stopped:
            log(f"stopping: {stopped}")
            break

    # Hold them idle.
    hold0 = proxy.sample()
    t0 = time.monotonic()
    await asyncio.sleep(args.hold)
    hold1 = proxy.sample()
    hold_wall = time.monotonic() - t0
    hold = {
        "seconds": round(hold_wall, 2),
        "proxy_cpu_percent": round((hold1["cpu_s"] - hold0["cpu_s"]) / hold_wall * 100, 2),
        "rss_start_kib": hold0["rss_kib"],
        "rss_end_kib": hold1["rss_kib"],
        "probe": await probes(client, args.probes),
    }
    # Are the held connections still usable?  A second request on a sample of them.
    alive = [c for c in held if c.open]
    sample = random.Random(1).sample(alive, min(args.reuse_sample, len(alive)))
    _, reuse_lat, reuse_outcomes = await client.request_many(sample)
    held_final = sum(c.open for c in held)
    closed_by_proxy = Counter(c.lost_error or "clean close" for c in held
                              if not c.open and not c.closed_by_us)
    at_n = proxy.sample()
    # Close everything and see what memory comes back.
    for c in held:
        c.close()
    await asyncio.sleep(max(2.0, args.settle))
    closed = proxy.sample()
    closed["probe"] = await probes(client, args.probes)

    # Least-squares slope of RSS over held connections (steps only), KiB per connection.
    xs = [0] + [s["still_open"] for s in steps]
    ys = [base_rss] + [s["after"]["rss_kib"] for s in steps]
    slope = None
    if len(xs) >= 2 and len(set(xs)) >= 2:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs)
    reached = held_final >= args.connections
    return {
        "baseline": baseline,
        "baseline_rss_kib": base_rss,
        "steps": steps,
        "stopped": stopped,
        "reached": reached,
        "held_at_end": held_final,
        "hold": hold,
        "reuse": {"sample": len(sample), "outcomes": dict(reuse_outcomes),
                  "p50_ms": _ms(reuse_lat, 0.5), "p99_ms": _ms(reuse_lat, 0.99)},
        "closed_by_proxy": dict(closed_by_proxy),
        "at_end": at_n,
        "after_close": closed,
        "slope_kib_per_conn": round(slope, 2) if slope is not None else None,
        "extrapolated_rss_mib_at_target": round((base_rss + slope * args.connections) / 1024, 1)
        if slope is not None else None,
        "total_proxy_cpu_handshakes_s": round(sum(s["proxy_cpu_handshakes_s"] for s in steps), 2),
        "total_proxy_cpu_requests_s": round(sum(s["proxy_cpu_requests_s"] for s in steps), 2),
        "total_handshakes": sum(s["opened"] for s in steps),
    }


# --------------------------------------------------------------------------- report


def print_report(report: dict[str, Any], out: TextIO) -> None:
    r = report["result"]

    def p(line: str = "") -> None:
        print(line, file=out)

    p(f"edgeproxy with idle keep-alive TLS connections (target {report['settings']['connections']}"
      f", step {report['settings']['step']}); backend: {report['machine']['backend']}")
    p(f"RLIMIT_NOFILE: this process {report['nofile']['client']['after']}, "
      f"edgeproxy {report['nofile']['edgeproxy']}")
    p()
    header = (f"{'held':>6} {'failed':>6} {'RSS MiB':>8} {'ΔRSS MiB':>8} {'KiB/conn':>8} "
              f"{'step KiB/c':>10} {'fds':>6} {'CPU ms/hs':>9} {'CPU ms/req':>10} "
              f"{'hs p50 ms':>9} {'fresh 200':>9} {'fresh ms':>8} {'step s':>6}")
    p(header)
    p("-" * len(header))
    base = r["baseline"]
    p(f"{0:>6} {'':>6} {r['baseline_rss_kib'] / 1024:>8.1f} {0:>8.1f} {'':>8} {'':>10} "
      f"{base['fds']:>6} {'':>9} {'':>10} {'':>9} "
      f"{base['probe']['served']:>4}/{base['probe']['count']:<4} "
      f"{base['probe']['median_ms'] or '-':>8} {'':>6}")
    for s in r["steps"]:
        failed = s["opened"] - s["answered_200"] + sum(s["handshake_errors"].values())
        p(f"{s['still_open']:>6} {failed:>6} {s['after']['rss_kib'] / 1024:>8.1f} "
          f"{s['rss_delta_kib'] / 1024:>8.1f} {s['kib_per_conn'] or '-':>8} "
          f"{s['step_kib_per_conn'] or '-':>10} {s['after']['fds']:>6} "
          f"{s['proxy_cpu_ms_per_handshake'] or '-':>9} {s['proxy_cpu_ms_per_request'] or '-':>10} "
          f"{s['client_handshake_ms']['p50'] or '-':>9} "
          f"{s['probe']['served']:>4}/{s['probe']['count']:<4} {s['probe']['median_ms'] or '-':>8} "
          f"{s['handshake_seconds'] + s['request_seconds']:>6.1f}")
    p()
    n = r["held_at_end"]
    delta = r["at_end"]["rss_kib"] - r["baseline_rss_kib"]
    per = delta / n if n else float("nan")
    verdict = "within" if per <= TARGET_KIB else "ABOVE"
    p(f"reached {report['settings']['connections']}: {'yes' if r['reached'] else 'NO'} "
      f"({n} held at the end{'; stopped: ' + r['stopped'] if r['stopped'] else ''})")
    p(f"RSS: {r['baseline_rss_kib'] / 1024:.1f} MiB -> {r['at_end']['rss_kib'] / 1024:.1f} MiB "
      f"with {n} held = {delta / 1024:.1f} MiB, {per:.1f} KiB ({per * 1.024:.1f} KB) per "
      f"connection: {verdict} the 50 KB target; slope over the steps "
      f"{r['slope_kib_per_conn']} KiB/conn; peak (VmHWM) {r['at_end']['hwm_kib'] / 1024:.1f} MiB")
    if not r["reached"] and r["extrapolated_rss_mib_at_target"] is not None:
        p(f"extrapolated (linear) to {report['settings']['connections']}: "
          f"{r['extrapolated_rss_mib_at_target']} MiB")
    p(f"proxy CPU: {r['total_proxy_cpu_handshakes_s']} s for {r['total_handshakes']} handshakes "
      f"({r['total_proxy_cpu_handshakes_s'] / max(1, r['total_handshakes']) * 1000:.2f} ms each),"
      f" {r['total_proxy_cpu_requests_s']} s for their first requests")
    h = r["hold"]
    p(f"held idle {h['seconds']} s: proxy CPU {h['proxy_cpu_percent']} %, RSS "
      f"{h['rss_start_kib'] / 1024:.1f} -> {h['rss_end_kib'] / 1024:.1f} MiB; fresh client "
      f"{h['probe']['served']}/{h['probe']['count']} served, median {h['probe']['median_ms']} ms,"
      f" max {h['probe']['max_ms']} ms")
    u = r["reuse"]
    p(f"second request on {u['sample']} held connections: {u['outcomes']} "
      f"(p50 {u['p50_ms']} ms, p99 {u['p99_ms']} ms); closed by the proxy meanwhile: "
      f"{r['closed_by_proxy'] or 'none'}")
    kt0, kt1 = r["baseline"]["kernel_tcp"], r["at_end"]["kernel_tcp"]
    if kt0 and kt1:
        p(f"kernel (not in RSS): TCP sockets in use {kt0['inuse']} -> {kt1['inuse']}, TCP buffer "
          f"memory {kt0['mem_kib']} -> {kt1['mem_kib']} KiB")
    c = r["after_close"]
    p(f"after closing them all: RSS {c['rss_kib'] / 1024:.1f} MiB, {c['fds']} fds; fresh client "
      f"{c['probe']['served']}/{c['probe']['count']} served")
    p(f"edgeproxy log: {report['edgeproxy_log']['access_log_statuses']}, "
      f"{report['edgeproxy_log']['problem_lines']} warning/error lines")
    p(f"results: {report['path']}")


# --------------------------------------------------------------------------- main


class IdleProcesses(Processes):
    """Starts edgeproxy with extra command-line options (``--keepalive-timeout``)."""

    def __init__(self, pin: bool, edgeproxy_args: Sequence[str]) -> None:
        super().__init__(pin)
        self.edgeproxy_args = list(edgeproxy_args)

    def start(
        self, name: str, argv: Sequence[str], cpu: str, workdir: Path, env: dict[str, str] | None
    ) -> Server:
        if name == "edgeproxy":
            argv = [*argv, *self.edgeproxy_args]
        return super().start(name, argv, cpu, workdir, env)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Memory of idle keep-alive TLS connections in edgeproxy (bench/README.md)."
    )
    p.add_argument("--connections", type=int, default=10_000, help="connections to hold")
    p.add_argument("--step", type=int, default=2000, help="connections added per step")
    p.add_argument("--concurrency", type=int, default=50,
                   help="handshakes (and requests) in flight at once")
    p.add_argument("--probes", type=int, default=5, help="fresh clients after each step")
    p.add_argument("--settle", type=float, default=1.0, help="seconds before each reading")
    p.add_argument("--hold", type=float, default=10.0, help="seconds held idle at the end")
    p.add_argument("--reuse-sample", type=int, default=200,
                   help="held connections that send a second request at the end")
    p.add_argument("--timeout", type=float, default=30.0, help="per handshake / request")
    p.add_argument("--keepalive-timeout", type=float, default=3600.0,
                   help="edgeproxy's --keepalive-timeout (its default, 75 s, would close the "
                        "first connections before the last are open)")
    p.add_argument("--time-budget", type=float, default=900.0,
                   help="stop adding steps after this many seconds")
    p.add_argument("--body", type=int, default=1024, help="response body size")
    p.add_argument("--python-backend", action="store_true", help="bench/backend.py, not nginx")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.connections < 1 or args.step < 1 or args.concurrency < 1 or args.probes < 1:
        p.error("--connections, --step, --concurrency and --probes must be >= 1")
    args.step = min(args.step, args.connections)
    return args


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    pin = can_pin(args.pin)
    # This process holds N client sockets, edgeproxy N client + a few upstream sockets.
    nofile = {"client": raise_nofile(max(65536, args.connections + 4096))}
    limit = nofile["client"]["after"][0]
    if limit < args.connections + 256:
        log(f"warning: RLIMIT_NOFILE is {limit}: at most ~{limit - 256} connections")
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-idle-"))
    # A connection waits for its request until the whole step's handshakes are
    # done: its header deadline (from the accept) is raised as well.
    timeout = f"{args.keepalive_timeout:g}"
    # Every connection comes from 127.0.0.1: no per-client cap, and room for all of them.
    procs = IdleProcesses(pin, ["--keepalive-timeout", timeout, "--header-timeout", timeout,
                                "--max-connections-per-client", "0", "--max-connections", "0"])
    report: dict[str, Any] = {}
    try:
        with sigterm_as_exit():
            if pin:
                os.sched_setaffinity(0, {0})  # the client with the backend; edgeproxy on CPU 1
            nginx = None if args.python_backend else nginx_binary()
            if nginx:
                backend = start_nginx_backend(procs, nginx, tmp / "backend", "0", args.body)
                backend_name = "nginx"
            else:
                backend = start_python_backend(procs, tmp / "backend", "0", args.body)
                backend_name = "bench/backend.py"
            pem = dev_certificate()
            edge = start_edgeproxy(procs, tmp / "edgeproxy", "1",
                                   single_route_config(backend.ports["http"]), pem)
            nofile["edgeproxy"] = proc_nofile(edge.pid)
            nofile["backend"] = proc_nofile(backend.pid)
            log(f"backend {backend_name} pid {backend.pid}; edgeproxy pid {edge.pid}, "
                f"ports {edge.ports}; Max open files: this process {limit}, edgeproxy "
                f"{nofile['edgeproxy']}")
            result = asyncio.run(scenario(args, Proxy(edge), edge.ports["https"]))
            info = machine_info(pin, backend_name)
            info["pinning"] = "client + backend on CPU 0, edgeproxy on CPU 1" if pin else "none"
            info["versions"].pop("wrk", None)
            info["openssl"] = ssl.OPENSSL_VERSION
            with contextlib.suppress(Exception):
                import OpenSSL

                info["versions"]["pyopenssl"] = OpenSSL.__version__
                info["versions"]["edgeproxy_openssl"] = OpenSSL.SSL.SSLeay_version(
                    OpenSSL.SSL.SSLEAY_VERSION).decode()
            report = {
                "machine": info,
                "settings": {k: v for k, v in vars(args).items() if k != "keep_temp"}
                | {"pinned": pin},
                "nofile": nofile,
                "edgeproxy_argv_extra": procs.edgeproxy_args,
                "result": result,
                "edgeproxy_log": summarize_proxy_log(edge.output),
                "edgeproxy_alive_at_end": edge.alive(),
            }
    finally:
        stop_and_clean(procs, tmp, args.keep_temp)

    path = results_path("idle")
    report["path"] = str(path)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report, out)
    return 0 if report["result"]["reached"] else 1


if __name__ == "__main__":
    run_main(main)
