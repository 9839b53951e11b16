"""Socket options shared by the downstream and upstream sides."""

from __future__ import annotations

from typing import Any

__all__ = ["set_no_delay"]


def set_no_delay(transport: Any) -> None:
    """Disable Nagle on the TCP socket under ``transport`` (under TLS too).

    A proxy relays small writes (headers, then body) that Nagle plus delayed
    ACKs would hold for 40 ms each.
    """
    for _ in range(3):
        set_it = getattr(transport, "setTcpNoDelay", None)
        if set_it is not None:
            try:
                set_it(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return
