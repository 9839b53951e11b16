"""
Mutation testing of edgeproxy's pure core, one module at a time against its own unit tests.

Not part of CI: run it by hand before and after a change to a pure module and compare the
kill rates with the table in docs/testing.md.  Needs the ``mutation`` extra
(``.venv/bin/pip install -e '.[mutation]'``)::

    .venv/bin/python tools/mutation.py                   # every module in pyproject.toml
    .venv/bin/python tools/mutation.py hostnames routing # some of them (stem or path)
    .venv/bin/python tools/mutation.py headers --survivors

The modules and their tests are ``[tool.edgeproxy.mutation.modules]`` in pyproject.toml, the
settings shared by all ``[tool.mutmut]``.  mutmut reads its configuration from the working
directory, so each module gets a scratch copy of the package and the tests in
``.mutation/<stem>/`` whose pyproject.toml narrows ``only_mutate`` and the test selection to
that module.  The copy stays after the run: ``cd .mutation/<stem> && ../../.venv/bin/mutmut
show <mutant>`` (or ``mutmut browse``) shows a mutant's diff.

mutmut does not mutate decorated functions (a decorator runs at import, before any mutant
is switched on), so in the scratch copy the ``functools`` cache decorators of the mutated
module are removed: caching is not behaviour, and a cache filled before the mutant was
switched on would answer in its place.  ``--resume`` continues a module that was cut off.

Prints killed / survived / no tests / timeout / total and the kill rate per module: killed
and timed-out mutants over all mutants (a mutant no selected test reaches counts as
survived).  Timed-out mutants get a second run, alone, before they count.  One mutant at a
time (``--max-children``, default 1): the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".mutation"

# A line that is only a functools cache decorator: "@functools.lru_cache(maxsize=4096)",
# "@functools.cache", "@lru_cache" ...
_CACHE_DECORATOR = re.compile(r"^[ \t]*@(functools\.)?(lru_cache|cache)\b.*\n", re.MULTILINE)

_COUNTS = ("killed", "survived", "no_tests", "timeout", "suspicious", "skipped", "segfault")


def _load_pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _toml_value(value: Any) -> str:
    # JSON's strings, numbers and arrays of them are valid TOML; booleans are spelled alike.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | list):
        return json.dumps(value)
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(name: str, table: dict[str, Any]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _resolve(names: list[str], modules: dict[str, list[str]]) -> list[str]:
    if not names:
        return list(modules)
    chosen = []
    for name in names:
        matches = [m for m in modules if name in (m, Path(m).stem, m.removesuffix(".py"))]
        if len(matches) != 1:
            raise SystemExit(f"unknown module {name!r}; known: {', '.join(modules)}")
        chosen.append(matches[0])
    return chosen


def pyproject_also_copy() -> list[str]:
    """What mutmut copies beside the package and the tests (``also_copy``)."""
    return list(_load_pyproject()["tool"]["mutmut"].get("also_copy", []))


def prepare(module: str, workdir: Path) -> None:
    """A fresh scratch copy of the package, the tests and ``also_copy``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(REPO / "edgeproxy", workdir / "edgeproxy", ignore=ignore)
    shutil.copytree(REPO / "tests", workdir / "tests", ignore=ignore)
    for extra in pyproject_also_copy():
        source_path = REPO / extra
        if source_path.is_dir():
            shutil.copytree(source_path, workdir / extra, ignore=ignore)
        elif source_path.exists():
            shutil.copy2(source_path, workdir / extra)
    source = workdir / module
    source.write_text(_CACHE_DECORATOR.sub("", source.read_text()))


def configure(module: str, tests: list[str], pyproject: dict[str, Any], workdir: Path) -> None:
    """The scratch copy's pyproject.toml: mutate ``module`` against ``tests`` only."""
    mutmut = dict(pyproject["tool"]["mutmut"])
    mutmut["only_mutate"] = [module]
    mutmut["pytest_add_cli_args_test_selection"] = list(tests)
    pytest_options = pyproject["tool"]["pytest"]["ini_options"]
    (workdir / "pyproject.toml").write_text(
        _toml_table("tool.pytest.ini_options", pytest_options)
        + "\n"
        + _toml_table("tool.mutmut", mutmut)
    )


def _mutmut(*args: str, cwd: Path, log: Path, timeout: float | None = None) -> bool:
    """Run ``mutmut args`` in ``cwd``, output appended to ``log``; False if it timed out."""
    with log.open("a") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mutmut", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group: on a timeout the forkserver and its workers go too.
            start_new_session=True,
        )
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return False
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    return True


def _statuses(workdir: Path, log: Path) -> dict[str, str]:
    """Each mutant's status as ``mutmut results`` lists it (killed ones are not listed)."""
    listing = workdir / "results.txt"
    with listing.open("w") as out, log.open("a") as errors:
        subprocess.run(
            [sys.executable, "-m", "mutmut", "results"],
            cwd=workdir,
            stdout=out,
            stderr=errors,
            check=False,
            timeout=300,
        )
    statuses = {}
    for line in listing.read_text().splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    return statuses


def run_module(
    module: str,
    tests: list[str],
    pyproject: dict[str, Any],
    *,
    max_children: int,
    timeout: float,
    resume: bool = False,
) -> dict[str, Any]:
    workdir = SCRATCH / Path(module).stem
    if not (resume and (workdir / "mutants").is_dir()):
        # On --resume the scratch copy stays as it is, its pyproject.toml included:
        # rewriting it makes mutmut collect its stats again, and that second
        # collection credits no test with any function.
        prepare(module, workdir)
        configure(module, tests, pyproject, workdir)
    log = workdir / "mutmut.log"
    started = time.monotonic()
    finished = _mutmut(
        "run", "--max-children", str(max_children), cwd=workdir, log=log, timeout=timeout
    )
    if finished:
        # mutmut's timeout is wall-clock as well as CPU time: on a busy machine a
        # mutant the tests kill in a second can be stopped as a timeout, and a
        # surviving one counted as detected.  A second chance, alone, tells them apart.
        timed_out = [
            name for name, status in _statuses(workdir, log).items() if status == "timeout"
        ]
        if timed_out:
            finished = _mutmut(
                "run", "--max-children", "1", *timed_out, cwd=workdir, log=log, timeout=timeout
            )
    elapsed = time.monotonic() - started
    _mutmut("export-cicd-stats", cwd=workdir, log=log, timeout=300)
    stats_file = workdir / "mutants" / "mutmut-cicd-stats.json"
    if not stats_file.exists():
        raise SystemExit(f"{module}: mutmut produced no results; see {log}")
    stats = json.loads(stats_file.read_text())
    counts = {key: int(stats.get(key, 0)) for key in _COUNTS}
    total = int(stats["total"])
    if total and not sum(counts.values()):
        # mutmut stops before the first mutant when the clean tests fail (a file
        # the tests read that is not in the scratch copy, say).
        raise SystemExit(f"{module}: mutmut checked no mutant; see {log}")
    detected = counts["killed"] + counts["timeout"]
    return {
        "module": module,
        "tests": tests,
        **counts,
        "total": total,
        "checked": sum(counts.values()),
        "rate": detected / total if total else 1.0,
        "complete": finished,
        "seconds": round(elapsed),
        "survivors": [
            f"{name} ({status})"
            for name, status in _statuses(workdir, log).items()
            if status in ("survived", "no tests")
        ],
    }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("modules", nargs="*", help="module stems or paths (default: all)")
    parser.add_argument("--max-children", type=int, default=1, help="parallel mutants (default 1)")
    parser.add_argument(
        "--timeout", type=float, default=15 * 60, help="seconds per module before it is cut off"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the scratch copy and mutmut's results, check only the mutants not checked yet"
        " (after a cut-off run); a changed source, test or setting needs a fresh run",
    )
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    pyproject = _load_pyproject()
    modules: dict[str, list[str]] = pyproject["tool"]["edgeproxy"]["mutation"]["modules"]
    results = []
    for module in _resolve(args.modules, modules):
        print(f"mutating {module} against {' '.join(modules[module])} ...", file=sys.stderr)
        result = run_module(
            module,
            modules[module],
            pyproject,
            max_children=args.max_children,
            timeout=args.timeout,
            resume=args.resume,
        )
        results.append(result)
        if not result["complete"]:
            print(f"  cut off after {result['seconds']} s: partial", file=sys.stderr)

    commit = _git("rev-parse", "--short", "HEAD")
    dirty = (
        " (with uncommitted changes)"
        if _git("status", "--porcelain", "--", "edgeproxy", "tests")
        else ""
    )
    print(
        f"{datetime.date.today().isoformat()}, commit {commit}{dirty}, mutmut {_mutmut_version()}, "
        f"Python {sys.version.split()[0]}"
    )
    header = (
        f"{'module':<30} {'killed':>6} {'surv.':>6} {'no test':>7} {'timeout':>7} "
        f"{'total':>6} {'rate':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        note = "" if r["complete"] else f"  (cut off: {r['checked']} of {r['total']} checked)"
        print(
            f"{r['module']:<30} {r['killed']:>6} {r['survived']:>6} {r['no_tests']:>7} "
            f"{r['timeout']:>7} {r['total']:>6} {r['rate']:>7.1%}{note}"
        )
    if args.survivors:
        for r in results:
            print(f"\n{r['module']}: {len(r['survivors'])} not killed")
            for name in r["survivors"]:
                print(f"  {name}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"commit": commit + dirty, "mutmut": _mutmut_version(), "results": results},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
