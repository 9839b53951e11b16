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
import signal
import socket

_HEADER_END = b"\r\n\r\n"


def _response(size: int) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Server: bench-backend\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n"
        "\r\n"
    ).encode("ascii")
    return head + b"x" * size


class _Protocol(asyncio.Protocol):
    def __init__(self, small: bytes, large: bytes) -> None:
        self._small = small
        self._large = large
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buffer = self._buffer + data
        out: list[bytes] = []
        while True:
            end = buffer.find(_HEADER_END)
            if end < 0:
                break
            head = buffer[:end]
            buffer = buffer[end + len(_HEADER_END) :]
            parts = head.split(b" ", 2)
            large = len(parts) > 1 and parts[1].startswith(b"/large")
            out.append(self._large if large else self._small)
            if b"\r\nconnection: close" in head.lower():
                self._transport.write(b"".join(out))
                self._transport.close()
                return
        self._buffer = buffer
        if out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))


async def _serve(port: int, small: bytes, large: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Protocol(small, large), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    address = server.sockets[0].getsockname()
    print(f"backend listening on {address[0]}:{address[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--large", type=int, default=1 << 20)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, _response(args.body), _response(args.large)))


if __name__ == "__main__":
    main()
