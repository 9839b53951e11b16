"""
The fuzzing kit shared by the in-memory and the end-to-end fuzz tests:
hypothesis strategies for valid HTTP/1.1 requests and for mutations of
them, and a strict check of what reaches a backend.

What a backend receives is read twice, independently of llhttp (which the
proxy parses with): by h11 (a strict sans-IO parser, here as the server),
and by :func:`head_problems`, which refuses what h11 lets through (obs-fold,
a second Host, Content-Length beside Transfer-Encoding).

Each generated request carries a tag in its query (``tag=33333``) that no
single mutation can turn into another request's tag, so that a forwarded
request can be traced to the request the client sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import h11
from hypothesis import strategies as st

HOST = b"shop.example"

#: RFC 9110 5.6.2.
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A header line as a proxy may forward it: a token, a colon, a value of
#: visible characters (and inner spaces and tabs), nothing folded.
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?)?[ \t]*"
)
#: The request line a proxy forwards: origin form, HTTP/1.1.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e]*) HTTP/1\.1")
_TAG = re.compile(rb"[?&]tag=([0-9])\1{4}(?:&|$)")
_CONNECTION = re.compile(rb"[?&]c=([0-9a-z]+)(?:&|$)")

METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
#: Path characters that need no encoding and make no dot segment.
_PCHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~!$'()*+,;=@"
#: Body bytes: anything but "/", so a body never holds something that reads as a
#: tagged request line of its own.
_BODY_BYTES = bytes(b for b in range(256) if b != ord("/"))


def tag_of(target: bytes) -> int | None:
    """The index of the generated request ``target`` came from, if tagged."""
    match = _TAG.search(target)
    return int(match.group(1)) if match else None


def connection_of(target: bytes) -> str | None:
    """The client connection ``target`` was sent on, if marked."""
    match = _CONNECTION.search(target)
    return match.group(1).decode() if match else None


@dataclass
class Request:
    """A valid request, as generated (before any mutation)."""

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: "none", "length" or "chunked".
    framing: str
    #: The sizes of the chunks the body is sent in (chunked framing).
    chunks: list[int] = field(default_factory=list)
    chunk_extension: bytes = b""

    def encode(self) -> bytes:
        head = b"%s %s %s\r\n" % (self.method, self.target, self.version)
        head += b"".join(b"%s: %s\r\n" % (n, v) for n, v in self.headers) + b"\r\n"
        if self.framing != "chunked":
            return head + self.body
        out = [head]
        pos = 0
        for size in self.chunks:
            out.append(
                b"%x%s\r\n%s\r\n" % (size, self.chunk_extension, self.body[pos : pos + size])
            )
            pos += size
        out.append(b"0\r\n\r\n")
        return b"".join(out)


_NAMES = st.sampled_from(
    [b"Accept", b"User-Agent", b"X-Thing", b"Cookie", b"Cache-Control", b"X-A"]
)
_VALUE = st.binary(max_size=20).map(
    lambda v: bytes(c for c in v if 0x21 <= c <= 0x7E) or b"v"
) | st.sampled_from([b"a b", b"text/html, */*", b"max-age=0", b"\x80\xff"])
_SEGMENT = st.binary(min_size=1, max_size=8).map(
    lambda v: bytes(_PCHARS[c % len(_PCHARS)] for c in v)
)


@st.composite
def valid_requests(draw: st.DrawFn, index: int, connection: str = "") -> Request:
    """A valid request with the tag ``index`` (0-9), marked with the client
    ``connection`` (letters and digits) if given."""
    method = draw(st.sampled_from(METHODS))
    path = b"/" + b"/".join(draw(st.lists(_SEGMENT | st.just(b"%41"), max_size=3)))
    if draw(st.booleans()):
        path = b"/small" + path  # the route with max_body_size=10: 413 past it
    target = path + b"?tag=" + str(index).encode() * 5
    if connection:
        target += b"&c=" + connection.encode()
    if draw(st.booleans()):
        target += b"&q=" + draw(_SEGMENT)
    if draw(st.integers(0, 9)) == 0:
        target = b"http://" + HOST + target
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    headers: list[tuple[bytes, bytes]] = [
        (draw(st.sampled_from([b"Host", b"host", b"HOST"])), HOST)
    ]
    if version == b"HTTP/1.0":
        headers.append((b"Connection", b"keep-alive"))
    headers += draw(st.lists(st.tuples(_NAMES, _VALUE), max_size=4))
    body = draw(st.binary(max_size=64).map(lambda b: bytes(_BODY_BYTES[c % 255] for c in b)))
    framings = ["length", "chunked"] if version == b"HTTP/1.1" else ["length"]
    framing = draw(st.sampled_from(framings + (["none"] if not body else [])))
    chunks: list[int] = []
    extension = b""
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        left = len(body)
        while left:
            size = draw(st.integers(1, left))
            chunks.append(size)
            left -= size
        extension = draw(st.sampled_from([b"", b"", b";ext=1"]))
    if body and version == b"HTTP/1.1" and draw(st.integers(0, 4)) == 0:
        headers.append((b"Expect", b"100-continue"))
    order = draw(st.permutations(range(len(headers))))
    headers = [headers[i] for i in order]
    return Request(method, target, version, headers, body, framing, chunks, extension)


#: What a mutation inserts: the bytes that confuse parsers most.
_INSERTS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b"\x7f", b"\xff", b"\r\n\r\n"]
#: Header lines a mutation adds after the request line: duplicated or
#: conflicting framing, a second host, obs-fold, huge numbers.
_EXTRA_LINES = [
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999999999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 1, 1\r\n",
    b"Content-Length: +3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\x0bchunked\r\n",
    b"Host: other.example\r\n",
    b"Host: shop.example\r\n",
    b"Host:\r\n",
    b"X-Folded: a\r\n b\r\n",
    b" leading-space: x\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"no-colon\r\n",
    b"X-Nul: a\x00b\r\n",
    b"X-Request-Id: " + b"9" * 300 + b"\r\n",
]
#: Request lines that replace the generated one.
_REQUEST_LINES = [
    b"GET / HTTP/1.2",
    b"GET / HTTP/2.0",
    b"GET / HTTP/0.9",
    b"GET / HTTPS/1.1",
    b"GET  / HTTP/1.1",
    b"GET /?tag=00000 HTTP/1.1 extra",
    b"get /?tag=00000 HTTP/1.1",
    b"CONNECT shop.example:443 HTTP/1.1",
    b"PRI * HTTP/2.0",
    b"OPTIONS * HTTP/1.1",
    b"GET http://other.example/ HTTP/1.1",
    b"GET /../etc/passwd HTTP/1.1",
    b"GET /a/%2e%2e/b HTTP/1.1",
    b"GET /a%2f..%2fb HTTP/1.1",
    b"G\x00T / HTTP/1.1",
    b"BREW / HTTP/1.1",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1",
    b"GET \x7f HTTP/1.1",
]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` after one to three mutations."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(
                [
                    "flip",
                    "insert",
                    "delete",
                    "truncate",
                    "line",
                    "request-line",
                    "chunk-size",
                    "bytes",
                ]
            )
        )
        if not data:
            data = b"\r\n"
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + draw(st.sampled_from(_INSERTS)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 4)) :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "line":
            eol = data.find(b"\r\n") + 2 if b"\r\n" in data else 0
            data = data[:eol] + draw(st.sampled_from(_EXTRA_LINES)) + data[eol:]
        elif kind == "request-line":
            eol = data.find(b"\r\n")
            data = draw(st.sampled_from(_REQUEST_LINES)) + (data[eol:] if eol >= 0 else b"\r\n")
        elif kind == "chunk-size":
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                at = head_end + 4
                size = draw(
                    st.sampled_from([b"ffffffffffffffffff", b"-1", b"0x5", b" 5", b"5 ", b"g"])
                )
                data = data[:at] + size + b"\r\n" + data[at:]
        else:
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


@dataclass
class Sent:
    """What one client connection sends: the requests (each valid, or mutated)."""

    requests: list[Request]
    #: The bytes of each, as sent (mutated or not).
    wire: list[bytes]
    mutated: list[bool]

    @property
    def data(self) -> bytes:
        return b"".join(self.wire)


@st.composite
def sent(draw: st.DrawFn, max_requests: int = 4, mutate: bool = True, connection: str = "") -> Sent:
    """One to ``max_requests`` requests, pipelined, each mutated or not."""
    count = draw(st.integers(1, max_requests))
    requests = [draw(valid_requests(i, connection)) for i in range(count)]
    wire: list[bytes] = []
    flags: list[bool] = []
    for request in requests:
        data = request.encode()
        changed = mutate and draw(st.booleans())
        if changed:
            data = draw(mutated(data))
        wire.append(data)
        flags.append(changed and data != request.encode())
    return Sent(requests, wire, flags)


def reads(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into the pieces the reads deliver it in."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


# -- what a backend receives -------------------------------------------------------


def head_problems(head: bytes) -> list[str]:
    """What is wrong with a forwarded request head (``head`` ends with the
    blank line): the checks h11 does not make."""
    problems: list[str] = []
    if not head.endswith(b"\r\n\r\n"):
        return [f"head not ended by CRLF CRLF: {head[-20:]!r}"]
    lines = head[:-4].split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        problems.append("bare CR or LF")
    if not _REQUEST_LINE.fullmatch(lines[0]):
        problems.append(f"request line {lines[0][:100]!r}")
    hosts = 0
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for line in lines[1:]:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            problems.append(f"header line {line[:100]!r}")
            continue
        name, value = match.group(1).lower(), match.group(2) or b""
        if name == b"host":
            hosts += 1
            if value.lower().split(b":")[0] != HOST:
                problems.append(f"Host {value!r}")
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
    if hosts != 1:
        problems.append(f"{hosts} Host lines")
    if lengths and codings:
        problems.append("Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
        problems.append(f"Content-Length {lengths!r}")
    if codings and [c.lower() for c in codings] != [b"chunked"]:
        problems.append(f"Transfer-Encoding {codings!r}")
    return problems


@dataclass(frozen=True)
class Reply:
    """What a backend answers to one request."""

    status: int = 200
    #: "length", "chunked", "close" (the body runs to the close) or "none" (204, 304).
    framing: str = "length"
    body: bytes = b"ok"
    #: A 103 before the response.
    early_hints: bool = False
    #: Bytes sent instead (a broken backend's, then it closes).
    raw: bytes | None = None

    @property
    def closes(self) -> bool:
        return self.framing == "close" or self.raw is not None

    @property
    def sent_body(self) -> bytes:
        return b"" if self.framing == "none" else self.body

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        out = b""
        if self.early_hints:
            out += b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        # What a hidden backend's answer must not show (VirtualHost(hide_backend=True)).
        out += b"HTTP/1.1 %d Fuzz\r\nServer: backend/1.0\r\nX-Powered-By: fuzz\r\n" % self.status
        body = self.body
        if self.framing == "length":
            return out + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        if self.framing == "chunked":
            half = len(body) // 2
            chunks = b"".join(
                b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]) if c
            )
            return out + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        if self.framing == "close":
            return out + b"Connection: close\r\n\r\n" + body
        return out + b"\r\n"


#: The statuses backends answer with; any other status a client gets is the proxy's own.
BACKEND_STATUSES = frozenset({200, 201, 204, 304, 410, 418})


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    if draw(st.integers(0, 5)) == 0:
        return Reply(draw(st.sampled_from([204, 304])), "none", b"", draw(st.booleans()))
    return Reply(
        draw(st.sampled_from([200, 201, 410, 418])),
        draw(st.sampled_from(["length", "chunked", "close"])),
        draw(st.binary(max_size=100)),
        draw(st.integers(0, 5)) == 0,
    )


@st.composite
def broken_replies(draw: st.DrawFn) -> Reply:
    """A mutation of a reply, sent by a backend that closes after it."""
    return Reply(raw=draw(mutated(draw(replies()).encode())))


@dataclass
class Received:
    """One request as a backend received it, and the backend's reply."""

    head: bytes
    method: bytes
    target: bytes
    body: bytes = b""
    complete: bool = False
    reply: Reply | None = None


def _h11_server() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)


class BackendReader:
    """One backend connection's bytes, each request read by a fresh h11
    server connection (strict, independent of llhttp) and its head checked
    by :func:`head_problems`.  After each complete request, ``answer`` is
    called with the bytes of the reply ``reply()`` gives; after a reply that
    closes, :attr:`must_close` is set and nothing more is read."""

    def __init__(self, answer: Callable[[bytes], None], reply: Callable[[], Reply] = Reply) -> None:
        self._h11 = _h11_server()
        self._answer = answer
        self._reply = reply
        self._stream = b""
        #: Where the request being read starts in the stream.
        self._start = 0
        self.requests: list[Received] = []
        self.problems: list[str] = []
        #: The proxy closed the connection.
        self.closed = False
        #: The backend closes the connection (its reply was close-delimited).
        self.must_close = False

    def _consumed(self) -> int:
        return len(self._stream) - len(self._h11.trailing_data[0])

    def feed(self, data: bytes) -> None:
        """What arrived (``b""``: the proxy closed the connection)."""
        if not data:
            self.closed = True
        if self.problems or self.must_close:
            return
        self._stream += data
        try:
            self._h11.receive_data(data)
            self._events()
        except h11.RemoteProtocolError as e:
            self.problems.append(f"h11: {e} in {self._stream[self._start : self._start + 300]!r}")

    def _events(self) -> None:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                head = self._stream[self._start : self._consumed()]
                self.problems += head_problems(head)
                self.requests.append(Received(head, event.method, event.target))
            elif isinstance(event, h11.Data):
                self.requests[-1].body += event.data
            elif isinstance(event, h11.EndOfMessage):
                request = self.requests[-1]
                request.complete = True
                request.reply = reply = self._reply()
                self._answer(reply.encode())
                if reply.closes:
                    self.must_close = True
                    return
                # The next request, on a fresh h11 connection.
                self._start = self._consumed()
                rest = self._stream[self._start :]
                self._h11 = _h11_server()
                if rest:  # (b"" would tell h11 the connection closed)
                    self._h11.receive_data(rest)
                if self.closed:
                    self._h11.receive_data(b"")
            elif isinstance(event, h11.ConnectionClosed):
                return


def forwarding_problems(sent: Sent, received: Sequence[Received]) -> list[str]:
    """Whether what reached the backends matches what the client sent: a
    request forwarded from an unmutated request has its method and body, and
    none is forwarded twice."""
    problems: list[str] = []
    seen: set[int] = set()
    for got in received:
        index = tag_of(got.target)
        if index is None or index >= len(sent.requests) or sent.mutated[index]:
            continue
        want = sent.requests[index]
        if index in seen:
            problems.append(f"request {index} forwarded twice")
        seen.add(index)
        if got.method != want.method:
            problems.append(f"request {index}: method {got.method!r}, sent {want.method!r}")
        if got.complete and got.body != want.body:
            problems.append(f"request {index}: body {got.body[:80]!r}, sent {want.body[:80]!r}")
    return problems


# -- what the client receives ------------------------------------------------------------


@dataclass
class Answer:
    """A final response as the client got it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    #: The 1xx responses before it.
    informational: list[int] = field(default_factory=list)

    def closes(self) -> bool:
        return any(n.lower() == b"connection" and b"close" in v.lower() for n, v in self.headers)

    def names(self) -> set[bytes]:
        return {n.lower() for n, _ in self.headers}


def read_responses(data: bytes, closed: bool) -> tuple[list[Answer], list[str]]:
    """The final responses in ``data`` (h11, as a client), and what is wrong
    with them: not well-formed, data after a response that closes, or
    (``closed``) cut off before its end."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    answers: list[Answer] = []
    informational: list[int] = []
    dummy = h11.Request(method="GET", target="/", headers=[("Host", "x")])
    conn.receive_data(data)
    if closed:
        conn.receive_data(b"")
    try:
        while True:
            if conn.our_state is h11.IDLE:
                if not conn.trailing_data[0]:
                    return answers, []  # nothing after the last response
                conn.send(dummy)
                conn.send(h11.EndOfMessage())
            event = conn.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return answers, []
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                answers.append(Answer(event.status_code, list(event.headers), b"", informational))
                informational = []
            elif isinstance(event, h11.Data):
                answers[-1].body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
    except h11.RemoteProtocolError as e:
        return answers, [f"response not well-formed: {e}: {data[-300:]!r}"]
