"""
Cache hits: edgeproxy's cache stage against nginx's ``proxy_cache``, in one run.

Everything on 127.0.0.1, ephemeral ports, a temporary directory:

* the backend nginx (``bench/_common``'s, 1 worker, access log off) also answering
  every path ending in ``/1k`` with 1 024 bytes and every path ending in ``/100k`` with
  102 400 bytes, both with ``Cache-Control: max-age=3600``;
* edgeproxy (``twistd -n edgeproxy``, ``--access-log off``) with ``Route("/", bench)``
  (no cache) and ``Route("/cached/", bench, cache=Cache())``;
* nginx as a reverse proxy (``bench/_common``'s settings, access log off) with
  ``location /`` as before and ``location /cached/`` adding ``proxy_cache`` (a zone in
  the temporary directory) and ``X-Cache-Status: $upstream_cache_status``.

For each object and scheme it measures ``direct`` (the backend, plain http),
``edgeproxy pass`` and ``nginx pass`` (``/pass/OBJECT``: every request goes to the
backend) and ``edgeproxy hit`` and ``nginx hit`` (``/cached/OBJECT``). Before a hit is
measured, one GET fills the cache and a second must say it was a hit
(``Cache-Status: edgeproxy; hit...`` / ``X-Cache-Status: HIT``); after it, a third
must still be one, and the backend's CPU during the run shows it was not asked.

``wrk --latency -t1 -cCONNECTIONS`` keep-alive after a warm-up, ``--runs`` interleaved
rounds, medians; CPU time of the server under test from ``/proc`` (req/s per core =
requests ÷ its CPU seconds). Pinning: wrk and the backend on CPU 0, the proxies on CPU 1.

Prints markdown tables on stdout; everything (raw wrk output, headers of the checks,
edgeproxy's /status) goes to ``bench/out/cache-<UTC timestamp>.json``.

Run: ``.venv-bench/bin/python bench/cache.py [--quick] [--runs 3] [--duration 8]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/_common.py: processes, nginx, edgeproxy, wrk parsing
    _NGINX_CACHE_PROXY,
    CERT_NAMES,
    CLK_TCK,
    HOST,
    Meter,
    Processes,
    Server,
    _stat_fields,
    add_noise_arguments,
    can_pin,
    connect,
    cpu_seconds,
    dev_certificate,
    loadavg,
    log,
    nginx_binary,
    parse_wrk,
    peak_rss_kib,
    results_path,
    run_main,
    sigterm_as_exit,
    start_edgeproxy,
    start_nginx_backend,
    start_nginx_proxy,
    stop_and_clean,
    summarize_proxy_log,
    tail,
    target_url,
    wrk_argv,
)
from compare import machine, measure_quietly, wait_sampling  # the noise handling, RSS

CLIENT_CPU = "0"
PROXY_CPU = "1"
OBJECTS = {"1k": 1024, "100k": 100 * 1024}
GOAL = 0.5  # issue 15: edgeproxy's hits per core at least half of nginx's


def edgeproxy_has_cache() -> bool:
    import edgeproxy.config

    return hasattr(edgeproxy.config, "Cache")


def cache_config(backend_port: int, with_cache: bool) -> str:
    """Two routes to one backend: ``/`` without cache, ``/cached/`` with ``Cache()``."""
    cached = (
        '        Route("/cached/", bench, plain_http=True, cache=Cache()),\n'
        if with_cache else ""
    )
    return (
        "from edgeproxy.config import "
        + ("Cache, " if with_cache else "") + "Cluster, Route, VirtualHost\n\n"
        f'bench = Cluster("bench", endpoints=["127.0.0.1:{backend_port}"])\n\n'
        "virtual_hosts = [\n"
        f"    VirtualHost({list(CERT_NAMES)!r}, routes=[\n"
        '        Route("/", bench, plain_http=True),\n'
        f"{cached}"
        "    ]),\n"
        "]\n"
    )


# --------------------------------------------------------------------------- checks


@dataclass
class Target:
    kind: str  # "direct", "edgeproxy", "nginx"
    mode: str  # "pass" or "hit" ("-" for direct)
    scheme: str
    server: Server

    @property
    def label(self) -> str:
        return "direct" if self.kind == "direct" else f"{self.kind} {self.mode}"

    def path(self, obj: str) -> str:
        return f"/cached/{obj}" if self.mode == "hit" else f"/pass/{obj}"

    def port(self) -> int:
        return self.server.ports[self.scheme]


def get(port: int, path: str, tls: bool) -> tuple[int, dict[str, str], int]:
    """One GET with Host: bench.test on a new connection: (status, headers, body length)."""
    conn = connect(tls, port, 5.0)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", HOST)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, len(body)
    finally:
        conn.close()


def is_hit(target: Target, headers: dict[str, str]) -> bool:
    if target.kind == "edgeproxy":
        return headers.get("cache-status", "").startswith("edgeproxy; hit")
    return headers.get("x-cache-status") == "HIT"


def check(target: Target, obj: str, size: int) -> dict[str, Any]:
    """The target serves the object whole with the origin's max-age; a hit target says
    hit on the second GET, a pass target carries no cache status at all."""
    path = target.path(obj)
    where = f"{target.label} {target.scheme} {path}"
    seen: list[dict[str, Any]] = []
    headers: dict[str, str] = {}
    for _ in range(2 if target.mode == "hit" else 1):
        status, headers, length = get(target.port(), path, target.scheme == "https")
        seen.append({"status": status, "length": length, "headers": headers})
        if status != 200 or length != size:
            raise RuntimeError(
                f"{where}: status {status}, {length} body bytes (expected 200 and {size})"
            )
        if headers.get("cache-control") != "max-age=3600":
            raise RuntimeError(f"{where}: Cache-Control {headers.get('cache-control')!r}")
    if target.mode == "hit" and not is_hit(target, headers):
        raise RuntimeError(f"{where}: the second GET was not a cache hit: {headers}")
    if target.mode == "pass" and ("cache-status" in headers or "x-cache-status" in headers):
        raise RuntimeError(f"{where}: a cache answered: {headers}")
    return {"checks": seen}


# --------------------------------------------------------------------------- measuring


def kernel_seconds(pids: Sequence[int]) -> float:
    """stime of the given processes: the kernel's share (sockets, TLS is user time)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[12])
    return ticks / CLK_TCK


def measure(
    procs: Processes, target: Target, backend: Server, obj: str, size: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    checked = check(target, obj, size)
    url = target_url(target.scheme, target.port(), target.path(obj))
    if args.warmup > 0:
        subprocess.run(wrk_argv(procs, url, args.warmup, args.connections, 1, CLIENT_CPU),
                       capture_output=True, timeout=args.warmup + 60, check=False)
    pids = target.server.pids()
    backend_pids = backend.pids()
    load = loadavg()
    meter = Meter(procs, pids)
    meter.start()
    backend0 = cpu_seconds(backend_pids)
    kernel0 = kernel_seconds(pids)
    with subprocess.Popen(wrk_argv(procs, url, args.duration, args.connections, 1, CLIENT_CPU),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as wrk:
        peak = wait_sampling(wrk, pids, args.duration + 60)
        output = wrk.stdout.read() if wrk.stdout else ""
    usage = meter.stop()
    backend_used = cpu_seconds(backend_pids) - backend0
    kernel = kernel_seconds(pids) - kernel0
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}):\n{output}")
    if not target.server.alive():
        raise RuntimeError(f"{target.label} died during the run:\n{tail(target.server.output)}")
    if target.mode == "hit":
        _, headers, _ = get(target.port(), target.path(obj), target.scheme == "https")
        if not is_hit(target, headers):
            raise RuntimeError(f"{target.label} {target.scheme}: no longer a hit after the "
                               f"run: {headers}")
    result = parse_wrk(output)
    requests = max(result.requests, 1)
    cpu = usage["cpu_seconds"]
    return {
        "requests": result.requests,
        "seconds": result.seconds,
        "requests_per_s": result.requests_per_s,
        "requests_per_core_s": result.requests / cpu if cpu > 0 else 0.0,
        "mb_per_s": result.requests_per_s * size / 1e6,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "cpu_us_per_request": cpu / requests * 1e6,
        "kernel_share": kernel / cpu if cpu > 0 else 0.0,
        "backend_cpu_utilization": backend_used / usage["wall_seconds"],
        "backend_cpu_us_per_request": backend_used / requests * 1e6,
        "peak_rss_kib": peak,
        "errors": result.errors,
        "non_2xx_3xx": result.non_2xx_3xx,
        "socket_errors": result.socket_errors,
        "loadavg_before": load,
        **usage,
        **checked,
        "raw": output,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    numeric = [k for k, v in runs[0].items()
               if isinstance(v, int | float) and not isinstance(v, bool)]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in numeric}
    out["errors"] = sum(r["errors"] for r in runs)
    out["peak_rss_kib"] = max(r["peak_rss_kib"] for r in runs)
    out["max_other_cpu_utilization"] = max(r["other_cpu_utilization"] for r in runs)
    out["noisy_runs"] = sum(bool(r.get("noisy")) for r in runs)
    out["runs"] = len(runs)
    return out


# --------------------------------------------------------------------------- reporting

Key = tuple[str, str, str]  # (object, target label, scheme)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def results_table(medians: dict[Key, dict[str, Any]], targets: list[Target]) -> str:
    lines = [
        "| object | target | scheme | req/s | p50 ms | p99 ms | CPU µs/req | of which kernel % "
        "| req/s per core | hit ÷ pass (per core) | proxy CPU % | backend CPU % | peak RSS MiB "
        "| errors | other CPU % |",
        "|---|---|---|" + "---:|" * 12,
    ]
    for obj in OBJECTS:
        for t in targets:
            m = medians.get((obj, t.label, t.scheme))
            if m is None:
                continue
            hit_vs_pass = "-"
            if t.mode == "hit":
                passed = medians.get((obj, f"{t.kind} pass", t.scheme))
                if passed:
                    hit_vs_pass = _ratio(m["requests_per_core_s"], passed["requests_per_core_s"])
            lines.append("| " + " | ".join([
                obj, t.label, t.scheme,
                f"{m['requests_per_s']:.0f}", f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}",
                f"{m['cpu_us_per_request']:.0f}", f"{m['kernel_share'] * 100:.0f}",
                f"{m['requests_per_core_s']:.0f}",
                hit_vs_pass,
                f"{m['cpu_utilization'] * 100:.0f}",
                f"{m['backend_cpu_utilization'] * 100:.0f}",
                f"{m['peak_rss_kib'] / 1024:.1f}",
                str(m["errors"]),
                f"{m['other_cpu_utilization'] * 100:.0f}",
            ]) + " |")
    return "\n".join(lines)


def ratio_table(
    medians: dict[Key, dict[str, Any]], schemes: Sequence[str]
) -> tuple[str, list[dict[str, Any]]]:
    """edgeproxy hit ÷ nginx hit per core (the goal) and each proxy's hit ÷ pass."""
    lines = [
        "| object | scheme | edgeproxy hit req/s per core | nginx hit req/s per core "
        f"| edgeproxy ÷ nginx (goal ≥ {GOAL}) | edgeproxy hit ÷ pass (per core / req/s) "
        "| nginx hit ÷ pass (per core / req/s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for obj in OBJECTS:
        for scheme in schemes:
            found = {
                label: medians.get((obj, label, scheme))
                for label in ("edgeproxy hit", "nginx hit", "edgeproxy pass", "nginx pass")
            }
            core = {k: m["requests_per_core_s"] if m else None for k, m in found.items()}
            rps = {k: m["requests_per_s"] if m else None for k, m in found.items()}
            edge, nginx = core["edgeproxy hit"], core["nginx hit"]
            if edge is None and nginx is None:
                continue
            ratio = edge / nginx if edge is not None and nginx else None
            rows.append({
                "object": obj,
                "scheme": scheme,
                "edgeproxy_hit_per_core": edge,
                "nginx_hit_per_core": nginx,
                "edgeproxy_over_nginx": ratio,
                "meets_goal": None if ratio is None else ratio >= GOAL,
            })
            verdict = "-" if ratio is None else (
                f"**{ratio:.2f}** ({'meets' if ratio >= GOAL else 'below'})"
            )
            hit_over_pass = [
                f"{_ratio(core[f'{kind} hit'], core[f'{kind} pass'])} / "
                f"{_ratio(rps[f'{kind} hit'], rps[f'{kind} pass'])}"
                for kind in ("edgeproxy", "nginx")
            ]
            lines.append("| " + " | ".join([
                obj,
                scheme,
                "-" if edge is None else f"{edge:.0f}",
                "-" if nginx is None else f"{nginx:.0f}",
                verdict,
                *hit_over_pass,
            ]) + " |")
    return "\n".join(lines), rows


def admin_status(server: Server) -> Any:
    port = server.ports.get("admin")
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError, http.client.HTTPException) as e:
        return {"error": str(e)}


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="edgeproxy's cache hits against nginx proxy_cache (see bench/README.md).")
    p.add_argument("--runs", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up wrk run, seconds")
    p.add_argument("--connections", type=int, default=50, help="wrk connections")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 run of 3 s after a 1 s warm-up")
    add_noise_arguments(p)
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--keep-temp", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 3.0, 1.0
    if args.runs < 1 or args.duration < 1 or args.connections < 1:
        p.error("--runs, --duration and --connections must be >= 1")
    args.noise_deadline = time.monotonic() + args.noise_budget  # extended in main()
    return args


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    nginx = nginx_binary()
    if shutil.which("wrk") is None or nginx is None:
        log("error: needs wrk and nginx")
        return 2
    pin = can_pin(args.pin)
    if pin:
        import os

        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    with_cache = edgeproxy_has_cache()
    pem = dev_certificate()
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-cache-bench-"))
    procs = Processes(pin)
    info = machine()
    info["pinning"] = (f"wrk and backend on CPU {CLIENT_CPU}, each proxy on CPU {PROXY_CPU}"
                       if pin else "none")
    info["loadavg_at_start"] = loadavg()
    settings = {k: v for k, v in vars(args).items() if k not in ("keep_temp", "noise_deadline")}
    report: dict[str, Any] = {"machine": info, "settings": settings | {"pinned": pin},
                              "objects": OBJECTS, "notes": []}
    notes: list[str] = report["notes"]
    if not with_cache:
        notes.append("edgeproxy has no edgeproxy.config.Cache in this checkout: "
                     "'edgeproxy hit' not measured")
    runs: dict[Key, list[dict[str, Any]]] = {}
    targets: list[Target] = []
    try:
        with sigterm_as_exit():
            backend = start_nginx_backend(procs, nginx, tmp / "backend", CLIENT_CPU, 1024,
                                          cacheable=OBJECTS)
            port = backend.ports["http"]
            edge = start_edgeproxy(procs, tmp / "edgeproxy", PROXY_CPU,
                                   cache_config(port, with_cache), pem,
                                   pem_name="default.pem", extra_args=("--access-log", "off"))
            proxy = start_nginx_proxy(procs, nginx, tmp / "nginx", PROXY_CPU, port, pem,
                                      access_log=False, name="nginx-cache",
                                      template=_NGINX_CACHE_PROXY)
            targets.append(Target("direct", "-", "http", backend))
            for kind, server in (("edgeproxy", edge), ("nginx", proxy)):
                for mode in ("pass", "hit"):
                    if kind == "edgeproxy" and mode == "hit" and not with_cache:
                        continue
                    for scheme in ("http", "https"):
                        targets.append(Target(kind, mode, scheme, server))
            report["servers"] = {"backend": backend.ports, "edgeproxy": edge.ports,
                                 "nginx": proxy.ports}
            for note in notes:
                log(note)
            jobs = [(obj, t) for obj in OBJECTS for t in targets]
            per_run = (args.warmup + args.duration + 0.5) * len(jobs)
            log(f"{len(jobs)} measurements x {args.runs} run(s), about "
                f"{per_run * args.runs / 60:.1f} min, plus at most "
                f"{args.noise_budget / 60:.1f} min waiting out other processes' load")
            args.noise_deadline = time.monotonic() + per_run * args.runs + args.noise_budget
            for round_no in range(1, args.runs + 1):
                log(f"run {round_no}/{args.runs}, load {loadavg()}")
                for obj, t in jobs:
                    label = f"{obj} {t.label} {t.scheme}"

                    def one(t: Target = t, obj: str = obj) -> dict[str, Any]:
                        return measure(procs, t, backend, obj, OBJECTS[obj], args)

                    result = measure_quietly(procs, args, label, one)
                    result["round"] = round_no
                    runs.setdefault((obj, t.label, t.scheme), []).append(result)
                    log(f"  {label:<26} {result['requests_per_s']:>8.0f} req/s  "
                        f"{result['cpu_us_per_request']:>5.0f} us/req "
                        f"({result['cpu_utilization'] * 100:.0f}%)  "
                        f"{result['requests_per_core_s']:>8.0f}/core  "
                        f"backend {result['backend_cpu_utilization'] * 100:.0f}%  "
                        f"other {result['other_cpu_utilization'] * 100:.0f}%"
                        + (f"  ERRORS {result['errors']}" if result["errors"] else ""))
            info["loadavg_at_end"] = loadavg()
            report["edgeproxy_status"] = admin_status(edge)
            report["edgeproxy_output"] = summarize_proxy_log(edge.output)
            report["edgeproxy_alive_at_end"] = edge.alive()
            report["peak_rss_kib_since_start"] = {
                "edgeproxy": peak_rss_kib(edge.pids()), "nginx": peak_rss_kib(proxy.pids())}
    finally:
        stop_and_clean(procs, tmp, args.keep_temp)

    medians = {key: median_of(value) for key, value in runs.items()}
    table = results_table(medians, targets)
    ratios, ratio_rows = ratio_table(medians, ("http", "https"))
    report["medians"] = {" ".join(k): v for k, v in medians.items()}
    report["ratios"] = ratio_rows
    report["runs"] = {" ".join(k): v for k, v in runs.items()}
    report["tables"] = {"results": table, "ratios": ratios}
    path = results_path("cache")
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    v = info["versions"]
    print(f"\n## Cache hits: edgeproxy vs nginx proxy_cache — {info['date']}\n", file=out)
    print(f"{info['nproc']} x {info['cpu_model']}, kernel {info['kernel']}; git "
          f"{info['git']}; " + "; ".join(f"{k}: {v[k]}" for k in v), file=out)
    print(f"pinning: {info['pinning']}; load average at start {info['loadavg_at_start']}, "
          f"at end {info.get('loadavg_at_end', '?')}", file=out)
    print(f"medians of {args.runs} run(s); wrk -t1 -c{args.connections} {args.duration:g} s "
          f"after {args.warmup:g} s warm-up, keep-alive; access logs off; objects "
          + ", ".join(f"{k} = {n} B" for k, n in OBJECTS.items())
          + " with Cache-Control: max-age=3600", file=out)
    for note in notes:
        print(note, file=out)
    print("\n### Every target\n", file=out)
    print(table, file=out)
    print("\nreq/s per core = requests ÷ CPU seconds (user + kernel) of the server under test "
          "(the backend for direct); backend CPU % during a hit run is ~0 when the cache "
          "answered.", file=out)
    print("\n### Hits per core: edgeproxy ÷ nginx\n", file=out)
    print(ratios, file=out)
    summary = report.get("edgeproxy_output", {})
    print(f"\nedgeproxy warn/error/traceback lines: {summary.get('problem_lines')}; alive at "
          f"end: {report.get('edgeproxy_alive_at_end')}", file=out)
    for line in summary.get("problem_sample", [])[:10]:
        print(f"    {line[:300]}", file=out)
    print(f"\nresults: {path}", file=out)
    return 0


if __name__ == "__main__":
    run_main(main)
