"""
The HTTP/1.1 protocol limits, as one frozen settings object (as hyper-h2's
``H2Configuration``): :attr:`Settings.http_limits
<edgeproxy.config.settings.Settings.http_limits>` holds it, the service hands
it to the downstream listeners and to the upstream client, and nothing reads
a module constant instead.  The defaults are the values edgeproxy has always
had; docs/configuration.md lists them.
"""

from __future__ import annotations

import attrs

__all__ = ["HTTPLimits"]


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"HTTPLimits.{attribute.name} must be a positive int, not {value!r}")


@attrs.frozen
class HTTPLimits:
    """Bounds on what one HTTP/1.1 message may make edgeproxy hold or do."""

    #: Longest request-target (the URL of the request line), in bytes (414
    #: past it; ``--max-request-line``).  nginx's request line must fit one
    #: 8 KiB buffer.
    max_request_line: int = attrs.field(default=8 * 1024, validator=_positive)
    #: Largest header block of a request: every header line, each counted as
    #: name, value and 4 bytes of ``": "`` and CRLF (431 past it;
    #: ``--max-header-bytes``).  nginx allows 4 x 8 KiB buffers.  While a head
    #: is still arriving, what llhttp buffers of it is cut at four times the
    #: two bounds together.
    max_request_head_bytes: int = attrs.field(default=16 * 1024, validator=_positive)
    #: Most header lines in one request (431 past it; ``--max-headers``).
    max_request_headers: int = attrs.field(default=500, validator=_positive)
    #: Bytes read and held unparsed behind a pipelined request that waits for
    #: the one before it; past this the connection stops reading.
    max_held_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    #: A streamed request body (a route with ``request_buffering=False``):
    #: bytes held while no upstream connection takes them (its stages still
    #: deciding, a connection being made); past them the client is not read.
    request_stream_window: int = attrs.field(default=256 * 1024, validator=_positive)
    #: Request bodies up to this many bytes are spooled in memory, larger ones
    #: (and chunked ones once they grow past it) to a temporary file.
    spool_in_memory: int = attrs.field(default=100_000, validator=_positive)
    #: Largest upstream response head: the status line, the headers and any
    #: interim (1xx) heads before them; also the most trailer or chunk
    #: extension bytes after it.  Past it the response fails (502).
    max_response_head_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    #: Request bodies up to this size go upstream in the same write as the
    #: head; larger ones are read from their spool in chunks of this size as
    #: the upstream socket drains.
    upstream_body_chunk: int = attrs.field(default=64 * 1024, validator=_positive)
    #: Bytes asked of an upstream socket per read (Twisted's default is 64 KiB):
    #: a large body costs fewer trips through the parser and the relay.
    upstream_read_size: int = attrs.field(default=128 * 1024, validator=_positive)
