"""
Latency at half load: what edgeproxy adds to p50/p99 when it runs at half of its
own peak request rate (the issue's "proxy-added p99 under 3 ms at half load").

One run, on 127.0.0.1, in a temporary directory: the nginx backend (or
``bench/backend.py``) and edgeproxy (``--access-log off``, https and http), pinned like
``compare.py`` (clients and backend on CPU 0, the proxy on CPU 1). Then, for each
scheme:

1. the peak: ``wrk -t1 -c50`` for ``--duration`` seconds, keep-alive, small body;
2. half of that rate, held for ``--duration`` seconds by wrk with a Lua ``delay()``
   (every connection waits a random time, 15 ms on average at 50 connections and
   3 000 req/s, between a response and its next request, so the offered rate is fixed
   and well under capacity: no queue builds up, unlike at peak);
3. the same rate against the backend directly, for the baseline, and (when nginx is
   installed) against nginx as a reverse proxy on the same CPU, for a reference: a
   stall that nginx shows too comes from the machine (a shared VM's CPU can be taken
   away for milliseconds), not from edgeproxy;
4. steps 2 and 3 in ``--rounds`` interleaved rounds (edgeproxy, direct, nginx, then
   again), each target held for ``--duration`` seconds per round.  The table gives
   the median over rounds, and the added latency per round beside it: a stretch of
   noise lands in one round of one target instead of deciding the whole result.

"Proxy-added" is the proxy's percentile minus the backend's. wrk measures from
sending a request to its response; it is a closed loop, so a stall delays the next
request of that connection rather than piling up requests behind it (wrk2 would
count those too, but it is not packaged for Debian), which is why the rate is kept
at half of the peak.

Run: ``.venv/bin/python bench/latency.py [--duration 5] [--rounds 5] [--connections 50]``
(about 4 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/_common.py
    HOST,
    SMALL_PATH,
    Processes,
    can_pin,
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
    start_nginx_proxy,
    start_python_backend,
    stop_and_clean,
    target_url,
    wrk_argv,
)

CLIENT_CPU = "0"
PROXY_CPU = "1"
# Every connection waits about WRK_DELAY_MS between a response and its next request;
# the wait is drawn uniformly from 0..2x so that the connections do not fall into step
# (with a fixed delay all 50 send at the same instant, and the last of each burst
# waits for the 49 before it: that would measure the burst, not the proxy).
_DELAY_SCRIPT = (
    'local d = tonumber(os.getenv("WRK_DELAY_MS"))\n'
    "math.randomseed(os.time())\n"
    "function delay() return 2 * d * math.random() end\n"
)


def fixed_rate(
    procs: Processes,
    url: str,
    rate: float,
    args: argparse.Namespace,
    script: Path,
    delay_ms: float | None = None,
) -> dict[str, Any]:
    """wrk at about ``rate`` requests/s; the delay is corrected once from what it
    achieved (not when ``delay_ms`` comes from an earlier round)."""
    tries = 1 if delay_ms is not None else 2
    if delay_ms is None:
        delay_ms = max(args.connections / rate * 1000.0 - 1.0, 0.0)
    result: dict[str, Any] = {}
    for _ in range(tries):
        argv = procs.command(
            ["wrk", "--latency", "-t1", "-c", str(args.connections),
             "-d", f"{round(args.duration)}s", "-s", str(script), "-H", f"Host: {HOST}", url],
            CLIENT_CPU,
        )
        env = {"WRK_DELAY_MS": f"{delay_ms:.3f}", "PATH": "/usr/bin:/bin"}
        output = subprocess.run(argv, capture_output=True, text=True, env=env,
                                timeout=args.duration + 60, check=True).stdout
        wrk = parse_wrk(output)
        result = {"rate": wrk.requests_per_s, "target_rate": rate, "delay_ms": delay_ms,
                  "p50_ms": wrk.p50_ms, "p99_ms": wrk.p99_ms, "errors": wrk.errors,
                  "raw": output}
        if abs(wrk.requests_per_s - rate) <= 0.1 * rate:
            break
        # Each connection's cycle is delay + latency: scale the delay to the miss.
        cycle_ms = args.connections / max(wrk.requests_per_s, 1.0) * 1000.0
        delay_ms = max(delay_ms + cycle_ms * (wrk.requests_per_s / rate - 1.0), 0.0)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of the peak run and of each round's run per target")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds (proxied, direct, nginx); medians are reported")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    args = parser.parse_args(argv)
    pin = can_pin(args.pin)
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-latency-"))
    procs = Processes(pin)
    report: dict[str, Any] = {"args": vars(args)}
    try:
        script = tmp / "delay.lua"
        script.write_text(_DELAY_SCRIPT)
        nginx = nginx_binary()
        if nginx:
            backend = start_nginx_backend(procs, nginx, tmp / "backend", CLIENT_CPU, 1024)
        else:
            backend = start_python_backend(procs, tmp / "backend", CLIENT_CPU, 1024)
        edge = start_edgeproxy(procs, tmp / "edgeproxy", PROXY_CPU,
                               single_route_config(backend.ports["http"]), dev_certificate(),
                               extra_args=("--access-log", "off"))
        reference = None
        if nginx:
            reference = start_nginx_proxy(procs, nginx, tmp / "proxy-nginx", PROXY_CPU,
                                          backend.ports["http"], dev_certificate(), False)
        report["machine"] = machine_info(pin, "nginx" if nginx else "python")
        direct_url = target_url("http", backend.ports["http"], SMALL_PATH)
        rows = []
        for scheme in ("http", "https"):
            url = target_url(scheme, edge.ports[scheme], SMALL_PATH)
            log(f"{scheme}: peak")
            peak_out = subprocess.run(
                wrk_argv(procs, url, args.duration, args.connections, 1, CLIENT_CPU),
                capture_output=True, text=True, timeout=args.duration + 60, check=True,
            ).stdout
            peak = parse_wrk(peak_out)
            half = peak.requests_per_s / 2
            log(f"{scheme}: {peak.requests_per_s:.0f} req/s at peak; holding {half:.0f} req/s")
            targets = {"proxied": url, "direct": direct_url}
            if reference is not None:
                targets["nginx"] = target_url(scheme, reference.ports[scheme], SMALL_PATH)
            # Interleaved rounds: a stretch of noise on the machine (a shared
            # VM's CPU taken away for milliseconds) lands in one round of one
            # target, and the median over rounds leaves it out.
            rounds: list[dict[str, dict[str, Any]]] = []
            delays: dict[str, float] = {}
            for number in range(args.rounds):
                log(f"{scheme}: round {number + 1} of {args.rounds}")
                measured = {}
                for name, target in targets.items():
                    measured[name] = fixed_rate(procs, target, half, args, script,
                                                delays.get(name))
                    delays[name] = measured[name]["delay_ms"]
                rounds.append(measured)
            row: dict[str, Any] = {
                "scheme": scheme, "peak_rate": peak.requests_per_s,
                "peak_p50_ms": peak.p50_ms, "peak_p99_ms": peak.p99_ms, "rounds": rounds,
            }
            for name in targets:
                row[name] = {
                    key: statistics.median(r[name][key] for r in rounds)
                    for key in ("rate", "p50_ms", "p99_ms")
                }
                row[name]["errors"] = sum(r[name]["errors"] for r in rounds)
            row.setdefault("nginx", None)
            for name, prefix in (("proxied", "added"), ("nginx", "nginx_added")):
                if name not in targets:
                    continue
                for key in ("p50", "p99"):
                    per_round = [r[name][f"{key}_ms"] - r["direct"][f"{key}_ms"] for r in rounds]
                    row[f"{prefix}_{key}_ms"] = statistics.median(per_round)
                    row[f"{prefix}_{key}_ms_rounds"] = per_round
            rows.append(row)
        report["rows"] = rows
    finally:
        stop_and_clean(procs, tmp, False)
    path = results_path("latency")
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("| scheme | edgeproxy peak req/s | held req/s | p50 ms edgeproxy / direct | "
          "p99 ms edgeproxy / direct | edgeproxy-added p50 / p99 ms | "
          "nginx-added p50 / p99 ms (same rate) | edgeproxy-added p99 per round | "
          "nginx-added p99 per round | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in report["rows"]:
        p, d, n = r["proxied"], r["direct"], r["nginx"]
        reference_cell = (
            f"{r['nginx_added_p50_ms']:.2f} / {r['nginx_added_p99_ms']:.2f}" if n else "-"
        )
        errors = p["errors"] + d["errors"] + (n["errors"] if n else 0)
        print(f"| {r['scheme']} | {r['peak_rate']:.0f} | {p['rate']:.0f} | "
              f"{p['p50_ms']:.2f} / {d['p50_ms']:.2f} | {p['p99_ms']:.2f} / {d['p99_ms']:.2f} | "
              f"{r['added_p50_ms']:.2f} / {r['added_p99_ms']:.2f} | {reference_cell} | "
              f"{_rounds_cell(r.get('added_p99_ms_rounds'))} | "
              f"{_rounds_cell(r.get('nginx_added_p99_ms_rounds'))} | {errors} |")
    print(f"\nresults: {path}")
    return 0


def _rounds_cell(values: list[float] | None) -> str:
    return " ".join(f"{v:.2f}" for v in values) if values else "-"


if __name__ == "__main__":
    run_main(lambda: main())
