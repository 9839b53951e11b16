"""
``--watch-config``: notices that the configuration files changed (added,
removed, edited) by polling their ``stat`` and asks for a reload.  The reload
itself validates the new configuration and keeps the old one if it is broken.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from edgeproxy.configload import config_files

__all__ = ["ConfigWatcher", "config_fingerprint"]

Fingerprint = tuple[tuple[str, int, int, int], ...]


def config_fingerprint(path: str) -> Fingerprint:
    """What changes when a config file is added, removed or written."""
    try:
        files = config_files(path)
    except Exception:
        # The directory vanished or cannot be listed: the reload reports why.
        return ()
    result = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            continue
        result.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)


class ConfigWatcher(Service):
    """Calls ``on_change`` when the configuration's files change."""

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        on_change: Callable[[], object],
        interval: float = 2.0,
    ) -> None:
        self._path = path
        self._on_change = on_change
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock
        self._interval = interval
        self._seen: Fingerprint = ()

    def startService(self) -> None:
        super().startService()
        self._seen = config_fingerprint(self._path)
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _poll(self) -> None:
        now = config_fingerprint(self._path)
        if now != self._seen:
            self._seen = now
            self.log.info("configuration files changed: reloading")
            self._on_change()
