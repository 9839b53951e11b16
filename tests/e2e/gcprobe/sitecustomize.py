"""
Test-only: ``tests/e2e/test_memory.py`` puts this directory on the real
``twistd edgeproxy``'s ``PYTHONPATH``, so Python imports it at start-up.  With
``EDGEPROXY_GC_PROBE=PATH`` set, SIGUSR2 toggles a window on the garbage
collector (edgeproxy has no such hook itself):

- the first signal collects once (whatever is garbage from before is freed)
  and sets ``DEBUG_SAVEALL``: from then on everything the collector finds in
  reference cycles, in any generation, is kept in ``gc.garbage`` instead of
  being freed;
- the second collects once more and writes ``{type name: count}`` of
  ``gc.garbage`` as JSON to ``PATH`` (atomically), then turns the window off.
"""

from __future__ import annotations

import gc
import json
import os
import signal
from collections import Counter
from typing import Any

_PATH = os.environ.get("EDGEPROXY_GC_PROBE")


def _name(o: object) -> str:
    """An object's type, and a function's own name (what made a closure cycle)."""
    name = type(o).__qualname__
    code = getattr(getattr(o, "__func__", o), "__code__", None)
    if code is not None:
        name += f" {code.co_qualname} ({code.co_filename}:{code.co_firstlineno})"
    return name


def _toggle(signum: int, frame: Any) -> None:
    assert _PATH is not None
    gc.collect()
    if not gc.get_debug() & gc.DEBUG_SAVEALL:
        gc.set_debug(gc.DEBUG_SAVEALL)
        result: dict[str, Any] = {"window": "open"}
    else:
        counts = Counter(map(_name, gc.garbage))
        gc.set_debug(0)
        gc.garbage.clear()
        result = {"window": "closed", "garbage": dict(counts)}
    tmp = _PATH + ".tmp"
    with open(tmp, "w") as f:
        # dumps, not dump: json.dump's Python encoder makes closures in cycles.
        f.write(json.dumps(result))
    os.replace(tmp, _PATH)


if _PATH:
    signal.signal(signal.SIGUSR2, _toggle)
