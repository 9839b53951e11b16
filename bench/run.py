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
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from _common import (
    LARGE_BODY,
    LARGE_PATH,
    SMALL_PATH,
    Meter,
    Processes,
    Server,
    WrkResult,
    can_pin,
    dev_certificate,
    http_get,
    log,
    machine_info,
    nginx_binary,
    parse_wrk,
    peak_rss_kib,
    results_path,
    run_main,
    sigterm_as_exit,
    single_route_config,
    start_edgeproxy,
    start_nginx_backend,
    start_nginx_proxy,
    start_python_backend,
    stop_and_clean,
    summarize_proxy_log,
    tail,
    target_url,
    wrk_argv,
)


def run_wrk(
    procs: Processes, url: str, duration: float, connections: int, threads: int, cpu: str
) -> WrkResult:
    done = subprocess.run(
        wrk_argv(procs, url, duration, connections, threads, cpu), capture_output=True,
        text=True, timeout=duration + 60, check=False,
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
        return target_url(self.scheme, self.server.ports[self.scheme], path)


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
    # CPU used by processes this script did not start: a noise indicator.
    meter = Meter(procs, pids, count_self=False)
    meter.start()
    result = run_wrk(procs, url, args.duration, connections, args.threads, "0")
    _wall, used, other, steal = meter.deltas()
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
        steal_utilization=steal / result.seconds if result.seconds else 0.0,
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


# --------------------------------------------------------------------------- main


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


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("error: wrk is not installed (apt-get install wrk)")
        return 2
    pin = can_pin(args.pin)
    if args.pin and not pin:
        log("note: not pinning (needs taskset and at least 2 CPUs)")
    nginx = nginx_binary()
    pem = dev_certificate()
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
            edge = start_edgeproxy(
                procs, tmp / "edgeproxy", "1", single_route_config(backend_port), pem
            )
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
        stop_and_clean(procs, tmp, args.keep_temp)

    path = results_path("results")
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
    run_main(main)
