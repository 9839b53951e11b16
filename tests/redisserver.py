"""
A real ``redis-server`` (Debian's) for tests: on 127.0.0.1, on a port found
free by binding (redis has no ``--port 0``), saving nothing, in a temporary
directory; stopped, and started again on the same port, by hand.  Plus
:func:`command`, a few lines of RESP to talk to it without a client library.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        for _ in range(5):  # the port found free may be taken before redis binds it
            if not self.port:
                self.port = _free_port()
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--loglevel",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if command(self.port, "PING") == "PONG":
                        return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
            self.port = 0
        raise RuntimeError("redis-server did not start")

    def pause(self) -> None:
        """Hang: connections stay open, nothing is answered (SIGSTOP)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)  # stopped (SIGSTOP) or not
            process.wait(10)


def _read(reader: Any) -> Any:
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else reader.read(n + 2)[:-2]
    if kind == b"*":
        return [_read(reader) for _ in range(int(rest))]
    raise RuntimeError(f"bad reply {line!r}")


def command(port: int, *args: str | int) -> Any:
    """One command on a fresh connection, its reply parsed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        sock.sendall(b"".join(parts))
        with sock.makefile("rb") as reader:
            return _read(reader)
