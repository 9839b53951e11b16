"""
The HTTP/1.1 framing decisions (:mod:`edgeproxy.core.framing`): tables of
every case the RFC names, exhaustive sweeps against a model written out
case by case, and properties that llhttp (the tokenizer) and these
decisions agree wherever llhttp accepts a message.
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.core.errors import (
    BadRequest,
    EdgeProxyError,
    NotImplementedCoding,
    Reason,
    UpstreamResponseFailed,
)
from edgeproxy.core.framing import (
    CHUNKED,
    IGNORED_BODY,
    NO_BODY,
    UNTIL_CLOSE,
    connection_tokens,
    request_framing,
    request_keep_alive,
    response_framing,
    response_keep_alive,
    sent_response_framing,
)

BAD_FRAMING = ("400", Reason.BAD_FRAMING)
CODING = ("501", Reason.CODING_NOT_IMPLEMENTED)
BAD_RESPONSE = ("502", Reason.BAD_RESPONSE)


def outcome(call: object, *args: object) -> object:
    """The framing, or ``(status, reason)`` of the error raised."""
    try:
        return call(*args)  # type: ignore[operator]
    except EdgeProxyError as e:
        return (str(e.status_hint), e.reason)


# -- the request a client sends ------------------------------------------------------------

REQUESTS = [
    # (http11, Content-Length, Transfer-Encoding) -> framing or error
    ((True, None, None), NO_BODY),
    ((False, None, None), NO_BODY),
    ((True, b"0", None), 0),
    ((False, b"0", None), 0),
    ((True, b"5", None), 5),
    ((False, b"12345", None), 12345),
    ((True, b"007", None), 7),
    ((True, b"5  ", None), 5),  # llhttp leaves trailing whitespace on a value
    ((True, b"5\t", None), 5),
    ((True, b" 5", None), 5),
    ((True, b"18446744073709551615", None), 2**64 - 1),
    ((True, b"", None), BAD_FRAMING),
    ((True, b" ", None), BAD_FRAMING),
    ((True, b"+5", None), BAD_FRAMING),
    ((True, b"-5", None), BAD_FRAMING),
    ((True, b"5_0", None), BAD_FRAMING),
    ((True, b"0x5", None), BAD_FRAMING),
    ((True, b"5 5", None), BAD_FRAMING),
    ((True, b"5,5", None), BAD_FRAMING),
    ((True, b"\xd9\xa1", None), BAD_FRAMING),  # a non-ASCII digit
    ((True, b"5\n", None), BAD_FRAMING),
    ((True, b"9" * 5000, None), BAD_FRAMING),
    ((True, None, b"chunked"), CHUNKED),
    ((True, None, b"Chunked"), CHUNKED),
    ((True, None, b"CHUNKED"), CHUNKED),
    ((True, None, b"chunked  "), CHUNKED),
    ((True, None, b"gzip"), CODING),
    ((True, None, b"identity"), CODING),
    ((True, None, b"gzip, chunked"), CODING),
    ((True, None, b"gzip,chunked"), CODING),  # two lines, as joined
    ((True, None, b"chunked, chunked"), CODING),
    ((True, None, b"chunked,"), CODING),
    ((True, None, b""), CODING),
    ((True, None, b"chunkedx"), CODING),
    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing, chunked or not.
    ((False, None, b"chunked"), BAD_FRAMING),
    ((False, None, b"gzip"), BAD_FRAMING),
    # Content-Length with Transfer-Encoding: the smuggling signal, whatever the coding.
    ((True, b"5", b"chunked"), BAD_FRAMING),
    ((True, b"0", b"gzip"), BAD_FRAMING),
    ((False, b"5", b"chunked"), BAD_FRAMING),
]


@pytest.mark.parametrize(("args", "expected"), REQUESTS, ids=[repr(a) for a, _ in REQUESTS])
def test_request_framing(args: tuple[bool, bytes | None, bytes | None], expected: object) -> None:
    assert outcome(request_framing, *args) == expected


def test_request_framing_errors_are_the_proxys_own_types() -> None:
    with pytest.raises(NotImplementedCoding):
        request_framing(True, None, b"gzip")
    with pytest.raises(BadRequest) as raised:
        request_framing(False, None, b"chunked")
    assert type(raised.value) is BadRequest and raised.value.reason is Reason.BAD_FRAMING


# -- the response an upstream sends ---------------------------------------------------------

RESPONSES = [
    # (HEAD request, status, Content-Length, Transfer-Encoding) -> framing or error
    ((False, 200, b"10", None), 10),
    ((False, 200, b"0", None), 0),
    ((False, 200, b"10 ", None), 10),
    ((False, 404, b"3", None), 3),
    ((False, 205, b"0", None), 0),  # 205 frames like any other
    ((False, 999, b"1", None), 1),
    ((False, 200, None, None), UNTIL_CLOSE),
    ((False, 500, None, None), UNTIL_CLOSE),
    ((False, 200, None, b"chunked"), CHUNKED),
    ((False, 200, None, b" Chunked"), CHUNKED),
    ((False, 200, b"abc", None), BAD_RESPONSE),
    ((False, 200, b"", None), BAD_RESPONSE),
    ((False, 200, b"-1", None), BAD_RESPONSE),
    ((False, 200, b"9" * 5000, None), BAD_RESPONSE),
    ((False, 200, None, b"gzip"), BAD_RESPONSE),
    ((False, 200, None, b"gzip, chunked"), BAD_RESPONSE),
    ((False, 200, None, b"chunked,chunked"), BAD_RESPONSE),
    ((False, 200, None, b""), BAD_RESPONSE),
    ((False, 200, b"5", b"chunked"), BAD_RESPONSE),
    # HEAD: no body; its Content-Length describes the GET body, and must be a number.
    ((True, 200, b"10", None), NO_BODY),
    ((True, 200, None, None), NO_BODY),
    ((True, 200, None, b"chunked"), NO_BODY),
    ((True, 204, b"5", None), NO_BODY),
    ((True, 304, None, b"chunked"), NO_BODY),
    ((True, 200, b"abc", None), BAD_RESPONSE),
    ((True, 200, None, b"gzip"), BAD_RESPONSE),
    ((True, 200, b"5", b"chunked"), BAD_RESPONSE),
    # 1xx: interim, never a body.
    ((False, 100, None, None), NO_BODY),
    ((False, 103, b"5", None), NO_BODY),
    ((False, 199, None, b"chunked"), NO_BODY),
    ((False, 100, None, b"gzip"), BAD_RESPONSE),
    ((False, 100, b"x", None), BAD_RESPONSE),
    # 204 and 304: no body; one announced is ignored, and the connection not trusted.
    ((False, 204, None, None), NO_BODY),
    ((False, 304, None, None), NO_BODY),
    ((False, 204, b"0", None), NO_BODY),
    ((False, 304, b"00", None), NO_BODY),
    ((False, 204, b"5", None), IGNORED_BODY),
    ((False, 304, b"1000", None), IGNORED_BODY),
    ((False, 204, None, b"chunked"), IGNORED_BODY),
    ((False, 304, None, b"chunked"), IGNORED_BODY),
    ((False, 204, None, b"gzip"), BAD_RESPONSE),
    ((False, 304, b"x", None), BAD_RESPONSE),
    ((False, 204, b"0", b"chunked"), BAD_RESPONSE),
    # Statuses outside 100-999.
    ((False, 0, None, None), BAD_RESPONSE),
    ((False, 99, b"0", None), BAD_RESPONSE),
    ((False, 1000, b"0", None), BAD_RESPONSE),
    ((True, 99, None, None), BAD_RESPONSE),
    ((False, -200, None, None), BAD_RESPONSE),
]


@pytest.mark.parametrize(("args", "expected"), RESPONSES, ids=[repr(a) for a, _ in RESPONSES])
def test_response_framing(
    args: tuple[bool, int, bytes | None, bytes | None], expected: object
) -> None:
    assert outcome(response_framing, *args) == expected


def test_response_framing_errors_are_upstream_response_failures() -> None:
    with pytest.raises(UpstreamResponseFailed):
        response_framing(False, 200, None, b"gzip")


def _model_response_framing(head: bool, status: int, cl: bytes | None, te: bytes | None) -> object:
    """RFC 9112 6.3 spelled out rule by rule, as edgeproxy applies it."""
    digits = None if cl is None else cl.strip(b" \t")
    cl_ok = digits is None or (digits.isdigit() and len(digits) <= 4300)
    te_ok = te is None or (cl is None and te.strip().lower() == b"chunked")
    if status < 100 or status > 999 or not cl_ok or not te_ok:
        return BAD_RESPONSE
    if head or 100 <= status <= 199:
        return NO_BODY
    if status in (204, 304):
        announced = te is not None or (digits is not None and int(digits) > 0)
        return IGNORED_BODY if announced else NO_BODY
    if te is not None:
        return CHUNKED
    if digits is not None:
        return int(digits)
    return UNTIL_CLOSE


LENGTHS = [None, b"0", b"1", b"00", b"42 ", b"", b"x", b"1.5"]
CODINGS = [None, b"chunked", b"CHUNKED ", b"gzip", b"chunked, gzip", b""]


def test_response_framing_of_every_status_matches_the_rfc_model() -> None:
    for status in range(-1, 1002):
        for head in (False, True):
            for cl in LENGTHS:
                for te in CODINGS:
                    expected = _model_response_framing(head, status, cl, te)
                    got = outcome(response_framing, head, status, cl, te)
                    assert got == expected, (head, status, cl, te)


@given(
    st.booleans(),
    st.integers(min_value=-10, max_value=1100),
    st.none() | st.binary(max_size=8),
    st.none() | st.sampled_from([b"chunked", b"gzip", b" chunked\t", b"chunked,"]),
)
def test_response_framing_matches_the_model_for_any_bytes(
    head: bool, status: int, cl: bytes | None, te: bytes | None
) -> None:
    assert outcome(response_framing, head, status, cl, te) == _model_response_framing(
        head, status, cl, te
    )


@given(st.booleans(), st.none() | st.binary(max_size=8), st.none() | st.binary(max_size=12))
def test_request_framing_matches_the_model_for_any_bytes(
    http11: bool, cl: bytes | None, te: bytes | None
) -> None:
    digits = None if cl is None else cl.strip(b" \t")
    if te is not None:
        if not http11 or cl is not None:
            expected: object = BAD_FRAMING
        elif te.strip().lower() != b"chunked":
            expected = CODING
        else:
            expected = CHUNKED
    elif digits is None:
        expected = NO_BODY
    elif digits.isdigit():
        expected = int(digits)
    else:
        expected = BAD_FRAMING
    assert outcome(request_framing, http11, cl, te) == expected


# -- the response edgeproxy writes ---------------------------------------------------------

SENT = [
    # (HEAD request, status, length, HTTP/1.1 client) -> framing
    ((False, 200, 10, True), 10),
    ((False, 200, 0, False), 0),
    ((False, 200, None, True), CHUNKED),
    ((False, 200, None, False), UNTIL_CLOSE),
    ((False, 502, 17, False), 17),
    ((True, 200, 10, True), NO_BODY),
    ((True, 200, None, False), NO_BODY),
    ((False, 100, None, True), NO_BODY),
    ((False, 103, 5, True), NO_BODY),
    ((False, 204, 5, True), NO_BODY),
    ((False, 304, None, False), NO_BODY),
    ((False, 205, 0, True), 0),
    ((False, 99, 5, True), NO_BODY),
    ((False, 1000, None, True), NO_BODY),
]


@pytest.mark.parametrize(("args", "expected"), SENT, ids=[repr(a) for a, _ in SENT])
def test_sent_response_framing(args: tuple[bool, int, int | None, bool], expected: int) -> None:
    assert sent_response_framing(*args) == expected


# -- keep-alive ------------------------------------------------------------------------------

TOKENS = [
    ([], []),
    ([b"close"], [b"close"]),
    ([b"Keep-Alive"], [b"keep-alive"]),
    ([b"close, keep-alive"], [b"close", b"keep-alive"]),
    ([b"x-a,x-b"], [b"x-a", b"x-b"]),
    ([b" Upgrade ,  HTTP2-Settings"], [b"upgrade", b"http2-settings"]),
    ([b"close,"], [b"close", b""]),
    ([b"x", b"close"], [b"x", b"close"]),
]


@pytest.mark.parametrize(("values", "tokens"), TOKENS)
def test_connection_tokens(values: list[bytes], tokens: list[bytes]) -> None:
    assert connection_tokens(values) == tokens


REQUEST_KEEP_ALIVE = [
    # (http11, Connection tokens or None) -> keep the client's connection
    ((True, None), True),
    ((True, []), True),
    ((True, [b"keep-alive"]), True),
    ((True, [b"upgrade"]), True),
    ((True, [b"close"]), False),
    ((True, [b"x", b"close"]), False),
    ((True, [b"closed"]), True),
    ((False, None), False),
    ((False, []), False),
    ((False, [b"keep-alive"]), True),
    ((False, [b"x", b"keep-alive"]), True),
    ((False, [b"close"]), False),
    # RFC 9112 9.3: "close" is looked at first; llhttp lets keep-alive win in HTTP/1.0.
    ((False, [b"close", b"keep-alive"]), False),
    ((False, [b"keep-alive", b"close"]), False),
]


@pytest.mark.parametrize(("args", "expected"), REQUEST_KEEP_ALIVE)
def test_request_keep_alive(args: tuple[bool, list[bytes] | None], expected: bool) -> None:
    assert request_keep_alive(*args) is expected


FRAMINGS = [NO_BODY, CHUNKED, UNTIL_CLOSE, IGNORED_BODY, 0, 1, 10**9]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("http11", [True, False])
@pytest.mark.parametrize(
    "tokens", [None, [], [b"keep-alive"], [b"close"], [b"x", b"close"], [b"upgrade"]]
)
def test_response_keep_alive(framing: int, http11: bool, tokens: list[bytes] | None) -> None:
    known_end = framing not in (UNTIL_CLOSE, IGNORED_BODY)
    closes = tokens is not None and b"close" in tokens
    assert response_keep_alive(http11, tokens, framing) is (http11 and known_end and not closes)


def test_the_framings_with_a_known_end_are_those_from_chunked_up() -> None:
    # response_keep_alive relies on the constants' order.
    assert sorted(FRAMINGS) == [IGNORED_BODY, UNTIL_CLOSE, CHUNKED, NO_BODY, 0, 1, 10**9]


# -- llhttp, the tokenizer, agrees where it accepts ------------------------------------------


class _Head:
    def __init__(self) -> None:
        self.parser: httptools.HttpRequestParser | None = None
        self.keep_alive: bool | None = None
        self.body = b""
        self.complete = False

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


def _llhttp(raw: bytes) -> _Head | None:
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    head.parser = parser
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError:
        return None
    return head


_TOKEN = st.sampled_from([b"close", b"keep-alive", b"Keep-Alive", b"CLOSE", b"upgrade", b"x-a"])


@given(
    st.lists(
        st.lists(_TOKEN, min_size=1, max_size=3).map(lambda t: b" ,".join(t)),
        max_size=3,
    )
)
def test_llhttp_keep_alive_for_http11_is_the_rfcs(values: list[bytes]) -> None:
    # The downstream channel takes llhttp's answer for HTTP/1.1 (its "close"
    # token flag): it must be request_keep_alive's.
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"Connection: " + v + b"\r\n" for v in values)
    head = _llhttp(raw + b"\r\n")
    assert head is not None
    tokens = connection_tokens(values) if values else None
    assert head.keep_alive is request_keep_alive(True, tokens)


_LENGTH = st.none() | st.integers(min_value=0, max_value=300).map(lambda n: b"%d" % n)
_CODING = st.none() | st.sampled_from([b"chunked", b"Chunked", b"gzip", b"gzip, chunked"])


@given(st.booleans(), _LENGTH, _CODING, st.binary(min_size=0, max_size=40))
def test_llhttp_frames_an_accepted_request_as_request_framing_says(
    http11: bool, cl: bytes | None, te: bytes | None, content: bytes
) -> None:
    raw = b"POST / HTTP/1.%d\r\nHost: a\r\n" % http11
    if cl is not None:
        raw += b"Content-Length: " + cl + b"\r\n"
    if te is not None:
        raw += b"Transfer-Encoding: " + te + b"\r\n"
    raw += b"\r\n"
    try:
        framing = request_framing(http11, cl, te)
    except EdgeProxyError:
        return  # refused by edgeproxy, whatever llhttp does
    # What edgeproxy accepts, llhttp does too (it sees the request first) ...
    assert _llhttp(raw) is not None
    if framing == CHUNKED:
        body = (b"%x\r\n%s\r\n" % (len(content), content) if content else b"") + b"0\r\n\r\n"
        expected = content
    elif framing == NO_BODY:
        body, expected = b"", b""
    else:
        body = expected = b"x" * framing
    # ... and finds the body's end where edgeproxy's framing puts it.
    head = _llhttp(raw + body)
    assert head is not None
    assert head.complete and head.body == expected


def test_every_framing_constant_is_in_the_tables() -> None:
    answered = {e for _, e in REQUESTS + RESPONSES + SENT}
    assert {NO_BODY, CHUNKED, UNTIL_CLOSE, IGNORED_BODY} <= answered
