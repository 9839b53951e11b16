"""
One process against ``--workers N``: throughput and CPU per request over HTTPS,
keep-alive and with a new TLS connection per request (docs/scaling.md).

One run, on 127.0.0.1, in a temporary directory: the nginx backend (or
``bench/backend.py``), then for each round and each setup (one process, then
``--workers N``) a fresh edgeproxy (``--access-log off``) measured by
``wrk -t2 -c50`` against ``https://localhost:PORT/``, keep-alive and with
``Connection: close``. Nothing is pinned: the point is what a second worker gets out
of the cores that wrk and the backend leave free. CPU is the supervisor's and its
workers' ``utime + stime`` from ``/proc``.

Run: ``.venv/bin/python bench/workers.py [--workers 2] [--rounds 2] [--duration 5]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/_common.py
    HOST,
    Processes,
    cpu_seconds,
    dev_certificate,
    log,
    machine_info,
    nginx_binary,
    parse_wrk,
    results_path,
    run_main,
    single_route_config,
    start_edgeproxy,
    start_nginx_backend,
    start_python_backend,
    stop_and_clean,
)

MODES = {"keep-alive": (), "new connection per request": ("-H", "Connection: close")}


def measure(server: Any, mode: str, duration: float) -> dict[str, Any]:
    argv = ["wrk", "--latency", "-t2", "-c50", "-d", f"{max(1, round(duration))}s",
            "-H", f"Host: {HOST}", *MODES[mode], f"https://localhost:{server.ports['https']}/"]
    pids = server.pids()  # the supervisor and its workers
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                         check=True).stdout
    wall, cpu = time.monotonic() - t0, cpu_seconds(pids) - cpu0
    wrk = parse_wrk(out)
    return {
        "mode": mode, "processes": len(pids), "requests_per_s": wrk.requests / wrk.seconds,
        "p50_ms": wrk.p50_ms, "p99_ms": wrk.p99_ms, "cores": cpu / wall,
        "cpu_us_per_request": cpu / max(wrk.requests, 1) * 1e6, "errors": wrk.errors,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="2", help="the --workers value to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-workers-"))
    procs = Processes(pin=False)
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"args": vars(args), "rows": rows}
    try:
        nginx = nginx_binary()
        if nginx:
            backend = start_nginx_backend(procs, nginx, tmp / "backend", "0-1", 1024)
        else:
            backend = start_python_backend(procs, tmp / "backend", "0-1", 1024)
        report["machine"] = machine_info(False, "nginx" if nginx else "python")
        config = single_route_config(backend.ports["http"])
        for round_no in range(args.rounds):
            for workers in (None, args.workers):
                setup = "1 process" if workers is None else f"`--workers {workers}`"
                extra = ["--access-log", "off", *(["--workers", workers] if workers else [])]
                server = start_edgeproxy(procs, tmp / f"edgeproxy-{round_no}-{workers}", "0-1",
                                         config, dev_certificate(), pem_name="default.pem",
                                         extra_args=extra)
                time.sleep(1.0)  # every worker up and listening
                for mode in MODES:
                    row = {"setup": setup, **measure(server, mode, args.duration)}
                    log(f"{setup}, {mode}: {row['requests_per_s']:.0f} req/s, "
                        f"{row['cpu_us_per_request']:.0f} us/req")
                    rows.append(row)
                server.stop()
                procs.servers.remove(server)
    finally:
        stop_and_clean(procs, tmp, False)
    path = results_path("workers")
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("| setup | connections | req/s | p50 ms | p99 ms | edgeproxy CPU (cores) | "
          "CPU µs / request | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setup']} | {r['mode']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['cores']:.2f} | {r['cpu_us_per_request']:,.0f} | "
              f"{r['errors']} |".replace(",", " "))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main())
