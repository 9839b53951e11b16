"""
The rate-limit stage: ``Route(..., rate_limit=RateLimit(...))``.  It decides
at head time, before the body is read: a client over its route's limit gets
429 with ``Retry-After`` and nothing is forwarded (docs/security.md#rate-limits).

The key is the client's address (``exchange.client_ip``) or the BLAKE2b digest
of a header's value (``header:NAME``; a request without it is not limited).
The decision is the store's (:mod:`edgeproxy.ratelimit`).  The memory store
answers at once, and a refusal is made on the spot, as the access rules make
theirs.  The Redis store answers later: the decision is asked for at head time
and the request goes on being read meanwhile; an answer that refuses before
the request's turn refuses it then (``reject_early``: answered in its turn, the
rest of a body dropped), and if the turn comes first,
:meth:`RateLimitStage.handle` holds the request until the answer (at most the
store's timeout).  A store that fails lets the request through or answers 503,
as the route's ``on_store_error`` says; a fault while applying an answer is a
500, in the request's turn too.
"""

from __future__ import annotations

import hashlib

from twisted.logger import Logger
from twisted.python.failure import Failure

from edgeproxy.config import RateLimit
from edgeproxy.core.errors import EdgeProxyError, RateLimited, RateLimitUnavailable
from edgeproxy.core.ratelimit import Decision, retry_after_seconds
from edgeproxy.proxy.exchange import Exchange, Stage
from edgeproxy.ratelimit.registry import DecisionCounters
from edgeproxy.ratelimit.store import Store

__all__ = ["RateLimitStage"]

#: Bytes of a header value's BLAKE2b digest that name its bucket.
_DIGEST_SIZE = 16


class RateLimitStage(Stage):
    """A route's rate limit (one per route and kind of listener; the store
    and the counters are shared)."""

    log = Logger()

    def __init__(
        self, limit: RateLimit, bucket: str, store: Store, counters: DecisionCounters
    ) -> None:
        self.limit = limit
        self._rate = limit.rate
        self._burst = limit.burst
        self._header = limit.header
        self._prefix = bucket + ":"
        self._store = store
        self._fail_open = limit.on_store_error == "open"
        self.counters = counters
        #: Exchanges whose decision the store has not given yet, or that wait
        #: in their turn for it (only with an asynchronous store).
        self._waits: dict[Exchange, _Wait] = {}

    def __repr__(self) -> str:
        return f"<RateLimitStage {self._prefix[:-1]} {self.limit}>"

    def key_of(self, exchange: Exchange) -> str | None:
        """The bucket of the request's client, None when it has no key."""
        header = self._header
        if header is None:
            return self._prefix + exchange.client_ip
        value = exchange.getHeader(header)
        if not value:
            return None
        # Always a digest, never the value: a header key is usually a secret
        # (an API key), and key names are in plain sight in Redis (SCAN,
        # MONITOR, RDB dumps, the unencrypted link).  Unkeyed, because every
        # proxy of a fleet must name the same value's bucket alike and they
        # share no secret; it also keeps a key small whatever a client sends.
        return self._prefix + "#" + hashlib.blake2b(value, digest_size=_DIGEST_SIZE).hexdigest()

    def on_head(self, exchange: Exchange) -> None:
        key = self.key_of(exchange)
        if key is None:
            self.counters.unkeyed += 1
            return
        result = self._store.decide(key, self._rate, self._burst)
        if isinstance(result, Decision):
            error = self.refusal(result)
            if error is not None:
                exchange.reject_early(error)
            return
        wait = _Wait(self, exchange)
        self._waits[exchange] = wait
        exchange.when_over(wait.over)
        result.addBoth(wait.settled)

    def handle(self, exchange: Exchange) -> None:
        waits = self._waits
        wait = waits.get(exchange) if waits else None
        if wait is None:
            self.next(exchange)  # allowed at head time, or not keyed
            return
        if wait.decided:
            del waits[exchange]
            self.next(exchange)
            return
        wait.holding = True

    def refusal(self, result: Decision | Failure) -> EdgeProxyError | None:
        """What to answer for a decision (or a store failure), None to pass
        on; counted here, once per request."""
        counters = self.counters
        if isinstance(result, Failure):
            if self._fail_open:
                counters.failed_open += 1
                return None
            counters.failed_closed += 1
            return RateLimitUnavailable()
        if result.allowed:
            counters.allowed += 1
            return None
        counters.limited += 1
        return RateLimited(retry_after_seconds(result.retry_after))

    def settled(self, wait: _Wait, result: Decision | Failure) -> None:
        """An asynchronous decision for ``wait.exchange`` is in."""
        exchange = wait.exchange
        error = self.refusal(result)
        if wait.gone:
            return
        if wait.holding:
            del self._waits[exchange]
            if error is None:
                self.next(exchange)
            else:
                exchange.respond_error(error)
            return
        if error is None:
            wait.decided = True  # its turn passes it on
            return
        del self._waits[exchange]
        if exchange.error is None:
            exchange.reject_early(error)


class _Wait:
    """One request's pending decision."""

    __slots__ = ("decided", "exchange", "gone", "holding", "stage")

    def __init__(self, stage: RateLimitStage, exchange: Exchange) -> None:
        self.stage = stage
        self.exchange = exchange
        #: Allowed, waiting for the request's turn.
        self.decided = False
        #: The request's turn came first: it waits in handle().
        self.holding = False
        #: The exchange is over (answered, or the client went away).
        self.gone = False

    def settled(self, result: Decision | Failure) -> None:
        try:
            self.stage.settled(self, result)
        except Exception:
            # Raised in a Deferred's callback it would only be logged when the
            # Deferred is collected, and the request would wait for ever.
            stage, exchange = self.stage, self.exchange
            stage.log.failure("while applying a rate-limit decision")
            stage._waits.pop(exchange, None)
            if self.gone:
                return
            if self.holding:
                exchange.respond_error(EdgeProxyError())  # its turn: answer now
            elif exchange.error is None:
                # Not its turn yet: a pipelined request ahead of it is still
                # being answered, and answering now would come before it.
                exchange.reject_early(EdgeProxyError())

    def over(self, failure: Failure | None) -> None:
        self.gone = True
        self.stage._waits.pop(self.exchange, None)
