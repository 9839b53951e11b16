"""
The frame boundaries of an HTTP/2 client's byte stream, read ahead of the
``h2`` package, for the one thing it does not bound tightly: a header block
spread over CONTINUATION frames.  h2 buffers up to 64 frames of a block before
it refuses it (a MiB at the default frame size, more with larger frames); this
measures the block as its frames arrive, so a block larger than the header list
limit is refused after at most one frame past it (the CONTINUATION flood,
CVE-2024-27316 and friends), and says since when a block has been open, for the
header deadline.  Pure: bytes in, numbers out.
"""

from __future__ import annotations

__all__ = ["HeaderBlockGuard"]

#: The client connection preface (RFC 9113 3.4), before the first frame.
PREFACE_SIZE = 24
_HEADER_SIZE = 9
_HEADERS = 0x1
_PUSH_PROMISE = 0x5
_CONTINUATION = 0x9
_END_HEADERS = 0x4


class HeaderBlockGuard:
    """Follows the frames of one connection's input."""

    __slots__ = ("_head", "_skip", "block_bytes")

    def __init__(self) -> None:
        #: Payload bytes still to pass before the next frame header (the preface first).
        self._skip = PREFACE_SIZE
        #: The part of a frame header that arrived so far.
        self._head = b""
        #: Bytes of the header block being received (HEADERS and its
        #: CONTINUATIONs without END_HEADERS yet); 0 when none is open.
        self.block_bytes = 0

    def feed(self, data: bytes) -> int:
        """Read ``data``; returns the size of the largest header block open
        at a frame boundary in it, before the frame that ended it (0: none).
        Only frame headers are looked at."""
        at = 0
        end = len(data)
        peak = self.block_bytes
        while True:
            skip = self._skip
            if skip:
                if end - at <= skip:
                    self._skip = skip - (end - at)
                    return peak
                at += skip
                self._skip = 0
            head = self._head
            need = _HEADER_SIZE - len(head)
            if end - at < need:
                self._head = head + data[at:]
                return peak
            if head:
                head += data[at : at + need]
                self._head = b""
            else:
                head = data[at : at + _HEADER_SIZE]
            at += need
            length = int.from_bytes(head[:3], "big")
            kind = head[3]
            ends = head[4] & _END_HEADERS
            if kind == _HEADERS or kind == _PUSH_PROMISE:
                self.block_bytes = 0 if ends else length
            elif kind == _CONTINUATION:
                # A stray CONTINUATION is h2's to refuse; counted all the same.
                self.block_bytes = 0 if ends else self.block_bytes + length
            if self.block_bytes > peak:
                peak = self.block_bytes
            self._skip = length
