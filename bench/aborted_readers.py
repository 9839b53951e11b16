"""
Memory after rounds of aborted slow readers: does edgeproxy's RSS stay flat?

An attack of slow readers (slowhttptest's slow-read mode, ``-X``) opens many
connections, asks for a large body and reads it a few bytes at a time; at the
end of the test it closes them all, mid-response.  Each such connection lives
long, so whatever it leaves in reference cycles survives the young
generations of the garbage collector and waits for a full collection, which
edgeproxy makes rare (``heap.settle``).  This script runs ``--rounds`` of that
attack against one edgeproxy and reads its ``VmRSS`` after each round (once
every connection is closed) and after ``--idle`` seconds without traffic.

Everything runs on 127.0.0.1 in a temporary directory: ``bench/backend.py``
(answering ``/`` with ``--body-mib`` MiB), ``twistd -n edgeproxy``
(``--twistd``, default: the one next to this interpreter; point it at another
checkout's venv to measure that code), and ``slowhttptest`` (Debian package
``slowhttptest``), each round bounded by ``--duration`` seconds.  Prints a
table; writes everything to ``bench/out/aborted-readers-<UTC timestamp>.json``.

Run: ``.venv/bin/python bench/aborted_readers.py [--rounds 5] [--scheme https]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import _common
from _common import (
    Processes,
    cpu_model,
    cpu_seconds,
    dev_certificate,
    git_info,
    log,
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

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ACTIVE = re.compile(r'^edgeproxy_active_connections\{listener="(\w+)"\} (\d+)', re.MULTILINE)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=1000, help="slowhttptest -c")
    parser.add_argument("--rate", type=int, default=200, help="connections per second (-r)")
    parser.add_argument("--duration", type=int, default=20, help="seconds per round (-l)")
    parser.add_argument("--scheme", choices=("https", "http"), default="https")
    parser.add_argument("--body-mib", type=int, default=1, help="the response body's size")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle at the end")
    parser.add_argument("--twistd", default=_common.TWISTD, help="the twistd to run")
    parser.add_argument(
        "--trim", action="store_true",
        help="at the end, have edgeproxy run a full collection and malloc_trim(0) "
        "(bench/memprobe) and report its RSS after each",
    )
    parser.add_argument("--keep-temp", action="store_true")
    return parser.parse_args(argv)


def active_connections(admin_port: int) -> int:
    """edgeproxy's open client connections, from its metrics."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(int(count) for _, count in _ACTIVE.findall(text))


def settle(admin_port: int, timeout: float) -> float:
    """Wait (bounded) until edgeproxy has closed every client connection;
    returns the seconds it took."""
    start = time.monotonic()
    while active_connections(admin_port) and time.monotonic() - start < timeout:
        time.sleep(0.2)
    return time.monotonic() - start


def slowhttptest_version() -> str:
    done = subprocess.run(["slowhttptest", "-h"], capture_output=True, text=True, check=False)
    match = re.search(r"version ([0-9.]+)", done.stdout + done.stderr)
    return match.group(1) if match else "?"


def slowhttptest(args: argparse.Namespace, url: str, out: Path) -> dict[str, Any]:
    argv = [
        "slowhttptest", "-X", "-c", str(args.connections), "-r", str(args.rate),
        "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3", "-p", "3",
        "-l", str(args.duration), "-u", url,
    ]
    started = time.monotonic()
    with out.open("wb") as sink:
        done = subprocess.run(
            argv, stdout=sink, stderr=subprocess.STDOUT, timeout=args.duration + 30,
            check=False,
        )
    text = _ANSI.sub("", out.read_text(errors="replace"))
    # Its last status block: "closed: N  pending: N  connected: N  service available: YES".
    last = {
        key: int(value)
        for key, value in re.findall(r"(closed|pending|connected|error):\s+(\d+)", text)[-4:]
    }
    available = re.findall(r"service available:\s+(\w+)", text)
    ended = re.findall(r"Exit status: (.+)", text)
    return {
        "argv": argv,
        "exit": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "last_status": last,
        "service_available_last": available[-1] if available else None,
        "exit_status": ended[-1].strip() if ended else None,
    }


def scenario(args: argparse.Namespace, edge: Any, workdir: Path) -> dict[str, Any]:
    port = edge.ports[args.scheme]
    # 127.0.0.1, not localhost: slowhttptest would try ::1, where nothing listens.
    url = f"{args.scheme}://127.0.0.1:{port}/"
    admin = edge.ports["admin"]
    rows: list[dict[str, Any]] = [
        {"after": "start", "rss_kib": rss_kib([edge.pid]), "cpu_s": cpu_seconds([edge.pid])}
    ]
    log(f"edgeproxy RSS at start: {rows[0]['rss_kib'] / 1024:.0f} MiB")
    for n in range(1, args.rounds + 1):
        run = slowhttptest(args, url, workdir / f"slowhttptest-{n}.out")
        settled = settle(admin, 30.0)
        row = {
            "after": f"round {n}",
            "rss_kib": rss_kib([edge.pid]),
            "cpu_s": cpu_seconds([edge.pid]),
            "settle_s": round(settled, 1),
            "slowhttptest": run,
        }
        rows.append(row)
        log(f"round {n}: RSS {row['rss_kib'] / 1024:.0f} MiB "
            f"(slowhttptest {run['seconds']} s, exit {run['exit']}, {run['last_status']})")
    time.sleep(args.idle)
    rows.append({"after": f"{args.idle:g} s idle", "rss_kib": rss_kib([edge.pid]),
                 "cpu_s": cpu_seconds([edge.pid])})
    result: dict[str, Any] = {"url": url, "rows": rows}
    if args.trim:
        probe = trim_probe(edge.pid, Path(os.environ["EDGEPROXY_MEM_PROBE"]))
        result["probe"] = probe
        rows.append({"after": "gc.collect()", "rss_kib": probe["rss_after_collect_kib"],
                     "cpu_s": cpu_seconds([edge.pid]), "collected": probe["collected"]})
        if "rss_after_trim_kib" in probe:
            rows.append({"after": "malloc_trim(0)", "rss_kib": probe["rss_after_trim_kib"],
                         "cpu_s": cpu_seconds([edge.pid])})
    return result


def trim_probe(pid: int, path: Path) -> dict[str, Any]:
    """Ask bench/memprobe in edgeproxy for a collection and a trim (SIGUSR2)."""
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("bench/memprobe did not answer (was it loaded?)")
        time.sleep(0.1)
    probe: dict[str, Any] = json.loads(path.read_text())
    return probe


def print_report(report: dict[str, Any], out: TextIO) -> None:
    rows = report["result"]["rows"]
    print(f"edgeproxy ({report['settings']['twistd']}), {report['result']['url']}", file=out)
    print(f"{'after':<14} {'RSS MiB':>8} {'CPU s':>7}", file=out)
    for row in rows:
        line = f"{row['after']:<14} {row['rss_kib'] / 1024:>8.0f} {row['cpu_s']:>7.1f}"
        if "collected" in row:
            line += f"  ({row['collected']} objects in cycles freed)"
        print(line, file=out)
    print(f"results: {report['path']}", file=out)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if shutil.which("slowhttptest") is None:
        log("slowhttptest is not installed (Debian: apt-get install slowhttptest)")
        return 2
    _common.TWISTD = args.twistd
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-aborted-"))
    if args.trim:
        # Inherited by edgeproxy (start_edgeproxy passes this environment on).
        paths = [str(_common.BENCH_DIR / "memprobe"), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        os.environ["EDGEPROXY_MEM_PROBE"] = str(tmp / "edgeproxy" / "memprobe.json")
    procs = Processes(pin=False)
    report: dict[str, Any] = {}
    try:
        with sigterm_as_exit():
            backend = start_python_backend(procs, tmp / "backend", "0", args.body_mib << 20)
            # default.pem: slowhttptest sends no SNI for an IP address.
            edge = start_edgeproxy(procs, tmp / "edgeproxy", "0",
                                   single_route_config(backend.ports["http"]), dev_certificate(),
                                   pem_name="default.pem",
                                   # Every reader comes from 127.0.0.1: what is measured is
                                   # what they cost, not the per-client cap.
                                   extra_args=("--max-connections-per-client", "0"))
            log(f"backend pid {backend.pid}; edgeproxy pid {edge.pid}, ports {edge.ports}")
            result = scenario(args, edge, tmp)
            info = {
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "git": git_info(),
                "nproc": os.cpu_count(),
                "cpu_model": cpu_model(),
                "kernel": platform.release(),
                "backend": "bench/backend.py",
                "versions": python_versions() | {"slowhttptest": slowhttptest_version()},
            }
            report = {
                "machine": info,
                "settings": {k: v for k, v in vars(args).items() if k != "keep_temp"},
                "result": result,
                "edgeproxy_log": summarize_proxy_log(edge.output),
                "edgeproxy_alive_at_end": edge.alive(),
            }
    finally:
        stop_and_clean(procs, tmp, args.keep_temp)
    path = results_path("aborted-readers")
    report["path"] = str(path)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report, out)
    return 0 if report["edgeproxy_alive_at_end"] else 1


if __name__ == "__main__":
    run_main(main)
