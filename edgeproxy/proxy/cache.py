"""
The cache stage: an RFC 9111 shared cache in front of a route's target
(``Route(..., cache=Cache(...))``; docs/caching.md says what is cached and
why not).

A GET or HEAD finds the stored variant its headers select
(:mod:`edgeproxy.cache.store`), and the pure policy
(:mod:`edgeproxy.core.httpcache`) says whether it may be used as it is,
stale while it is refreshed in the background, or only once revalidated.
Anything to send upstream goes down the rest of the chain as a
:class:`_Fill`: an exchange of the cache's own whose response side stores
the response while it streams to the client (never buffered whole first),
turns a 304 into the refreshed stored response, and falls back to a stale one
when the origin fails (``stale-if-error``).  Concurrent misses for one URL
wait for the first one's fill (request collapsing), bounded in time and
number.  A successful unsafe request invalidates what it names.  Every answer
says what the cache did in ``Cache-Status`` (RFC 9211).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import BinaryIO

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edgeproxy.cache.registry import CacheCounters
from edgeproxy.cache.store import Entry, Store, Writer
from edgeproxy.config import Cache
from edgeproxy.core.conditional import (
    BYPASS,
    CONDITIONAL,
    DIRECTIVES,
    not_modified,
    request_flags,
    updates_stored,
)
from edgeproxy.core.errors import EdgeProxyError, NotCached, Outcome
from edgeproxy.core.httpcache import (
    PLAIN_REQUEST,
    RequestPolicy,
    StoredHead,
    Use,
    cache_status,
    format_http_date,
    invalidated_keys,
    may_serve_stale_on_error,
    not_modified_lines,
    origin_key,
    refreshed,
    request_policy,
    served_lines,
    storable,
    usable,
    validators,
    vary_key,
)
from edgeproxy.proxy.exchange import Exchange, ExchangeRecord, Stage

__all__ = ["CacheStage"]

_GET = b"GET"
_HEAD = b"HEAD"
#: Methods that change nothing: their responses invalidate nothing (RFC 9110 9.2.1).
_SAFE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
#: The client's own validators: the cache answers them itself from what it
#: stores, so a fill asks for the whole response.
_CLIENT_CONDITIONALS = frozenset({b"if-none-match", b"if-modified-since"})
#: Statuses that count as the origin failing, for stale-if-error (RFC 5861 4).
_ERROR_STATUSES = frozenset({500, 502, 503, 504})
#: Bodies up to this size are written in one piece (one copy into the
#: socket, at most this much left in the transport's buffer for a slow
#: client); larger ones are read from the store in chunks of _CHUNK, as fast
#: as the client takes them.
_WHOLE = 256 * 1024
_CHUNK = 64 * 1024
#: Bodies up to this size go out in one write with the head (one send); a
#: larger one is cheaper as a write of its own than copied behind the head.
_JOIN = 16 * 1024
_CACHE_STATUS = b"Cache-Status: "
#: Bound of the stage's small memos (their keys are Host values and seconds).
_MEMO_SIZE = 1024
_NOT_MODIFIED = b"Not Modified"


class CacheStage(Stage):
    """A route's cache (one per route and kind of listener; the store and
    its counters are shared, the fills in flight are the stage's)."""

    log = Logger()

    def __init__(
        self,
        cache: Cache,
        store: Store,
        counters: CacheCounters,
        *,
        clock: IReactorTime,
        invalidate: Callable[[bytes], object],
    ) -> None:
        self.cache = cache
        self.store = store
        self.counters = counters
        self.clock = clock
        self._invalidate = invalidate
        #: The fill in flight per key, that misses for the same key wait for.
        self.fills: dict[bytes, _Fill] = {}
        #: Keys being refreshed in the background (stale-while-revalidate).
        self.refreshing: set[bytes] = set()
        # Per-request work done once: the key's start per listener kind and
        # Host, the Cache-Status of a hit per second of ttl (both bounded).
        self._origins: dict[tuple[bool, bytes], bytes] = {}
        self._hit_statuses: dict[int, bytes] = {}

    #: A GET or HEAD with a body goes upstream as a fill (a request of its
    #: own, sent from the spool); every other method passes the exchange on.
    whole_body_methods = frozenset({_GET, _HEAD})

    def __repr__(self) -> str:
        return f"<CacheStage {self.cache.store} {self.cache.max_bytes}>"

    def handle(self, exchange: Exchange) -> None:
        method = exchange.method
        if method != _GET and method != _HEAD:
            exchange.record.cache = "bypass"
            if method not in _SAFE:
                exchange.observe_response(_Invalidation(self, exchange))
            else:
                exchange.observe_response(_Labelled(cache_status(fwd="method")))
            self.next(exchange)
            return
        if exchange.upgrade is not None:
            # A WebSocket (or other upgrade) handshake: never answered from
            # the cache, nor its answer stored.
            exchange.record.cache = "bypass"
            self.next(exchange)
            return
        headers = exchange.headers
        flags = request_flags(headers)
        if flags & BYPASS:
            exchange.record.cache = "bypass"
            exchange.observe_response(_Labelled(cache_status(fwd="bypass")))
            self.next(exchange)
            return
        key = self.key_of(exchange)
        policy = request_policy(headers) if flags & DIRECTIVES else PLAIN_REQUEST
        entry = self.store.lookup(key, headers)
        if entry is None:
            self._upstream(exchange, key, policy, None)
            return
        now = self.clock.seconds()
        head = entry.head
        use = usable(head, policy, now)
        if use is Use.FRESH or use is Use.STALE_ALLOWED:
            exchange.record.cache = "hit"
            self.counters.hit()
            self.serve(exchange, entry, now, self._hit_status(head.ttl(now)), flags)
            return
        if use is Use.STALE_WHILE_REVALIDATE:
            exchange.record.cache = "stale"
            self.counters.served_stale()
            self.serve(
                exchange,
                entry,
                now,
                cache_status(hit=True, ttl=entry.head.ttl(now), detail="stale-while-revalidate"),
            )
            self.refresh(exchange, key, entry)
            return
        self._upstream(exchange, key, policy, entry)

    def _upstream(
        self, exchange: Exchange, key: bytes, policy: RequestPolicy, entry: Entry | None
    ) -> None:
        """Nothing stored (``entry`` None), or a stored response to revalidate:
        wait for the fill in flight for ``key``, if any may be waited for, or
        be that fill."""
        if policy.only_if_cached:
            self._not_cached(exchange, "uri-miss" if entry is None else "stale")
            return
        fill = self.fills.get(key)
        if fill is not None and fill.wait(exchange):
            self.counters.waited()
            return
        claimed = False
        if entry is None and fill is None:
            # A store shared with other processes (disk, --workers): one of
            # them may be fetching it already; then this one waits for it.
            if not self.store.claim(key, self.cache.collapse_timeout):
                self.counters.waited()
                _ElsewhereWait(self, exchange, key, policy).start()
                return
            claimed = True
        exchange.record.cache = "miss"
        if entry is None:
            self.counters.miss()
            fwd = "miss"
        else:
            self.counters.revalidating()
            fwd = "request" if policy.no_cache else "stale"
        self.fill(exchange, key, policy, entry, fwd, claimed=claimed)

    def key_of(self, exchange: Exchange) -> bytes:
        host = exchange.host or b""
        tls = exchange.tls
        origin = self._origins.get((tls, host))
        if origin is None:
            if len(self._origins) >= _MEMO_SIZE:
                self._origins.clear()
            origin = self._origins[tls, host] = origin_key(b"https" if tls else b"http", host)
        return origin + exchange.target

    def _hit_status(self, ttl: float) -> bytes:
        """``Cache-Status`` of a hit (made once per second of ttl)."""
        if not -1e9 < ttl < 1e9:
            return cache_status(hit=True, ttl=ttl)
        seconds = math.floor(ttl)
        status = self._hit_statuses.get(seconds)
        if status is None:
            if len(self._hit_statuses) >= _MEMO_SIZE:
                self._hit_statuses.clear()
            status = self._hit_statuses[seconds] = cache_status(hit=True, ttl=ttl)
        return status

    # -- answers from the store ----------------------------------------------------

    def serve(
        self,
        exchange: Exchange,
        entry: Entry,
        now: float,
        status: bytes,
        flags: int = CONDITIONAL,
    ) -> None:
        """Answer ``exchange`` with a stored response (or a 304 when the
        client's own validators match it; ``flags`` without
        :data:`CONDITIONAL` says it has none)."""
        head = entry.head
        exchange.record.outcome = Outcome.OK
        if flags & CONDITIONAL and not_modified(exchange.method, exchange.headers, head):
            lines = not_modified_lines(head, now)
            lines.append(_CACHE_STATUS + status)
            exchange.send_head_lines(304, _NOT_MODIFIED, lines, None)
            exchange.finish()
            return
        lines = served_lines(head, now)
        lines.append(_CACHE_STATUS + status)
        length = head.body_length
        if exchange.method == _HEAD:
            # The length of what a GET would get (RFC 9110 9.3.2).
            lines.append(b"Content-Length: %d" % length)
            exchange.send_head_lines(head.status, head.phrase, lines, length)
            exchange.finish()
            return
        exchange.send_head_lines(head.status, head.phrase, lines, length)
        if length <= _WHOLE:
            if length > _JOIN:
                # Head and body are sent as two writes: joining them would copy the body.
                exchange.flush_head()
            if length:
                exchange.write(entry.body())
            exchange.finish()
            return
        _BodySender(exchange, entry.open_body(), length).start()

    def _not_cached(self, exchange: Exchange, detail: str) -> None:
        exchange.observe_response(_Labelled(cache_status(fwd="miss", detail=detail)))
        exchange.respond_error(NotCached())

    # -- going upstream ------------------------------------------------------------

    def fill(
        self,
        exchange: Exchange,
        key: bytes,
        policy: RequestPolicy,
        entry: Entry | None,
        fwd: str,
        *,
        collapse: bool = True,
        claimed: bool = False,
    ) -> None:
        """Send the request upstream as a fill that stores the response (and
        that later misses for ``key`` wait for, when ``collapse``).  A fill
        that ``claimed`` the key in the store lets go of it when it is over."""
        fill = _Fill(self, exchange, exchange, key, policy, entry, fwd, store=True)
        fill.claimed = claimed
        if collapse and key not in self.fills:
            self.fills[key] = fill
            fill.leading = True
        self.next(fill)

    def refresh(self, exchange: Exchange, key: bytes, entry: Entry) -> None:
        """Revalidate ``entry`` in the background, once at a time per key."""
        if key in self.refreshing or key in self.fills:
            return
        self.refreshing.add(key)
        self.counters.revalidating()
        fill = _Fill(self, None, exchange, key, PLAIN_REQUEST, entry, "stale", store=True)
        self.next(fill)

    def passed_through(self, exchange: Exchange, key: bytes, policy: RequestPolicy) -> None:
        """A waiter that could not be answered from the fill it waited for:
        upstream on its own, not stored (nginx's proxy_cache_lock timeout)."""
        exchange.record.cache = "miss"
        fill = _Fill(self, exchange, exchange, key, policy, None, "miss", store=False)
        self.next(fill)

    def after_wait(self, exchange: Exchange, key: bytes) -> None:
        """A waiter's fill is over: answer from the store or go upstream."""
        if exchange.finished or exchange._disconnected:
            return
        policy = request_policy(exchange.headers)
        answered, entry = self.served_collapsed(exchange, key, policy)
        if not answered:
            exchange.record.cache = "miss"
            self.counters.miss()
            self.fill(exchange, key, policy, entry, "miss", collapse=False)

    def served_collapsed(
        self, exchange: Exchange, key: bytes, policy: RequestPolicy
    ) -> tuple[bool, Entry | None]:
        """Answer a request that waited for another's fill from what it
        stored, if it can: whether it did, and what is stored for it."""
        entry = self.store.lookup(key, exchange.headers)
        now = self.clock.seconds()
        if entry is None or usable(entry.head, policy, now) is not Use.FRESH:
            return False, entry
        exchange.record.cache = "collapsed"
        self.counters.hit()
        status = cache_status(hit=True, collapsed=True, ttl=entry.head.ttl(now))
        self.serve(exchange, entry, now, status)
        return True, entry

    def fill_over(self, fill: _Fill) -> None:
        if fill.claimed:
            fill.claimed = False
            self.store.release(fill.key)
        if fill.leading and self.fills.get(fill.key) is fill:
            del self.fills[fill.key]
        if fill.background:
            self.refreshing.discard(fill.key)


class _Fill(Exchange):
    """The request as the cache sends it upstream, and the response side
    that stores what comes back while passing it on to the client (when
    there is one: a background refresh has none)."""

    log = CacheStage.log
    leading = False
    #: The key is claimed in the store (for other processes sharing it) until this is over.
    claimed = False

    def __init__(
        self,
        stage: CacheStage,
        client: Exchange | None,
        template: Exchange,
        key: bytes,
        policy: RequestPolicy,
        entry: Entry | None,
        fwd: str,
        *,
        store: bool,
    ) -> None:
        # Not Exchange.__init__: this is made from a routed exchange, not a channel.
        self.stage = stage
        self.client = client
        self.key = key
        self.policy = policy
        self.entry = entry
        self.fwd = fwd
        self.may_store = store
        #: A stale-while-revalidate refresh: no client at all.
        self.background = client is None
        self.channel = template.channel
        self.factory = template.factory
        self.started = stage.clock.seconds()
        # HEAD is filled with GET, so that its answer can serve GETs too.
        self.method = _GET
        self.uri = template.uri
        self.clientproto = b"HTTP/1.1"
        self.http11 = True
        self.persistent = True
        self.host = template.host
        self.target = template.target
        self.snapshot = template.snapshot
        self.vhost = template.vhost
        self.route = template.route
        self.match = template.match
        self.chain = template.chain
        self.request_headers = template.headers
        headers = [(n, v) for n, v in template.headers if n.lower() not in _CLIENT_CONDITIONALS]
        #: The client sent validators of its own (taken out of what goes upstream).
        self._conditional = len(headers) != len(template.headers)
        if entry is not None:
            headers.extend(validators(entry.head))
        self.headers = headers
        if client is not None:
            self.content = client.content
            self.body_length = client.body_length
            self.record = client.record
            client.when_over(self._client_over)
        else:
            self.record = record = ExchangeRecord()
            record.request_id = template.record.request_id
        self.complete = True
        self.processing = True
        self.waiters: list[Exchange] | None = None
        self._timer: IDelayedCall | None = None
        self._writer: Writer | None = None
        self._head: StoredHead | None = None
        self._received: tuple[bytes, ...] = ()
        self._written = 0
        #: What the answer is, once the head is in: relayed as it comes (None),
        #: or the stored response served from here ("refreshed", "stale").
        self._serve_stored: str | None = None
        self._status = 0

    # -- request collapsing ---------------------------------------------------------

    def wait(self, exchange: Exchange) -> bool:
        """Have ``exchange`` wait for this fill's response; False when too
        many already do."""
        waiters = self.waiters
        cache = self.stage.cache
        if waiters is None:
            if cache.collapse_max_waiters == 0:
                return False
            waiters = self.waiters = []
            self._timer = self.stage.clock.callLater(cache.collapse_timeout, self._wait_over)
        elif len(waiters) >= cache.collapse_max_waiters:
            return False
        waiters.append(exchange)
        exchange.when_over(lambda failure: self._waiter_over(exchange, failure))
        return True

    def _waiter_over(self, exchange: Exchange, failure: Failure | None) -> None:
        waiters = self.waiters
        if failure is not None and waiters is not None and exchange in waiters:
            waiters.remove(exchange)

    def _wait_over(self) -> None:
        """Waited long enough: the waiters go upstream on their own."""
        self._timer = None
        waiters, self.waiters = self.waiters, None
        stage = self.stage
        stage.fill_over(self)
        for exchange in waiters or ():
            if not exchange.finished and not exchange._disconnected:
                stage.passed_through(exchange, self.key, request_policy(exchange.headers))

    def _release_waiters(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        waiters, self.waiters = self.waiters, None
        stage = self.stage
        stage.fill_over(self)
        for exchange in waiters or ():
            stage.after_wait(exchange, self.key)

    # -- the client's side ------------------------------------------------------------

    def _client_over(self, failure: Failure | None) -> None:
        if failure is None or self.finished or self._disconnected:
            return
        # The client went away first: what was stored so far is not kept,
        # and the upstream exchange is cancelled.
        self.client = None
        self._discard()
        self._disconnected = True
        self._notify(failure)
        self._release_waiters()

    # -- the response side ------------------------------------------------------------

    def send_continue(self) -> None:
        pass

    def send_informational(self, code: int, phrase: bytes, lines: list[bytes]) -> None:
        client = self.client
        if client is not None and self._serve_stored is None:
            client.send_informational(code, phrase, lines)

    def send_head_lines(
        self, code: int, phrase: bytes, lines: list[bytes], length: int | None
    ) -> None:
        stage = self.stage
        now = stage.clock.seconds()
        self._status = code
        entry = self.entry
        if entry is not None and code == 304:
            if not updates_stored(entry.head, lines):
                # A 304 for some other response (RFC 9111 4.3.4): the stored
                # one cannot be refreshed by it; it goes, and the request is
                # sent again without validators once this exchange is over.
                stage.store.invalidate(self.key)
                self._serve_stored = "again"
                return
            stage.counters.not_modified()
            head = refreshed(entry.head, lines, self.started, now)
            updated = stage.store.update(entry, head)
            self.entry = updated if updated is not None else _Detached(entry, head)
            self._serve_stored = "refreshed"
            return
        if not any(line[:5].lower() == b"date:" for line in lines):
            # RFC 9110 6.6.1: a cache records when a response without Date came.
            lines.append(b"Date: " + format_http_date(now))
        if (
            entry is not None
            and code in _ERROR_STATUSES
            and may_serve_stale_on_error(entry.head, self.policy, now)
        ):
            self._serve_stored = "stale"
            return
        detail = None
        if self.may_store:
            detail = self._start_storing(code, phrase, lines, length, now)
        client = self.client
        if client is None:
            return
        provisional = self._head
        if detail is None and self._writer is not None and provisional is not None:
            status = cache_status(
                fwd=self.fwd, fwd_status=code, stored=True, ttl=provisional.ttl(now)
            )
            if self._conditional and not_modified(client.method, client.headers, provisional):
                # The client's own validators match what is being stored: it
                # gets its 304 now, and the body goes on into the store alone.
                self.client = None
                lines = not_modified_lines(provisional, now)
                lines.append(_CACHE_STATUS + status)
                client.send_head_lines(304, _NOT_MODIFIED, lines, None)
                client.finish()
                return
        else:
            status = cache_status(fwd=self.fwd, fwd_status=code, detail=detail)
        lines.append(_CACHE_STATUS + status)
        if length is not None and client.method == _HEAD:
            lines.append(b"Content-Length: %d" % length)
        client.send_head_lines(code, phrase, lines, length)

    def _start_storing(
        self, code: int, phrase: bytes, lines: list[bytes], length: int | None, now: float
    ) -> str | None:
        """Open a writer for the response if it may be stored; why not, if not."""
        stage = self.stage
        authorization = any(n.lower() == b"authorization" for n, _ in self.request_headers)
        why = storable(_GET, code, lines, self.policy, authorization)
        if why is None:
            vary = vary_key(lines, self.request_headers)
            if vary is None:
                why = "vary-star"
            else:
                cache = stage.cache
                if length is not None and length > cache.max_object_bytes:
                    why = "too-large"
                else:
                    writer = stage.store.begin(self.key, length)
                    if writer is None:
                        why = "too-large"
                    else:
                        self._writer = writer
                        # As received (Age included: it feeds the initial age);
                        # made again with the body's length once it is whole.
                        self._received = tuple(lines)
                        self._head = StoredHead(
                            code,
                            phrase,
                            self._received,
                            self.started,
                            now,
                            vary,
                            length or 0,
                            heuristic_max=cache.heuristic_max,
                        )
        stage.counters.kept(why is None)
        return why

    def write(self, data: bytes) -> None:
        if not data:
            return
        writer = self._writer
        if writer is not None:
            self._written += len(data)
            if not writer.write(data):
                self._writer = None
        if self._serve_stored is None:
            client = self.client
            if client is not None:
                client.write(data)

    def flush_head(self) -> None:
        client = self.client
        if client is not None and self._serve_stored is None:
            client.flush_head()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        client = self.client
        if client is not None and self._serve_stored is None:
            client.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        client = self.client
        if client is not None and self._serve_stored is None:
            client.unregisterProducer()

    def finish(self) -> None:
        if self.finished or self._disconnected:
            return
        self.finished = True
        stage = self.stage
        writer, self._writer = self._writer, None
        head = self._head
        if writer is not None and head is not None:
            final = StoredHead(
                head.status,
                head.phrase,
                self._received,
                head.request_time,
                head.response_time,
                head.vary,
                self._written,
                heuristic_max=stage.cache.heuristic_max,
            )
            writer.commit(final)
        elif self._status and 200 <= self._status < 400 and self.may_store:
            # A stored response the origin replaced with one that cannot be
            # stored must not be served any more (RFC 9111 4.4 in spirit).
            if self._serve_stored is None and self.entry is not None:
                stage.store.invalidate(self.key)
        self._notify(None)
        client = self.client
        serve = self._serve_stored
        if client is not None:
            if serve is None:
                client.finish()
            elif serve == "again":
                stage.fill(client, self.key, self.policy, None, "miss", collapse=False)
            else:
                self._answer_from_store(client, serve)
        self._release_waiters()

    def _answer_from_store(self, client: Exchange, why: str) -> None:
        entry = self.entry
        assert entry is not None
        stage = self.stage
        now = stage.clock.seconds()
        if why == "refreshed":
            client.record.cache = "revalidated"
            status = cache_status(fwd=self.fwd, fwd_status=304, ttl=entry.head.ttl(now))
        else:
            client.record.cache = "stale"
            stage.counters.served_stale()
            status = cache_status(
                fwd=self.fwd,
                fwd_status=self._status or None,
                ttl=entry.head.ttl(now),
                detail="stale-if-error",
            )
        stage.serve(client, entry, now, status)

    def abort(self) -> None:
        """The response broke off mid-body: nothing of it is kept, and the
        client (if any) is cut off too."""
        self._discard()
        client = self.client
        if client is not None and not client.finished:
            client.abort()
        if not self.finished and not self._disconnected:
            self._disconnected = True
            self._notify(Failure(ConnectionDone()))
        self._release_waiters()

    def respond_error(self, error: EdgeProxyError) -> None:
        """The origin could not be reached or gave nothing usable."""
        if self.finished or self._disconnected:
            return
        self.finished = True
        self._discard()
        self._notify(None)
        stage = self.stage
        client = self.client
        entry = self.entry
        now = stage.clock.seconds()
        if client is not None:
            if entry is not None and may_serve_stale_on_error(entry.head, self.policy, now):
                self.entry = entry
                self._answer_from_store(client, "stale")
            else:
                client.observe_response(
                    _Labelled(cache_status(fwd=self.fwd, detail=error.reason.value))
                )
                client.respond_error(error)
        else:
            self.log.info(
                "background refresh of {key} failed: {cause}",
                key=self.key.decode("ascii", "replace"),
                cause=error.cause,
            )
        self._release_waiters()

    def _discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.discard()


class _Detached(Entry):
    """A refreshed entry the store no longer has (purged meanwhile): served
    once from the old body with the new head."""

    __slots__ = ("_entry",)

    def __init__(self, entry: Entry, head: StoredHead) -> None:
        super().__init__(entry.key, head, entry.size)
        self._entry = entry

    def body(self) -> bytes:
        return self._entry.body()

    def open_body(self) -> BinaryIO:
        return self._entry.open_body()


class _Labelled:
    """Adds a ``Cache-Status`` line to a response the cache did not make."""

    __slots__ = ("_line",)

    def __init__(self, status: bytes) -> None:
        self._line = _CACHE_STATUS + status

    def response_head(self, code: int, lines: list[bytes], length: int | None) -> None:
        lines.append(self._line)

    def response_body(self, data: bytes) -> None:
        pass

    def response_end(self, complete: bool) -> None:
        pass


class _Invalidation:
    """A successful unsafe request invalidates its target and the
    ``Location`` / ``Content-Location`` it names on the same origin
    (RFC 9111 4.4)."""

    __slots__ = ("_key", "_stage")

    def __init__(self, stage: CacheStage, exchange: Exchange) -> None:
        self._stage = stage
        self._key = stage.key_of(exchange)

    def response_head(self, code: int, lines: list[bytes], length: int | None) -> None:
        if 200 <= code < 400:
            named = [
                line
                for line in lines
                if line[:9].lower() == b"location:" or line[:17].lower() == b"content-location:"
            ]
            for key in invalidated_keys(self._key, named):
                self._stage._invalidate(key)
        lines.append(_CACHE_STATUS + cache_status(fwd="method"))

    def response_body(self, data: bytes) -> None:
        pass

    def response_end(self, complete: bool) -> None:
        pass


@implementer(IPushProducer)
class _BodySender:
    """Streams a large stored body to the client, as fast as it takes it."""

    def __init__(self, exchange: Exchange, body: BinaryIO, length: int) -> None:
        self._exchange: Exchange | None = exchange
        self._body: BinaryIO | None = body
        self._left = length
        self._paused = False

    def start(self) -> None:
        exchange = self._exchange
        assert exchange is not None
        exchange.registerProducer(self, True)
        exchange.when_over(self._over)
        self._pump()

    def _pump(self) -> None:
        while not self._paused:
            exchange, body = self._exchange, self._body
            if exchange is None or body is None:
                return
            if self._left <= 0:
                self._done()
                exchange.finish()
                return
            chunk = body.read(min(_CHUNK, self._left))
            if not chunk:
                # The stored file is shorter than its head said (removed or
                # cut by another process): the client must not take it whole.
                self._done()
                exchange.abort()
                return
            self._left -= len(chunk)
            exchange.write(chunk)

    def _over(self, failure: Failure | None) -> None:
        self._done()

    def _done(self) -> None:
        exchange, self._exchange = self._exchange, None
        body, self._body = self._body, None
        if body is not None:
            body.close()
        if exchange is not None:
            exchange.unregisterProducer()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._done()


class _ElsewhereWait:
    """A miss that another process sharing the store (a disk store, with
    ``--workers``) is fetching: look for what it stores every
    :attr:`POLL` seconds, for at most ``collapse_timeout``; fetch it here if
    that process let go without storing it (or died), and after the time is
    up go upstream unstored, as a waiter in this process would."""

    POLL = 0.05

    def __init__(
        self, stage: CacheStage, exchange: Exchange, key: bytes, policy: RequestPolicy
    ) -> None:
        self._stage: CacheStage | None = stage
        self._exchange: Exchange | None = exchange
        self._key = key
        self._policy = policy
        self._deadline = stage.clock.seconds() + stage.cache.collapse_timeout
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        assert self._exchange is not None
        self._exchange.when_over(self._over)
        self._schedule()

    def _schedule(self) -> None:
        assert self._stage is not None
        self._timer = self._stage.clock.callLater(self.POLL, self._poll)

    def _over(self, failure: Failure | None) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._stage = self._exchange = None

    def _poll(self) -> None:
        self._timer = None
        stage, exchange = self._stage, self._exchange
        if stage is None or exchange is None:
            return
        key, policy = self._key, self._policy
        if stage.served_collapsed(exchange, key, policy)[0]:
            return
        if stage.store.claim(key, stage.cache.collapse_timeout):
            self._over(None)
            exchange.record.cache = "miss"
            stage.counters.miss()
            stage.fill(exchange, key, policy, None, "miss", claimed=True)
        elif stage.clock.seconds() >= self._deadline:
            self._over(None)
            stage.passed_through(exchange, key, policy)
        else:
            self._schedule()
