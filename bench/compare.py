"""
Compare edgeproxy with nginx, haproxy and caddy as TLS-terminating reverse proxies.

One run starts, on 127.0.0.1 only, in a temporary directory:

* the backend: nginx (1 worker, access log off) answering ``/`` with a fixed
  ``--body``-byte body and ``/large`` with 1 MiB (``bench/run.py``'s backend),
* edgeproxy (``twistd -n edgeproxy``, one process, the default settings but
  ``--access-log off``),
* each of nginx, haproxy and caddy that is installed (a missing one is skipped), each
  with one worker / thread / GOMAXPROCS, the same ECDSA P-256 certificate, TLS 1.3
  only, a keep-alive upstream pool and one route (``/`` to the backend),
* optionally (``--log-table``, on by default) a second instance of each proxy with access
  logging on, to a file (edgeproxy: ``--access-log FILE``, buffered and flushed every
  second),

then measures every target in turn, ``--runs`` rounds (default 3) interleaved so that
slow drifts of the machine hit every target alike, and reports medians:

* ``wrk --latency -t1 -c50`` keep-alive, small body: req/s, p50, p99, the proxy's CPU
  time per request (``utime + stime`` from ``/proc``) and its peak RSS (``VmRSS``
  sampled during the run);
* ``wrk -c10`` on ``/large`` (1 MiB): MB/s;
* ``openssl s_time -new -tls1_3`` (no session reuse: every connection is a full
  handshake), ``--stime-clients`` of them in parallel: handshakes/s and handshakes per
  CPU-second of the proxy.

Pinning (``taskset``, 2+ CPUs): wrk, s_time and the backend on CPU 0, every proxy on
CPU 1 (only the one being measured is busy).

Access logging: off in every proxy for the main table; on, to a file, in every proxy for
the second.

Prints markdown tables on stdout; everything (raw wrk / s_time output of every run,
machine, versions, load) goes to ``bench/out/compare-<UTC timestamp>.json``.

Run: ``bench/compare [--quick] [--only edgeproxy,nginx] [--runs 3] [--duration 8]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/_common.py: processes, nginx, edgeproxy, wrk parsing
    _NGINX_PROXY,
    LARGE_BODY,
    LARGE_PATH,
    SMALL_PATH,
    Meter,
    Processes,
    Server,
    add_noise_arguments,
    can_pin,
    cpu_model,
    cpu_seconds,
    dev_certificate,
    git_info,
    http_get,
    insecure_tls_context,
    loadavg,
    log,
    nginx_binary,
    parse_wrk,
    peak_rss_kib,
    python_versions,
    results_path,
    rss_kib,
    run_main,
    sbin_binary,
    self_cpu_seconds,
    sigterm_as_exit,
    single_route_config,
    split_pem,
    start_edgeproxy,
    start_nginx_backend,
    start_nginx_proxy,
    start_on_free_ports,
    start_python_backend,
    stop_and_clean,
    summarize_proxy_log,
    system_cpu_seconds,
    tail,
    target_url,
    write_key_and_cert,
    wrk_argv,
)

PROXIES = ("edgeproxy", "nginx", "haproxy", "caddy")
CLIENT_CPU = "0"
PROXY_CPU = "1"
_STIME = re.compile(r"(\d+) connections in ([0-9.]+)s?;? ")


# --------------------------------------------------------------------------- peers


@dataclass
class Proxy:
    """One proxy instance under test."""

    name: str  # "edgeproxy", "nginx", "nginx+log", ...
    kind: str  # "direct", "edgeproxy", "nginx", "haproxy", "caddy"
    server: Server
    access_log: bool
    schemes: tuple[str, ...] = ("http", "https")


# bench/run.py's nginx proxy (keep-alive upstream pool, in-memory buffering), TLS 1.3 only.
_NGINX_PROXY_TLS13 = _NGINX_PROXY.replace(
    "ssl_protocols TLSv1.2 TLSv1.3;", "ssl_protocols TLSv1.3;"
)
assert _NGINX_PROXY_TLS13 != _NGINX_PROXY


def haproxy_binary() -> str | None:
    return sbin_binary("haproxy")


def caddy_binary() -> str | None:
    return shutil.which("caddy")


_HAPROXY = """\
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
{log_global}
defaults
    mode http
{log_defaults}
    option http-keep-alive
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    # Keep-alive pool to the backend, idle connections shared between clients.
    http-reuse always

frontend fe_http
    bind 127.0.0.1:{http_port} backlog 4096
    default_backend be

frontend fe_https
    bind 127.0.0.1:{https_port} backlog 4096 ssl crt {dir}/bench.pem
    default_backend be

backend be
    server b1 127.0.0.1:{backend_port} pool-max-conn 64
"""


def start_haproxy(
    procs: Processes, binary: str, workdir: Path, backend_port: int, pem: bytes,
    access_log: bool,
) -> Server:
    workdir.mkdir(parents=True)
    key, cert = split_pem(pem)
    (workdir / "bench.pem").write_bytes(cert + key)
    name = "haproxy+log" if access_log else "haproxy"

    def start(ports: dict[str, int]) -> Server:
        conf = workdir / "haproxy.cfg"
        conf.write_text(_HAPROXY.format(
            http_port=ports["http"], https_port=ports["https"], backend_port=backend_port,
            dir=workdir,
            # haproxy logs to syslog or stdout; stdout is a file here.
            log_global="    log stdout format raw local0 info" if access_log else "",
            log_defaults="    log global\n    option httplog" if access_log else "",
        ))
        # -db: foreground, no daemon, no master-worker: one process.
        return procs.start(name, [binary, "-db", "-f", str(conf)], PROXY_CPU, workdir,
                           env=None)

    return start_on_free_ports(("http", "https"), start)


def _caddy_config(
    workdir: Path, ports: dict[str, int], backend_port: int, access_log: bool
) -> dict[str, Any]:
    route = [{
        "handle": [{
            "handler": "reverse_proxy",
            "upstreams": [{"dial": f"127.0.0.1:{backend_port}"}],
            "transport": {
                "protocol": "http",
                "keep_alive": {
                    "enabled": True,
                    "max_idle_conns_per_host": 64,
                    "idle_timeout": "300s",
                },
            },
        }],
    }]
    server_common: dict[str, Any] = {
        "routes": route,
        "automatic_https": {"disable": True},
        "protocols": ["h1", "h2"],  # no HTTP/3 (UDP) listener
        "idle_timeout": "300s",
    }
    if access_log:
        server_common["logs"] = {"default_logger_name": "access"}
    logs: dict[str, Any] = {
        "default": {"level": "WARN", "exclude": ["http.log.access.access"]},
    }
    if access_log:
        logs["access"] = {
            "writer": {"output": "file", "filename": str(workdir / "access.log"),
                       "roll": False},
            "encoder": {"format": "json"},
            "include": ["http.log.access.access"],
        }
    return {
        "admin": {"disabled": True, "config": {"persist": False}},
        "logging": {"logs": logs},
        "apps": {
            "http": {
                "http_port": ports["http"],
                "https_port": ports["https"],
                "servers": {
                    "plain": {"listen": [f"127.0.0.1:{ports['http']}"], **server_common},
                    "tls": {
                        "listen": [f"127.0.0.1:{ports['https']}"],
                        "tls_connection_policies": [{
                            "protocol_min": "tls1.3",
                            "default_sni": "localhost",  # s_time sends no SNI
                        }],
                        **server_common,
                    },
                },
            },
            "tls": {
                "certificates": {
                    "load_files": [{
                        "certificate": str(workdir / "cert.pem"),
                        "key": str(workdir / "key.pem"),
                    }],
                },
            },
        },
    }


def start_caddy(
    procs: Processes, binary: str, workdir: Path, backend_port: int, pem: bytes,
    access_log: bool,
) -> Server:
    write_key_and_cert(workdir, pem)
    env = dict(
        os.environ, GOMAXPROCS="1", HOME=str(workdir),
        XDG_CONFIG_HOME=str(workdir / "config"), XDG_DATA_HOME=str(workdir / "data"),
    )
    name = "caddy+log" if access_log else "caddy"

    def start(ports: dict[str, int]) -> Server:
        conf = workdir / "caddy.json"
        conf.write_text(json.dumps(_caddy_config(workdir, ports, backend_port, access_log),
                                   indent=2))
        return procs.start(name, [binary, "run", "--config", str(conf)], PROXY_CPU,
                           workdir, env=env)

    return start_on_free_ports(("http", "https"), start)


def edgeproxy_server(
    procs: Processes, workdir: Path, backend_port: int, pem: bytes, logging_on: bool
) -> Server:
    """Like bench/run.py's, but the certificate is ``default.pem`` (still indexed by its
    names), so that clients without SNI (openssl s_time) get it too; the access log goes
    to ``access.log`` in ``workdir``, or nowhere."""
    access_log = str(workdir / "access.log") if logging_on else "off"
    return start_edgeproxy(procs, workdir, PROXY_CPU, single_route_config(backend_port), pem,
                           pem_name="default.pem", extra_args=("--access-log", access_log))


def tls_version(port: int) -> str:
    """The TLS version negotiated by a default client (sanity check: TLS 1.3)."""
    ctx = insecure_tls_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        return str(s.version())


# --------------------------------------------------------------------------- measuring


def wait_sampling(popen: subprocess.Popen[str], pids: list[int], timeout: float) -> int:
    """Wait for ``popen`` (killing it after ``timeout`` s), sampling the peak VmRSS of
    ``pids`` every 0.2 s; returns that peak in KiB."""
    deadline = time.monotonic() + timeout
    peak = rss_kib(pids)
    while popen.poll() is None:
        if time.monotonic() > deadline:
            popen.kill()
            popen.wait(5)
            raise RuntimeError(f"{popen.args!r} did not finish within {timeout:.0f} s")
        time.sleep(0.2)
        peak = max(peak, rss_kib(pids))
    return peak


def measure_wrk(
    procs: Processes, proxy: Proxy, scheme: str, path: str, body_size: int,
    connections: int, args: argparse.Namespace,
) -> dict[str, Any]:
    port = proxy.server.ports[scheme]
    status, length = http_get(port, path, scheme == "https")
    if status != 200 or length != body_size:
        raise RuntimeError(f"{proxy.name} {scheme} {path}: status {status}, {length} body "
                           f"bytes (expected 200 and {body_size})")
    url = target_url(scheme, port, path)
    if args.warmup > 0:
        subprocess.run(wrk_argv(procs, url, args.warmup, connections, 1, CLIENT_CPU),
                       capture_output=True,
                       timeout=args.warmup + 60, check=False)
    pids = proxy.server.pids()
    load = loadavg()
    meter = Meter(procs, pids)
    meter.start()
    with subprocess.Popen(wrk_argv(procs, url, args.duration, connections, 1, CLIENT_CPU),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as wrk:
        peak = wait_sampling(wrk, pids, args.duration + 60)
        output = wrk.stdout.read() if wrk.stdout else ""
    usage = meter.stop()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}):\n{output}")
    if not proxy.server.alive():
        raise RuntimeError(f"{proxy.name} died during the run:\n{tail(proxy.server.output)}")
    result = parse_wrk(output)
    requests = max(result.requests, 1)
    return {
        "requests": result.requests,
        "seconds": result.seconds,
        "requests_per_s": result.requests_per_s,
        "mb_per_s": result.requests_per_s * body_size / 1e6,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "cpu_us_per_request": usage["cpu_seconds"] / requests * 1e6,
        "peak_rss_kib": peak,
        "errors": result.errors,
        "non_2xx_3xx": result.non_2xx_3xx,
        "socket_errors": result.socket_errors,
        "loadavg_before": load,
        **usage,
        "raw": output,
    }


def measure_handshakes(
    procs: Processes, proxy: Proxy, args: argparse.Namespace
) -> dict[str, Any]:
    port = proxy.server.ports["https"]
    argv = procs.command(
        ["openssl", "s_time", "-new", "-tls1_3", "-connect", f"127.0.0.1:{port}",
         "-time", str(max(1, round(args.handshake_time)))],
        CLIENT_CPU,
    )
    pids = proxy.server.pids()
    load = loadavg()
    meter = Meter(procs, pids)
    meter.start()
    clients = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, stdin=subprocess.DEVNULL)
               for _ in range(args.stime_clients)]
    peak = 0
    outputs = []
    try:
        for client in clients:
            peak = max(peak, wait_sampling(client, pids, args.handshake_time + 60))
            outputs.append(client.stdout.read() if client.stdout else "")
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait(5)
            if client.stdout:
                client.stdout.close()
    usage = meter.stop()
    if not proxy.server.alive():
        raise RuntimeError(f"{proxy.name} died during the run:\n{tail(proxy.server.output)}")
    handshakes = 0
    failed = 0
    for output, client in zip(outputs, clients, strict=True):
        match = _STIME.search(output)
        if client.returncode != 0 or match is None:
            failed += 1
            log(f"warning: {proxy.name}: s_time exited {client.returncode}:\n{output[-2000:]}")
            continue
        handshakes += int(match.group(1))
    # Every s_time ran for the same -time; the rate is over our own wall clock.
    wall = usage["wall_seconds"]
    return {
        "handshakes": handshakes,
        "handshakes_per_s": handshakes / wall if wall else 0.0,
        "handshakes_per_cpu_s": handshakes / usage["cpu_seconds"] if usage["cpu_seconds"]
        else 0.0,
        "cpu_us_per_handshake": usage["cpu_seconds"] / max(handshakes, 1) * 1e6,
        "failed_clients": failed,
        "peak_rss_kib": peak,
        "loadavg_before": load,
        **usage,
        "raw": outputs,
    }


def other_cpu_now(procs: Processes, window: float = 1.0) -> float:
    """CPU used during ``window`` s by processes this script did not start, in cores."""
    ours = procs.our_pids()
    sys0, _ = system_cpu_seconds()
    ours0, self0 = cpu_seconds(ours), self_cpu_seconds()
    time.sleep(window)
    sys1, _ = system_cpu_seconds()
    return max(0.0, (sys1 - sys0) - (cpu_seconds(ours) - ours0)
               - (self_cpu_seconds() - self0)) / window


def wait_for_quiet(procs: Processes, args: argparse.Namespace) -> float:
    """Wait (at most --quiet-wait s) until other processes use < --max-other-cpu % CPU;
    returns the last level seen (in %)."""
    deadline = min(time.monotonic() + args.quiet_wait, args.noise_deadline)
    while True:
        other = other_cpu_now(procs) * 100
        if other < args.max_other_cpu or time.monotonic() >= deadline:
            return other
        time.sleep(1.0)


def measure_quietly(
    procs: Processes, args: argparse.Namespace, label: str,
    measure: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """``measure()`` once the machine is quiet; again (up to --retries times) when other
    processes used more than --max-other-cpu % CPU during it.  Keeps the least noisy."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(args.retries + 1):
        before = wait_for_quiet(procs, args)
        result = measure()
        result["other_cpu_before_percent"] = before
        attempts.append(result)
        noise = result["other_cpu_utilization"] * 100
        if noise <= args.max_other_cpu or time.monotonic() >= args.noise_deadline:
            break
        if attempt < args.retries and time.monotonic() < args.noise_deadline:
            log(f"  {label}: other processes used {noise:.0f}% CPU meanwhile; retrying")
    best = min(attempts, key=lambda r: r["other_cpu_utilization"])
    best["attempts"] = len(attempts)
    best["noisy"] = best["other_cpu_utilization"] * 100 > args.max_other_cpu
    return best


# --------------------------------------------------------------------------- reporting


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "errors"]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    if "errors" in runs[0]:
        out["errors"] = sum(r["errors"] for r in runs)
    if "failed_clients" in runs[0]:
        out["failed_clients"] = sum(r["failed_clients"] for r in runs)
    out["peak_rss_kib"] = max(r["peak_rss_kib"] for r in runs)
    out["runs"] = len(runs)
    out["noisy_runs"] = sum(bool(r.get("noisy")) for r in runs)
    out["max_other_cpu_utilization"] = max(r["other_cpu_utilization"] for r in runs)
    return out


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}".replace(",", " ")


def _cell(
    value: float | None, nginx: float | None, direct: float | None, digits: int = 0,
    show_nginx: bool = True,
) -> str:
    if value is None:
        return "-"
    text = _fmt(value, digits)
    ratios = []
    if show_nginx:
        ratios.append(f"{value / nginx:.2f}" if nginx else "-")
    ratios.append(f"{value / direct:.2f}" if direct else "-")
    return f"{text} ({' / '.join(ratios)})" if any(r != "-" for r in ratios) else text


Row = dict[str, Any]


def build_rows(
    medians: dict[tuple[str, str, str], dict[str, Any]], proxies: list[Proxy],
) -> list[Row]:
    """One row per (proxy, scheme) with the medians of each scenario."""
    rows = []
    for proxy in proxies:
        for scheme in proxy.schemes:
            small = medians.get((proxy.name, scheme, "small"))
            if small is None:
                continue
            rows.append({
                "target": f"{proxy.name} {scheme}" if proxy.kind != "direct" else "direct",
                "proxy": proxy.name,
                "kind": proxy.kind,
                "scheme": scheme,
                "access_log": proxy.access_log,
                "small": small,
                "large": medians.get((proxy.name, scheme, "large")),
                "handshake": medians.get((proxy.name, scheme, "handshake")),
            })
    return rows


_COLUMNS: list[tuple[str, Callable[[Row], float | None], int]] = [
    ("req/s", lambda r: r["small"]["requests_per_s"], 0),
    ("p50 ms", lambda r: r["small"]["p50_ms"], 2),
    ("p99 ms", lambda r: r["small"]["p99_ms"], 2),
    ("CPU µs/req", lambda r: r["small"]["cpu_us_per_request"], 0),
    ("peak RSS MiB", lambda r: max(
        r["small"]["peak_rss_kib"], r["large"]["peak_rss_kib"] if r["large"] else 0) / 1024, 1),
    ("full handshakes/s", lambda r: r["handshake"]["handshakes_per_s"] if r["handshake"]
     else None, 0),
    ("handshakes / CPU-s", lambda r: r["handshake"]["handshakes_per_cpu_s"] if r["handshake"]
     else None, 0),
    ("1 MiB MB/s", lambda r: r["large"]["mb_per_s"] if r["large"] else None, 0),
]


def markdown(rows: list[Row], reference_kind: str, title_ref: str) -> str:
    """The table: every value with (÷ reference, ÷ direct)."""
    direct = next((r for r in rows if r["kind"] == "direct"), None)
    refs = {r["scheme"]: r for r in rows if r["kind"] == reference_kind}
    head = "| target | " + " | ".join(c[0] for c in _COLUMNS) + " | proxy CPU % | errors |"
    lines = [head, "|---|" + "---:|" * (len(_COLUMNS) + 2)]
    for row in rows:
        ref = refs.get(row["scheme"])
        cells = []
        for _name, get, digits in _COLUMNS:
            value = get(row)
            ref_value = get(ref) if ref is not None and ref is not row else None
            direct_value = get(direct) if direct is not None and row is not direct else None
            cells.append(_cell(value, ref_value, direct_value, digits,
                               show_nginx=row["kind"] not in ("direct",)))
        errors = row["small"]["errors"] + (row["large"]["errors"] if row["large"] else 0)
        if row["handshake"]:
            errors += row["handshake"]["failed_clients"]
        lines.append(f"| {row['target']} | " + " | ".join(cells)
                     + f" | {row['small']['cpu_utilization'] * 100:.0f} | {errors} |")
    lines.append("")
    lines.append(f"Cells: median value ({title_ref} / ÷ direct), ratios of this row's value "
                 f"to the {title_ref.removeprefix('÷ ')} row of the same scheme and to the "
                 "backend direct. Higher is better for req/s, handshakes and MB/s; lower for "
                 "latency, CPU and RSS.")
    return "\n".join(lines)


def noise_table(rows: list[Row]) -> str:
    lines = [
        "| target | other CPU % (small median / max of all runs) | noisy runs | small: proxy CPU % "
        "| 1 MiB: proxy CPU % | 1 MiB: CPU µs/req | handshake: proxy CPU % "
        "| load before (1/5/15 min, first run) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        large, hs = r["large"], r["handshake"]
        measured = [m for m in (r["small"], large, hs) if m]
        worst = max(m["max_other_cpu_utilization"] for m in measured)
        lines.append(
            "| " + " | ".join([
                r["target"],
                f"{r['small']['other_cpu_utilization'] * 100:.0f} / "
                f"{worst * 100:.0f}",
                str(sum(m["noisy_runs"] for m in measured)),
                f"{r['small']['cpu_utilization'] * 100:.0f}",
                f"{large['cpu_utilization'] * 100:.0f}" if large else "-",
                f"{large['cpu_us_per_request']:.0f}" if large else "-",
                f"{hs['cpu_utilization'] * 100:.0f}" if hs else "-",
                r.get("load", "?"),
            ]) + " |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    found = python_versions()

    def first_line(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                  check=False)
            return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]
        return "?"

    for name, argv in (
        ("nginx", [nginx_binary() or "nginx", "-v"]),
        ("haproxy", [haproxy_binary() or "haproxy", "-v"]),
        ("caddy", [caddy_binary() or "caddy", "version"]),
        ("wrk", ["wrk", "--version"]),
        ("openssl", ["openssl", "version"]),
    ):
        found[name] = first_line(argv)
    return found


def machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "git": git_info(short=True, timeout=10),
        "versions": versions(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare edgeproxy with nginx, haproxy and caddy (see bench/RESULTS.md).")
    p.add_argument("--runs", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up wrk run, seconds")
    p.add_argument("--handshake-time", type=float, default=5.0, help="s_time -time")
    p.add_argument("--stime-clients", type=int, default=2,
                   help="openssl s_time processes in parallel")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--large-connections", type=int, default=10)
    p.add_argument("--body", type=int, default=1024, help="small body, bytes")
    p.add_argument("--only", default="",
                   help="comma-separated proxies to measure (edgeproxy,nginx,haproxy,caddy)")
    p.add_argument("--no-log-table", dest="log_table", action="store_false",
                   help="skip the access-log-on comparison (nginx/haproxy/caddy logging)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 run of 3 s, 1 s warm-up, 3 s of handshakes")
    add_noise_arguments(p)
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--keep-temp", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup, args.handshake_time = 1, 3.0, 1.0, 3.0
    args.noise_deadline = time.monotonic() + args.noise_budget  # extended in main()
    args.only = [x.strip() for x in args.only.split(",") if x.strip()] or list(PROXIES)
    unknown = set(args.only) - set(PROXIES)
    if unknown:
        p.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(PROXIES)}")
    if args.runs < 1 or args.duration < 1 or args.stime_clients < 1:
        p.error("--runs, --duration and --stime-clients must be >= 1")
    return args


def start_all(
    procs: Processes, tmp: Path, pem: bytes, args: argparse.Namespace
) -> tuple[list[Proxy], list[str]]:
    notes: list[str] = []
    nginx = nginx_binary()
    if nginx:
        backend = start_nginx_backend(procs, nginx, tmp / "backend", CLIENT_CPU, args.body)
        notes.append("backend: nginx, 1 worker, access_log off")
    else:
        backend = start_python_backend(procs, tmp / "backend", CLIENT_CPU, args.body)
        notes.append("backend: bench/backend.py (nginx is not installed)")
    port = backend.ports["http"]
    proxies = [Proxy("direct", "direct", backend, False, ("http",))]
    binaries = {"nginx": nginx, "haproxy": haproxy_binary(), "caddy": caddy_binary()}
    for kind in args.only:
        binary = binaries.get(kind)
        if kind != "edgeproxy" and binary is None:
            notes.append(f"{kind}: not installed, skipped")
            continue
        for logging_on in (False, True) if args.log_table else (False,):
            name = f"{kind}+log" if logging_on else kind
            workdir = tmp / name
            if binary is None:  # edgeproxy: started from this checkout
                server = edgeproxy_server(procs, workdir, port, pem, logging_on)
            elif kind == "nginx":
                server = start_nginx_proxy(procs, binary, workdir, PROXY_CPU, port, pem,
                                           logging_on, name=name, template=_NGINX_PROXY_TLS13)
            elif kind == "haproxy":
                server = start_haproxy(procs, binary, workdir, port, pem, logging_on)
            else:
                server = start_caddy(procs, binary, workdir, port, pem, logging_on)
            proxies.append(Proxy(name, kind, server, logging_on))
    for proxy in proxies:
        if "https" in proxy.schemes:
            version = tls_version(proxy.server.ports["https"])
            if version != "TLSv1.3":
                notes.append(f"warning: {proxy.name} negotiated {version}")
    return proxies, notes


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "openssl"):
        if shutil.which(tool) is None:
            log(f"error: {tool} is not installed")
            return 2
    pin = can_pin(args.pin)
    if pin:
        # This script (RSS sampling, /proc reads) stays off the proxies' CPU.
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    pem = dev_certificate()  # ECDSA P-256, self-signed
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-compare-"))
    procs = Processes(pin)
    info = machine()
    info["pinning"] = (f"wrk, s_time and backend on CPU {CLIENT_CPU}, each proxy on CPU "
                       f"{PROXY_CPU}" if pin else "none")
    info["loadavg_at_start"] = loadavg()
    settings = {k: v for k, v in vars(args).items() if k not in ("keep_temp", "noise_deadline")}
    report: dict[str, Any] = {"machine": info, "settings": settings | {"pinned": pin}}
    log(f"load average at start: {info['loadavg_at_start']} ({info['nproc']} CPUs)")
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    try:
        with sigterm_as_exit():
            proxies, notes = start_all(procs, tmp, pem, args)
            report["notes"] = notes
            report["servers"] = {p.name: {"pid": p.server.pid, "ports": p.server.ports,
                                          "access_log": p.access_log} for p in proxies}
            for note in notes:
                log(note)
            jobs: list[tuple[Proxy, str, str]] = []
            for proxy in proxies:
                scenarios = ["small"] if proxy.access_log else ["small", "large", "handshake"]
                for scenario in scenarios:
                    for scheme in proxy.schemes:
                        if scenario != "handshake" or scheme == "https":
                            jobs.append((proxy, scheme, scenario))
            order = {"small": 0, "large": 1, "handshake": 2}
            jobs.sort(key=lambda j: order[j[2]])  # stable: proxies in order per scenario
            per_run = (args.warmup + args.duration + 0.5) * sum(j[2] != "handshake" for j in jobs)
            per_run += (args.handshake_time + 0.5) * sum(j[2] == "handshake" for j in jobs)
            log(f"{len(jobs)} measurements x {args.runs} run(s), about "
                f"{per_run * args.runs / 60:.1f} min, plus at most "
                f"{args.noise_budget / 60:.1f} min waiting out other processes' load")
            # Waits and retries stop once the plan plus the noise budget is used up.
            args.noise_deadline = time.monotonic() + per_run * args.runs + args.noise_budget
            for round_no in range(1, args.runs + 1):
                log(f"run {round_no}/{args.runs}, load {loadavg()}")
                for proxy, scheme, scenario in jobs:
                    label = f"{proxy.name} {scheme} {scenario}"
                    if scenario == "handshake":
                        result = measure_quietly(
                            procs, args, label,
                            lambda p=proxy: measure_handshakes(procs, p, args))
                        log(f"  {proxy.name:<12} {scheme:<5} handshake "
                            f"{result['handshakes_per_s']:>8.0f}/s  "
                            f"{result['handshakes_per_cpu_s']:>6.0f}/CPU-s  "
                            f"cpu {result['cpu_utilization'] * 100:.0f}%")
                    else:
                        large = scenario == "large"
                        result = measure_quietly(
                            procs, args, label,
                            lambda p=proxy, s=scheme, big=large: measure_wrk(
                                procs, p, s, LARGE_PATH if big else SMALL_PATH,
                                LARGE_BODY if big else args.body,
                                args.large_connections if big else args.connections, args,
                            ),
                        )
                        log(f"  {proxy.name:<12} {scheme:<5} {scenario:<5} "
                            f"{result['requests_per_s']:>8.0f} req/s  "
                            f"p99 {result['p99_ms']:.2f} ms  "
                            f"cpu {result['cpu_us_per_request']:.0f} us/req "
                            f"({result['cpu_utilization'] * 100:.0f}%)  "
                            f"other {result['other_cpu_utilization'] * 100:.0f}%"
                            + (f"  ERRORS {result['errors']}" if result["errors"] else ""))
                    result["round"] = round_no
                    runs.setdefault((proxy.name, scheme, scenario), []).append(result)
            info["loadavg_at_end"] = loadavg()
            logged_edge = next((p for p in proxies if p.name == "edgeproxy+log"), None)
            if logged_edge is not None:
                report["edgeproxy_log"] = summarize_proxy_log(
                    logged_edge.server.output.parent / "access.log"
                )
            report["edgeproxy_output_problems"] = {
                p.name: summarize_proxy_log(p.server.output)["problem_lines"]
                for p in proxies if p.kind == "edgeproxy"
            }
            report["edgeproxy_alive_at_end"] = all(
                p.server.alive() for p in proxies if p.kind == "edgeproxy"
            )
            report["peak_rss_kib_since_start"] = {
                p.name: peak_rss_kib(p.server.pids()) for p in proxies}
    finally:
        stop_and_clean(procs, tmp, args.keep_temp)

    medians = {key: median_of(value) for key, value in runs.items()}
    rows = build_rows(medians, proxies)
    for row in rows:
        first = runs[(row["proxy"], row["scheme"], "small")][0]
        row["load"] = first["loadavg_before"]
    main_rows = [r for r in rows if not r["access_log"]]
    tables = {"main": markdown(main_rows, "nginx", "÷ nginx")}
    log_rows = [r for r in rows if r["access_log"]]
    if args.log_table and log_rows:
        direct = [r for r in rows if r["kind"] == "direct"]
        logged = [dict(r, large=None, handshake=None) for r in direct + log_rows]
        for r in logged:
            if r["kind"] == "nginx":
                r["kind"] = "nginx-log-ref"
        tables["access_log_on"] = markdown(logged, "nginx-log-ref", "÷ nginx+log")
    tables["noise"] = noise_table(rows)
    report["medians"] = [{k: v for k, v in r.items()} for r in rows]
    report["runs"] = {" ".join(k): v for k, v in runs.items()}
    report["tables"] = tables

    path = results_path("compare")
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    v = info["versions"]
    print(f"\n## edgeproxy vs nginx / haproxy / caddy — {info['date']}\n", file=out)
    print(f"{info['nproc']} x {info['cpu_model']}, kernel {info['kernel']}; "
          f"{'; '.join(f'{k}: {v[k]}' for k in v)}", file=out)
    print(f"pinning: {info['pinning']}; load average at start {info['loadavg_at_start']}, "
          f"at end {info.get('loadavg_at_end', '?')}", file=out)
    print(f"medians of {args.runs} run(s); wrk -t1 -c{args.connections} {args.duration:g} s "
          f"(after {args.warmup:g} s warm-up), {args.body} B body, keep-alive; 1 MiB: "
          f"-c{args.large_connections}; handshakes: {args.stime_clients} x openssl s_time "
          f"-new -tls1_3 -time {args.handshake_time:g} (no session reuse)", file=out)
    for note in report.get("notes", []):
        print(f"{note}", file=out)
    print("\n### Access logging off in every proxy\n", file=out)
    print(tables["main"], file=out)
    if "access_log_on" in tables:
        print("\n### Access logging ON in every proxy (to a file), small body only\n",
              file=out)
        print(tables["access_log_on"], file=out)
    print("\n### Noise and CPU saturation (medians)\n", file=out)
    print(tables["noise"], file=out)
    summary = report.get("edgeproxy_log")
    if summary:
        print(f"\nedgeproxy+log: access-log statuses {summary['access_log_statuses']}, "
              f"outcomes {summary['access_log_outcomes']}; warn/error/traceback lines in "
              f"edgeproxy's output: {report.get('edgeproxy_output_problems')}; alive at end: "
              f"{report.get('edgeproxy_alive_at_end')}", file=out)
        for line in summary["problem_sample"][:10]:
            print(f"    {line[:300]}", file=out)
    print(f"\nresults: {path}", file=out)
    return 0


if __name__ == "__main__":
    run_main(main)
