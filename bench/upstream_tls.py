"""
The upstream TLS path (``Cluster(upstream_tls=UpstreamTLS(...))``): requests/s through
edgeproxy to a pooled, verified TLS upstream, against the same upstream over plain HTTP,
and against nginx doing both (``proxy_ssl`` with ``proxy_ssl_session_reuse on`` and
``proxy_ssl_verify on``), in one run.

One run starts, on 127.0.0.1 only, in a temporary directory:

* the backend: nginx (1 worker, access log off) answering every path with a fixed
  ``--body``-byte body, on a plain port and on a TLS port (TLS 1.2 and 1.3, a
  self-signed ECDSA P-256 certificate for ``bench.test``, ``localhost`` and
  ``127.0.0.1``, session tickets and a session cache on);
* edgeproxy (``twistd -n edgeproxy``, one process, ``--access-log off``) with two routes:
  ``/plain/`` to the plain port, ``/tls/`` to the TLS port with
  ``UpstreamTLS(ca_file=<that certificate>, server_name="bench.test")``;
* nginx as the proxy (1 worker) with the same two locations, ``/tls/`` through
  ``proxy_pass https://...`` verified against the same certificate and name (nginx 1.22
  does not verify IP addresses), SNI sent, with a keep-alive upstream pool and session
  reuse.

Clients speak plain HTTP to the proxies (``wrk -c --connections``, keep-alive), so the
difference between ``/plain/`` and ``/tls/`` is the upstream leg alone.  Every target is
measured ``--runs`` times, interleaved; the table has medians of req/s, p99, and the
proxy's CPU time per request.  Pinning as compare.py: wrk and the backend on CPU 0, the
proxies on CPU 1 (with ``taskset`` and 2+ CPUs).

Run: ``.venv-bench/bin/python bench/upstream_tls.py [--runs 3] [--duration 8]``
(``--quick``: one 2 s run each, to see that everything works).  Results in
``bench/out/upstream-tls-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/_common.py: processes, nginx, edgeproxy, wrk parsing
    _NGINX_PROXY_PASS,
    _NGINX_PROXY_SERVER,
    Meter,
    Processes,
    Server,
    can_pin,
    dev_certificate,
    git_info,
    http_get,
    log,
    nginx_binary,
    parse_wrk,
    results_path,
    run_main,
    sigterm_as_exit,
    start_edgeproxy,
    start_nginx,
    start_on_free_ports,
    stop_and_clean,
    write_key_and_cert,
    wrk_argv,
)

_BACKEND = """\
    ssl_session_cache shared:backend:10m;
    ssl_session_tickets on;
    server {{
        listen 127.0.0.1:{http} backlog=4096;
        listen 127.0.0.1:{https} ssl backlog=4096;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "{body}"; }}
    }}
"""

_PROXY = (
    """\
    upstream plain {{
        server 127.0.0.1:{backend_http};
        keepalive 32;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    upstream tls {{
        server 127.0.0.1:{backend_https};
        keepalive 32;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
"""
    + _NGINX_PROXY_SERVER
    + "        location /plain/ {{\n"
    + _NGINX_PROXY_PASS.replace("http://b", "http://plain")
    + "        }}\n"
    + "        location /tls/ {{\n"
    + _NGINX_PROXY_PASS.replace("http://b", "https://tls")
    + """\
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {dir}/backend-ca.pem;
            proxy_ssl_name bench.test;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
        }}
    }}
"""
)

_EDGEPROXY = """\
from edgeproxy.config import Cluster, Route, UpstreamTLS, VirtualHost

plain = Cluster("plain", endpoints=["127.0.0.1:{backend_http}"])
tls = Cluster(
    "tls",
    endpoints=["127.0.0.1:{backend_https}"],
    upstream_tls=UpstreamTLS(ca_file="{ca}", server_name="bench.test"),
)
virtual_hosts = [
    VirtualHost(
        ["bench.test", "localhost", "127.0.0.1"],
        routes=[Route("/plain/", plain, plain_http=True), Route("/tls/", tls, plain_http=True)],
    ),
]
"""

PATHS = {"plain": "/plain/x", "tls": "/tls/x"}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--body", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="one 2 s run of each target")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--keep-temp", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 2.0
    return args


def _measure(
    procs: Processes, server: Server, path: str, args: argparse.Namespace
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.ports['http']}{path}"
    meter = Meter(procs, server.pids())
    meter.start()
    argv = wrk_argv(procs, url, args.duration, args.connections, 1, "0")
    output = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.duration + 30, check=True
    ).stdout
    usage = meter.stop()
    result = parse_wrk(output)
    return {
        "requests_per_s": result.requests_per_s,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "cpu_us_per_request": usage["cpu_seconds"] / max(result.requests, 1) * 1e6,
        "wrk": output,
    }


def main() -> int:
    args = _args()
    nginx = nginx_binary()
    if nginx is None:
        log("nginx is needed (backend and comparison)")
        return 2
    pin = can_pin(not args.no_pin)
    procs = Processes(pin)
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-upstream-tls-"))
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        with sigterm_as_exit():
            pem = dev_certificate()
            backend_dir = tmp / "backend"
            write_key_and_cert(backend_dir, pem)
            ca = backend_dir / "cert.pem"  # self-signed: its own CA

            def start_backend(ports: dict[str, int]) -> Server:
                body = _BACKEND.format(
                    http=ports["http"], https=ports["https"], dir=backend_dir,
                    body="x" * args.body,
                )
                return start_nginx(procs, nginx, "backend", backend_dir, "0", body, ports)

            backend = start_on_free_ports(("http", "https"), start_backend)
            upstream = {
                "backend_http": backend.ports["http"],
                "backend_https": backend.ports["https"],
            }
            edgeproxy = start_edgeproxy(
                procs, tmp / "edgeproxy", "1",
                _EDGEPROXY.format(ca=ca, **upstream), pem, extra_args=["--access-log", "off"],
            )
            proxy_dir = tmp / "nginx"
            write_key_and_cert(proxy_dir, pem)
            (proxy_dir / "backend-ca.pem").write_bytes(ca.read_bytes())

            def start_proxy(ports: dict[str, int]) -> Server:
                body = _PROXY.format(
                    http_port=ports["http"], https_port=ports["https"], host="bench.test",
                    dir=proxy_dir, **upstream,
                )
                return start_nginx(procs, nginx, "proxy-nginx", proxy_dir, "1", body, ports)

            nginx_proxy = start_on_free_ports(("http", "https"), start_proxy)
            targets = {"edgeproxy": edgeproxy, "nginx": nginx_proxy}
            for name, server in targets.items():
                for path in PATHS.values():
                    status, _ = http_get(server.ports["http"], path, tls=False)
                    if status != 200:
                        raise RuntimeError(f"{name} {path}: status {status}")
            for run in range(args.runs):
                for name, server in targets.items():
                    for kind, path in PATHS.items():
                        key = f"{name} {kind}"
                        log(f"run {run + 1}/{args.runs}: {key}")
                        results.setdefault(key, []).append(_measure(procs, server, path, args))
    finally:
        stop_and_clean(procs, tmp, args.keep_temp)

    print("| proxy, upstream | req/s | p99 ms | proxy CPU µs/request | errors |")
    print("|---|---:|---:|---:|---:|")
    for key, runs in results.items():
        print(
            f"| {key} | {statistics.median(r['requests_per_s'] for r in runs):,.0f} "
            f"| {statistics.median(r['p99_ms'] for r in runs):.2f} "
            f"| {statistics.median(r['cpu_us_per_request'] for r in runs):.0f} "
            f"| {sum(r['errors'] for r in runs)} |"
        )
    out = results_path("upstream-tls")
    out.write_text(
        json.dumps(
            {"args": vars(args), "pinned": pin, "git": git_info(short=True), "results": results},
            indent=2,
        )
    )
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
