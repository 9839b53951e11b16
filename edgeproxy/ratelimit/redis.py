"""
The Redis store (``--rate-limit-store redis://HOST:PORT[/DB]``): every
edgeproxy process that shares one Redis enforces one budget per key, as
Envoy's global rate limit service does.

One atomic Lua script per decision (:data:`SCRIPT`: EVALSHA, and EVAL when
Redis answers NOSCRIPT) reads the bucket's TAT, takes the time from Redis's
own clock (``TIME``: processes with skewed clocks agree; Redis 5+ replicates a
script's effects, so a write after ``TIME`` is allowed), runs the GCRA of
:mod:`edgeproxy.core.ratelimit` in microseconds and writes the new TAT with
``PX`` set to when the bucket is full again, so Redis forgets idle buckets
too.  Keys are ``edgeproxy:rl:<host><prefix>:<client key>``, the client key
being an address or ``#`` and the digest of a header's value (never the value:
key names are visible to whoever can reach Redis).

A decision gets :data:`DEFAULT_TIMEOUT` seconds; a hung, unreachable or
failing Redis makes it fail with :class:`~.store.StoreError`, and the route's
``on_store_error`` decides.  While there is no connection a decision fails at
once (nothing queues up), and at most :data:`MAX_IN_FLIGHT` commands are
queued on the connection at a time (a timed-out decision's command counts
until its reply or the connection drop, which a reply :data:`REPLY_TIMEOUT`
late causes).  The client (txredisapi, on the reactor) reconnects by
itself, with a backoff of at most :data:`RECONNECT_MAX_DELAY` seconds.  An
outage begins at the first failure while the store is up, and ends at the first
decision that succeeds :data:`RECOVERY_TIME` seconds or more after the last
failure; it is logged once when it begins and once when it ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from edgeproxy.core.ratelimit import ALLOWED, Decision
from edgeproxy.ratelimit.store import StoreError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_IN_FLIGHT",
    "RECOVERY_TIME",
    "REPLY_TIMEOUT",
    "SCRIPT",
    "RedisAddress",
    "RedisClient",
    "RedisStore",
    "parse_redis_url",
    "txredis_client",
]

#: Seconds a decision may wait for Redis before the store gives up on it: a
#: round trip on a LAN is well under a millisecond, and a request held
#: longer than this for a rate limit costs more than the limit saves.
DEFAULT_TIMEOUT = 0.1
#: Commands sent to Redis and not answered yet, beyond which a decision
#: fails at once (a hung Redis must not queue up the requests of a busy
#: proxy).  A decision that timed out still counts until its reply comes or
#: the connection drops: its command is still queued, and takes a token if
#: Redis runs it late.
MAX_IN_FLIGHT = 1000
#: Seconds between reconnection attempts, at most.
RECONNECT_MAX_DELAY = 2.0
#: Seconds a reply may take before txredisapi drops the connection (failing
#: every command queued on it) and makes it again.  A small multiple of the
#: decision timeout: every decision waiting on a reply this late has failed
#: already, so dropping loses nothing, and it bounds how long a hung Redis
#: keeps commands queued (at most MAX_IN_FLIGHT of them) that it would run late.
REPLY_TIMEOUT = 5 * DEFAULT_TIMEOUT
#: Seconds without a failed decision after which the first decision that
#: succeeds ends an outage.  Without it a Redis whose latency hovers around the
#: decision timeout would begin and end an outage (two log lines, the ``up``
#: gauge flipping) at every alternation of a success and a timeout; with it an
#: outage lasts at least this long, and failures closer together than this are
#: one outage.
RECOVERY_TIME = 5.0
KEY_PREFIX = "edgeproxy:rl:"

#: KEYS[1] the bucket; ARGV[1] the interval (microseconds a request), ARGV[2]
#: the burst.  Returns {1, 0} (allowed) or {0, microseconds until allowed}.
SCRIPT = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', string.format('%.0f', math.max(1, math.ceil((new_tat - now) / 1000))))
return {1, 0}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


@attrs.frozen
class RedisAddress:
    host: str
    port: int = 6379
    db: int | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        db = f"/{self.db}" if self.db is not None else ""
        return f"redis://{host}:{self.port}{db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]HOST[:PORT][/DB]``; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"expected redis://HOST:PORT[/DB], not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a redis URL takes no query or fragment: {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    path = parts.path.strip("/")
    db = None
    if path:
        if not path.isdigit():
            raise ValueError(f"the database must be a number: {url!r}")
        db = int(path)
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    return RedisAddress(host, port, db, username, password)


class RedisClient(Protocol):
    """What the store needs of a Redis connection (:func:`txredis_client`
    makes the real one; tests give a fake)."""

    @property
    def connected(self) -> bool: ...

    def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]: ...
    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]: ...
    def close(self) -> Deferred[None] | None: ...


class NoScript(Exception):
    """Redis does not have the script (NOSCRIPT): EVAL it."""


class RedisStore:
    """Buckets in Redis, shared by every process that uses it."""

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        client: RedisClient,
        clock: IReactorTime,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.name = str(address)
        self._client = client
        self._clock = clock
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        #: Decisions that failed (each counted once).
        self.errors = 0
        #: False from the first failure of an outage until it ends: at the
        #: first decision that succeeds RECOVERY_TIME after the last failure.
        self.up = True
        self._last_failure = 0.0

    def decide(self, key: str, rate: float, burst: int) -> Deferred[Decision]:
        if not self._client.connected:
            return self._failed("not connected")
        if self.in_flight >= self.max_in_flight:
            return self._failed("too many decisions waiting for redis")
        result: Deferred[Decision] = Deferred()
        self.in_flight += 1
        keys = [KEY_PREFIX + key]
        args = [f"{1_000_000 / rate:.3f}", str(burst)]
        timer = self._clock.callLater(self.timeout, self._timed_out, result)

        def settle(reply: object) -> None:
            self.in_flight -= 1  # answered, failed or dropped: no longer queued
            if timer.active():
                timer.cancel()
            elif result.called:
                return  # timed out already
            if isinstance(reply, Failure):
                result.errback(self._error(reply.getErrorMessage()))
                return
            decision = _decision(reply)
            if decision is None:
                result.errback(self._error(f"unexpected reply {reply!r}"))
                return
            self._succeeded()
            result.callback(decision)

        d: Deferred[Any] = maybeDeferred(self._client.evalsha, SCRIPT_SHA, keys, args)

        def no_script(failure: Failure) -> Deferred[Any]:
            failure.trap(NoScript)
            return self._client.eval(SCRIPT, keys, args)

        d.addErrback(no_script)
        d.addBoth(settle)
        return result

    def _timed_out(self, result: Deferred[Decision]) -> None:
        result.errback(self._error(f"no answer within {self.timeout * 1000:.0f} ms"))

    def _failed(self, cause: str) -> Deferred[Decision]:
        d: Deferred[Decision] = Deferred()
        d.errback(self._error(cause))
        return d

    def _error(self, cause: str) -> StoreError:
        self.errors += 1
        self._last_failure = self._clock.seconds()
        if self.up:
            self.up = False
            self.log.warn(
                "rate limit store {store} failed: {cause}; each route's on_store_error "
                "decides until it answers again",
                store=self.name,
                cause=cause,
            )
        return StoreError(cause)

    def _succeeded(self) -> None:
        if not self.up and self._clock.seconds() - self._last_failure >= RECOVERY_TIME:
            self.up = True
            self.log.info("rate limit store {store} answers again", store=self.name)

    def figures(self) -> dict[str, float]:
        return {"errors": self.errors, "up": 1 if self.up else 0}

    def close(self) -> Deferred[None] | None:
        return self._client.close()


def _decision(reply: object) -> Decision | None:
    if not isinstance(reply, list | tuple) or len(reply) != 2:
        return None
    allowed, wait = reply
    if not isinstance(allowed, int) or not isinstance(wait, int):
        return None
    return ALLOWED if allowed == 1 else Decision(False, wait / 1_000_000)


class _TxRedis:
    """One txredisapi connection that reconnects by itself."""

    log = Logger()

    def __init__(self, reactor: Any, address: RedisAddress) -> None:
        # Imported here: txredisapi imports the global reactor, which only
        # the running service may do (twistd has installed it by then).
        import txredisapi
        from twisted.internet.endpoints import HostnameEndpoint

        self._txredisapi = txredisapi
        factory = txredisapi.RedisFactory(
            str(address),
            address.db,
            1,
            isLazy=True,
            password=address.password,
            username=address.username,
            replyTimeout=REPLY_TIMEOUT,
        )
        factory.initialDelay = 0.2
        factory.maxDelay = RECONNECT_MAX_DELAY
        factory.startConnecting(HostnameEndpoint(reactor, address.host, address.port, timeout=1))
        self._factory = factory
        name = str(address)
        # Fires at the first connection only (reconnections end an outage,
        # which the store logs); a failed password or database is logged by
        # txredisapi, and every decision fails until it is fixed.
        factory.deferred.addCallbacks(
            lambda _: self.log.info("rate limit store {store} connected", store=name),
            lambda failure: self.log.error(
                "rate limit store {store}: {cause}", store=name, cause=failure.getErrorMessage()
            ),
        )

    @property
    def connected(self) -> bool:
        return any(connection.connected for connection in self._factory.pool)

    def _connection(self) -> Any:
        for connection in self._factory.pool:
            if connection.connected:
                return connection
        raise StoreError("not connected")

    def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        d: Deferred[Any] = self._connection().execute_command(
            "EVALSHA", sha, len(keys), *keys, *args
        )

        def no_script(failure: Failure) -> Failure:
            if failure.check(self._txredisapi.ResponseError) and str(failure.value).startswith(
                "NOSCRIPT"
            ):
                return Failure(NoScript())
            return failure

        return d.addErrback(no_script)

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        d: Deferred[Any] = self._connection().execute_command(
            "EVAL", script, len(keys), *keys, *args
        )
        return d

    def close(self) -> Deferred[None]:
        d: Deferred[None] = self._factory.disconnect()
        return d


def txredis_client(reactor: Any, address: RedisAddress) -> RedisClient:
    """The real client: txredisapi on ``reactor``, connecting at once."""
    return _TxRedis(reactor, address)
