"""Tests for edgeproxy.config.watch: loading off the event loop with a time
limit, one load at a time, and the --watch-config poller."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from edgeproxy.config.load import LoadedConfig, load_config
from edgeproxy.config.watch import BackgroundLoader, ConfigWatcher, in_daemon_thread
from edgeproxy.core.errors import ConfigError, ConfigProblem

SITE = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["127.0.0.1:9"])
virtual_hosts = [VirtualHost(["{name}"], routes=[Route("/", app)])]
"""


class ManualRun:
    """Stands in for a thread: each load waits here until the test ends it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], LoadedConfig], Deferred[LoadedConfig]]] = []

    def __call__(self, load: Callable[[], LoadedConfig]) -> Deferred[LoadedConfig]:
        d: Deferred[LoadedConfig] = Deferred()
        self.calls.append((load, d))
        return d

    def finish(self, index: int = -1) -> None:
        """Run the load now (as its thread would) and deliver its outcome."""
        load, d = self.calls[index]
        try:
            config = load()
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(config)


class Harness:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.clock = Clock()
        self.run = ManualRun()
        self.loaded: list[tuple[LoadedConfig, float]] = []
        self.rejected: list[tuple[list[str], float]] = []
        self.loader = BackgroundLoader(
            str(path),
            load_config,
            self.clock,
            self.run,
            timeout,
            self.on_loaded,
            self.on_rejected,
        )

    def on_loaded(self, config: LoadedConfig, at: float) -> bool:
        self.loaded.append((config, at))
        return True

    def on_rejected(self, problems: Sequence[str], at: float) -> None:
        self.rejected.append((list(problems), at))

    def write(self, name: str) -> None:
        self.path.write_text(SITE.format(name=name))


def results(d: Deferred[bool]) -> list[bool]:
    out: list[bool] = []
    d.addCallback(out.append)
    return out


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path / "site.py")
    harness.write("a.example")
    return harness


def names(config: LoadedConfig) -> list[str]:
    return [name for vhost in config.virtual_hosts for name in vhost.names]


def test_a_load_is_taken_in_when_its_thread_ends(h: Harness) -> None:
    h.clock.advance(100)
    outcome = results(h.loader.request())
    assert len(h.run.calls) == 1 and h.loader.busy
    assert outcome == [] and h.loaded == []  # nothing happens on the loop meanwhile
    h.clock.advance(5)
    h.run.finish()
    assert [(names(c), at) for c, at in h.loaded] == [(["a.example"], 100)]
    assert outcome == [True] and not h.loader.busy
    assert h.clock.getDelayedCalls() == []  # the limit's timer is gone


def test_a_broken_configuration_is_rejected_with_every_problem(h: Harness) -> None:
    h.path.write_text("virtual_hosts = [1, 2]\n")
    outcome = results(h.loader.request())
    h.run.finish()
    assert outcome == [False] and h.loaded == []
    [(problems, _)] = h.rejected
    assert problems == [
        f"{h.path}: virtual_hosts[0] is not a VirtualHost: 1",
        f"{h.path}: virtual_hosts[1] is not a VirtualHost: 2",
    ]


def test_a_load_past_the_limit_is_rejected_and_its_late_result_ignored(tmp_path: Path) -> None:
    h = Harness(tmp_path / "site.py", timeout=2.0)
    h.write("a.example")
    outcome = results(h.loader.request())
    h.clock.advance(1.9)
    assert h.rejected == []
    with capturedLogs() as events:
        h.clock.advance(0.1)
        assert outcome == [False]
        [(problems, at)] = h.rejected
        assert at == 0
        assert problems == [
            f"{h.path}: loading the configuration took longer than 2 s (--reload-timeout); "
            "the running configuration stays"
        ]
        assert h.loader.busy  # the thread cannot be stopped
        h.clock.advance(5)
        h.run.finish()
    assert h.loaded == [] and len(h.rejected) == 1 and not h.loader.busy
    [late] = [e for e in events if e["log_level"] == LogLevel.warn]
    assert late["elapsed"] == 7.0  # from its start


def test_requests_during_a_load_are_coalesced_into_one_more_load(h: Harness) -> None:
    first = results(h.loader.request())
    h.write("b.example")  # written after the first load read the files
    second = results(h.loader.request())
    third = results(h.loader.request())
    assert len(h.run.calls) == 1  # never two loads at once
    h.run.finish(0)
    assert first == [True] and second == third == []
    assert len(h.run.calls) == 2  # one more load for both requests
    h.run.finish(1)
    assert second == third == [True]
    assert [names(c) for c, _ in h.loaded] == [["b.example"], ["b.example"]]
    assert len(h.run.calls) == 2


def test_a_request_after_a_timed_out_load_waits_for_its_thread(tmp_path: Path) -> None:
    h = Harness(tmp_path / "site.py", timeout=1.0)
    h.write("a.example")
    h.loader.request()
    h.clock.advance(1)
    assert len(h.rejected) == 1
    later = results(h.loader.request())
    assert len(h.run.calls) == 1  # not while the stuck thread still runs
    h.run.finish(0)
    assert len(h.run.calls) == 2
    h.run.finish(1)
    assert later == [True] and len(h.loaded) == 1


def test_an_unexpected_exception_is_a_rejection_not_a_stuck_loader(h: Harness) -> None:
    def explode(path: str) -> LoadedConfig:
        raise RuntimeError("bug")

    h.loader._load = explode
    with capturedLogs() as events:
        outcome = results(h.loader.request())
        h.run.finish()
    assert outcome == [False]
    assert h.rejected[0][0] == [f"{h.path}: loading failed: bug"]
    assert [e for e in events if e.get("log_failure") is not None]
    assert not h.loader.busy


def test_a_thread_that_cannot_start_is_a_rejection_not_a_stuck_loader(h: Harness) -> None:
    manual = h.run

    def no_thread(load: Callable[[], LoadedConfig]) -> Deferred[LoadedConfig]:
        raise RuntimeError("can't start new thread")

    h.loader._run = no_thread
    with capturedLogs():
        outcome = results(h.loader.request())
    assert outcome == [False]
    assert h.rejected[0][0] == [f"{h.path}: loading failed: can't start new thread"]
    assert not h.loader.busy
    assert h.clock.getDelayedCalls() == []
    # The next reload runs as usual.
    h.loader._run = manual
    again = results(h.loader.request())
    manual.finish()
    assert again == [True]


def test_close_answers_waiting_requests_and_ignores_the_running_load(h: Harness) -> None:
    running = results(h.loader.request())
    waiting = results(h.loader.request())
    h.loader.close()
    assert running == [False] and waiting == [False]
    assert h.clock.getDelayedCalls() == []
    h.run.finish(0)
    assert h.loaded == [] and len(h.run.calls) == 1
    assert results(h.loader.request()) == [False]


class ThreadReactor:
    """Just what in_daemon_thread needs: calls from threads, queued for the test."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.arrived = threading.Event()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.queued.append((f, args))
        self.arrived.set()


def test_in_daemon_thread_runs_off_the_calling_thread(tmp_path: Path) -> None:
    reactor = ThreadReactor()
    run = in_daemon_thread(cast(Any, reactor))
    seen: list[threading.Thread] = []

    def load() -> LoadedConfig:
        seen.append(threading.current_thread())
        raise ConfigError([ConfigProblem("x.py", "broken")])

    d = run(load)
    assert reactor.arrived.wait(10)
    [thread] = seen
    assert thread is not threading.current_thread() and thread.daemon
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures == []  # delivered only on the reactor thread
    f, args = reactor.queued[0]
    f(*args)
    assert failures[0].check(ConfigError)


def test_watcher_asks_for_a_reload_when_a_file_changes(tmp_path: Path) -> None:
    site = tmp_path / "site.py"
    site.write_text(SITE.format(name="a.example"))
    clock = Clock()
    changes: list[None] = []
    watcher = ConfigWatcher(str(site), clock, lambda: changes.append(None))
    watcher.startService()
    clock.advance(2)
    assert changes == []
    site.write_text(SITE.format(name="bb.example"))
    clock.advance(2)
    assert changes == [None]
    watcher.stopService()
