"""
Demo upstream servers for the example config (examples/sites/shop.py).

    python examples/demo_backends.py [--ports 9001,9002,9101,9102]

One process, one Twisted reactor, one plain-HTTP/1.1 server (with keep-alive)
per port on 127.0.0.1.  Every request, whatever its method or path, gets a
short JSON answer naming the backend that got it (name and port) and echoing
what the proxy sent: method, path, Host and the X-Forwarded-* headers.

The backends are named after the example's clusters by position: the first
two ports are "api-1" and "api-2" (cluster "api"), the third "web-v1", the
fourth "web-v2"; any further ports are "demo-5", "demo-6", ...  Port 0 picks a
free port.  Once every port listens, one line per backend
("demo backend NAME listening on 127.0.0.1:PORT") and then "demo backends
ready" are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

DEFAULT_PORTS = (9001, 9002, 9101, 9102)
NAMES = ("api-1", "api-2", "web-v1", "web-v2")


def backend_name(index: int) -> str:
    """The name of the backend on the ``index``-th port (0-based)."""
    return NAMES[index] if index < len(NAMES) else f"demo-{index + 1}"


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


class EchoResource(Resource):
    """Answers every request (isLeaf: no child lookup) with who answered and what arrived."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.port = 0  # set once listening

    def render(self, request: Request) -> bytes:
        body_length = len(request.content.read()) if request.content is not None else 0
        answer = {
            "backend": self.name,
            "port": self.port,
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1"),
            "host": _header(request, b"host"),
            "x-forwarded-for": _header(request, b"x-forwarded-for"),
            "x-forwarded-proto": _header(request, b"x-forwarded-proto"),
            "x-forwarded-host": _header(request, b"x-forwarded-host"),
            "body-length": body_length,
        }
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-demo-backend", self.name.encode("ascii"))
        if request.path.startswith(b"/static/"):
            # What a static file server would say: anyone may keep this for a
            # minute (the example caches /static/ at the proxy).
            request.setHeader(b"cache-control", b"public, max-age=60")
        # Returning bytes makes twisted.web set Content-Length, so the
        # connection stays open for the proxy's next request (keep-alive).
        return (json.dumps(answer, indent=2) + "\n").encode("utf-8")


class QuietSite(Site):
    """No access log: the proxy already logs every request."""

    def log(self, request: Request) -> None:
        pass


def parse_ports(text: str) -> list[int]:
    ports = []
    for item in text.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or not 0 <= int(item) < 65536:
            raise argparse.ArgumentTypeError(f"not a port number: {item!r}")
        ports.append(int(item))
    nonzero = [p for p in ports if p]
    if len(set(nonzero)) != len(nonzero):
        raise argparse.ArgumentTypeError(f"a port is listed twice: {text}")
    return ports


def _stop_on_stdin_eof() -> None:
    """Stop when stdin closes: run.py holds the other end, so the backends
    never outlive it, even if it is killed."""

    def watch() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        reactor.callFromThread(_stop)

    threading.Thread(target=watch, daemon=True).start()


def _stop() -> None:
    if reactor.running:
        reactor.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument(
        "--ports",
        type=parse_ports,
        default=",".join(str(p) for p in DEFAULT_PORTS),
        help="comma-separated ports on 127.0.0.1 (0: any free port) [default: %(default)s]",
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="stop when standard input is closed (used by run.py)",
    )
    args = parser.parse_args(argv)

    listening = []
    for index, port in enumerate(args.ports):
        resource = EchoResource(backend_name(index))
        site = QuietSite(resource, timeout=60)
        try:
            listener = reactor.listenTCP(port, site, interface="127.0.0.1")
        except CannotListenError as e:
            print(
                f"demo backends: cannot listen on 127.0.0.1:{port} for {resource.name}: "
                f"{e.socketError}",
                file=sys.stderr,
            )
            return 1
        resource.port = listener.getHost().port
        listening.append(resource)
    for resource in listening:
        print(f"demo backend {resource.name} listening on 127.0.0.1:{resource.port}")
    print("demo backends ready", flush=True)
    if args.exit_on_stdin_eof:
        _stop_on_stdin_eof()
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
