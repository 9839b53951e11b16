"""
The two values of a WebSocket opening handshake (RFC 6455 4) that edgeproxy
makes itself, for a WebSocket over HTTP/2 (RFC 8441) sent upstream as an
HTTP/1.1 one: the client's ``Sec-WebSocket-Key`` (an HTTP/2 client sends
none) and the ``Sec-WebSocket-Accept`` the backend must answer it with.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["VERSION", "accept_for", "key_from"]

#: The only version of the protocol (RFC 6455 4.1).
VERSION = b"13"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def key_from(nonce: bytes) -> bytes:
    """A ``Sec-WebSocket-Key``: a random 16-byte ``nonce``, base64."""
    return base64.b64encode(nonce)


def accept_for(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server answers ``key`` with."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())
