"""
The stages every route has, whatever it configures: the body limit (at head
time) and, on plain-HTTP listeners for routes without ``plain_http``, the
redirect to https.  Forwarding, the last stage, is :mod:`.forward`'s; how a
route's chain is put together is :mod:`.pipeline`'s.  docs/architecture.md
shows how a new stage is added.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeproxy.core.addresses import IPNetwork, Networks
from edgeproxy.core.errors import BodyTooLarge, Forbidden, Outcome
from edgeproxy.core.hostnames import normalise_host
from edgeproxy.proxy.exchange import Exchange, Stage

__all__ = ["AccessRules", "BodyLimit", "HttpsRedirect"]


class BodyLimit(Stage):
    """A request body over ``limit`` bytes is answered 413: at once when its
    ``Content-Length`` says so, before the body is read, else as soon as the
    body grows past it.  (The route's ``max_body_size``, or ``--max-body-size``.)"""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def on_head(self, exchange: Exchange) -> None:
        exchange.body_limit = limit = self.limit
        if exchange.declared_length > limit:
            exchange.reject_early(BodyTooLarge())

    def __repr__(self) -> str:
        return f"<BodyLimit {self.limit}>"


class AccessRules(Stage):
    """``allow``/``deny`` of a route and its virtual host (head time, before
    the body is read): a client address any ``deny`` holds, or that some
    non-empty ``allow`` does not, gets 403.  Both lists are checked, the
    virtual host's and the route's.  The client is ``exchange.client_ip``:
    behind a trusted forwarder, the one it names.  Verdicts are kept per
    address (bounded)."""

    def __init__(
        self, allow: tuple[tuple[IPNetwork, ...], ...], deny: tuple[IPNetwork, ...]
    ) -> None:
        #: Each non-empty allow list (the virtual host's, the route's): all must hold.
        self._allow = tuple(Networks(a) for a in allow if a)
        self._deny = Networks(deny)

    def on_head(self, exchange: Exchange) -> None:
        address = exchange.client_ip
        if address in self._deny or not all(address in allow for allow in self._allow):
            exchange.reject_early(Forbidden())

    def __repr__(self) -> str:
        return f"<AccessRules allow={self._allow} deny={self._deny}>"


class HttpsRedirect(Stage):
    """Answers every request with a 308 to the same URL over https: on a
    plain-HTTP listener, for a route without ``plain_http``."""

    _BODY = b"redirecting to https\n"

    def __init__(self, https_port: Callable[[], int | None]) -> None:
        self._https_port = https_port

    def handle(self, exchange: Exchange) -> None:
        # Redirect to the name the client used (without its port), not the
        # configured pattern: a wildcard matched it.
        host = normalise_host(exchange.host or b"") or ""
        if ":" in host:
            host = f"[{host}]"
        port = self._https_port()
        location = f"https://{host}" + (f":{port}" if port not in (None, 443) else "")
        exchange.respond(
            308,
            [
                (b"Location", location.encode("ascii") + exchange.target),
                (b"Content-Type", b"text/plain; charset=utf-8"),
            ],
            self._BODY,
            Outcome.REDIRECT,
        )
