"""
WebSocket over HTTP/2 (RFC 8441) through the real ``twistd edgeproxy``: the
``h2`` package as the client on a real TLS socket (ALPN ``h2``), the real
``websockets`` echo server of ``test_websocket.py`` as the backend.  The
frames are built here (masked, as a client's must be), echoed messages and a
close handshake are checked, and the tunnel's access line.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from typing import Any

import trustme
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, Event, ResponseReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes

from tests.e2e.harness import ProxyProcess
from tests.e2e.test_websocket import access_lines, proxy, ws_backend, ws_ca

__all__ = ["proxy", "ws_backend", "ws_ca"]  # fixtures, used by name


def frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame: FIN, ``opcode``, masked."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def frames(data: bytearray) -> list[tuple[int, bytes]]:
    """The whole (unmasked, server) frames at the front of ``data``, consumed."""
    out = []
    while len(data) >= 2:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        at = 2
        if size == 126:
            if len(data) < 4:
                break
            (size,) = struct.unpack("!H", data[2:4])
            at = 4
        elif size == 127:
            if len(data) < 10:
                break
            (size,) = struct.unpack("!Q", data[2:10])
            at = 10
        if len(data) < at + size:
            break
        out.append((opcode, bytes(data[at : at + size])))
        del data[: at + size]
    return out


class Client:
    def __init__(self, proxy: ProxyProcess, ca: trustme.CA) -> None:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", proxy.ports["https"]), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="shop.example")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def send(self, stream: int, data: bytes, received: bytearray) -> None:
        """``data`` on ``stream`` as the windows allow (reading, and keeping
        what arrives for ``stream``, while they are shut)."""
        while data:
            room = min(
                self.h2.local_flow_control_window(stream), self.h2.max_outbound_frame_size
            )
            if room <= 0:
                for event in self.events():
                    if isinstance(event, DataReceived) and event.stream_id == stream:
                        received += event.data
                continue
            self.h2.send_data(stream, data[:room])
            data = data[room:]
            self.flush()

    def events(self) -> list[Event]:
        data = self.sock.recv(65536)
        assert data, "the proxy closed the connection"
        events = self.h2.receive_data(data)
        for event in events:
            if isinstance(event, DataReceived) and event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        return events


def test_messages_are_echoed_and_a_close_handshake_ends_the_stream(
    proxy: ProxyProcess, ws_ca: trustme.CA
) -> None:
    client = Client(proxy, ws_ca)
    while not client.h2.remote_settings.enable_connect_protocol:
        client.events()
    assert client.h2.remote_settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(
        stream,
        [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
         (":authority", "shop.example"), (":path", "/echo-h2"),
         ("sec-websocket-version", "13")],
    )
    client.flush()
    response: ResponseReceived | None = None
    while response is None:
        response = next((e for e in client.events() if isinstance(e, ResponseReceived)), None)
    headers: dict[bytes, Any] = dict(response.headers)
    assert headers[b":status"] == b"200"
    assert response.stream_ended is None

    messages = [b"hello", b"x" * 300, os.urandom(70_000).hex().encode()[:100_000]]
    received = bytearray()
    echoed: list[tuple[int, bytes]] = []
    for message in messages:
        client.send(stream, frame(0x1, message), received)
        while len(echoed) < messages.index(message) + 1:
            for event in client.events():
                if isinstance(event, DataReceived) and event.stream_id == stream:
                    received += event.data
            echoed += frames(received)
    assert echoed == [(0x1, m) for m in messages]

    client.send(stream, frame(0x8, struct.pack("!H", 1000) + b"done"), received)
    ended = False
    while not ended:
        for event in client.events():
            if isinstance(event, DataReceived) and event.stream_id == stream:
                received += event.data
            if isinstance(event, (StreamEnded, StreamReset)) and event.stream_id == stream:
                ended = True
    assert frames(received) == [(0x8, struct.pack("!H", 1000) + b"done")]
    client.sock.close()
    [line] = access_lines(proxy, "/echo-h2")
    assert line["status"] == 200
