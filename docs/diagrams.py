"""Regenerate the state diagrams embedded in docs/resilience.md from the machines.

    python docs/diagrams.py          # rewrite the ```dot blocks in place
    python docs/diagrams.py --check  # exit 1 if they are stale

Each block follows a ``<!-- diagram: NAME -->`` marker.  Needs the ``graphviz``
Python package (not the binary).  tests/cluster/test_breaker.py asserts they are current.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from edgeproxy import breaker, health

DOCS = Path(__file__).resolve().parent / "resilience.md"
DIAGRAMS: dict[str, Callable[[], str]] = {
    "breaker": breaker.diagram,
    "health": health.diagram,
    "health-check-loop": health.checker_diagram,
}
_BLOCK = re.compile(r"(<!-- diagram: (\S+) -->\n```dot\n)(.*?)(```\n)", re.DOTALL)


def regenerate(text: str) -> str:
    def replace(m: re.Match[str]) -> str:
        return m.group(1) + DIAGRAMS[m.group(2)]() + m.group(4)

    return _BLOCK.sub(replace, text)


def main(argv: list[str]) -> int:
    text = DOCS.read_text()
    new = regenerate(text)
    if argv == ["--check"]:
        if new != text:
            print(f"{DOCS} diagrams are stale: run python docs/diagrams.py", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    DOCS.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
