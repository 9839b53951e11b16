"""
A multi-GB upload through the real ``twistd edgeproxy`` over TLS, streamed
(``Route(..., request_buffering=False)``) and buffered (the default, spooled
to a temporary file first), each on a fresh proxy so that its peak RSS
(``VmHWM``) is its own.  The body is generated on the fly by the client and
read, hashed and discarded by the backend (``tests/e2e/uploadkit.py``),
which answers its length and SHA-256; both are checked.

Prints, per route: the size, the seconds, the throughput, the proxy's peak
RSS, and for the streamed route how long after the upload began the backend
saw its first byte (the buffered route's backend sees nothing until the
whole body is spooled).

Run from the repository root: ``.venv/bin/python bench/upload.py [--gib 4]
[--chunked] [--only streamed|buffered]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme

from tests.e2e.harness import ProxyProcess, client_context
from tests.e2e.uploadkit import (
    UploadBackend,
    expected_sha256,
    peak_rss_kib,
    tls_socket,
    upload,
)

HOST = "up.example"
CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

up = Cluster("up", endpoints=["{backend}"], response_timeout=600)
virtual_hosts = [
    VirtualHost(["{host}"], routes=[
        Route("/", up, request_buffering={buffering}, max_body_size={limit}),
    ]),
]
"""


def run(kind: str, size: int, chunked: bool, expected: str) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ca = trustme.CA()
        certs = tmp / "certs"
        certs.mkdir()
        ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(certs / "up.pem"))
        backend = UploadBackend().start()
        config = tmp / "sites.py"
        config.write_text(
            CONFIG.format(
                backend=backend.address,
                host=HOST,
                buffering=kind == "buffered",
                limit=2 * size,
            )
        )
        proxy = ProxyProcess(
            tmp, config, certs, ("--body-timeout", "3600", "--header-timeout", "60")
        ).start()
        try:
            ctx = client_context(ca.cert_pem.bytes())
            started = time.monotonic()
            first: list[float] = []

            def watch() -> None:
                if backend.first_bytes.wait(3600):
                    first.append(time.monotonic() - started)

            backend.first_bytes.clear()
            threading.Thread(target=watch, daemon=True).start()
            sock = tls_socket(proxy.ports["https"], HOST, ctx, timeout=3600)
            try:
                status, _, body, seconds = upload(sock, HOST, "/upload", size, chunked=chunked)
            finally:
                sock.close()
            peak = peak_rss_kib(proxy.pid)
            info = json.loads(body)
            assert status == 200, (status, body)
            assert info["length"] == size and info["sha256"] == expected, info
            print(
                f"{kind:9} {'chunked' if chunked else 'length':7} {size / 2**30:.2f} GiB "
                f"in {seconds:6.1f} s = {size / seconds / 2**20:6.1f} MiB/s, "
                f"proxy peak RSS {peak / 1024:6.1f} MiB, "
                f"backend's first byte after {first[0] if first else float('nan'):.2f} s"
            )
        finally:
            proxy.stop()
            backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--only", choices=("streamed", "buffered"))
    args = parser.parse_args()
    size = int(args.gib * 2**30)
    expected = expected_sha256(size)
    for kind in ("streamed", "buffered"):
        if args.only in (None, kind):
            run(kind, size, args.chunked, expected)


if __name__ == "__main__":
    main()
