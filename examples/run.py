"""
Run the example in one command, from the repository root:

    python examples/run.py

It makes sure ./certs holds a certificate (a self-signed development one for
localhost, 127.0.0.1, shop.example and *.shop.example is written when the
directory has none), starts the demo backends (examples/demo_backends.py) on
127.0.0.1:9001, 9002, 9101 and 9102, and then runs, in the foreground,

    twistd --pidfile= -n edgeproxy --config examples/sites --certs certs

with this interpreter's twistd.  Ctrl-C (or SIGTERM/SIGHUP) stops the proxy and
then the backends.  The exit status is twistd's: like twistd, run.py dies by
the signal that stopped it, after a clean shutdown.

Options of this script:

    --certs DIR          certificate directory, for the dev certificate and
                         twistd's --certs [default: certs]
    --config PATH        config file or directory [default: examples/sites]
    --backend-ports P,P,P,P
                         ports for the demo backends [default: 9001,9002,9101,9102];
                         0 picks a free port.  When they differ from the
                         defaults, the proxy runs on a temporary copy of the
                         config with every "127.0.0.1:9001"-style address
                         rewritten to the port actually used.

Every other argument goes to ``twistd edgeproxy`` unchanged, e.g.

    python examples/run.py --https tcp:8443 --http tcp:8080 --admin none
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

EXAMPLES = Path(__file__).resolve().parent
DEFAULT_CONFIG = EXAMPLES / "sites"
DEFAULT_BACKEND_PORTS = (9001, 9002, 9101, 9102)

BACKEND_START_TIMEOUT = 15.0
PROXY_STOP_TIMEOUT = 15.0
BACKEND_STOP_TIMEOUT = 5.0

_LISTENER = re.compile(r"edgeproxy (https|http|admin) listener on (\S+):(\d+)")
# The certificate watcher is started after every listener is bound: its first
# log line means the proxy is about to serve.
_STARTED = re.compile(r"\[edgeproxy\.tls\.certwatch\.")
_BACKEND = re.compile(r"demo backend (\S+) listening on (\S+):(\d+)")
_ADDRESS = re.compile(r"""(["'])127\.0\.0\.1:(\d+)\1""")

_print_lock = threading.RLock()  # say() may run in a signal handler


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
        sys.stdout.flush()


def display(path: Path | str) -> str:
    """``path`` relative to the current directory when it is below it."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def find_twistd() -> list[str]:
    twistd = Path(sys.executable).with_name("twistd")
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def parse_ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of port numbers: {text!r}") from None
    if len(ports) != len(DEFAULT_BACKEND_PORTS) or not all(0 <= p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(
            f"give {len(DEFAULT_BACKEND_PORTS)} port numbers (0 for any free port), not {text!r}"
        )
    return ports


class Pump:
    """Copies a child's output to our stdout line by line, calling ``on_line``
    for each line first."""

    def __init__(self, stream: IO[str], on_line: Callable[[str], None] | None = None) -> None:
        self._stream = stream
        self._on_line = on_line
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for line in self._stream:
            say(line)
            if self._on_line is not None:
                self._on_line(line)


class Backends:
    """examples/demo_backends.py as a child process."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports: dict[int, int] = {}  # requested port -> actual port, by position
        self._requested = list(ports)
        self._actual: list[int] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / "demo_backends.py"),
                "--ports",
                ",".join(str(p) for p in ports),
                "--exit-on-stdin-eof",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            # Its own process group: Ctrl-C reaches only us, and we stop the
            # children in order.
            process_group=0,
        )
        assert self.process.stdout is not None
        self.pump = Pump(self.process.stdout, self._line)

    def _line(self, line: str) -> None:
        match = _BACKEND.search(line)
        if match:
            self._actual.append(int(match.group(3)))
        elif line.startswith("demo backends ready"):
            self._ready.set()

    def wait_ready(self, should_stop: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + BACKEND_START_TIMEOUT
        while not self._ready.wait(0.1):
            if should_stop():
                return False
            if self.process.poll() is not None:
                say(
                    "run.py: the demo backends did not start; if a port is taken, "
                    "see `ss -ltn` or pick others with --backend-ports (0 for any free port)"
                )
                return False
            if time.monotonic() > deadline:
                say(f"run.py: the demo backends did not start within {BACKEND_START_TIMEOUT}s")
                return False
        return True

    @property
    def actual_ports(self) -> list[int]:
        return list(self._actual)

    def stop(self) -> None:
        process = self.process
        # Closing their stdin stops them (--exit-on-stdin-eof); then SIGTERM,
        # then SIGKILL, each after a bounded wait.
        try:
            assert process.stdin is not None
            process.stdin.close()
        except OSError:
            pass
        for escalate in (process.terminate, process.kill):
            try:
                process.wait(BACKEND_STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                escalate()
        else:
            process.wait(BACKEND_STOP_TIMEOUT)
        self.pump.thread.join(2)


def rewrite_config(config: Path, ports: dict[int, int], into: Path) -> Path:
    """Copy ``config`` (a file, or a directory's *.py files) into ``into``,
    replacing each quoted ``"127.0.0.1:OLD"`` with ``"127.0.0.1:NEW"``."""

    found: set[int] = set()

    def replace(match: re.Match[str]) -> str:
        old = int(match.group(2))
        if old not in ports:
            return match.group(0)
        found.add(old)
        quote = match.group(1)
        return f"{quote}127.0.0.1:{ports[old]}{quote}"

    files = [config] if config.is_file() else sorted(config.glob("*.py"))
    for source in files:
        (into / source.name).write_text(_ADDRESS.sub(replace, source.read_text()))
    for old in sorted(set(ports) - found):
        say(f"run.py: warning: {display(config)} never mentions 127.0.0.1:{old}")
    return into / config.name if config.is_file() else into


class Runner:
    def __init__(self, args: argparse.Namespace, twistd_args: Sequence[str]) -> None:
        self.args = args
        self.twistd_args = list(twistd_args)
        self.stopping = 0
        self.last_signal = 0
        self.signalled = False  # a signal was forwarded to the proxy
        self.proxy: subprocess.Popen[str] | None = None
        self.listeners: dict[str, tuple[str, int]] = {}
        self.banner_shown = False

    # -- signals ------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping += 1
        self.last_signal = signum
        proxy = self.proxy
        if proxy is None or proxy.poll() is not None:
            return
        if not self.signalled:
            self.signalled = True
            say(f"run.py: {signal.Signals(signum).name}: stopping edgeproxy and the backends")
            # twistd shuts down cleanly on SIGINT and SIGTERM (not on SIGHUP).
            proxy.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        else:
            say("run.py: stopping at once")
            proxy.kill()

    # -- proxy output -----------------------------------------------------

    def proxy_line(self, line: str) -> None:
        match = _LISTENER.search(line)
        if match:
            self.listeners.setdefault(match.group(1), (match.group(2), int(match.group(3))))
        elif _STARTED.search(line) and not self.banner_shown:
            self.banner_shown = True
            self.banner()

    def banner(self) -> None:
        https = self.listeners.get("https")
        if https is None:
            return
        port = https[1]
        base = "https://localhost" + ("" if port == 443 else f":{port}")
        lines = [
            f"edgeproxy is up: try curl -k {base}/ and curl -k {base}/api/hello",
        ]
        http = self.listeners.get("http")
        if http is not None:
            lines.append(
                f"  plain http://localhost:{http[1]}/ redirects to https; "
                "Ctrl-C stops the proxy and the demo backends"
            )
        bar = "=" * max(len(line) for line in lines)
        say("\n".join([bar, *lines, bar]))

    # -- the whole run ----------------------------------------------------

    def run(self) -> int:
        from edgeproxy.tls.devcert import ensure_dev_certificate

        certs = self.args.certs
        written = ensure_dev_certificate(certs)
        if written is not None:
            say(
                f"run.py: wrote a self-signed development certificate to {display(written)} "
                "(localhost, 127.0.0.1, ::1, shop.example, *.shop.example; not for production)"
            )

        backends = Backends(self.args.backend_ports)
        say(f"run.py: started the demo backends (pid {backends.process.pid})")
        tmp: str | None = None
        try:
            if not backends.wait_ready(lambda: self.stopping > 0):
                return -self.last_signal if self.stopping else 1
            config = self.args.config
            if tuple(self.args.backend_ports) != DEFAULT_BACKEND_PORTS:
                tmp = tempfile.mkdtemp(prefix="edgeproxy-example-")
                mapping = dict(zip(DEFAULT_BACKEND_PORTS, backends.actual_ports, strict=True))
                config = rewrite_config(config, mapping, Path(tmp))
                say(
                    f"run.py: using {display(config)}, a copy of {display(self.args.config)} "
                    "pointing at the demo backends' ports"
                )
            if self.stopping:
                return -self.last_signal
            command = [
                *find_twistd(),
                "--pidfile=",
                "-n",
                "edgeproxy",
                "--config",
                display(config),
                "--certs",
                certs,
                *self.twistd_args,
            ]
            self.proxy = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                process_group=0,
            )
            say(f"run.py: started {' '.join(command)} (pid {self.proxy.pid})")
            assert self.proxy.stdout is not None
            pump = Pump(self.proxy.stdout, self.proxy_line)
            if self.stopping and not self.signalled:  # a signal came before self.proxy was set
                self.signalled = True
                self.proxy.send_signal(signal.SIGTERM)
            code = self.proxy.wait()
            pump.thread.join(2)
            if code > 0 and not self.stopping:
                say(
                    f"run.py: edgeproxy exited with status {code}; if a port is taken, "
                    "see `ss -ltn` or pass other listeners, e.g. --https tcp:18443"
                )
            return code
        finally:
            if self.proxy is not None and self.proxy.poll() is None:
                self.proxy.terminate()
                try:
                    self.proxy.wait(PROXY_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proxy.kill()
                    self.proxy.wait(PROXY_STOP_TIMEOUT)
            backends.stop()
            say("run.py: demo backends stopped")
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the edgeproxy example: dev certificate, demo backends and the proxy.",
        epilog="Other arguments are passed to `twistd edgeproxy` (e.g. --https tcp:8443 "
        "--http tcp:8080 --admin none).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--certs",
        default="certs",
        metavar="DIR",
        help="certificate directory [default: %(default)s]",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"config file or directory [default: {display(DEFAULT_CONFIG)}]",
    )
    parser.add_argument(
        "--backend-ports",
        type=parse_ports,
        default=DEFAULT_BACKEND_PORTS,
        metavar="P1,P2,P3,P4",
        help="the demo backends' ports, 0 for any free one [default: 9001,9002,9101,9102]",
    )
    args, twistd_args = parser.parse_known_args(argv)
    runner = Runner(args, twistd_args)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, runner.on_signal)
    code = runner.run()
    if code < 0 and -code not in (signal.SIGKILL, signal.SIGSTOP):
        # twistd stopped by a signal (Ctrl-C, SIGTERM) shuts down cleanly and
        # then dies by that signal, as Unix programs should; so do we.  (One
        # killed outright, by us after a stop that hung, cannot be re-raised.)
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
