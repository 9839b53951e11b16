"""
Load the user's configuration: Python files that define ``virtual_hosts``.

Each file runs as a fresh module (never importable by name).  Everything
that is wrong, in every file, is collected and raised as one
:class:`~edgeproxy.core.errors.ConfigError`, each problem with its file and,
where known, its line.  This runs off the hot path (startup, reload); the
result is an immutable :class:`LoadedConfig` snapshot.
"""

from __future__ import annotations

import ast
import os
import sys
import traceback
import types
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from edgeproxy.config import Cache, Cluster, UpstreamTLS, VirtualHost
from edgeproxy.config.routing import RoutingTable
from edgeproxy.config.tlspolicy import ClientCA, ClientCAError, load_client_ca
from edgeproxy.config.upstreamtls import UpstreamTLSError, UpstreamTLSFiles, load_upstream_tls
from edgeproxy.core.errors import ConfigError, ConfigProblem
from edgeproxy.core.hostnames import normalise_pattern

__all__ = [
    "ClusterDefinition",
    "Expectation",
    "LoadedConfig",
    "config_files",
    "inspect_config",
    "load_config",
]

_MODULE_PREFIX = "edgeproxy_site_"


@attrs.frozen
class Expectation:
    """One entry of a file's ``expectations``: ``url`` should go to ``cluster``.

    Only the shape is checked when loading; ``--check`` (:mod:`edgeproxy.app.checks`)
    parses the URL and routes it.
    """

    url: str
    #: A cluster name, or ``"redirect"`` for an ``http://`` URL redirected to https.
    cluster: str
    #: The file that declares it, and the line of its tuple (when known).
    path: str
    line: int | None


@attrs.frozen
class ClusterDefinition:
    """A :class:`Cluster` found at module level of a configuration file."""

    cluster: Cluster
    path: str
    #: The line of the cluster's name in the statement that binds ``variable``
    #: (else of that statement), when known.
    line: int | None
    #: The module-level name it was found under (``"api"``, ``"clusters"``).
    variable: str


@attrs.frozen(eq=False)
class LoadedConfig:
    """A validated configuration snapshot."""

    virtual_hosts: tuple[VirtualHost, ...]
    #: The files loaded, in load order.
    files: tuple[str, ...]
    #: Every cluster referenced by a route (directly or in a Split), by name,
    #: in order of first appearance.
    clusters: Mapping[str, Cluster]
    routing: RoutingTable
    #: The file each virtual host came from, parallel to ``virtual_hosts``
    #: (empty when the config was not built by :func:`load_config`).
    virtual_host_files: tuple[str, ...] = ()
    #: Every file's ``expectations``, in load order (see ``--check``).
    expectations: tuple[Expectation, ...] = ()
    #: Every Cluster found at module level of a file (a top-level name bound to
    #: a Cluster, or to a list, tuple, set or dict holding Clusters), whether
    #: or not a route uses it, by cluster name, each definition in load order.
    defined_clusters: Mapping[str, tuple[ClusterDefinition, ...]] = attrs.field(
        factory=lambda: types.MappingProxyType({})
    )
    #: For each file, every string literal in it (and the hostname it spells)
    #: mapped to its first line; used to point a reported problem at a line.
    literal_lines: Mapping[str, Mapping[str, int]] = attrs.field(
        factory=lambda: types.MappingProxyType({})
    )
    #: Every running cluster's ``upstream_tls`` files, read when this loaded,
    #: by cluster name (clusters without ``upstream_tls`` are not in it).
    upstream_tls: Mapping[str, UpstreamTLSFiles] = attrs.field(
        factory=lambda: types.MappingProxyType({})
    )
    #: Every ``https://`` forward auth's TLS files, read as a cluster's
    #: ``upstream_tls`` are, by the ``id()`` of the route whose ``auth`` it is
    #: (the same ForwardAuth may be written in files in other directories).
    auth_tls: Mapping[int, UpstreamTLSFiles] = attrs.field(
        factory=lambda: types.MappingProxyType({})
    )

    @property
    def idle_clusters(self) -> dict[str, Cluster]:
        """Clusters defined at module level that no route uses, by name (the
        idle side of a blue/green pair).  They run like the others (health
        checks, /status, metrics) so they can be watched before a route points
        at them.  A name a route uses is not idle, whatever its other
        definitions; of two idle definitions of one name, the first loaded wins.
        """
        idle: dict[str, Cluster] = {}
        for name, definitions in self.defined_clusters.items():
            if name not in self.clusters and definitions:
                idle[name] = definitions[0].cluster
        return idle

    @property
    def all_clusters(self) -> dict[str, Cluster]:
        """Every cluster that runs, by name: the routes' first, then the idle ones."""
        return {**self.clusters, **self.idle_clusters}

    def line_of(self, path: str, text: str) -> int | None:
        """The first line of ``path`` with a string literal spelling ``text``, if any."""
        return self.literal_lines.get(path, {}).get(text)

    @property
    def route_count(self) -> int:
        return sum(len(vhost.routes) for vhost in self.virtual_hosts)

    @property
    def endpoint_count(self) -> int:
        return sum(len(cluster.endpoints) for cluster in self.all_clusters.values())

    def summary(self) -> str:
        """One line for ``--check``.

        ``"2 files, 3 virtual hosts, 5 routes, 4 clusters (1 idle), 7 endpoints"``
        (idle: defined, used by no route, and run like the others).
        """
        clusters = len(self.all_clusters)
        idle = clusters - len(self.clusters)
        counts = [
            (len(self.files), "file", ""),
            (len(self.virtual_hosts), "virtual host", ""),
            (self.route_count, "route", ""),
            (clusters, "cluster", f" ({idle} idle)" if idle else ""),
            (self.endpoint_count, "endpoint", ""),
        ]
        return ", ".join(f"{n} {noun}{'' if n == 1 else 's'}{extra}" for n, noun, extra in counts)


def config_files(path: str) -> list[str]:
    """The files ``path`` stands for: itself, or a directory's ``*.py`` in name order.

    Files whose names start with ``_`` or ``.`` are skipped.  Raises
    :class:`ConfigError` for a missing path or a directory with no files.
    """
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            raise ConfigError([ConfigProblem(path, f"cannot list directory: {e.strerror}")]) from e
        files = [
            os.path.join(path, name)
            for name in names
            if name.endswith(".py")
            and not name.startswith(("_", "."))
            and os.path.isfile(os.path.join(path, name))
        ]
        if not files:
            raise ConfigError(
                [ConfigProblem(path, "no configuration files (*.py) in this directory")]
            )
        return files
    if os.path.exists(path):
        return [path]
    raise ConfigError([ConfigProblem(path, "no such file or directory")])


def load_config(path: str) -> LoadedConfig:
    """Load a configuration file or directory; raise one ConfigError listing every problem."""
    config, problems = inspect_config(path)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def inspect_config(path: str) -> tuple[LoadedConfig | None, tuple[ConfigProblem, ...]]:
    """Load what loads and report every problem, for ``--check``.

    The configuration is built from the files that ran, whatever their
    problems (a name claimed twice goes to its first claim and a cluster name
    defined twice to its first definition, as in the routing table), so that
    what they mean can be checked in the same pass.  ``None`` when there are
    no files to run (a missing path, an empty directory).  Problems are sorted
    by file, in load order, and line.
    """
    try:
        files = config_files(path)
    except ConfigError as e:
        return None, e.problems
    problems: list[ConfigProblem] = []
    loaded: list[_LoadedFile] = []
    for filename in files:
        result = _load_file(filename)
        if isinstance(result, ConfigProblem):
            problems.append(result)
        else:
            problems.extend(result.problems)
            loaded.append(result)

    problems.extend(_cross_check(loaded))
    client_cas, ca_problems = _load_client_cas(loaded)
    problems.extend(ca_problems)
    virtual_hosts = tuple(vhost for f in loaded for vhost in f.virtual_hosts)
    if not problems and not virtual_hosts:
        problems.append(ConfigProblem(path, "the configuration defines no virtual hosts"))
    clusters: dict[str, Cluster] = {}
    for vhost in virtual_hosts:
        for route in vhost.routes:
            for cluster in route.clusters:
                clusters.setdefault(cluster.name, cluster)
    defined: dict[str, list[ClusterDefinition]] = {}
    for f in loaded:
        for definition in f.defined_clusters:
            defined.setdefault(definition.cluster.name, []).append(definition)
    upstream_tls, tls_problems = _load_upstream_tls(loaded, clusters, defined)
    problems.extend(tls_problems)
    auth_tls, auth_problems = _load_auth_tls(loaded)
    problems.extend(auth_problems)
    order = {filename: index for index, filename in enumerate(files)}
    problems.sort(key=lambda p: (order.get(p.path, -1), p.path, p.line or 0))
    config = LoadedConfig(
        virtual_hosts=virtual_hosts,
        files=tuple(files),
        clusters=types.MappingProxyType(clusters),
        routing=RoutingTable.from_virtual_hosts(virtual_hosts, client_cas),
        virtual_host_files=tuple(f.path for f in loaded for _ in f.virtual_hosts),
        expectations=tuple(e for f in loaded for e in f.expectations),
        defined_clusters=types.MappingProxyType(
            {name: tuple(definitions) for name, definitions in defined.items()}
        ),
        literal_lines=types.MappingProxyType(
            {f.path: types.MappingProxyType(f.literal_lines) for f in loaded}
        ),
        upstream_tls=types.MappingProxyType(upstream_tls),
        auth_tls=types.MappingProxyType(auth_tls),
    )
    return config, tuple(problems)


@attrs.frozen
class _LoadedFile:
    path: str
    virtual_hosts: tuple[VirtualHost, ...]
    problems: tuple[ConfigProblem, ...] = ()
    expectations: tuple[Expectation, ...] = ()
    defined_clusters: tuple[ClusterDefinition, ...] = ()
    literal_lines: Mapping[str, int] = attrs.field(factory=dict)


def _load_file(filename: str) -> ConfigProblem | _LoadedFile:
    try:
        with open(filename, "rb") as f:
            source_bytes = f.read()
    except OSError as e:
        return ConfigProblem(filename, f"cannot read: {e.strerror}")
    try:
        code = compile(source_bytes, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        return ConfigProblem(filename, f"SyntaxError: {e.msg}", e.lineno)
    except ValueError as e:  # e.g. null bytes in the source
        return ConfigProblem(filename, f"{type(e).__name__}: {e}")

    stem = os.path.splitext(os.path.basename(filename))[0]
    module = types.ModuleType(_MODULE_PREFIX + stem)
    module.__file__ = filename
    namespace = module.__dict__
    # Registered only while the file runs (dataclasses and typing look their
    # module up in sys.modules), then removed: sites are never importable.
    previous = sys.modules.get(module.__name__)
    sys.modules[module.__name__] = module
    try:
        exec(code, namespace)
    except (Exception, SystemExit) as e:
        return ConfigProblem(filename, _describe(e), _line_in(e, filename))
    finally:
        if previous is None:
            sys.modules.pop(module.__name__, None)
        else:
            sys.modules[module.__name__] = previous

    vhosts, problems = _read_virtual_hosts(filename, namespace)
    tree = _parse(source_bytes)
    expectations, expectation_problems = _read_expectations(filename, namespace, tree)
    return _LoadedFile(
        filename,
        vhosts,
        tuple(problems + expectation_problems),
        expectations,
        _module_clusters(filename, namespace, tree),
        _literals_in(tree),
    )


def _describe(e: BaseException) -> str:
    message = str(e)
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _line_in(e: BaseException, filename: str) -> int | None:
    """The line of ``filename`` where ``e`` was raised: its innermost frame in that file."""
    if isinstance(e, SyntaxError) and e.filename == filename:
        return e.lineno
    line = None
    for frame in traceback.extract_tb(e.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


def _read_virtual_hosts(
    filename: str, namespace: dict[str, Any]
) -> tuple[tuple[VirtualHost, ...], list[ConfigProblem]]:
    if "virtual_hosts" not in namespace:
        return (), [ConfigProblem(filename, "defines no virtual_hosts")]
    value = namespace["virtual_hosts"]
    if not isinstance(value, list | tuple):
        return (), [
            ConfigProblem(
                filename,
                f"virtual_hosts must be a list of VirtualHost, not {type(value).__name__}",
            )
        ]
    problems = []
    vhosts = []
    resolved: dict[int, VirtualHost] = {}
    for index, item in enumerate(value):
        if isinstance(item, VirtualHost):
            vhosts.append(_resolve_paths(filename, item, resolved))
        else:
            problems.append(
                ConfigProblem(
                    filename, f"virtual_hosts[{index}] is not a VirtualHost: {_short_repr(item)}"
                )
            )
    return tuple(vhosts), problems


def _resolve_paths(
    filename: str, vhost: VirtualHost, resolved: dict[int, VirtualHost]
) -> VirtualHost:
    """``vhost`` with a relative ``client_ca`` made relative to the directory
    of the file that names it (not to the working directory, which a service
    manager chooses).  One object per object: the same virtual host listed
    twice stays recognisable as such."""
    if vhost.client_ca is None or os.path.isabs(vhost.client_ca):
        return vhost
    done = resolved.get(id(vhost))
    if done is None:
        path = os.path.normpath(
            os.path.join(os.path.dirname(os.path.abspath(filename)), vhost.client_ca)
        )
        done = resolved[id(vhost)] = attrs.evolve(vhost, client_ca=path)
    return done


def _load_client_cas(
    loaded: Sequence[_LoadedFile],
) -> tuple[dict[str, ClientCA], list[ConfigProblem]]:
    """Every ``client_ca`` file, read and parsed once, by (resolved) path."""
    cas: dict[str, ClientCA] = {}
    failed: set[str] = set()
    problems: list[ConfigProblem] = []
    for f in loaded:
        directory = os.path.dirname(os.path.abspath(f.path))
        for vhost in f.virtual_hosts:
            path = vhost.client_ca
            if path is None or path in cas or path in failed:
                continue
            try:
                cas[path] = load_client_ca(path)
            except ClientCAError as e:
                failed.add(path)
                line = next(
                    (
                        number
                        for text, number in f.literal_lines.items()
                        if os.path.normpath(os.path.join(directory, text)) == path
                    ),
                    None,
                )
                message = f"virtual host {vhost.names[0]!r}: {e}"
                problems.append(ConfigProblem(f.path, message, line))
    return cas, problems


def _absolute(directory: str, path: str | None) -> str | None:
    return None if path is None else os.path.normpath(os.path.join(directory, path))


def _load_upstream_tls(
    loaded: Sequence[_LoadedFile],
    clusters: Mapping[str, Cluster],
    defined: Mapping[str, Sequence[ClusterDefinition]],
) -> tuple[dict[str, UpstreamTLSFiles], list[ConfigProblem]]:
    """Every running cluster's ``upstream_tls`` files, read once per cluster,
    its relative paths taken from the directory of the file that (first)
    defines or routes to it, as ``client_ca``'s are."""
    running = dict(clusters)
    for name, definitions in defined.items():
        if name not in running and definitions:
            running[name] = definitions[0].cluster
    origin: dict[str, _LoadedFile] = {}
    for f in loaded:
        for vhost in f.virtual_hosts:
            for route in vhost.routes:
                for cluster in route.clusters:
                    origin.setdefault(cluster.name, f)
        for definition in f.defined_clusters:
            origin.setdefault(definition.cluster.name, f)
    result: dict[str, UpstreamTLSFiles] = {}
    problems: list[ConfigProblem] = []
    for name, cluster in running.items():
        tls = cluster.upstream_tls
        source = origin.get(name)
        if tls is None or source is None:
            continue
        files = _read_upstream_tls(tls, source, f"cluster {name!r}")
        if isinstance(files, ConfigProblem):
            problems.append(files)
        else:
            result[name] = files
    return result, problems


def _load_auth_tls(
    loaded: Sequence[_LoadedFile],
) -> tuple[dict[int, UpstreamTLSFiles], list[ConfigProblem]]:
    """Every ``https://`` forward auth's TLS files, by the ``id()`` of its
    route, relative paths from the directory of the file whose virtual host
    has the route, read as a cluster's ``upstream_tls`` is."""
    result: dict[int, UpstreamTLSFiles] = {}
    problems: list[ConfigProblem] = []
    # Each setting's files read once per directory (one auth shared by many routes).
    read: dict[tuple[str, UpstreamTLS], UpstreamTLSFiles | ConfigProblem] = {}
    for f in loaded:
        directory = os.path.dirname(os.path.abspath(f.path))
        for vhost in f.virtual_hosts:
            for route in vhost.routes:
                auth = route.auth
                if auth is None or auth.tls is None or id(route) in result:
                    continue
                files = read.get((directory, auth.tls))
                if files is None:
                    files = read[directory, auth.tls] = _read_upstream_tls(
                        auth.tls, f, f"ForwardAuth {auth.url!r}"
                    )
                    if isinstance(files, ConfigProblem):
                        problems.append(files)
                if not isinstance(files, ConfigProblem):
                    result[id(route)] = files
    return result, problems


def _read_upstream_tls(
    tls: UpstreamTLS, source: _LoadedFile, owner: str
) -> UpstreamTLSFiles | ConfigProblem:
    """``tls``'s files (a cluster's ``upstream_tls``, a forward auth's
    ``tls``), its relative paths taken from the directory of ``source``, or
    the problem naming ``owner``, the file and the line that names it."""
    directory = os.path.dirname(os.path.abspath(source.path))
    settings = attrs.evolve(
        tls,
        ca_file=_absolute(directory, tls.ca_file),
        client_cert=_absolute(directory, tls.client_cert),
    )
    try:
        return load_upstream_tls(settings)
    except UpstreamTLSError as e:
        written = tls.ca_file if e.field == "ca_file" else tls.client_cert
        line = source.literal_lines.get(written) if written is not None else None
        return ConfigProblem(source.path, f"{owner}: {e}", line)


def _module_statements(tree: ast.Module | None) -> list[ast.stmt]:
    """The statements that run at module level: the top level and the bodies of
    top-level ``if``/``for``/``while``/``with``/``try`` (not of functions or classes)."""
    result: list[ast.stmt] = []
    pending: list[ast.stmt] = list(tree.body) if tree is not None else []
    while pending:
        statement = pending.pop(0)
        result.append(statement)
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            pending.extend(getattr(statement, field, []))
        for handler in getattr(statement, "handlers", []):
            pending.extend(handler.body)
    return sorted(result, key=lambda node: (node.lineno, node.col_offset))


def _bound_names(statement: ast.stmt) -> set[str]:
    targets: list[ast.expr] = []
    if isinstance(statement, ast.Assign):
        targets = list(statement.targets)
    elif isinstance(statement, ast.AnnAssign | ast.AugAssign):
        targets = [statement.target]
    elif isinstance(statement, ast.Import | ast.ImportFrom):
        return {(alias.asname or alias.name).split(".")[0] for alias in statement.names}
    names = set()
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names.add(node.id)
    return names


def _last_binding(statements: Sequence[ast.stmt], name: str) -> ast.stmt | None:
    """The last module-level statement binding ``name`` (its value is the one left)."""
    found = None
    for statement in statements:
        if name in _bound_names(statement):
            found = statement
    return found


def _string_line(node: ast.AST, text: str) -> int | None:
    """The first line inside ``node`` with a string literal equal to ``text``."""
    lines = [
        child.lineno
        for child in ast.walk(node)
        if isinstance(child, ast.Constant) and child.value == text
    ]
    return min(lines) if lines else None


def _read_expectations(
    filename: str, namespace: dict[str, Any], tree: ast.Module | None
) -> tuple[tuple[Expectation, ...], list[ConfigProblem]]:
    """``expectations = [(url, cluster_name), ...]``; optional.  Only the shape is checked."""
    if "expectations" not in namespace:
        return (), []
    value = namespace["expectations"]
    statement = _last_binding(_module_statements(tree), "expectations")
    statement_line = statement.lineno if statement is not None else None
    if not isinstance(value, list | tuple):
        return (), [
            ConfigProblem(
                filename,
                "expectations must be a list of (url, cluster name) tuples, "
                f"not {type(value).__name__}",
                statement_line,
            )
        ]
    # With a literal list, each tuple's own line; otherwise the line of its URL.
    element_lines: list[int] | None = None
    if (
        isinstance(statement, ast.Assign | ast.AnnAssign)
        and isinstance(statement.value, ast.List | ast.Tuple)
        and len(statement.value.elts) == len(value)
        and not any(isinstance(e, ast.Starred) for e in statement.value.elts)
    ):
        element_lines = [e.lineno for e in statement.value.elts]
    expectations: list[Expectation] = []
    problems: list[ConfigProblem] = []
    for index, item in enumerate(value):
        if element_lines is not None:
            line: int | None = element_lines[index]
        else:
            line = None
            if isinstance(item, tuple | list) and item and isinstance(item[0], str):
                line = _string_line(tree, item[0]) if tree is not None else None
            if line is None:
                line = statement_line
        if (
            not isinstance(item, tuple | list)
            or len(item) != 2
            or not all(isinstance(part, str) and part for part in item)
        ):
            problems.append(
                ConfigProblem(
                    filename,
                    f"expectations[{index}] must be a (url, cluster name) tuple of two "
                    f"non-empty strings, not {_short_repr(item)}",
                    line,
                )
            )
            continue
        expectations.append(Expectation(item[0], item[1], filename, line))
    return tuple(expectations), problems


def _clusters_in(value: object) -> list[Cluster]:
    if isinstance(value, Cluster):
        return [value]
    items: list[object] = []
    try:
        if isinstance(value, Mapping):
            items = [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple | set | frozenset):
            items = list(value)
    except Exception:  # a user's odd container: not where clusters are
        return []
    return [item for item in items if isinstance(item, Cluster)]


def _module_clusters(
    filename: str, namespace: dict[str, Any], tree: ast.Module | None
) -> tuple[ClusterDefinition, ...]:
    """Every Cluster bound at module level of a file: ``api = Cluster(...)``, or one
    level inside a list, tuple, set or dict bound at module level."""
    statements = _module_statements(tree)
    definitions: list[ClusterDefinition] = []
    seen: set[tuple[str, Cluster]] = set()
    for variable, value in namespace.items():
        if variable.startswith("__"):
            continue
        clusters = _clusters_in(value)
        if not clusters:
            continue
        statement = _last_binding(statements, variable)
        for cluster in clusters:
            if (cluster.name, cluster) in seen:
                continue  # the same cluster under two names: once is enough
            seen.add((cluster.name, cluster))
            line = None
            if statement is not None:
                line = _string_line(statement, cluster.name) or statement.lineno
            elif tree is not None:
                line = _string_line(tree, cluster.name)
            definitions.append(ClusterDefinition(cluster, filename, line, variable))
    return tuple(definitions)


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse(source: str | bytes) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _literal_lines(source: str) -> dict[str, int]:
    """Map each string literal in ``source``, and the hostname it spells, to its first line.

    Only used to point at a line when reporting a problem.
    """
    return _literals_in(_parse(source))


def _literals_in(tree: ast.AST | None) -> dict[str, int]:
    lines: dict[str, int] = {}
    if tree is None:
        return lines
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            keys = [node.value]
            try:
                keys.append(normalise_pattern(node.value))
            except ValueError:
                pass
            for key in keys:
                if node.lineno < lines.get(key, node.lineno + 1):
                    lines[key] = node.lineno
    return lines


def _read_source(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _cross_check(loaded: Sequence[_LoadedFile]) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    literal_lines: dict[str, dict[str, int]] = {}

    def line_of(path: str, name: str) -> int | None:
        if path not in literal_lines:
            literal_lines[path] = _literal_lines(_read_source(path))
        return literal_lines[path].get(name)

    def where(path: str, name: str) -> str:
        line = line_of(path, name)
        return path if line is None else f"{path}:{line}"

    claimed: dict[str, tuple[str, VirtualHost]] = {}
    clusters: dict[str, tuple[str, Cluster]] = {}
    conflicts: set[tuple[str, Cluster, Cluster]] = set()
    disk_stores: dict[str, tuple[str, Cache]] = {}
    for f in loaded:
        for vhost in f.virtual_hosts:
            for name in vhost.names:
                first = claimed.get(name)
                if first is None:
                    claimed[name] = (f.path, vhost)
                    continue
                first_path, first_vhost = first
                same = " (the same virtual host listed twice)" if first_vhost is vhost else ""
                problems.append(
                    ConfigProblem(
                        f.path,
                        f"hostname {name!r} is claimed by two virtual hosts: here and in "
                        f"{where(first_path, name)}{same}",
                        line_of(f.path, name),
                    )
                )

            prefixes: set[str] = set()
            for route in vhost.routes:
                if route.prefix in prefixes:
                    problems.append(
                        ConfigProblem(
                            f.path,
                            f"virtual host {vhost.names[0]!r} has two routes for prefix "
                            f"{route.prefix!r}",
                            line_of(f.path, vhost.names[0]),
                        )
                    )
                prefixes.add(route.prefix)

                cache = route.cache
                directory = None if cache is None else cache.disk_directory
                if cache is not None and directory is not None:
                    first_store = disk_stores.setdefault(directory, (f.path, cache))
                    if first_store[1] != cache:
                        problems.append(
                            ConfigProblem(
                                f.path,
                                f"cache directory {directory!r} is given two different Cache "
                                f"settings (also in {first_store[0]}); routes sharing a disk "
                                "store share one Cache object",
                                line_of(f.path, cache.store),
                            )
                        )

                for cluster in route.clusters:
                    seen = clusters.get(cluster.name)
                    if seen is None:
                        clusters[cluster.name] = (f.path, cluster)
                        continue
                    seen_path, seen_cluster = seen
                    conflict = (cluster.name, seen_cluster, cluster)
                    if seen_cluster == cluster or conflict in conflicts:
                        continue
                    conflicts.add(conflict)
                    problems.append(
                        ConfigProblem(
                            f.path,
                            f"cluster {cluster.name!r} is defined twice with different settings "
                            f"(also in {seen_path}); give each cluster its own name or share "
                            "one Cluster object",
                            line_of(f.path, cluster.name),
                        )
                    )
    return problems
