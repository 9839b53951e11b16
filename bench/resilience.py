"""
The resilience scenario: kill one of two backends under load, restart it, and
measure what the clients of edgeproxy saw.

Everything runs on 127.0.0.1 in a temporary directory:

* two backends ``a`` and ``b``, each a separate process (this script with
  ``--serve-backend NAME``: an asyncio HTTP/1.1 keep-alive server that answers
  every path with ``200`` and ``X-Backend: NAME``, body ``NAME``),
* ``twistd -n edgeproxy`` with one cluster of the two, active health checks
  (``HealthCheck(interval=1.0, timeout=0.5, rise=2, fall=2)``), outlier
  detection (``OutlierDetection(3, base_ejection_time=5.0)``) and the default
  ``RetryPolicy()``; its stdout (access log, transitions, retries) to a file,
* a load generator in this process: ``--workers`` threads, each with one
  keep-alive connection (https by default), together sending ``--rate``
  requests/s (``--rate 0``: closed loop, as fast as answers come back). Every
  request has a unique path (``/r/WORKER-SEQ``), so it can be joined with its
  access-log line (final endpoint, attempts, outcome),
* a poller reading the admin ``/status`` every ``--poll`` seconds.

After ``--warmup`` seconds (not measured) the clock starts: backend ``b`` is
killed with SIGKILL at ``--kill-at`` (5 s), started again on the same port at
``--restart-at`` (12 s), and the load stops at ``--duration`` (20 s).  Prints a
table and writes everything (every request, every poll, the transitions) to
``bench/out/resilience-<timestamp>.json``.

Run: ``.venv/bin/python bench/resilience.py [--duration 20] [--rate 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from _common import (
    CERT_NAMES,
    HOST,
    Processes,
    Server,
    can_pin,
    connect,
    cpu_seconds,
    dev_certificate,
    free_port,
    log,
    machine_info,
    results_path,
    run_main,
    serve_http,
    sigterm_as_exit,
    start_edgeproxy,
    stop_and_clean,
    summarize_proxy_log,
    system_cpu_seconds,
    tail,
    wait_for_output,
)

BENCH_FILE = Path(__file__).resolve()
KILLED = "b"
_BACKEND_READY = re.compile(r"backend (\w+) listening on [0-9.]+:(\d+)")
# "GET /r/3-17 HTTP/1.1" 200 2 ... endpoint=127.0.0.1:4242 upstream_status=200 attempts=1 ...
_ACCESS = re.compile(
    r'"GET (/r/\S+) HTTP/[0-9.]+" (\d{3}) .*? endpoint=(\S+) upstream_status=(\S+) '
    r"attempts=(\d+) outcome=(\S+)"
)
_RETRY = re.compile(r"retrying \S+ elsewhere after (\S+) from (\S+)")


# --------------------------------------------------------------------------- backend


async def _serve_backend(name: str, port: int) -> None:
    body = f"{name}\n".encode()
    response = (
        "HTTP/1.1 200 OK\r\n"
        f"X-Backend: {name}\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode("ascii") + body
    await serve_http(lambda head: response, port, 1024, f"backend {name}")


def start_backend(procs: Processes, workdir: Path, name: str, port: int, tag: str) -> Server:
    argv = [sys.executable, str(BENCH_FILE), "--serve-backend", name, "--port", str(port)]
    server = procs.start(f"backend-{name}{tag}", argv, "0", workdir, env=None)
    if wait_for_output(server, lambda text: bool(_BACKEND_READY.search(text)), 0.01):
        server.ports = {"http": port}
        return server
    raise RuntimeError(f"backend {name} did not start on port {port}:\n{tail(server.output)}")


# --------------------------------------------------------------------------- edgeproxy


def edgeproxy_config(ports: dict[str, int], args: argparse.Namespace) -> str:
    endpoints = [f"127.0.0.1:{ports[name]}" for name in sorted(ports)]
    health = (
        f"HealthCheck('/healthz', interval={args.interval!r}, timeout={args.timeout!r}, "
        f"rise={args.rise}, fall={args.fall})"
        if args.health_check
        else "None"
    )
    outlier = (
        f"OutlierDetection({args.consecutive_failures}, "
        f"base_ejection_time={args.ejection_time!r})"
        if args.outlier_detection
        else "None"
    )
    return (
        "from edgeproxy.config import (\n"
        "    Cluster, HealthCheck, OutlierDetection, RetryPolicy, Route, VirtualHost,\n"
        ")\n\n"
        f"bench = Cluster(\n"
        f"    'bench',\n"
        f"    endpoints={endpoints!r},\n"
        f"    health_check={health},\n"
        f"    outlier_detection={outlier},\n"
        f"    retries=RetryPolicy(),\n"
        f")\n\n"
        "virtual_hosts = [\n"
        f"    VirtualHost({list(CERT_NAMES)!r}, routes=[Route('/', bench, plain_http=True)]),\n"
        "]\n"
    )


# --------------------------------------------------------------------------- load


@dataclass
class Record:
    """One request: send time (s, relative to the start of the measurement, wall clock),
    latency (s), status (0: no response), the backend that answered, the error if any."""

    sent: float
    latency: float
    status: int
    backend: str | None
    error: str | None
    path: str

    @property
    def done(self) -> float:
        return self.sent + self.latency

    @property
    def ok(self) -> bool:
        return self.status == 200


def load_worker(
    index: int,
    scheme: str,
    port: int,
    period: float,
    timeout: float,
    t0: float,
    stop: threading.Event,
    out: list[Record],
) -> None:
    """Send GETs on one keep-alive connection (a new one after an error or a close),
    one every ``period`` seconds (0: back to back), until ``stop`` is set."""
    conn: http.client.HTTPConnection | None = None
    seq = 0
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            if period:
                delay = next_at - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                # Never send a burst to catch up after a slow answer.
                next_at = max(next_at + period, time.monotonic() - period)
            if conn is None:
                conn = connect(scheme == "https", port, timeout)
            path = f"/r/{index}-{seq}"
            seq += 1
            status, backend, error = 0, None, None
            sent = time.time()
            start = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Host": HOST})
                response = conn.getresponse()
                body = response.read()
                status = response.status
                backend = response.getheader("X-Backend")
                if status == 200 and backend is None:
                    backend = body.decode("latin-1").strip() or None
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                error = f"{type(e).__name__}: {e}"[:120]
                conn.close()
                conn = None
            out.append(Record(sent - t0, time.perf_counter() - start, status, backend, error, path))
    finally:
        if conn is not None:
            conn.close()


@dataclass
class Poll:
    at: float  # relative to t0
    endpoints: dict[str, dict[str, Any]]


@dataclass
class Poller:
    """Reads the admin /status every ``interval`` seconds; keeps every endpoint's state
    and every transition seen (the status page keeps only the most recent 50)."""

    port: int
    interval: float
    t0: float
    polls: list[Poll] = field(default_factory=list)
    transitions: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    final: dict[str, Any] | None = None

    def run(self, stop: threading.Event) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            while not stop.is_set():
                began = time.monotonic()
                self.poll_once(conn)
                stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        finally:
            conn.close()

    def poll_once(self, conn: http.client.HTTPConnection) -> None:
        try:
            conn.request("GET", "/status")
            response = conn.getresponse()
            body = response.read()
            at = time.time() - self.t0
            if response.will_close:
                conn.close()
            status = json.loads(body)
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.errors[type(e).__name__] += 1
            conn.close()
            return
        cluster = status["clusters"]["bench"]
        self.final = cluster
        endpoints = {}
        for ep in cluster["endpoints"]:
            health = ep.get("health") or {}
            breaker = ep.get("breaker") or {}
            endpoints[ep["endpoint"]] = {
                "available": ep["available"],
                "health": health.get("state"),
                "breaker": breaker.get("state"),
                "failures_in_a_row": breaker.get("consecutive_failures"),
                "health_check_at": health.get("last_check_at"),
                "health_passes": health.get("consecutive_passes"),
                "health_failures": health.get("consecutive_failures"),
                "health_cause": health.get("last_cause"),
            }
        self.polls.append(Poll(at, endpoints))
        for t in cluster.get("recent_transitions", []):
            key = (t["endpoint"], t["machine"], t["old"], t["new"], t["at"])
            self.transitions.setdefault(key, t)


# --------------------------------------------------------------------------- analysis


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


@dataclass
class CpuSample:
    """CPU seconds so far: edgeproxy's, this process's (the load generator), each live
    backend's, and the whole machine's (user + nice + system, every process)."""

    edgeproxy: float
    loadgen: float
    backends: dict[int, float]
    system: float


def phase_stats(
    records: list[Record],
    start: float,
    end: float,
    cpu_start: CpuSample,
    cpu_end: CpuSample,
) -> dict[str, Any]:
    inside = [r for r in records if start <= r.sent < end]
    latencies = sorted(r.latency * 1000 for r in inside)
    failed = [r for r in inside if not r.ok]
    seconds = max(end - start, 1e-9)
    # Backends alive at the end of the phase (one started during it counts in full; a
    # killed one's CPU time is gone with it, and shows up as "other").
    backends = sum(
        after - cpu_start.backends.get(pid, 0.0) for pid, after in cpu_end.backends.items()
    )
    other = (cpu_end.system - cpu_start.system) - (
        cpu_end.edgeproxy - cpu_start.edgeproxy + cpu_end.loadgen - cpu_start.loadgen + backends
    )
    return {
        "from_s": round(start, 3),
        "to_s": round(end, 3),
        "requests": len(inside),
        "requests_per_s": len(inside) / seconds,
        "failed": len(failed),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
        # CPU time used in the phase / its wall time (100 % = one core).
        "edgeproxy_cpu_percent": (cpu_end.edgeproxy - cpu_start.edgeproxy) / seconds * 100,
        "loadgen_cpu_percent": (cpu_end.loadgen - cpu_start.loadgen) / seconds * 100,
        "backends_cpu_percent": backends / seconds * 100,
        # Used by processes this script did not start: noise (a shared machine).
        "other_cpu_percent": max(0.0, other) / seconds * 100,
        "by_backend": dict(Counter(r.backend or "-" for r in inside if r.ok)),
        "failures": dict(Counter(failure_kind(r) for r in failed)),
    }


def failure_kind(r: Record) -> str:
    if r.error is not None:
        return r.error.split(":", 1)[0]
    return f"status {r.status}"


def parse_access_log(path: Path) -> tuple[dict[str, dict[str, Any]], Counter[str]]:
    """Per load-generator path: the access-log fields; and the retry reasons logged."""
    lines: dict[str, dict[str, Any]] = {}
    retries: Counter[str] = Counter()
    with path.open(errors="replace") as f:
        for line in f:
            match = _ACCESS.search(line)
            if match:
                lines[match.group(1)] = {
                    "status": int(match.group(2)),
                    "endpoint": match.group(3),
                    "upstream_status": match.group(4),
                    "attempts": int(match.group(5)),
                    "outcome": match.group(6),
                }
                continue
            retry = _RETRY.search(line)
            if retry:
                retries[f"{retry.group(1)} from {retry.group(2)}"] += 1
    return lines, retries


def first(values: Sequence[float]) -> float | None:
    return min(values) if values else None


def last(values: Sequence[float]) -> float | None:
    return max(values) if values else None


def minus(value: float | None, origin: float) -> float | None:
    return None if value is None else value - origin


def analyse(
    records: list[Record],
    poller: Poller,
    access: dict[str, dict[str, Any]],
    t_kill: float,
    t_restart: float,
    t_listening: float,
    t_end: float,
    t0: float,
    killed_endpoint: str,
) -> dict[str, Any]:
    dead = KILLED
    # Admin polls: when the killed endpoint stopped / started being available.
    states = [(p.at, p.endpoints.get(killed_endpoint, {})) for p in poller.polls]
    unavailable_at = first([at for at, s in states if t_kill <= at and s.get("available") is False])
    recovered_at = first(
        [at for at, s in states if at >= t_restart and s.get("available") is True]
    )
    # The proxy's own transitions (its clock is time.time(), like ours).
    label = f"bench/{killed_endpoint}"
    transitions = sorted(poller.transitions.values(), key=lambda t: t["at"])
    for t in transitions:
        t["t"] = t["at"] - t0
    mine = [t for t in transitions if t["endpoint"] == label]

    def transition_at(after: float, machine: str, new: str) -> float | None:
        return first([
            t["t"] for t in mine if t["t"] >= after and t["machine"] == machine and t["new"] == new
        ])

    # Client side: who answered.
    served_by_dead_after_kill = [
        r.done for r in records if r.backend == dead and r.ok and t_kill <= r.done < t_restart
    ]
    served_by_dead_before_kill = [r.done for r in records if r.backend == dead and r.done < t_kill]
    back = [r for r in records if r.backend == dead and r.ok and r.sent >= t_restart]
    # Proxy side: requests whose (first) attempt went to the dead endpoint: retried
    # (attempts > 1) or failed with it as the last endpoint tried.
    touched = []
    for r in records:
        if not (t_kill - 1.0 <= r.sent < t_restart):
            continue
        entry = access.get(r.path)
        if entry is None:
            continue
        if entry["attempts"] > 1 or (entry["endpoint"] == killed_endpoint and not r.ok):
            touched.append(r)
    # By completion time: a request sent just before the kill can fail because of it.
    failed_after_kill = [r for r in records if t_kill <= r.done and not r.ok]
    # The killed endpoint's health-check verdicts, as far as 100 ms polls can see them
    # (last_check_at is on the proxy's clock).
    checks: dict[float, dict[str, Any]] = {}
    for _, s in states:
        at = s.get("health_check_at")
        if at is not None and at - t0 not in checks:
            checks[at - t0] = {"t": round(at - t0, 3), "passes": s.get("health_passes"),
                               "failures": s.get("health_failures"),
                               "cause": s.get("health_cause")}
    unlogged = sum(1 for r in records if r.path not in access)
    return {
        "kill_s": t_kill,
        "restart_s": t_restart,
        "restart_listening_s": t_listening,
        "end_s": t_end,
        "killed_endpoint": killed_endpoint,
        "kill_to_unavailable_poll_s": minus(unavailable_at, t_kill),
        "kill_to_breaker_open_s": minus(transition_at(t_kill, "breaker", "open"), t_kill),
        "kill_to_health_unhealthy_s": minus(transition_at(t_kill, "health", "unhealthy"), t_kill),
        "kill_to_last_response_from_dead_s": minus(last(served_by_dead_after_kill), t_kill),
        "last_response_from_dead_before_kill_s": minus(last(served_by_dead_before_kill), t_kill),
        "kill_to_last_request_tried_on_dead_s": minus(last([r.sent for r in touched]), t_kill),
        "requests_tried_on_dead": len(touched),
        "requests_tried_on_dead_retried_ok": sum(1 for r in touched if r.ok),
        "restart_to_available_poll_s": minus(recovered_at, t_restart),
        "restart_to_health_healthy_s": minus(
            transition_at(t_restart, "health", "healthy"), t_restart
        ),
        "restart_to_breaker_closed_s": minus(
            transition_at(t_restart, "breaker", "closed"), t_restart
        ),
        "restart_to_first_response_from_it_s": minus(first([r.done for r in back]), t_restart),
        "failed_after_kill": [
            {"sent_s": round(r.sent, 4), "latency_ms": round(r.latency * 1000, 2),
             "status": r.status, "error": r.error, "path": r.path,
             "proxy": access.get(r.path)}
            for r in failed_after_kill[:100]
        ],
        "requests_missing_from_access_log": unlogged,
        "health_checks_of_killed": [checks[k] for k in sorted(checks)],
        "transitions": [
            {k: t[k] for k in ("t", "endpoint", "machine", "old", "new", "cause")}
            for t in transitions
        ],
    }


def timeline(records: list[Record], end: float) -> list[dict[str, Any]]:
    """Per second of send time: requests, failures, answers by backend, p99."""
    rows = []
    for second in range(int(end + 0.999)):
        inside = [r for r in records if second <= r.sent < second + 1]
        latencies = sorted(r.latency * 1000 for r in inside)
        rows.append({
            "second": second,
            "requests": len(inside),
            "failed": sum(1 for r in inside if not r.ok),
            "a": sum(1 for r in inside if r.ok and r.backend == "a"),
            "b": sum(1 for r in inside if r.ok and r.backend == "b"),
            "p99_ms": percentile(latencies, 99),
        })
    return rows


# --------------------------------------------------------------------------- report


def _s(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_report(report: dict[str, Any], out: TextIO) -> None:
    info, settings = report["machine"], report["settings"]
    ev = report["events"]
    print(f"\nedgeproxy resilience scenario, {info['date']}, {info['nproc']} x "
          f"{info['cpu_model']}, pinning: {info['pinning']}", file=out)
    rate = f"{settings['rate']:g} req/s" if settings["rate"] else "closed loop"
    print(f"load: {settings['workers']} workers, {settings['scheme']}, {rate}; "
          f"health check: {report['cluster']['health_check']}; "
          f"outlier detection: {report['cluster']['outlier_detection']}; "
          f"retries: {report['cluster']['retries']}", file=out)
    print(f"backend b ({ev['killed_endpoint']}) SIGKILLed at {ev['kill_s']:.2f} s, restarted "
          f"at {ev['restart_s']:.2f} s (listening at {ev['restart_listening_s']:.2f} s), "
          f"load stopped at {ev['end_s']:.2f} s\n", file=out)
    header = (f"{'phase':<8} {'window s':>12} {'requests':>8} {'req/s':>7} {'failed':>6} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'proxy%':>6} {'client%':>7} "
              f"{'other%':>6}  "
              f"{'served by a / b':<16} failures")
    print(header, file=out)
    print("-" * len(header), file=out)
    for name in ("before", "during", "after", "total"):
        p = report["phases"][name]
        by = p["by_backend"]
        print(f"{name:<8} {p['from_s']:>5.1f}-{p['to_s']:<6.1f} {p['requests']:>8} "
              f"{p['requests_per_s']:>7.0f} {p['failed']:>6} {_ms(p['p50_ms']):>7} "
              f"{_ms(p['p99_ms']):>7} {_ms(p['max_ms']):>7} "
              f"{p['edgeproxy_cpu_percent']:>6.0f} {p['loadgen_cpu_percent']:>7.0f} "
              f"{p['other_cpu_percent']:>6.0f}  "
              f"{by.get('a', 0):>6} / {by.get('b', 0):<7} {p['failures'] or ''}", file=out)
    final = report["final_status"] or {}
    print(f"\nfailed requests: {report['phases']['total']['failed']} overall, "
          f"{len(ev['failed_after_kill'])} of them completed after the kill; proxy retries: "
          f"{final.get('retries')}, refused by the retry budget: "
          f"{final.get('retries_refused_by_budget')}", file=out)
    rows = [
        ("kill -> endpoint unavailable (admin poll, 100 ms)", ev["kill_to_unavailable_poll_s"]),
        ("kill -> breaker open (proxy transition)", ev["kill_to_breaker_open_s"]),
        ("kill -> health unhealthy (proxy transition)", ev["kill_to_health_unhealthy_s"]),
        ("kill -> last response from the killed backend", ev["kill_to_last_response_from_dead_s"]),
        ("kill -> last request the proxy tried on it", ev["kill_to_last_request_tried_on_dead_s"]),
        ("restart -> endpoint available (admin poll)", ev["restart_to_available_poll_s"]),
        ("restart -> health healthy (proxy transition)", ev["restart_to_health_healthy_s"]),
        ("restart -> breaker closed (proxy transition)", ev["restart_to_breaker_closed_s"]),
        ("restart -> first response from it", ev["restart_to_first_response_from_it_s"]),
    ]
    for label, value in rows:
        print(f"  {label:<52} {_s(value)}", file=out)
    print(f"  requests the proxy tried on the dead endpoint: {ev['requests_tried_on_dead']} "
          f"({ev['requests_tried_on_dead_retried_ok']} answered 200 after a retry); "
          f"proxy retries logged: {dict(report['proxy_retries']) or 0}", file=out)
    if ev["kill_to_last_response_from_dead_s"] is None:
        print("  (no response from the killed backend after the kill; its last one came "
              f"{_s(ev['last_response_from_dead_before_kill_s'])} relative to the kill)", file=out)
    print("\ntransitions (s since the start):", file=out)
    for t in ev["transitions"]:
        print(f"  {t['t']:>7.3f}  {t['endpoint']} {t['machine']} {t['old']} -> {t['new']}: "
              f"{t['cause']}", file=out)
    checks = [c for c in ev["health_checks_of_killed"]
              if ev["kill_s"] - 2.5 <= c["t"] <= ev["restart_listening_s"] + 5]
    if checks:
        print("\nhealth checks of the killed endpoint seen by the poller "
              "(s since the start, passes/failures in a row, last cause):", file=out)
        print("  " + "  ".join(f"{c['t']:.2f}:{c['passes']}/{c['failures']}"
                               f"{'/' + c['cause'] if c['failures'] else ''}" for c in checks),
              file=out)
    if ev["failed_after_kill"]:
        print("\nfailed requests completed after the kill (first 10):", file=out)
        for f in ev["failed_after_kill"][:10]:
            proxy = f["proxy"] or {}
            print(f"  {f['sent_s']:>7.3f} s  {f['latency_ms']:>7.1f} ms  status {f['status']}  "
                  f"{f['error'] or ''} proxy: {proxy}", file=out)
    print("\nper second (send time): requests / failed / a / b / p99 ms", file=out)
    print("  " + "  ".join(
        f"{row['second']}:{row['requests']}/{row['failed']}/{row['a']}/{row['b']}/"
        f"{_ms(row['p99_ms'])}" for row in report["timeline"]), file=out)
    summary = report["edgeproxy_log"]
    print(f"\nedgeproxy access log statuses: {summary['access_log_statuses']}, outcomes: "
          f"{summary['access_log_outcomes']}; warnings/errors/tracebacks: "
          f"{summary['problem_lines']}; requests missing from it: "
          f"{ev['requests_missing_from_access_log']}; admin poll errors: "
          f"{report['poll_errors'] or 0}; edgeproxy alive at the end: "
          f"{report['edgeproxy_alive_at_end']}", file=out)
    for line in summary["problem_sample"][:10]:
        print(f"  {line}", file=out)
    print(f"\nresults: {report['path']}", file=out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Kill a backend under load behind edgeproxy (see bench/README.md)."
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before")
    p.add_argument("--kill-at", type=float, default=5.0, help="SIGKILL backend b at (s)")
    p.add_argument("--restart-at", type=float, default=12.0, help="restart it at (s)")
    p.add_argument("--workers", type=int, default=8, help="load threads (one connection each)")
    p.add_argument("--rate", type=float, default=300.0,
                   help="requests/s over all workers; 0: closed loop")
    p.add_argument("--scheme", choices=("https", "http"), default="https")
    p.add_argument("--request-timeout", type=float, default=5.0, help="client socket timeout")
    p.add_argument("--poll", type=float, default=0.1, help="admin /status polling interval")
    p.add_argument("--interval", type=float, default=1.0, help="HealthCheck interval")
    p.add_argument("--timeout", type=float, default=0.5, help="HealthCheck timeout")
    p.add_argument("--rise", type=int, default=2, help="HealthCheck rise")
    p.add_argument("--fall", type=int, default=2, help="HealthCheck fall")
    p.add_argument("--consecutive-failures", type=int, default=3, help="OutlierDetection")
    p.add_argument("--ejection-time", type=float, default=5.0,
                   help="OutlierDetection base_ejection_time")
    p.add_argument("--no-health-check", dest="health_check", action="store_false")
    p.add_argument("--no-outlier-detection", dest="outlier_detection", action="store_false")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    p.add_argument("--serve-backend", metavar="NAME", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_backend:
        return args
    if not 0 < args.kill_at < args.restart_at < args.duration:
        p.error("need 0 < --kill-at < --restart-at < --duration")
    if args.workers < 1 or args.rate < 0 or args.poll <= 0 or args.request_timeout <= 0:
        p.error("--workers >= 1, --rate >= 0, --poll > 0, --request-timeout > 0")
    return args


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if args.serve_backend:
        asyncio.run(_serve_backend(args.serve_backend, args.port))
        return 0
    pin = can_pin(args.pin)
    pem = dev_certificate()
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-resilience-"))
    procs = Processes(pin)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    report: dict[str, Any] = {}
    try:
        with sigterm_as_exit():
            if pin:
                # The load generator (this process and its threads) shares CPU 0 with the
                # backends; edgeproxy has CPU 1 to itself.
                os.sched_setaffinity(0, {0})
            ports = {"a": free_port(), "b": free_port()}
            backends = {}
            for name, port in ports.items():
                workdir = tmp / f"backend-{name}"
                workdir.mkdir()
                backends[name] = start_backend(procs, workdir, name, port, "")
            config_text = edgeproxy_config(ports, args)
            edge = start_edgeproxy(procs, tmp / "edgeproxy", "1", config_text, pem,
                                   config_name="resilience_site.py")
            killed_endpoint = f"127.0.0.1:{ports[KILLED]}"
            log(f"backends: a on {ports['a']} (pid {backends['a'].pid}), b on {ports['b']} "
                f"(pid {backends['b'].pid}); edgeproxy pid {edge.pid}, ports {edge.ports}")

            records: list[Record] = []
            start_wall = time.time()
            t0 = start_wall + args.warmup
            period = args.workers / args.rate if args.rate else 0.0
            port = edge.ports[args.scheme]
            for i in range(args.workers):
                thread = threading.Thread(
                    target=load_worker,
                    args=(i, args.scheme, port, period, args.request_timeout, t0, stop, records),
                    name=f"load-{i}", daemon=True,
                )
                thread.start()
                threads.append(thread)
                if period:  # spread the workers' schedules over one period
                    time.sleep(period / args.workers)
            poller = Poller(edge.ports["admin"], args.poll, t0)
            poll_thread = threading.Thread(target=poller.run, args=(stop,), name="poller",
                                           daemon=True)
            poll_thread.start()
            threads.append(poll_thread)

            def sleep_until(t: float) -> None:
                time.sleep(max(0.0, t0 + t - time.time()))

            rate = f"{args.rate:g} req/s" if args.rate else "closed loop"
            log(f"load: {args.workers} workers, {args.scheme}, {rate}")

            def cpu_sample() -> CpuSample:
                own = os.times()
                return CpuSample(
                    edgeproxy=cpu_seconds([edge.pid]),
                    loadgen=own.user + own.system,
                    backends={b.pid: cpu_seconds([b.pid]) for b in backends.values()
                              if b.alive()},
                    system=system_cpu_seconds()[0],
                )

            sleep_until(0.0)
            cpu = [cpu_sample()]
            sleep_until(args.kill_at)
            cpu.append(cpu_sample())
            victim = backends[KILLED]
            t_kill = time.time() - t0
            os.kill(victim.pid, signal.SIGKILL)
            victim.popen.wait(5)
            log(f"{t_kill:6.2f} s: SIGKILLed backend {KILLED} (pid {victim.pid})")
            sleep_until(args.restart_at)
            cpu.append(cpu_sample())
            t_restart = time.time() - t0
            workdir = tmp / f"backend-{KILLED}-restarted"
            workdir.mkdir()
            backends[KILLED] = start_backend(procs, workdir, KILLED, ports[KILLED], "-restarted")
            t_listening = time.time() - t0
            log(f"{t_restart:6.2f} s: restarted backend {KILLED} (pid {backends[KILLED].pid}), "
                f"listening at {t_listening:.2f} s")
            sleep_until(args.duration)
            stop.set()
            t_end = time.time() - t0
            cpu.append(cpu_sample())
            for thread in threads:
                thread.join(args.request_timeout + 2)
            log(f"{t_end:6.2f} s: load stopped, {len(records)} requests")
            # Let the access-log lines of the last requests reach the file; final counters.
            time.sleep(0.3)
            final_conn = http.client.HTTPConnection("127.0.0.1", edge.ports["admin"], timeout=2)
            poller.poll_once(final_conn)
            final_conn.close()

            measured = sorted((r for r in records if r.sent >= 0), key=lambda r: r.sent)
            access, retries = parse_access_log(edge.output)
            events = analyse(measured, poller, access, t_kill, t_restart, t_listening, t_end,
                             t0, killed_endpoint)
            info = machine_info(pin, "two bench/resilience.py backends (asyncio)")
            info["pinning"] = ("load generator + backends on CPU 0, edgeproxy on CPU 1"
                               if pin else "none")
            info["versions"].pop("wrk", None)
            report = {
                "machine": info,
                "settings": {k: v for k, v in vars(args).items()
                             if k not in ("keep_temp", "serve_backend", "port")} | {"pinned": pin},
                "cluster": {
                    "health_check": (f"interval={args.interval:g} timeout={args.timeout:g} "
                                     f"rise={args.rise} fall={args.fall}"
                                     if args.health_check else "off"),
                    "outlier_detection": (f"consecutive_failures={args.consecutive_failures} "
                                          f"base_ejection_time={args.ejection_time:g}"
                                          if args.outlier_detection else "off"),
                    "retries": "RetryPolicy() (attempts=2)",
                    "config": config_text,
                },
                "phases": {
                    "before": phase_stats(measured, 0.0, t_kill, cpu[0], cpu[1]),
                    "during": phase_stats(measured, t_kill, t_restart, cpu[1], cpu[2]),
                    "after": phase_stats(measured, t_restart, t_end, cpu[2], cpu[3]),
                    "total": phase_stats(measured, 0.0, t_end, cpu[0], cpu[3]),
                },
                "events": events,
                "proxy_retries": dict(retries),
                "timeline": timeline(measured, t_end),
                "poll_errors": dict(poller.errors),
                "final_status": poller.final,
                "edgeproxy_log": summarize_proxy_log(edge.output),
                "edgeproxy_alive_at_end": edge.alive(),
                "polls": [{"t": round(p.at, 3), "endpoints": p.endpoints} for p in poller.polls],
                "requests": [
                    [round(r.sent, 4), round(r.latency * 1000, 2), r.status, r.backend, r.error,
                     r.path]
                    for r in measured
                ],
            }
    finally:
        stop.set()
        stop_and_clean(procs, tmp, args.keep_temp)

    path = results_path("resilience")
    report["path"] = str(path)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report, out)
    return 0


if __name__ == "__main__":
    run_main(main)
