"""
HTTP/2 to clients: requests/s with many streams on few connections (``h2load``),
through edgeproxy over HTTP/2, through edgeproxy over HTTP/1.1 (``h2load --h1``, the
same connections and pipelining depth), and through nginx with ``http2`` on, all to the
same backend, in one run; the ratios are printed.

One run starts, on 127.0.0.1 only, in a temporary directory:

* the backend: nginx (1 worker, access log off) answering every path with a fixed
  ``--body``-byte body (bench/_common.py's backend);
* edgeproxy (``twistd -n edgeproxy``, one process, ``--access-log off``), one route to it,
  HTTP/2 offered over ALPN (the default);
* nginx as the proxy (1 worker, ``listen ... ssl http2``, a keep-alive upstream pool).

Every target is measured ``--runs`` times, interleaved, with ``h2load -c --connections
-m --streams -D --duration``; the table has medians of req/s and the proxy's CPU time
per request.  Pinning as compare.py: h2load and the backend on CPU 0, the proxies on
CPU 1 (with ``taskset`` and 2+ CPUs).

Run: ``.venv-bench/bin/python bench/h2.py [--runs 3] [--duration 8]`` (``--quick``: one
2 s run each, to see that everything works).  Results in ``bench/out/h2-<UTC
timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/_common.py: processes, nginx, edgeproxy
    _NGINX_PROXY_PASS,
    _NGINX_UPSTREAM,
    HOST,
    Meter,
    Processes,
    Server,
    can_pin,
    dev_certificate,
    git_info,
    log,
    nginx_binary,
    results_path,
    run_main,
    sigterm_as_exit,
    single_route_config,
    start_edgeproxy,
    start_nginx_backend,
    start_nginx_proxy,
    stop_and_clean,
)

#: nginx as an HTTP/2 proxy: the shared upstream pool and location, ``http2`` on TLS.
_NGINX_H2_PROXY = (
    _NGINX_UPSTREAM
    + """\
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        listen 127.0.0.1:{https_port} ssl http2 backlog=4096;
        server_name {host} localhost 127.0.0.1;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        http2_max_concurrent_streams 128;
        location / {{
"""
    + _NGINX_PROXY_PASS
    + "        }}\n    }}\n"
)

_REQUESTS = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored"
)
_RATE = re.compile(r"finished in [0-9.]+m?s, ([0-9.]+) req/s")
_PROTOCOL = re.compile(r"Application protocol: (\S+)")


def h2load(port: int, args: argparse.Namespace, http1: bool) -> dict[str, Any]:
    argv = [
        "h2load", "-c", str(args.connections), "-m", str(args.streams),
        "-D", str(args.duration), "-t", "1",
        *(["--h1"] if http1 else []),
        f"https://{HOST}:{port}/",
        "--connect-to", f"127.0.0.1:{port}",
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.duration + 60, check=False
    ).stdout
    requests = _REQUESTS.search(out)
    rate = _RATE.search(out)
    protocol = _PROTOCOL.search(out)
    if requests is None or rate is None:
        raise RuntimeError(f"h2load said:\n{out}")
    _total, done, succeeded, failed, errored = map(int, requests.groups())
    return {
        "protocol": protocol.group(1) if protocol else "?",
        "requests_per_second": float(rate.group(1)),
        "done": done,
        "succeeded": succeeded,
        "failed": failed,
        "errored": errored,
    }


def measure(
    procs: Processes, server: Server, args: argparse.Namespace, http1: bool
) -> dict[str, Any]:
    meter = Meter(procs, server.pids())
    meter.start()
    result = h2load(server.ports["https"], args, http1)
    result.update(meter.stop())
    done = result["succeeded"] or 1
    result["cpu_us_per_request"] = result["cpu_seconds"] / done * 1e6
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, default=8, help="seconds per h2load run")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=32,
                   help="streams (or pipelined requests) per connection")
    p.add_argument("--body", type=int, default=1000, help="backend response body bytes")
    p.add_argument("--quick", action="store_true", help="one 2 s run each")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--keep-temp", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 2
    nginx = nginx_binary()
    if nginx is None or shutil.which("h2load") is None:
        log("needs nginx and h2load (nghttp2-client)")
        return 2
    pin = can_pin(not args.no_pin)
    procs = Processes(pin)
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-h2-"))
    pem = dev_certificate()
    results: dict[str, list[dict[str, Any]]] = {}
    with sigterm_as_exit():
        try:
            backend = start_nginx_backend(procs, nginx, tmp / "backend", "0", args.body)
            port = backend.ports["http"]
            edgeproxy = start_edgeproxy(
                procs, tmp / "edgeproxy", "1", single_route_config(port), pem,
                extra_args=("--access-log", "off"),
            )
            proxy_nginx = start_nginx_proxy(
                procs, nginx, tmp / "nginx", "1", port, pem, access_log=False,
                template=_NGINX_H2_PROXY,
            )
            targets = [
                ("edgeproxy h2", edgeproxy, False),
                ("edgeproxy http/1.1", edgeproxy, True),
                ("nginx h2", proxy_nginx, False),
            ]
            for run in range(args.runs):
                for name, server, http1 in targets:
                    result = measure(procs, server, args, http1)
                    log(f"run {run + 1}/{args.runs} {name}: "
                        f"{result['requests_per_second']:.0f} req/s ({result['protocol']}, "
                        f"{result['failed'] + result['errored']} failed)")
                    results.setdefault(name, []).append(result)
        finally:
            stop_and_clean(procs, tmp, args.keep_temp)
    summary = {
        name: {
            "requests_per_second": statistics.median(r["requests_per_second"] for r in runs),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs),
            "protocol": runs[0]["protocol"],
            "failed": sum(r["failed"] + r["errored"] for r in runs),
        }
        for name, runs in results.items()
    }
    print(f"{'target':22} {'protocol':9} {'req/s':>9} {'CPU us/req':>11} {'failed':>7}")
    for name, s in summary.items():
        print(f"{name:22} {s['protocol']:9} {s['requests_per_second']:9.0f} "
              f"{s['cpu_us_per_request']:11.1f} {s['failed']:7d}")
    h2 = summary["edgeproxy h2"]["requests_per_second"]
    h1 = summary["edgeproxy http/1.1"]["requests_per_second"]
    ng = summary["nginx h2"]["requests_per_second"]
    print(f"edgeproxy h2 / edgeproxy http/1.1: {h2 / h1:.2f}")
    print(f"edgeproxy h2 / nginx h2:           {h2 / ng:.2f}")
    path = results_path("h2")
    path.write_text(json.dumps(
        {"git": git_info(), "args": vars(args), "runs": results, "summary": summary}, indent=2
    ))
    log(f"results in {path}")
    return 0 if all(s["failed"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    run_main(main)
