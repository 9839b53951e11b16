"""
The HTTP/1.1 and HTTP/2 protocol limits, as one frozen settings object (as hyper-h2's
``H2Configuration``): :attr:`Settings.http_limits
<edgeproxy.config.settings.Settings.http_limits>` holds it, the service hands
it to the downstream listeners and to the upstream client, and nothing reads
a module constant instead.  The defaults are the values edgeproxy has always
had; docs/configuration.md lists them.
"""

from __future__ import annotations

import attrs

__all__ = ["H2Limits", "HTTPLimits"]


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


def _positive_number(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if type(value) not in (int, float) or not value > 0:
        raise ValueError(f"H2Limits.{attribute.name} must be a positive number, not {value!r}")


def _h2_positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"H2Limits.{attribute.name} must be a positive int, not {value!r}")


#: The largest flow-control window HTTP/2 allows (RFC 9113 6.9.1).
MAX_WINDOW = 2**31 - 1


def _window(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    _h2_positive(instance, attribute, value)
    if value > MAX_WINDOW:
        raise ValueError(f"H2Limits.{attribute.name} must be at most {MAX_WINDOW}, not {value}")


def _frame_size(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    # RFC 9113 6.5.2: SETTINGS_MAX_FRAME_SIZE is between 2^14 and 2^24-1.
    if type(value) is not int or not 2**14 <= value <= 2**24 - 1:
        raise ValueError(f"H2Limits.max_frame_size must be in [16384, 16777215], not {value!r}")


@attrs.frozen
class H2Limits:
    """Bounds on one HTTP/2 client connection (the ``--h2-*`` options): what
    it is told in its SETTINGS, and the defences against the known HTTP/2
    floods.  docs/http.md#http2 lists them."""

    #: Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS;
    #: ``--h2-max-concurrent-streams``; nginx: 128).
    max_concurrent_streams: int = attrs.field(default=100, validator=_h2_positive)
    #: Largest decoded header list of a request, each field counted as name,
    #: value and 32 (SETTINGS_MAX_HEADER_LIST_SIZE, RFC 9113 6.5.2;
    #: ``--h2-max-header-list-size``): HPACK bombs stop here.  A header block
    #: (HEADERS and its CONTINUATION frames) larger than this as received is a
    #: connection error before it is buffered further.
    max_header_list_size: int = attrs.field(default=32 * 1024, validator=_h2_positive)
    #: Largest frame payload the client may send (SETTINGS_MAX_FRAME_SIZE;
    #: ``--h2-max-frame-size``).
    max_frame_size: int = attrs.field(default=16 * 1024, validator=_frame_size)
    #: Each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE;
    #: ``--h2-initial-window-size``): request body bytes a client may send
    #: ahead of edgeproxy taking them.
    initial_window_size: int = attrs.field(default=65_535, validator=_window)
    #: The connection's receive window, all streams together
    #: (``--h2-connection-window-size``).
    connection_window_size: int = attrs.field(default=1024 * 1024, validator=_window)
    #: Streams the client may reset per second before the connection is closed
    #: with GOAWAY(ENHANCE_YOUR_CALM) (rapid reset, CVE-2023-44487;
    #: ``--h2-max-resets-per-second``).
    max_resets_per_second: int = attrs.field(default=100, validator=_h2_positive)
    #: SETTINGS, PING and PRIORITY frames the client may send per second
    #: before GOAWAY(ENHANCE_YOUR_CALM) (``--h2-control-frames-per-second``).
    max_control_frames_per_second: int = attrs.field(default=100, validator=_h2_positive)
    #: Seconds a stream's response may wait for the client to open its
    #: flow-control window before the stream is reset (a zero-window stall;
    #: ``--h2-window-timeout``).
    window_timeout: float = attrs.field(default=30.0, validator=_positive_number)
    #: Response bytes held per stream beyond what the client's window lets
    #: through; past it the stream's producer (the upstream socket) is paused.
    max_stream_buffer: int = attrs.field(default=64 * 1024, validator=_h2_positive)
