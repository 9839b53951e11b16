"""
Start-up memory settings: glibc malloc tuning (through a stand-in libc and,
where this is glibc, the real one) and the collector's settling.
"""

from __future__ import annotations

import gc
import platform
import subprocess
import sys

import pytest

from edgeproxy.net import heap


class FakeLibc:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


def test_tune_malloc_sets_trim_and_mmap_thresholds() -> None:
    libc = FakeLibc()
    assert heap.tune_malloc(libc)
    assert libc.calls == [(-1, heap.MALLOC_TRIM_THRESHOLD), (-3, heap.MALLOC_MMAP_THRESHOLD)]
    assert heap.MALLOC_MMAP_THRESHOLD < heap.MALLOC_TRIM_THRESHOLD


def test_tune_malloc_reports_a_refusal() -> None:
    libc = FakeLibc(result=0)
    assert not heap.tune_malloc(libc)


def test_tune_malloc_without_mallopt_changes_nothing() -> None:
    assert not heap.tune_malloc(object())


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere tune_malloc is a no-op"
)
def test_tune_malloc_on_this_glibc() -> None:
    # In a child: the setting is process-wide.
    code = "from edgeproxy.net import heap; print(heap.tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_settle_freezes_the_heap_and_raises_the_threshold() -> None:
    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_threshold() == heap.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
