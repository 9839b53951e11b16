"""
``--workers``: option parsing, the worker command line, the adopted endpoints,
and the supervision (restart with backoff, signal forwarding, bounded stop) on
a :class:`Clock` and a fake process reactor that implements
:class:`IReactorProcess` / :class:`IProcessTransport`.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from edgeproxy.app import workers
from edgeproxy.app.tap import Options, makeService
from edgeproxy.app.workers import (
    RestartPolicy,
    SharedListener,
    WorkerCommand,
    WorkerPool,
    WorkerSupervisor,
    describe_exit,
    parse_worker_args,
    worker_command,
    worker_endpoints,
)
from edgeproxy.config.settings import Settings
from edgeproxy.tls.certificates import CertificateIndex, SNIConnectionCreator
from edgeproxy.tls.devcert import ensure_dev_certificate
from edgeproxy.tls.server import TLSServerEndpoint, TLSServerFactory

POLICY = RestartPolicy(initial_delay=0.5, max_delay=4.0, stable_after=10.0, stop_timeout=5.0)


# --- a process reactor that is a real (in-memory) implementation -------------------


@implementer(IProcessTransport)
class FakeProcess:
    def __init__(self, protocol: ProcessProtocol, pid: int, command: WorkerCommand) -> None:
        self.protocol = protocol
        self.pid: int | None = pid
        self.command = command
        self.signals: list[str] = []
        self.ended = False
        protocol.makeConnection(self)

    def signalProcess(self, signalID: str | int) -> None:
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(str(signalID))

    def exit(self, code: int = 0, sig: int | None = None) -> None:
        """The process ends, as the reactor reports it."""
        self.ended = True
        self.pid = None  # as Twisted's Process does
        if code == 0 and sig is None:
            reason = Failure(error.ProcessDone(0))
        else:
            reason = Failure(error.ProcessTerminated(code if sig is None else None, sig))
        self.protocol.processEnded(reason)

    # The rest of IProcessTransport: nothing to do for a fake.
    def closeStdin(self) -> None: ...
    def closeStdout(self) -> None: ...
    def closeStderr(self) -> None: ...
    def closeChildFD(self, descriptor: int) -> None: ...
    def writeToChild(self, childFD: int, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def writeSequence(self, data: Any) -> None: ...
    def getPeer(self) -> Any: ...
    def getHost(self) -> Any: ...


@implementer(IReactorProcess)
class FakeProcessReactor:
    def __init__(self) -> None:
        self.spawned: list[FakeProcess] = []
        self.fail_next = False
        self._next_pid = 1000

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Any = (),
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> FakeProcess:
        if self.fail_next:
            self.fail_next = False
            raise OSError("exec failed")
        self._next_pid += 1
        command = WorkerCommand(executable, tuple(args), dict(env or {}), path, dict(childFDs or {}))
        process = FakeProcess(processProtocol, self._next_pid, command)
        self.spawned.append(process)
        return process


LISTENERS = [
    SharedListener("https", "tcp:8443", 7),
    SharedListener("https", "haproxy:tcp:9443", 8),
    SharedListener("http", "tcp:8080", 9),
    SharedListener("admin", "tcp:9901:interface=127.0.0.1", 10),
]
ARGV = ["--config", "sites", "--workers", "2"]


class Harness:
    def __init__(self, count: int = 2, policy: RestartPolicy = POLICY) -> None:
        self.clock = Clock()
        self.processes = FakeProcessReactor()
        self.pool = WorkerPool(
            count,
            self.processes,
            lambda index: worker_command(index, ARGV, LISTENERS, {"A": "1"}, "/srv", "python3"),
            self.clock,
            policy,
        )

    def live(self) -> list[FakeProcess]:
        return [p for p in self.processes.spawned if not p.ended]

    def of(self, index: int) -> FakeProcess:
        """The latest process of worker ``index``."""
        return [p for p in self.processes.spawned if p.command.args[4] == str(index)][-1]


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.pool.stop()
    for process in h.live():
        process.exit(0)


# --- options --------------------------------------------------------------------------


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_workers_default_is_one_process() -> None:
    options = parse()
    assert options["settings"].workers == 1
    assert Settings().workers == 1


def test_workers_count_and_auto() -> None:
    assert parse("--workers", "3")["settings"].workers == 3
    assert parse("--workers=auto")["settings"].workers == max(1, os.cpu_count() or 1)


@pytest.mark.parametrize("value", ["0", "-1", "many", "257", ""])
def test_workers_rejects_nonsense(value: str) -> None:
    with pytest.raises(usage.UsageError):
        parse("--workers", value)


def test_options_keep_argv_for_workers() -> None:
    options = parse("--config", "x.py", "--workers", "2", "--https", "haproxy:tcp:0")
    assert options.argv == ["--config", "x.py", "--workers", "2", "--https", "haproxy:tcp:0"]


def write_site(tmp_path: Path, text: str) -> tuple[Path, Path]:
    config = tmp_path / "site.py"
    config.write_text(text)
    certs = tmp_path / "certs"
    certs.mkdir()
    ensure_dev_certificate(str(certs))
    return config, certs


GOOD_SITE = """
from edgeproxy.config import Cluster, Route, VirtualHost
app = Cluster("app", endpoints=["127.0.0.1:9"])
virtual_hosts = [VirtualHost(["a.example"], routes=[Route("/", app)])]
"""


def test_broken_config_fails_before_any_fork(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, certs = write_site(tmp_path, "virtual_hosts = [1]\n")
    options = parse("--config", str(config), "--certs", str(certs), "--workers", "2")
    with pytest.raises(SystemExit) as raised:
        makeService(options)
    assert raised.value.code == 1
    assert "edgeproxy: 1 error, 0 warnings" in capsys.readouterr().err


def test_good_config_makes_a_supervisor(tmp_path: Path) -> None:
    config, certs = write_site(tmp_path, GOOD_SITE)
    options = parse("--config", str(config), "--certs", str(certs), "--workers", "2")
    service = makeService(options)
    assert isinstance(service, WorkerSupervisor)
    assert service.settings.workers == 2


# --- the worker command line ------------------------------------------------------------


def test_worker_zero_gets_every_socket_including_admin() -> None:
    command = worker_command(0, ARGV, LISTENERS, {"A": "1"}, "/srv", "python3")
    assert command.executable == "python3"
    assert command.args == (
        "python3", "-m", "edgeproxy.app.workers", "--index", "0",
        "--fd", "https=3", "--fd", "https=4", "--fd", "http=5", "--fd", "admin=6",
        "--", *ARGV,
    )
    assert command.child_fds == {0: "w", 1: 1, 2: 2, 3: 7, 4: 8, 5: 9, 6: 10}
    assert command.path == "/srv"
    assert command.env == {"A": "1"}


def test_other_workers_get_no_admin_socket() -> None:
    command = worker_command(1, ARGV, LISTENERS, {}, None, "python3")
    assert "admin=6" not in " ".join(command.args)
    assert command.child_fds == {0: "w", 1: 1, 2: 2, 3: 7, 4: 8, 5: 9}


def test_worker_args_round_trip() -> None:
    command = worker_command(1, ARGV, LISTENERS, {}, None, "python3")
    index, fds, rest = parse_worker_args(command.args[3:])
    assert index == 1
    assert fds == {"https": [3, 4], "http": [5]}
    assert rest == ARGV


def test_worker_args_reject_unknown_kinds() -> None:
    with pytest.raises(SystemExit):
        parse_worker_args(["--index", "0", "--fd", "ftp=3", "--"])


# --- adopted endpoints --------------------------------------------------------------------


@pytest.fixture
def listening_fds() -> Iterator[list[int]]:
    sockets = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        sockets.append(s)
    yield [s.detach() for s in sockets]


def test_worker_endpoints_adopt_and_keep_the_haproxy_wrapper(listening_fds: list[int]) -> None:
    import errno

    reactor = MemoryReactor()
    settings = Settings(https=("tcp:8443", "haproxy:tcp:9443"), http=(), admin=None)
    endpoints = worker_endpoints(reactor, settings, {"https": listening_fds})
    creator = SNIConnectionCreator(CertificateIndex.empty)
    factory = Factory.forProtocol(Protocol)
    for description in settings.https:
        # As the service does it.
        TLSServerEndpoint(creator, endpoints("https", description)).listen(factory)
    (fd1, family1, plain), (fd2, family2, proxied) = reactor.adoptedPorts
    assert family1 == family2 == socket.AF_INET
    # Plain: TLS straight on the socket.
    assert isinstance(plain, TLSServerFactory)
    assert plain.wrapped is factory
    # haproxy: the PROXY header comes first, then TLS.
    assert isinstance(proxied, HAProxyWrappingFactory)
    assert isinstance(proxied.wrappedFactory, TLSServerFactory)
    assert proxied.wrappedFactory.wrapped is factory
    # Our descriptors were closed once adopted (the reactor keeps its own dup).
    for fd in listening_fds:
        with pytest.raises(OSError) as closed:
            os.fstat(fd)
        assert closed.value.errno == errno.EBADF


def test_worker_endpoints_refuse_a_socket_count_mismatch(listening_fds: list[int]) -> None:
    settings = Settings(https=("tcp:8443",), http=(), admin=None)
    with pytest.raises(SystemExit, match="2 https socket"):
        worker_endpoints(MemoryReactor(), settings, {"https": listening_fds})
    for fd in listening_fds:
        os.close(fd)


# --- supervision ---------------------------------------------------------------------------


def test_restart_delay_doubles_and_is_capped() -> None:
    assert [POLICY.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert RestartPolicy().delay(1000) == RestartPolicy().max_delay


def test_describe_exit() -> None:
    assert describe_exit(Failure(error.ProcessDone(0))) == "exit code 0"
    assert describe_exit(Failure(error.ProcessTerminated(3))) == "exit code 3"
    assert describe_exit(Failure(error.ProcessTerminated(None, 9))) == "killed by SIGKILL"


def test_start_spawns_every_worker(harness: Harness) -> None:
    harness.pool.start()
    assert [p.command.args[4] for p in harness.processes.spawned] == ["0", "1"]
    assert harness.pool.pids() == [1001, 1002]
    assert harness.of(0).command.child_fds[6] == 10  # admin
    assert 6 not in harness.of(1).command.child_fds


def test_a_dead_worker_is_restarted_after_the_backoff(harness: Harness) -> None:
    harness.pool.start()
    harness.clock.advance(3)
    with capturedLogs() as events:
        harness.of(1).exit(sig=signal.SIGKILL)
    assert harness.pool.pids() == [1001]
    assert len(harness.processes.spawned) == 2
    [event] = [e for e in events if "restarting" in e["log_format"]]
    assert event["index"] == 1
    assert event["pid"] == 1002
    assert event["reason"] == "killed by SIGKILL"
    assert event["delay"] == 0.5
    harness.clock.advance(0.49)
    assert len(harness.processes.spawned) == 2
    harness.clock.advance(0.01)
    assert len(harness.processes.spawned) == 3
    assert harness.pool.pids() == [1001, 1003]
    assert harness.pool.slots[1].restarts == 1


def test_backoff_grows_for_young_deaths_and_resets_after_a_stable_run(harness: Harness) -> None:
    harness.pool.start()
    delays = []
    for _ in range(5):
        harness.clock.advance(1)  # dies young
        with capturedLogs() as events:
            harness.of(0).exit(1)
        delays.append(next(e["delay"] for e in events if "delay" in e))
        harness.clock.advance(delays[-1])
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    harness.clock.advance(POLICY.stable_after)  # this one lived long enough
    with capturedLogs() as events:
        harness.of(0).exit(1)
    assert next(e["delay"] for e in events if "delay" in e) == 0.5
    # The other worker was never touched.
    assert harness.of(1).pid == 1002


def test_a_worker_that_cannot_be_spawned_is_retried(harness: Harness) -> None:
    harness.processes.fail_next = True
    with capturedLogs() as events:
        harness.pool.start()
    assert any("cannot start" in e["log_format"] for e in events)
    assert harness.pool.pids() == [1001]  # worker 1 is up; worker 0 waits
    harness.clock.advance(0.5)
    assert sorted(harness.pool.pids()) == [1001, 1002]


def test_sighup_is_forwarded_to_running_workers_only(harness: Harness) -> None:
    harness.pool.start()
    harness.of(1).exit(1)
    harness.pool.signal_all("HUP")
    assert harness.of(0).signals == ["HUP"]
    assert harness.of(1).signals == []


def test_stop_sends_sigterm_and_waits_for_the_exit(harness: Harness) -> None:
    harness.pool.start()
    done = harness.pool.stop()
    assert [p.signals for p in harness.live()] == [["TERM"], ["TERM"]]
    assert not done.called
    harness.of(0).exit(0)
    assert not done.called
    harness.of(1).exit(0)
    assert done.called
    # Nothing is restarted and no timer is left.
    harness.clock.advance(100)
    assert len(harness.processes.spawned) == 2
    assert harness.clock.getDelayedCalls() == []


def test_stop_kills_a_worker_that_ignores_sigterm(harness: Harness) -> None:
    harness.pool.start()
    done = harness.pool.stop()
    harness.of(0).exit(0)
    harness.clock.advance(POLICY.stop_timeout - 0.1)
    assert harness.of(1).signals == ["TERM"]
    with capturedLogs() as events:
        harness.clock.advance(0.1)
    assert harness.of(1).signals == ["TERM", "KILL"]
    assert any("SIGKILL" in e["log_format"] for e in events)
    assert not done.called
    harness.of(1).exit(sig=signal.SIGKILL)
    assert done.called


def test_stop_during_the_backoff_cancels_the_restart(harness: Harness) -> None:
    harness.pool.start()
    harness.of(0).exit(1)
    done = harness.pool.stop()
    harness.of(1).exit(0)
    assert done.called
    harness.clock.advance(100)
    assert len(harness.processes.spawned) == 2


def test_stop_twice_and_signals_after_stop_are_harmless(harness: Harness) -> None:
    harness.pool.start()
    first, second = harness.pool.stop(), harness.pool.stop()
    for process in harness.live():
        process.exit(0)
    assert first.called and second.called
    assert harness.pool.stop().called
    harness.pool.signal_all("HUP")
    harness.pool.start()
    assert len(harness.processes.spawned) == 2


def test_a_signal_racing_the_exit_is_ignored(harness: Harness) -> None:
    harness.pool.start()
    harness.of(0).ended = True  # exited, but the reactor has not reported it yet
    harness.pool.signal_all("HUP")
    assert harness.of(1).signals == ["HUP"]


def test_worker_log_lines_carry_index_and_pid() -> None:
    from twisted.logger import LogLevel

    line = workers.worker_log_formatter("worker=1 pid=42")(
        {
            "log_format": "hello {who}",
            "who": "there",
            "log_namespace": "edgeproxy.access",
            "log_level": LogLevel.info,
            "log_time": 0.0,
        }
    )
    assert line is not None
    assert "[edgeproxy.access#info worker=1 pid=42] hello there" in line


def test_the_slot_machine_diagram_names_every_state() -> None:
    pytest.importorskip("graphviz")
    dot = workers.diagram()
    for state in ("idle", "running", "waiting", "stopping", "stopped"):
        assert state in dot

