"""
Reloading the configuration: :class:`BackgroundLoader` runs the user's
Python off the event loop, with a time limit, one load at a time; and
``--watch-config`` (:class:`ConfigWatcher`) notices that the configuration
files changed (added, removed, edited) by polling their ``stat`` and asks for
a reload.  The reload validates the new configuration and keeps the old one
if it is broken.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from edgeproxy.config.load import LoadedConfig, config_files
from edgeproxy.core.errors import ConfigError

__all__ = [
    "BackgroundLoader",
    "ConfigWatcher",
    "RunOffLoop",
    "config_fingerprint",
    "in_daemon_thread",
]

Fingerprint = tuple[tuple[str, int, int, int], ...]


def config_fingerprint(path: str) -> Fingerprint:
    """What changes when a config file is added, removed or written."""
    try:
        files = config_files(path)
    except Exception:
        # The directory vanished or cannot be listed: the reload reports why.
        return ()
    result = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            continue
        result.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)


class ConfigWatcher(Service):
    """Calls ``on_change`` when the configuration's files change."""

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        on_change: Callable[[], object],
        interval: float = 2.0,
    ) -> None:
        self._path = path
        self._on_change = on_change
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock
        self._interval = interval
        self._seen: Fingerprint = ()

    def startService(self) -> None:
        super().startService()
        self._seen = config_fingerprint(self._path)
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _poll(self) -> None:
        now = config_fingerprint(self._path)
        if now != self._seen:
            self._seen = now
            self.log.info("configuration files changed: reloading")
            self._on_change()


#: ``run(f)``: call ``f`` off the event loop; the Deferred fires on the reactor
#: thread with its result or its failure.
RunOffLoop = Callable[[Callable[[], LoadedConfig]], "Deferred[LoadedConfig]"]


def in_daemon_thread(reactor: IReactorFromThreads) -> RunOffLoop:
    """Run each call in a new daemon thread and deliver its outcome through
    ``reactor.callFromThread``.

    Not the reactor's thread pool: the pool joins its threads at shutdown, so
    a configuration whose import never ends would hang the process on
    SIGTERM; a daemon thread is left behind instead.
    """

    def run(load: Callable[[], LoadedConfig]) -> Deferred[LoadedConfig]:
        d: Deferred[LoadedConfig] = Deferred()

        def work() -> None:
            try:
                config = load()
            except BaseException:
                reactor.callFromThread(d.errback, Failure())
            else:
                reactor.callFromThread(d.callback, config)

        threading.Thread(target=work, name="edgeproxy-config-load", daemon=True).start()
        return d

    return run


@attrs.define(eq=False)
class _Load:
    started: float
    #: The reload requests this load answers.
    waiters: list[Deferred[bool]]
    timer: IDelayedCall | None = None
    #: Accepted or rejected already (a load past the limit is rejected when
    #: the limit passes; what it returns later is ignored).
    decided: bool = False


class BackgroundLoader:
    """Loads the configuration off the event loop, one load at a time, and
    hands the outcome to the reactor thread.

    The user's Python can take any time to run (it may read files, sleep, or
    compute); the event loop keeps serving meanwhile.  A load still running
    ``timeout`` seconds after it started is rejected (``on_rejected``) and the
    running configuration stays; its thread cannot be stopped, so what it
    returns later is ignored.  A request while a load runs (a SIGHUP, a file
    change) is not a second concurrent load: the requests are coalesced into
    one more load, started when the running one ends, so the newest files are
    always loaded.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        load: Callable[[str], LoadedConfig],
        clock: IReactorTime,
        run: RunOffLoop,
        timeout: float,
        on_loaded: Callable[[LoadedConfig, float], bool],
        on_rejected: Callable[[Sequence[str], float], object],
    ) -> None:
        self._path = path
        self._load = load
        self._clock = clock
        self._run = run
        self.timeout = timeout
        self._on_loaded = on_loaded
        self._on_rejected = on_rejected
        self._running: _Load | None = None
        self._next: list[Deferred[bool]] = []
        self._closed = False

    @property
    def busy(self) -> bool:
        """A load is running (possibly one already rejected for its time)."""
        return self._running is not None

    def request(self) -> Deferred[bool]:
        """Load the configuration; the Deferred fires with whether the load
        that answers this request was taken in."""
        d: Deferred[bool] = Deferred()
        if self._closed:
            d.callback(False)
        elif self._running is None:
            self._start([d])
        else:
            if not self._next:
                self.log.info(
                    "reload requested while a configuration load is running "
                    "(for {elapsed:.1f} s): loading again when it ends",
                    elapsed=self._clock.seconds() - self._running.started,
                )
            self._next.append(d)
        return d

    def close(self) -> None:
        """Stop: nothing more is loaded or taken in; waiting requests get False."""
        self._closed = True
        running, self._running = self._running, None
        waiters, self._next = self._next, []
        if running is not None:
            if running.timer is not None and running.timer.active():
                running.timer.cancel()
            if not running.decided:
                running.decided = True
                waiters = running.waiters + waiters
        for d in waiters:
            d.callback(False)

    def _start(self, waiters: list[Deferred[bool]]) -> None:
        load = _Load(self._clock.seconds(), waiters)
        self._running = load
        load.timer = self._clock.callLater(self.timeout, self._timed_out, load)
        self.log.info("loading the configuration from {path}", path=self._path)
        # A thread that cannot start ("can't start new thread") is a failed
        # load like any other, not a loader stuck busy for good.
        maybeDeferred(self._run, lambda: self._load(self._path)).addBoth(self._ended, load)

    def _timed_out(self, load: _Load) -> None:
        load.decided = True
        problem = (
            f"{self._path}: loading the configuration took longer than {self.timeout:g} s "
            "(--reload-timeout); the running configuration stays"
        )
        self._on_rejected([problem], load.started)
        for d in load.waiters:
            d.callback(False)

    def _ended(self, outcome: LoadedConfig | Failure, load: _Load) -> None:
        if self._running is not load:  # closed meanwhile
            return
        self._running = None
        elapsed = self._clock.seconds() - load.started
        if load.timer is not None and load.timer.active():
            load.timer.cancel()
        if load.decided:
            self.log.warn(
                "the configuration load rejected for taking too long ended after "
                "{elapsed:.1f} s; what it loaded was ignored",
                elapsed=elapsed,
            )
        else:
            load.decided = True
            accepted = False
            if isinstance(outcome, Failure):
                error = outcome.value
                if isinstance(error, ConfigError):
                    problems = [str(p) for p in error.problems]
                else:
                    self.log.failure("while loading the configuration", outcome)
                    problems = [f"{self._path}: loading failed: {outcome.getErrorMessage()}"]
                self._on_rejected(problems, load.started)
            else:
                try:
                    accepted = self._on_loaded(outcome, load.started)
                except Exception:
                    # The next request must still be served: nothing may stay stuck here.
                    self.log.failure("while installing the new configuration")
            for d in load.waiters:
                d.callback(accepted)
        if self._next and not self._closed:
            waiters, self._next = self._next, []
            self._start(waiters)
