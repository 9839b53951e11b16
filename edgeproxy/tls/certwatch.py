"""
Watch the certificate directory, rebuild the certificate index, swap it.

:class:`CertificateDirectory` is the incremental loader: no reactor, one
``scan(now)`` call per poll.  It lists the directory (cheap), stats every
certificate source and re-reads only the sources whose ``(mtime_ns, size,
inode)`` changed, so an unchanged directory costs a listing and a few stats.
:class:`CertificateWatcher` is the thin service that calls it on a
``LoopingCall`` driven by an injected clock and hands each new index over.

Layouts found in the directory (see docs/certificates.md):

- ``NAME.pem``: private key, certificate and chain in one file, any order;
- ``NAME.crt`` + ``NAME.key`` (also ``NAME.pem`` + ``NAME.key``);
- certbot: ``NAME/fullchain.pem`` + ``NAME/privkey.pem`` (``--certs
  /etc/letsencrypt/live``) or ``live/NAME/...`` (``--certs /etc/letsencrypt``);
  a directory that itself holds ``fullchain.pem`` + ``privkey.pem`` works too.

``default.pem`` / ``default.crt`` is the default certificate.
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from edgeproxy.core.errors import ConfigProblem
from edgeproxy.tls.certificates import (
    DEFAULT_TLS_PROFILE,
    CertificateFileError,
    CertificateIndex,
    LoadedCertificate,
    parse_certificate,
)

__all__ = [
    "NO_DEFAULT_CERTIFICATE",
    "CertificateDirectory",
    "CertificateSource",
    "CertificateWatcher",
    "ScanResult",
    "check_directory",
    "discover",
]

_CERTBOT_CHAIN = "fullchain.pem"
_CERTBOT_KEY = "privkey.pem"
# Files certbot keeps next to fullchain.pem/privkey.pem; never NAME.pem certificates.
_CERTBOT_FILES = frozenset({_CERTBOT_CHAIN, _CERTBOT_KEY, "cert.pem", "chain.pem"})
_DEFAULT_STEM = "default"

#: Said at start-up, on every index swap and by ``--check`` when the directory
#: has no default certificate (docs/certificates.md says how to set one).
NO_DEFAULT_CERTIFICATE = (
    "no default certificate (default.pem, or default.crt + default.key): clients that send "
    "no server name (by IP address, some old clients and probes) and names no certificate "
    "covers are refused in the TLS handshake; see 'The default certificate' in "
    "docs/certificates.md"
)

# PEM labels that make a *.pem file a candidate certificate file.
_RELEVANT_PEM_MARKERS = (b"CERTIFICATE-----", b"PRIVATE KEY-----")

_Signature = tuple[tuple[int, int, int], ...]


@attrs.frozen
class CertificateSource:
    """One certificate to load: a combined PEM file, or a certificate and key file."""

    #: The certificate file; also the identity of the source in logs and state.
    cert_path: str
    #: The private key file, or None when the key is in ``cert_path``.
    key_path: str | None
    is_default: bool

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.cert_path,) if self.key_path is None else (self.cert_path, self.key_path)


@attrs.frozen
class ScanResult:
    index: CertificateIndex
    #: Problems found by this scan (new ones only; see CertificateDirectory.scan).
    problems: tuple[ConfigProblem, ...]
    #: True when ``index`` differs from the previous scan's (swap it in).
    changed: bool


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # follows symlinks
    except OSError:
        return False


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _visible_entries(directory: str) -> list[str]:
    try:
        return sorted(e for e in os.listdir(directory) if not e.startswith("."))
    except OSError:
        return []


def _certbot_pair(directory: str) -> CertificateSource | None:
    chain = os.path.join(directory, _CERTBOT_CHAIN)
    key = os.path.join(directory, _CERTBOT_KEY)
    if _is_file(chain) and _is_file(key):
        return CertificateSource(chain, key, is_default=False)
    return None


def discover(root: str) -> tuple[list[CertificateSource], list[ConfigProblem]]:
    """List the certificate sources in ``root`` (directory listing and stats only).

    Unrelated files (README, dotfiles, ``*.csr``, certbot's ``archive/``,
    ``renewal/``, ``keys/``...) are ignored; a ``NAME.key`` without a
    certificate, or a ``NAME.crt`` without a key, is a problem.
    """
    sources: list[CertificateSource] = []
    problems: list[ConfigProblem] = []
    entries = _visible_entries(root)

    own_pair = _certbot_pair(root)
    if own_pair is not None:
        sources.append(own_pair)

    files = {e for e in entries if _is_file(os.path.join(root, e))}
    for entry in entries:
        path = os.path.join(root, entry)
        if entry in files:
            stem, ext = os.path.splitext(entry)
            ext = ext.lower()
            is_default = stem == _DEFAULT_STEM
            if ext == ".pem":
                if own_pair is not None and entry in _CERTBOT_FILES:
                    continue
                key = stem + ".key"
                key_path = os.path.join(root, key) if key in files else None
                sources.append(CertificateSource(path, key_path, is_default))
            elif ext == ".crt":
                key = stem + ".key"
                if key in files:
                    sources.append(CertificateSource(path, os.path.join(root, key), is_default))
                else:
                    problems.append(
                        ConfigProblem(path, f"certificate without a private key: {key} not found")
                    )
            elif ext == ".key":
                if stem + ".crt" not in files and stem + ".pem" not in files:
                    problems.append(
                        ConfigProblem(
                            path, f"private key without a certificate: {stem}.crt not found"
                        )
                    )
        elif _is_dir(path):
            pair = _certbot_pair(path)
            if pair is not None:
                sources.append(pair)
            elif entry == "live":
                for name in _visible_entries(path):
                    sub = os.path.join(path, name)
                    if _is_dir(sub):
                        pair = _certbot_pair(sub)
                        if pair is not None:
                            sources.append(pair)
    return sources, problems


def _signature(paths: tuple[str, ...]) -> _Signature | None:
    result = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        result.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)


@attrs.define
class _SourceState:
    signature: _Signature
    #: The last certificate that loaded from this source (kept while the file is broken).
    good: LoadedCertificate | None
    problem: ConfigProblem | None


class _InFluxError(Exception):
    """A file changed while it was being read."""


class CertificateDirectory:
    """Incremental, stat-based loader of a certificate directory.  No reactor."""

    def __init__(
        self, path: str, tls_profile: str = DEFAULT_TLS_PROFILE, http2: bool = True
    ) -> None:
        self.path = path
        self.tls_profile = tls_profile
        #: Whether the certificates' contexts offer ``h2`` over ALPN.
        self.http2 = http2
        self._states: dict[CertificateSource, _SourceState] = {}
        self._index = CertificateIndex.empty()
        self._discovery_problems: frozenset[ConfigProblem] = frozenset()
        self._missing_reported = False
        #: How many times a source was read and parsed (for tests and metrics).
        self.reads = 0

    @property
    def index(self) -> CertificateIndex:
        return self._index

    @property
    def current_problems(self) -> tuple[ConfigProblem, ...]:
        """Every problem as of the last scan (for status pages)."""
        problems = [s.problem for s in self._states.values() if s.problem is not None]
        problems.extend(sorted(self._discovery_problems, key=str))
        if self._missing_reported:
            problems.insert(0, self._missing_problem())
        return tuple(problems)

    def _missing_problem(self) -> ConfigProblem:
        return ConfigProblem(
            self.path,
            "certificate directory does not exist or is not a directory; "
            "serving no certificates (TLS handshakes are refused) until it appears",
        )

    def scan(self, now: datetime.datetime) -> ScanResult:
        """Bring the index up to date with the directory.

        Re-reads only sources whose files changed.  A source that fails to
        load keeps its last good certificate; its problem is reported once per
        change of its files, not on every poll.  A removed source is dropped.
        A file that changes while it is read is left for the next scan.
        The index is also rebuilt once ``now`` reaches its ``next_change``.
        """
        problems: list[ConfigProblem] = []
        if not _is_dir(self.path):
            if not self._missing_reported:
                self._missing_reported = True
                problems.append(self._missing_problem())
            sources: list[CertificateSource] = []
            discovery_problems: list[ConfigProblem] = []
        else:
            self._missing_reported = False
            sources, discovery_problems = discover(self.path)

        new_discovery = frozenset(discovery_problems)
        problems.extend(p for p in discovery_problems if p not in self._discovery_problems)
        self._discovery_problems = new_discovery

        changed = False
        seen = set(sources)
        for gone in [s for s in self._states if s not in seen]:
            if self._states.pop(gone).good is not None:
                changed = True

        for source in sources:
            state = self._states.get(source)
            signature = _signature(source.paths)
            if signature is None:
                # Vanished between listing and stat: treat as not there yet.
                continue
            if state is not None and state.signature == signature:
                continue
            try:
                loaded = self._load(source, signature)
            except _InFluxError:
                continue
            except CertificateFileError as e:
                problem = ConfigProblem(e.path, e.message)
                problems.append(problem)
                self._states[source] = _SourceState(
                    signature, state.good if state is not None else None, problem
                )
                continue
            previous = state.good if state is not None else None
            self._states[source] = _SourceState(signature, loaded, None)
            if loaded is not None or previous is not None:
                changed = True

        next_change = self._index.next_change
        if changed or (next_change is not None and now >= next_change):
            self._index = CertificateIndex.build(
                (s.good for s in self._states.values() if s.good is not None), now
            )
            changed = True
        return ScanResult(self._index, tuple(problems), changed)

    def _load(self, source: CertificateSource, before: _Signature) -> LoadedCertificate | None:
        data: list[bytes] = []
        for path in source.paths:
            try:
                with open(path, "rb") as f:
                    data.append(f.read())
            except FileNotFoundError:
                raise _InFluxError() from None
            except OSError as e:
                raise CertificateFileError(path, f"cannot read: {e.strerror or e}") from None
        if _signature(source.paths) != before:
            raise _InFluxError()
        self.reads += 1
        cert_data = data[0]
        if (
            source.key_path is None
            and source.cert_path.endswith(".pem")
            and cert_data.strip()
            and b"-----BEGIN " in cert_data
            and not any(marker in cert_data for marker in _RELEVANT_PEM_MARKERS)
        ):
            # Not a certificate file: e.g. certbot's ssl-dhparams.pem.
            return None
        return parse_certificate(
            source.cert_path,
            cert_data,
            data[1] if source.key_path is not None else None,
            key_source=source.key_path,
            is_default=source.is_default,
            tls_profile=self.tls_profile,
            http2=self.http2,
        )


def check_directory(path: str, now: datetime.datetime) -> ScanResult:
    """Load the directory once and report every problem (for ``--check``)."""
    return CertificateDirectory(path).scan(now)


def _utc_from(clock: IReactorTime) -> Callable[[], datetime.datetime]:
    def now() -> datetime.datetime:
        return datetime.datetime.fromtimestamp(clock.seconds(), tz=datetime.UTC)

    return now


class CertificateWatcher(Service):
    """Polls a :class:`CertificateDirectory` on ``clock`` and hands over each new index."""

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        on_index: Callable[[CertificateIndex], None],
        interval: float = 2.0,
        now: Callable[[], datetime.datetime] | None = None,
        tls_profile: str = DEFAULT_TLS_PROFILE,
        http2: bool = True,
    ) -> None:
        self.directory = CertificateDirectory(path, tls_profile, http2)
        self._clock = clock
        self._on_index = on_index
        self._interval = interval
        self._now = now if now is not None else _utc_from(clock)
        self._loop: LoopingCall | None = None
        # The first scan always hands its index over, even an empty one.
        self._installed = False

    @property
    def index(self) -> CertificateIndex:
        return self.directory.index

    def startService(self) -> None:
        super().startService()
        self.scan_now()
        loop = LoopingCall(self.scan_now)
        loop.clock = self._clock
        self._loop = loop
        d = loop.start(self._interval, now=False)
        d.addErrback(lambda f: self.log.failure("certificate watcher stopped", f))

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        super().stopService()

    def scan_now(self) -> None:
        """Scan the directory now; hand the index over if it changed (always
        on the first scan).  Never raises."""
        try:
            result = self.directory.scan(self._now())
        except Exception:
            self.log.failure("while scanning the certificate directory {path}",
                             path=self.directory.path)
            return
        for problem in result.problems:
            self.log.error(
                "certificate problem: {problem}",
                problem=str(problem),
                path=problem.path,
                message=problem.message,
            )
        if not result.changed and self._installed:
            return
        self._installed = True
        index = result.index
        for warning in index.warnings:
            self.log.warn("certificate warning: {warning}", warning=warning)
        if index.default is None:
            # Otherwise the only sign is "default None" below, and SNI-less
            # clients are refused with nothing logged per handshake.
            self.log.warn(
                "certificate warning: {path}: {problem}",
                path=self.directory.path,
                problem=NO_DEFAULT_CERTIFICATE,
            )
        self.log.info(
            "certificate index loaded from {path}: {certificates} certificate(s), "
            "{names} name(s), default {default}",
            path=self.directory.path,
            certificates=len(index.certificates),
            names=len(index.names),
            default=index.default.source if index.default is not None else None,
        )
        try:
            self._on_index(index)
        except Exception:
            self.log.failure("while installing the new certificate index")
