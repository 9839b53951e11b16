"""
A small, fast HTTP/1.1 keep-alive backend for the benchmark, used only when
nginx is not installed.  Every request gets a fixed, pre-built 200 response:
``/large...`` gets ``--large`` bytes, every other path ``--body`` bytes.
Request bodies are not supported (the benchmark only sends GETs).

Run: ``python bench/backend.py --port 0 --body 1024 --large 1048576``; it
prints ``backend listening on 127.0.0.1:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio

from _common import serve_http


def _response(size: int) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Server: bench-backend\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n"
        "\r\n"
    ).encode("ascii")
    return head + b"x" * size


async def _serve(port: int, small: bytes, large: bytes) -> None:
    def respond(head: bytes) -> bytes:
        parts = head.split(b" ", 2)
        return large if len(parts) > 1 and parts[1].startswith(b"/large") else small

    await serve_http(respond, port, 4096, "backend")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--large", type=int, default=1 << 20)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, _response(args.body), _response(args.large)))


if __name__ == "__main__":
    main()
