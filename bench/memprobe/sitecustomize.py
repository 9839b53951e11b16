"""
Bench-only: ``bench/aborted_readers.py --trim`` puts this directory on
``twistd edgeproxy``'s ``PYTHONPATH``, so Python imports it at start-up.  With
``EDGEPROXY_MEM_PROBE=PATH`` set, SIGUSR2 makes the process run one full
collection, then glibc's ``malloc_trim(0)``, and write to ``PATH`` (as JSON) how
many objects the collection freed and ``VmRSS`` before, between and after: what
the process holds in live objects versus what its allocator keeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import signal
from typing import Any

_PATH = os.environ.get("EDGEPROXY_MEM_PROBE")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _probe(signum: int, frame: Any) -> None:
    assert _PATH is not None
    result: dict[str, Any] = {"rss_kib": _rss_kib()}
    result["collected"] = gc.collect()
    result["rss_after_collect_kib"] = _rss_kib()
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)
        result["rss_after_trim_kib"] = _rss_kib()
    tmp = _PATH + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(result))
    os.replace(tmp, _PATH)


if _PATH:
    signal.signal(signal.SIGUSR2, _probe)
