"""
``--workers N``: one supervisor process and N worker processes sharing the
listening sockets (docs/scaling.md).

The **supervisor** is what ``twistd -n edgeproxy --workers N`` runs.  It
validates the configuration and certificates as ``--check`` does (so a broken
config fails before anything is bound or forked), binds every listener in
``privilegedStartService`` (and logs ``edgeproxy {kind} listener on
HOST:PORT``, as the single process does), never accepts on them, and spawns N
workers with ``reactor.spawnProcess(..., childFDs=...)``: fd 0 is a pipe from
the supervisor, fds 1 and 2 are the supervisor's stdout and stderr, and the
listening sockets follow from fd 3.  It imports nothing of the proxy itself.

A **worker** is ``python -m edgeproxy.app.workers --index I --fd KIND=FD ... --
<the edgeproxy options as given>``: it parses the same options into the same
:class:`~edgeproxy.config.settings.Settings`, builds the whole proxy with
:func:`edgeproxy.app.service.make_service` (its own certificate watcher, health
checkers, pool, breakers, limits and counters) and hands it endpoints that
adopt the inherited sockets (``reactor.adoptStreamPort``), wrapped in
``haproxy:`` (PROXY protocol) where the description says so; the service wraps
the https ones in TLS exactly as it does for ``serverFromString`` endpoints.
Only worker 0 gets the admin socket.  A worker stops when the supervisor's
pipe on its fd 0 closes, so it never outlives a supervisor killed by SIGKILL.

Each worker slot's lifecycle (idle, running, waiting to restart, stopping,
stopped) is an Automat machine: a worker that dies is restarted after a
backoff that doubles for every worker that died young and resets once one
lived :attr:`RestartPolicy.stable_after` seconds.  SIGHUP is forwarded to the
workers; SIGTERM and SIGINT stop the supervisor, which sends SIGTERM to every
worker, waits at most :attr:`RestartPolicy.stop_timeout` seconds, then sends
SIGKILL.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import attrs
from automat import TypeMachine, TypeMachineBuilder, pep614
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from zope.interface import implementer

from edgeproxy.config.settings import Settings

__all__ = [
    "AdoptedEndpoint",
    "RestartPolicy",
    "SharedListener",
    "WorkerCommand",
    "WorkerPool",
    "WorkerSupervisor",
    "describe_exit",
    "main",
    "make_supervisor",
    "worker_command",
]

#: The first inherited listening socket's fd in a worker.
FIRST_LISTENER_FD = 3
HAPROXY_PREFIX = "haproxy:"


@attrs.frozen
class RestartPolicy:
    """How the supervisor restarts workers and how long it waits for them to stop."""

    #: Delay before restarting a worker that died young the first time, seconds.
    initial_delay: float = 0.5
    #: The delay doubles for every further young death, up to this.
    max_delay: float = 30.0
    #: A worker that lived this long resets the backoff when it dies.
    stable_after: float = 10.0
    #: After SIGTERM, SIGKILL whatever is still running after this many seconds.
    stop_timeout: float = 5.0

    def delay(self, young_deaths: int) -> float:
        """The restart delay after ``young_deaths`` young deaths in a row before this one."""
        return min(self.max_delay, self.initial_delay * float(2 ** min(young_deaths, 32)))


def describe_exit(reason: Failure) -> str:
    """``exit code 1`` / ``killed by SIGKILL`` from a ``processEnded`` reason."""
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    code = getattr(value, "exitCode", None)
    return f"exit code {code}" if code is not None else str(value)


# -- one worker slot: the machine -----------------------------------------------


class _SlotInputs(Protocol):
    def start(self) -> None:
        "Start the worker (once, from idle)."

    def exited(self, reason: str) -> None:
        "The worker process ended."

    def restart_due(self) -> None:
        "The restart timer fired."

    def stop(self) -> Deferred[None]:
        "Stop for good: SIGTERM, then SIGKILL after the timeout; fires once it has exited."

    def kill_due(self) -> None:
        "The stop timeout passed."

    def signal(self, name: str) -> None:
        "Forward a signal (``HUP``) to the running worker; a no-op otherwise."

    def pid(self) -> int | None:
        "The running worker's pid."


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit

    def processEnded(self, reason: Failure) -> None:
        self._on_exit(describe_exit(reason))


@dataclass
class _SlotCore:
    index: int
    spawn: Callable[[ProcessProtocol], IProcessTransport]
    clock: IReactorTime
    policy: RestartPolicy
    #: The machine's exited / restart_due / kill_due inputs, routed through the slot.
    on_exit: Callable[[str], None]
    on_restart_due: Callable[[], None]
    on_kill_due: Callable[[], None]
    process: IProcessTransport | None = None
    #: The running worker's pid (kept: Twisted clears ``process.pid`` when it ends).
    pid: int | None = None
    started_at: float = 0.0
    young_deaths: int = 0
    restarts: int = 0
    #: stop() callers waiting for the worker to exit.
    stop_waiters: list[Deferred[None]] = field(default_factory=list)
    log: Logger = field(default_factory=Logger)

    def wait_stopped(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.stop_waiters.append(d)
        return d

    def spawn_worker(self, machine: _SlotInputs) -> None:
        self.started_at = self.clock.seconds()
        self.process = self.pid = None
        try:
            self.process = self.spawn(_WorkerProtocol(self.on_exit))
        except Exception:
            self.log.failure("edgeproxy worker {index}: cannot start", index=self.index)
            machine.exited("could not be started")  # postponed: runs after this transition
            return
        self.pid = self.process.pid
        self.log.info(
            "edgeproxy worker {index} started (pid {pid})", index=self.index, pid=self.pid
        )

    def send(self, name: str) -> None:
        if self.process is None:
            return
        try:
            self.process.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


@dataclass
class _Waiting:
    """State data of ``waiting``: the restart timer."""

    delay: float
    timer: IDelayedCall

    def cancel(self) -> None:
        if self.timer.active():
            self.timer.cancel()


@dataclass
class _Stopping:
    """State data of ``stopping``: the SIGKILL timer."""

    timer: IDelayedCall

    def cancel(self) -> None:
        if self.timer.active():
            self.timer.cancel()


def _schedule_restart(machine: _SlotInputs, core: _SlotCore, reason: str) -> _Waiting:
    lived = core.clock.seconds() - core.started_at
    if lived >= core.policy.stable_after:
        core.young_deaths = 0
    delay = core.policy.delay(core.young_deaths)
    core.young_deaths += 1
    core.log.warn(
        "edgeproxy worker {index} (pid {pid}) {reason} after {lived:.1f}s; "
        "restarting in {delay:.1f}s",
        index=core.index,
        pid=core.pid,
        reason=reason,
        lived=lived,
        delay=delay,
    )
    core.process = core.pid = None
    return _Waiting(delay, core.clock.callLater(delay, core.on_restart_due))


def _begin_stop(machine: _SlotInputs, core: _SlotCore) -> _Stopping:
    core.send("TERM")
    return _Stopping(core.clock.callLater(core.policy.stop_timeout, core.on_kill_due))


def _build_slot_machine() -> TypeMachine[_SlotInputs, _SlotCore]:
    builder = TypeMachineBuilder(_SlotInputs, _SlotCore)
    idle = builder.state("idle")
    running = builder.state("running")
    waiting = builder.state("waiting", _schedule_restart)
    stopping = builder.state("stopping", _begin_stop)
    stopped = builder.state("stopped")

    I = _SlotInputs  # noqa: E741

    # idle: nothing spawned yet.
    idle.upon(I.exited).loop().returns(None)
    idle.upon(I.restart_due).loop().returns(None)
    idle.upon(I.kill_due).loop().returns(None)
    idle.upon(I.signal).loop().returns(None)
    idle.upon(I.pid).loop().returns(None)

    @pep614(idle.upon(I.start).to(running))
    def first_start(machine: _SlotInputs, core: _SlotCore) -> None:
        core.spawn_worker(machine)

    @pep614(idle.upon(I.stop).to(stopped))
    def stop_idle(machine: _SlotInputs, core: _SlotCore) -> Deferred[None]:
        return succeed(None)

    # running: one live process in core.process.
    running.upon(I.start).loop().returns(None)
    running.upon(I.restart_due).loop().returns(None)
    running.upon(I.kill_due).loop().returns(None)
    running.upon(I.exited).to(waiting).returns(None)  # _schedule_restart logs and arms the timer

    @pep614(running.upon(I.signal).loop())
    def forward(machine: _SlotInputs, core: _SlotCore, name: str) -> None:
        core.send(name)

    @pep614(running.upon(I.pid).loop())
    def running_pid(machine: _SlotInputs, core: _SlotCore) -> int | None:
        return core.pid

    @pep614(running.upon(I.stop).to(stopping))
    def stop_running(machine: _SlotInputs, core: _SlotCore) -> Deferred[None]:
        return core.wait_stopped()  # _begin_stop sends SIGTERM and arms the SIGKILL timer

    # waiting: the worker died; the restart timer runs.
    waiting.upon(I.start).loop().returns(None)
    waiting.upon(I.exited).loop().returns(None)
    waiting.upon(I.kill_due).loop().returns(None)
    waiting.upon(I.signal).loop().returns(None)
    waiting.upon(I.pid).loop().returns(None)

    @pep614(waiting.upon(I.restart_due).to(running))
    def restart(machine: _SlotInputs, core: _SlotCore, wait: _Waiting) -> None:
        wait.cancel()
        core.restarts += 1
        core.spawn_worker(machine)

    @pep614(waiting.upon(I.stop).to(stopped))
    def stop_waiting(machine: _SlotInputs, core: _SlotCore, wait: _Waiting) -> Deferred[None]:
        wait.cancel()
        return succeed(None)

    # stopping: SIGTERM sent; SIGKILL when the timer fires; done when it exits.
    stopping.upon(I.start).loop().returns(None)
    stopping.upon(I.restart_due).loop().returns(None)
    stopping.upon(I.signal).loop().returns(None)

    @pep614(stopping.upon(I.pid).loop())
    def stopping_pid(machine: _SlotInputs, core: _SlotCore, stop: _Stopping) -> int | None:
        return core.pid

    @pep614(stopping.upon(I.stop).loop())
    def also_wait(machine: _SlotInputs, core: _SlotCore, stop: _Stopping) -> Deferred[None]:
        return core.wait_stopped()

    @pep614(stopping.upon(I.kill_due).loop())
    def kill(machine: _SlotInputs, core: _SlotCore, stop: _Stopping) -> None:
        core.log.warn(
            "edgeproxy worker {index} (pid {pid}) still running {timeout:g}s after SIGTERM; "
            "sending SIGKILL",
            index=core.index,
            pid=core.pid,
            timeout=core.policy.stop_timeout,
        )
        core.send("KILL")

    @pep614(stopping.upon(I.exited).to(stopped))
    def gone(machine: _SlotInputs, core: _SlotCore, stop: _Stopping, reason: str) -> None:
        core.log.info(
            "edgeproxy worker {index} (pid {pid}) stopped: {reason}",
            index=core.index,
            pid=core.pid,
            reason=reason,
        )
        core.process = core.pid = None
        stop.cancel()
        waiters, core.stop_waiters = core.stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # stopped: final; everything is a no-op.
    stopped.upon(I.start).loop().returns(None)
    stopped.upon(I.exited).loop().returns(None)
    stopped.upon(I.restart_due).loop().returns(None)
    stopped.upon(I.kill_due).loop().returns(None)
    stopped.upon(I.signal).loop().returns(None)
    stopped.upon(I.pid).loop().returns(None)

    @pep614(stopped.upon(I.stop).loop())
    def stop_stopped(machine: _SlotInputs, core: _SlotCore) -> Deferred[None]:
        return succeed(None)

    return builder.build()


_SlotMachine = _build_slot_machine()


class WorkerSlot:
    """Worker number ``index``: started once, restarted whenever it dies, until stopped."""

    def __init__(
        self,
        index: int,
        spawn: Callable[[ProcessProtocol], IProcessTransport],
        clock: IReactorTime,
        policy: RestartPolicy,
    ) -> None:
        self._core = _SlotCore(
            index=index,
            spawn=spawn,
            clock=clock,
            policy=policy,
            on_exit=self._exited,
            on_restart_due=self._restart_due,
            on_kill_due=self._kill_due,
        )
        self._machine: _SlotInputs = _SlotMachine(self._core)

    @property
    def index(self) -> int:
        return self._core.index

    @property
    def restarts(self) -> int:
        """How many times this slot's worker was restarted."""
        return self._core.restarts

    def _exited(self, reason: str) -> None:
        self._machine.exited(reason)

    def _restart_due(self) -> None:
        self._machine.restart_due()

    def _kill_due(self) -> None:
        self._machine.kill_due()

    def start(self) -> None:
        self._machine.start()

    def stop(self) -> Deferred[None]:
        return self._machine.stop()

    def signal(self, name: str) -> None:
        self._machine.signal(name)

    def pid(self) -> int | None:
        """The pid of the running worker; ``None`` while it is being restarted or stopped."""
        return self._machine.pid()


def diagram() -> str:
    """The worker slot machine in DOT (``python -m edgeproxy.app.workers --dot``)."""
    return str(_SlotMachine.asDigraph().source)


# -- the supervisor ----------------------------------------------------------------


@attrs.frozen
class WorkerCommand:
    """What :meth:`IReactorProcess.spawnProcess` is called with for one worker."""

    executable: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    path: str | None
    #: child fd -> the supervisor's fd, or ``"w"`` for a pipe the supervisor writes.
    child_fds: Mapping[int, int | str]


@attrs.frozen
class SharedListener:
    """A socket the supervisor bound for the workers; it never accepts on it."""

    kind: str
    description: str
    fileno: int


def worker_command(
    index: int,
    argv: Sequence[str],
    listeners: Sequence[SharedListener],
    env: Mapping[str, str],
    path: str | None,
    python: str = sys.executable,
) -> WorkerCommand:
    """The command line and fds of worker ``index``; only worker 0 gets the admin socket."""
    child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
    fd_args: list[str] = []
    fd = FIRST_LISTENER_FD
    for listener in listeners:
        if listener.kind == "admin" and index != 0:
            continue
        child_fds[fd] = listener.fileno
        fd_args += ["--fd", f"{listener.kind}={fd}"]
        fd += 1
    args = (python, "-m", "edgeproxy.app.workers", "--index", str(index), *fd_args, "--", *argv)
    return WorkerCommand(python, args, dict(env), path, child_fds)


class WorkerPool:
    """N worker slots spawning through an :class:`IReactorProcess`."""

    def __init__(
        self,
        count: int,
        processes: IReactorProcess,
        command: Callable[[int], WorkerCommand],
        clock: IReactorTime,
        policy: RestartPolicy | None = None,
    ) -> None:
        self._processes = processes
        self._command = command
        policy = policy or RestartPolicy()
        self.slots = [
            WorkerSlot(index, self._spawner(index), clock, policy) for index in range(count)
        ]

    def _spawner(self, index: int) -> Callable[[ProcessProtocol], IProcessTransport]:
        def spawn(protocol: ProcessProtocol) -> IProcessTransport:
            command = self._command(index)
            return self._processes.spawnProcess(
                protocol,
                command.executable,
                list(command.args),
                env=dict(command.env),
                path=command.path,
                childFDs=dict(command.child_fds),
            )

        return spawn

    def start(self) -> None:
        for slot in self.slots:
            slot.start()

    def signal_all(self, name: str) -> None:
        for slot in self.slots:
            slot.signal(name)

    def stop(self) -> Deferred[None]:
        """Stop every worker; fires once all have exited (SIGKILL after the policy's timeout)."""
        done = DeferredList([slot.stop() for slot in self.slots], consumeErrors=True)
        return done.addCallback(lambda _: None)

    def pids(self) -> list[int]:
        return [pid for pid in (slot.pid() for slot in self.slots) if pid is not None]


class _HoldOnly(Factory):
    """The supervisor's listening sockets never accept; only workers do."""

    noisy = False

    def logPrefix(self) -> str:
        return "edgeproxy supervisor (for the workers)"

    def buildProtocol(self, addr: Any) -> TwistedProtocol | None:
        return None


def listener_descriptions(settings: Settings) -> list[tuple[str, str]]:
    """``(kind, description)`` of every listener, in the order the service builds them."""
    listeners = [("https", d) for d in settings.https] + [("http", d) for d in settings.http]
    if settings.admin is not None:
        listeners.append(("admin", settings.admin))
    return listeners


class WorkerSupervisor(Service):
    """``--workers N``: binds the listeners, runs N workers on them, restarts the ones that die."""

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        argv: Sequence[str],
        reactor: Any,
        policy: RestartPolicy | None = None,
        summary: str = "",
    ) -> None:
        self.settings = settings
        self._argv = list(argv)
        self._reactor = reactor
        self._policy = policy or RestartPolicy()
        self._summary = summary
        self._path = os.getcwd()
        self._ports: list[IListeningPort] = []
        self.listeners: list[SharedListener] = []
        self.pool: WorkerPool | None = None
        self._previous_sighup: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        from twisted.internet.endpoints import serverFromString

        for kind, description in listener_descriptions(self.settings):
            outcome: list[Any] = []
            serverFromString(self._reactor, description).listen(_HoldOnly()).addBoth(
                outcome.append
            )
            if not outcome:
                raise SystemExit(f"edgeproxy: {kind} listener {description} did not start")
            if isinstance(outcome[0], Failure):
                raise SystemExit(
                    f"edgeproxy: cannot listen for {kind} on {description}: "
                    f"{outcome[0].getErrorMessage()}"
                )
            port = outcome[0]
            port.stopReading()
            self._ports.append(port)
            self.listeners.append(SharedListener(kind, description, port.fileno()))
            address = port.getHost()
            self.log.info(
                "edgeproxy {kind} listener on {host}:{port}",
                kind=kind,
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
            )

    def _command(self, index: int) -> WorkerCommand:
        return worker_command(index, self._argv, self.listeners, os.environ, self._path)

    def startService(self) -> None:
        super().startService()
        self.pool = WorkerPool(
            self.settings.workers, self._reactor, self._command, self._reactor, self._policy
        )
        self.log.info(
            "edgeproxy supervisor (pid {pid}): {count} workers; {summary}",
            pid=os.getpid(),
            count=self.settings.workers,
            summary=self._summary or "configuration OK",
        )
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        self._reactor.callWhenRunning(self.pool.start)

    def _sighup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._forward_sighup)

    def _forward_sighup(self) -> None:
        if self.pool is None:
            return
        pids = self.pool.pids()
        self.log.info("edgeproxy supervisor: SIGHUP forwarded to workers {pids}", pids=pids)
        self.pool.signal_all("HUP")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        self.log.info("edgeproxy supervisor: stopping workers")
        d = self.pool.stop() if self.pool is not None else succeed(None)

        def close(_: object) -> Deferred[Any]:
            ports, self._ports = self._ports, []
            return DeferredList([port.stopListening() or succeed(None) for port in ports])

        d.addBoth(close)
        return d.addBoth(lambda _: None)


def make_supervisor(settings: Settings, argv: Sequence[str], reactor: Any) -> WorkerSupervisor:
    """Validate (as ``--check`` does; every problem goes to stderr and exits 1), then supervise."""
    from edgeproxy.app.checks import run_check

    out = io.StringIO()
    code = run_check(settings, out=out)
    if code:
        raise SystemExit(code)
    summary = out.getvalue().strip().removeprefix("edgeproxy: ")
    # Workers drain for up to --drain-timeout on SIGTERM: do not kill them sooner.
    policy = RestartPolicy(stop_timeout=settings.drain_timeout + 5.0)
    return WorkerSupervisor(settings, argv, reactor, summary=summary, policy=policy)


# -- the worker ------------------------------------------------------------------


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A listening socket inherited from the supervisor, adopted once."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd: int | None = fd

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        fd, self._fd = self._fd, None
        if fd is None:
            return fail(RuntimeError("an inherited socket can be adopted only once"))
        try:
            # adoptStreamPort dups the descriptor; ours is closed when the block ends.
            with socket.socket(fileno=fd) as sock:
                sock.setblocking(False)
                port = self._reactor.adoptStreamPort(sock.fileno(), sock.family, protocolFactory)
        except Exception:
            return fail()
        return succeed(port)


def adopted_endpoint(reactor: Any, description: str, fd: int) -> IStreamServerEndpoint:
    """The endpoint for an inherited socket, with a ``haproxy:`` prefix kept as a wrapper."""
    from twisted.protocols.haproxy import proxyEndpoint

    endpoint: IStreamServerEndpoint = AdoptedEndpoint(reactor, fd)
    while description.startswith(HAPROXY_PREFIX):
        description = description[len(HAPROXY_PREFIX) :]
        endpoint = proxyEndpoint(endpoint)
    return endpoint


def worker_endpoints(
    reactor: Any, settings: Settings, fds: Mapping[str, Sequence[int]]
) -> Callable[[str, str], IStreamServerEndpoint]:
    """The :data:`edgeproxy.app.service.ListenEndpoints` of a worker: the inherited sockets."""
    table: dict[tuple[str, str], list[int]] = {}
    descriptions = listener_descriptions(settings)
    counts = {kind: sum(1 for k, _ in descriptions if k == kind) for kind in fds}
    for kind, given in fds.items():
        if counts.get(kind, 0) != len(given):
            raise SystemExit(
                f"edgeproxy worker: {len(given)} {kind} socket(s) inherited, "
                f"{counts.get(kind, 0)} configured"
            )
    position = {kind: 0 for kind in fds}
    for kind, description in descriptions:
        if kind in fds:
            table.setdefault((kind, description), []).append(fds[kind][position[kind]])
            position[kind] += 1

    def endpoint(kind: str, description: str) -> IStreamServerEndpoint:
        inherited = table.get((kind, description))
        if not inherited:
            raise SystemExit(f"edgeproxy worker: no inherited socket for {kind} {description}")
        return adopted_endpoint(reactor, description, inherited.pop(0))

    return endpoint


def worker_log_formatter(tag: str) -> Callable[[Mapping[str, Any]], str | None]:
    """twistd's log format with ``tag`` (``worker=1 pid=4242``) added to the system field."""

    def format_event(event: Mapping[str, Any]) -> str | None:
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            name = level.name if isinstance(level, type(LogLevel.info)) else "-"
            system = f"{event.get('log_namespace', '-')}#{name}"
        return formatEventAsClassicLogText({**event, "log_system": f"{system} {tag}"})

    return format_event


@implementer(IReadDescriptor)
class _SupervisorPipe:
    """fd 0 of a worker: the supervisor's end of the pipe closes when it exits, even by SIGKILL."""

    def __init__(self, fd: int, on_gone: Callable[[], None]) -> None:
        self._fd = fd
        self._on_gone = on_gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "supervisor-pipe"

    def doRead(self) -> Failure | None:
        # The reactor takes an exception instance here, as Twisted's own
        # descriptors return main.CONNECTION_DONE (the interface says Failure).
        done = cast(Failure, error.ConnectionDone())
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return done
        return None if data else done

    def connectionLost(self, reason: Failure) -> None:
        # EOF on the pipe; the reactor's own shutdown disconnects us with ConnectionLost.
        if reason.check(error.ConnectionDone):
            self._on_gone()


def parse_worker_args(argv: Sequence[str]) -> tuple[int, dict[str, list[int]], list[str]]:
    """``--index I --fd KIND=FD ... -- OPTIONS`` -> (index, fds by kind, edgeproxy options)."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="python -m edgeproxy.app.workers",
        description="One edgeproxy worker on sockets inherited from the supervisor "
        "(started by twistd edgeproxy --workers N; see docs/scaling.md).",
    )
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--fd", action="append", default=[], metavar="KIND=FD")
    args = parser.parse_args(argv[:split])
    fds: dict[str, list[int]] = {}
    for spec in args.fd:
        kind, _, number = spec.partition("=")
        if kind not in ("https", "http", "admin") or not number.isdigit():
            parser.error(f"--fd takes https=FD, http=FD or admin=FD: {spec}")
        fds.setdefault(kind, []).append(int(number))
    return args.index, fds, argv[split + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    """A worker process: the whole proxy on the supervisor's sockets."""
    from twisted.logger import FileLogObserver, globalLogBeginner
    from twisted.python import usage

    from edgeproxy.app.options import Options

    index, fds, rest = parse_worker_args(sys.argv[1:] if argv is None else argv)
    options = Options()
    try:
        options.parseOptions(rest)
    except usage.UsageError as e:
        print(f"edgeproxy worker {index}: {e}", file=sys.stderr)
        return 2
    settings: Settings = options["settings"]
    if "admin" not in fds:
        settings = attrs.evolve(settings, admin=None)

    from twisted.internet import reactor as _reactor

    from edgeproxy.app.service import make_service
    from edgeproxy.core.errors import ConfigError

    reactor: Any = _reactor
    log = Logger(namespace="edgeproxy.workers")
    pid = os.getpid()
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, worker_log_formatter(f"worker={index} pid={pid}"))],
        redirectStandardIO=False,
    )
    try:
        service = make_service(settings, reactor, worker_endpoints(reactor, settings, fds))
    except ConfigError as e:
        print(f"edgeproxy worker {index}: configuration errors:\n{e}", file=sys.stderr)
        return 1
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    def supervisor_gone() -> None:
        log.warn("edgeproxy worker {index}: the supervisor went away; stopping", index=index)
        if reactor.running:
            reactor.stop()

    if not os.isatty(0):
        reactor.addReader(_SupervisorPipe(0, supervisor_gone))

    def reload() -> None:
        log.info("edgeproxy worker {index}: SIGHUP: reloading the configuration", index=index)
        service.reload()

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
    log.info("edgeproxy worker {index} serving (pid {pid})", index=index, pid=pid)
    reactor.run()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--dot"]:
        print(diagram())
        raise SystemExit(0)
    raise SystemExit(main())
