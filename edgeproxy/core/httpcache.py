"""
HTTP caching policy for edgeproxy's shared cache: RFC 9111 (HTTP caching),
RFC 5861 (``stale-while-revalidate``, ``stale-if-error``) and RFC 9211
(``Cache-Status``).  Pure: values in, values out; times are arguments (the
injected clock's seconds), never read here.

Header *lines* are ``b"Name: value"`` byte strings as edgeproxy relays a
response (no CRLF; hop-by-hop fields, those ``Connection`` names and
``Content-Length`` already removed by the upstream client).  Request headers
are ``(name, value)`` pairs as received, names in any case.

What the RFCs leave to the implementation, and what this module chose:

- ``Cache-Control``: every field line is one list (RFC 9110 5.3).  A piece
  that is not ``token [ "=" ( token / quoted-string ) ]`` (whitespace around
  ``=``, an unterminated quote) is skipped.  A directive repeated with a
  different argument gets the argument :data:`CONFLICT`, which is no
  delta-seconds: RFC 9111 4.2.1 lets a cache consider such a response stale,
  and an invalid ``max-age``/``s-maxage`` (``"1.5"``, ``"-1"``) likewise gives
  a freshness lifetime of 0 rather than falling through to ``Expires``.
- Dates (RFC 9110 5.6.7): IMF-fixdate, RFC 850 and asctime, matched without
  regard to case, ``GMT`` only.  An RFC 850 two-digit year cannot be placed by
  the 50-year rule (that needs the current date): 00-69 is 20xx, 70-99 19xx.
  An ``Expires`` that is not a valid date (``0``) means already expired
  (RFC 9111 5.3), not "no Expires".  The first ``Expires`` line counts.
- A missing or invalid ``Date`` is taken as the time the response was
  received (RFC 9110 6.6.1).  ``Age``: the first member of the first line;
  missing or not delta-seconds counts as 0.
- Heuristic freshness (RFC 9111 4.2.2) only without an explicit expiration
  time, only for the heuristically cacheable statuses or with ``public``, and
  only from ``Last-Modified``: 10 % of ``Date - Last-Modified``, at most
  ``heuristic_max`` seconds.
- Storing (RFC 9111 3): only responses to GET; never 1xx, 206, 304; with
  ``must-understand`` only the statuses RFC 9110 defines, and then
  ``no-store`` is ignored (5.2.2.3).  A response with ``Set-Cookie`` is stored
  only with ``public`` or ``s-maxage`` (a cookie is for one user).  One that
  could never be used (no explicit or heuristic freshness, nothing to
  revalidate with, no RFC 5861 window; or ``no-cache`` without a validator) is
  not stored.
- The fields ``private="..."`` names (RFC 9111 5.2.2.7) and the fields a
  qualified ``no-cache="..."`` names (3.1: such arguments "prevent storage of
  header fields by all caches") are not stored; a response with ``no-cache``
  in either form is revalidated on every use.
- Request ``max-age`` bounds the age even when ``max-stale`` is present;
  ``max-stale`` lets a stale response through, ``stale-while-revalidate``
  only when the request has neither ``max-age`` nor ``min-fresh`` (5.2.1.1:
  such a client "does not wish to receive a stale response").  Stale is never
  served past ``must-revalidate``, ``proxy-revalidate``, ``s-maxage`` or
  ``no-cache`` (4.2.4), not even on an error.
- A 304 that carries no ``Date`` refreshes the stored ``Date`` to the time it
  was received (RFC 9110 6.6.1); otherwise the old ``Date`` would make the
  refreshed response look as old as the first one.
"""

from __future__ import annotations

import calendar
import enum
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

import attrs

__all__ = [
    "CONFLICT",
    "HEURISTIC_STATUSES",
    "PLAIN_REQUEST",
    "UNDERSTOOD_STATUSES",
    "Directives",
    "RequestPolicy",
    "StoredHead",
    "Use",
    "cache_key",
    "cache_status",
    "delta_seconds",
    "format_http_date",
    "invalidated_keys",
    "may_serve_stale_on_error",
    "not_modified_lines",
    "origin_key",
    "parse_cache_control",
    "parse_http_date",
    "refreshed",
    "request_policy",
    "served_lines",
    "storable",
    "stored_lines",
    "usable",
    "validators",
    "vary_key",
    "vary_matches",
]

#: Lower-case directive name -> its argument (unquoted), ``None`` when bare.
Directives = dict[bytes, bytes | None]
#: The argument of a directive repeated with different arguments.
CONFLICT = b"\x00conflict"

#: Heuristically cacheable status codes (RFC 9110 15.1).
HEURISTIC_STATUSES: frozenset[int] = frozenset(
    {200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501}
)
#: The final status codes RFC 9110 defines (for ``must-understand``).
UNDERSTOOD_STATUSES: frozenset[int] = frozenset(
    {200, 201, 202, 203, 204, 205, 206}
    | {300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426}
    | set(range(500, 506))
)

_OWS = b" \t"
_DELTA_MAX = 2**31
_TCHARS = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_QUOTED = rb'"(?:[^"\\]|\\.)*"'
# One Cache-Control member, the separators before it and the OWS after it.
_DIRECTIVE = re.compile(
    rb"[ \t,]*([" + _TCHARS + rb"]+)(?:=([" + _TCHARS + rb"]+|" + _QUOTED + rb"))?[ \t]*(?:,|\Z)",
    re.DOTALL,
)
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)


# -- Cache-Control ---------------------------------------------------------------------------


def _skip_member(value: bytes, i: int) -> int:
    """The index after the next comma outside a quoted string (the end of a
    malformed member), at least ``i + 1``."""
    n = len(value)
    while i < n:
        byte = value[i]
        if byte == 0x2C:  # ,
            return i + 1
        if byte == 0x22:  # "
            i += 1
            while i < n and value[i] != 0x22:
                i += 2 if value[i] == 0x5C else 1  # \ escapes the next byte
        i += 1
    return n


def _parse_into(value: bytes, directives: Directives) -> None:
    i, n = 0, len(value)
    while i < n:
        match = _DIRECTIVE.match(value, i)
        if match is None:
            i = _skip_member(value, i)
            continue
        i = match.end()
        name = match.group(1).lower()
        argument = match.group(2)
        if argument is not None and argument[:1] == b'"':
            argument = _ESCAPE.sub(rb"\1", argument[1:-1])
        if name in directives and directives[name] != argument:
            directives[name] = CONFLICT
        else:
            directives[name] = argument


def parse_cache_control(values: Iterable[bytes]) -> Directives:
    """Every ``Cache-Control`` field value in ``values`` read as one list
    (RFC 9111 5.2): lower-case names, quoted-string arguments unquoted.
    Malformed pieces are skipped; it never raises."""
    directives: Directives = {}
    for value in values:
        _parse_into(value, directives)
    return directives


def delta_seconds(value: bytes | None) -> int | None:
    """RFC 9111 1.2.2: a non-negative integer of digits only, capped at 2**31;
    ``None`` for anything else (``None``, ``b""``, ``b"-1"``, ``b"1.5"``)."""
    if value is None or not value.isdigit():
        return None
    seconds = int(value)
    return seconds if seconds < _DELTA_MAX else _DELTA_MAX


def _field_names(argument: bytes | None) -> frozenset[bytes]:
    """The lower-case field names a qualified ``private``/``no-cache`` lists."""
    if argument is None or argument == CONFLICT:
        return frozenset()
    return frozenset(
        name for name in (part.strip(_OWS).lower() for part in argument.split(b",")) if name
    )


def _unstored_fields(directives: Directives) -> frozenset[bytes]:
    """``Age`` and the fields qualified ``private``/``no-cache`` name."""
    dropped = frozenset((b"age",))
    for directive in (b"private", b"no-cache"):
        if directive in directives:
            dropped |= _field_names(directives[directive])
    return dropped


# -- dates -----------------------------------------------------------------------------------

_MONTH_NAMES = tuple(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
_MONTHS = {name.lower(): number for number, name in enumerate(_MONTH_NAMES, start=1)}
_DAYS = frozenset((b"mon", b"tue", b"wed", b"thu", b"fri", b"sat", b"sun"))
_LONG_DAYS = frozenset(
    (b"monday", b"tuesday", b"wednesday", b"thursday", b"friday", b"saturday", b"sunday")
)
_TIME = rb"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE = re.compile(rb"([a-z]{3}), (\d\d) ([a-z]{3}) (\d{4}) " + _TIME + rb" gmt", re.I)
_RFC850 = re.compile(rb"([a-z]{6,9}), (\d\d)-([a-z]{3})-(\d\d) " + _TIME + rb" gmt", re.I)
_ASCTIME = re.compile(rb"([a-z]{3}) ([a-z]{3}) ( \d|\d\d) " + _TIME + rb" (\d{4})", re.I)
_DAY_NAMES = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")


def _timestamp(
    year: int, month_name: bytes, day: int, hour: bytes, minute: bytes, second: bytes
) -> float | None:
    month = _MONTHS.get(month_name.lower())
    h, m, s = int(hour), int(minute), int(second)
    if month is None or year < 1 or h > 23 or m > 59 or s > 60:
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return float(calendar.timegm((year, month, day, h, m, s, 0, 0, 0)))


def parse_http_date(value: bytes) -> float | None:
    """An HTTP-date (RFC 9110 5.6.7) in any of its three formats, as seconds
    since the epoch; ``None`` when it is not one."""
    value = value.strip(_OWS)
    match = _IMF_FIXDATE.fullmatch(value)
    if match is not None:
        day_name, day, month, year, hour, minute, second = match.groups()
        if day_name.lower() not in _DAYS:
            return None
        return _timestamp(int(year), month, int(day), hour, minute, second)
    match = _RFC850.fullmatch(value)
    if match is not None:
        day_name, day, month, year, hour, minute, second = match.groups()
        if day_name.lower() not in _LONG_DAYS:
            return None
        short_year = int(year)
        full_year = short_year + (2000 if short_year < 70 else 1900)
        return _timestamp(full_year, month, int(day), hour, minute, second)
    match = _ASCTIME.fullmatch(value)
    if match is not None:
        day_name, month, day, hour, minute, second, year = match.groups()
        if day_name.lower() not in _DAYS:
            return None
        return _timestamp(int(year), month, int(day), hour, minute, second)
    return None


def format_http_date(seconds: float) -> bytes:
    """``seconds`` as an IMF-fixdate, rounded down to the second."""
    t = time.gmtime(math.floor(seconds))
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAY_NAMES[t.tm_wday],
        t.tm_mday,
        _MONTH_NAMES[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


# -- requests --------------------------------------------------------------------------------


@attrs.frozen
class RequestPolicy:
    """What a request's ``Cache-Control`` (RFC 9111 5.2.1, RFC 5861 4) and
    ``Pragma`` (5.4) ask of the cache."""

    no_store: bool = False
    #: ``no-cache``, or ``Pragma: no-cache`` without ``Cache-Control``.
    no_cache: bool = False
    max_age: int | None = None
    #: ``None``: not sent; ``math.inf``: bare ``max-stale``.
    max_stale: float | None = None
    min_fresh: int | None = None
    only_if_cached: bool = False
    stale_if_error: int | None = None


_PLAIN_REQUEST = RequestPolicy()
#: The policy of a request without ``Cache-Control`` or ``Pragma`` (most).
PLAIN_REQUEST = _PLAIN_REQUEST
_PRAGMA_NO_CACHE = RequestPolicy(no_cache=True)


def request_policy(headers: Iterable[tuple[bytes, bytes]]) -> RequestPolicy:
    """The request's caching directives.  Without ``Cache-Control`` and
    ``Pragma`` (most requests) this returns a shared instance.  A directive
    whose argument is not delta-seconds counts as not sent."""
    values: list[bytes] | None = None
    pragma_no_cache = False
    for name, value in headers:
        size = len(name)  # a length check first keeps the loop cheap
        if size == 13 and name.lower() == b"cache-control":
            if values is None:
                values = [value]
            else:
                values.append(value)
        elif size == 6 and name.lower() == b"pragma":
            pragma_no_cache = pragma_no_cache or any(
                part.strip(_OWS).lower() == b"no-cache" for part in value.split(b",")
            )
    if values is None:
        return _PRAGMA_NO_CACHE if pragma_no_cache else _PLAIN_REQUEST
    directives = parse_cache_control(values)
    max_stale: float | None = None
    if b"max-stale" in directives:
        argument = directives[b"max-stale"]
        if argument is None:
            max_stale = math.inf
        else:
            seconds = delta_seconds(argument)
            max_stale = None if seconds is None else float(seconds)
    return RequestPolicy(
        no_store=b"no-store" in directives,
        no_cache=b"no-cache" in directives,
        max_age=delta_seconds(directives.get(b"max-age")),
        max_stale=max_stale,
        min_fresh=delta_seconds(directives.get(b"min-fresh")),
        only_if_cached=b"only-if-cached" in directives,
        stale_if_error=delta_seconds(directives.get(b"stale-if-error")),
    )


# -- Vary ------------------------------------------------------------------------------------


def _name(line: bytes) -> bytes:
    return line.partition(b":")[0].strip(_OWS).lower()


def _vary_names(lines: Sequence[bytes]) -> list[bytes] | None:
    """The response's Vary names, lower-case, sorted, deduplicated; ``None``
    when one of them is ``*``."""
    names: set[bytes] = set()
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip(_OWS).lower() != b"vary":
            continue
        for part in value.split(b","):
            part = part.strip(_OWS).lower()
            if part == b"*":
                return None
            if part:
                names.add(part)
    return sorted(names)


def _normalised(values: list[bytes] | None) -> bytes:
    """Several field lines as one value (RFC 9110 5.3), OWS around the commas
    and at the ends dropped, so ``"1,2"``, ``" 1, 2 "`` and two lines match."""
    if not values:
        return b""
    if len(values) == 1 and b"," not in values[0]:
        return values[0].strip(_OWS)
    joined = b",".join(values)
    return b", ".join(part.strip(_OWS) for part in joined.split(b",")).strip(_OWS)


def vary_key(
    lines: Sequence[bytes], request_headers: Iterable[tuple[bytes, bytes]]
) -> tuple[tuple[bytes, bytes], ...] | None:
    """The secondary key of a response (RFC 9111 4.1): its Vary names with the
    request's normalised value of each (``b""`` when absent); ``()`` without
    Vary, ``None`` for ``Vary: *`` (which never matches)."""
    names = _vary_names(lines)
    if names is None:
        return None
    if not names:
        return ()
    wanted = set(names)
    found: dict[bytes, list[bytes]] = {}
    for name, value in request_headers:
        lower = name.lower()
        if lower in wanted:
            found.setdefault(lower, []).append(value)
    return tuple((name, _normalised(found.get(name))) for name in names)


def vary_matches(
    vary: tuple[tuple[bytes, bytes], ...], request_headers: Iterable[tuple[bytes, bytes]]
) -> bool:
    """Does this request select the variant stored with ``vary``?"""
    if not vary:
        return True
    if len(vary) == 1:  # the usual Vary: Accept-Encoding, on every hit: kept cheap
        wanted, stored = vary[0]
        size = len(wanted)
        found: list[bytes] | None = None
        for name, value in request_headers:
            if len(name) == size and name.lower() == wanted:
                if found is None:
                    found = [value]
                else:
                    found.append(value)
        if found is not None and len(found) == 1 and found[0] == stored:
            return True  # already normalised (stored is) and equal
        return _normalised(found) == stored
    names = {name for name, _ in vary}
    sizes = {len(name) for name in names}
    values: dict[bytes, list[bytes]] = {}
    for name, value in request_headers:
        if len(name) in sizes:
            lower = name.lower()
            if lower in names:
                values.setdefault(lower, []).append(value)
    for name, stored in vary:
        found = values.get(name)
        if found is None or len(found) != 1 or found[0] != stored:
            if _normalised(found) != stored:
                return False
    return True


# -- the stored response ---------------------------------------------------------------------

# Fields a 304 made from the cache carries (RFC 9110 15.4.5), Last-Modified for
# clients that validate by date.
_NOT_MODIFIED_FIELDS = frozenset(
    (b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified")
)


def _first_member(value: bytes) -> bytes:
    return value.partition(b",")[0].strip(_OWS)


class StoredHead:
    """What is kept of a response besides its body.  Immutable.

    Build it from the response's lines as received, ``Age`` included (its
    value feeds :attr:`initial_age`); ``lines`` keeps them without ``Age`` and
    without the fields qualified ``private``/``no-cache`` name.  Everything
    below ``body_length`` is derived here once; :meth:`to_json` persists only
    the constructor's arguments.
    """

    __slots__ = (
        "_age_value",
        "_heuristic_max",
        "_not_modified",
        "body_length",
        "date_value",
        "etag",
        "initial_age",
        "last_modified",
        "lifetime",
        "lines",
        "must_revalidate",
        "no_cache",
        "phrase",
        "request_time",
        "response_time",
        "stale_if_error",
        "stale_while_revalidate",
        "status",
        "vary",
    )

    status: int
    phrase: bytes
    #: As stored: without ``Age``, without the fields ``private="..."`` or
    #: ``no-cache="..."`` name.
    lines: tuple[bytes, ...]
    request_time: float
    response_time: float
    vary: tuple[tuple[bytes, bytes], ...]
    body_length: int
    #: Freshness lifetime (RFC 9111 4.2.1 for a shared cache; 4.2.2), 0 if none.
    lifetime: float
    #: ``corrected_initial_age`` (RFC 9111 4.2.3).
    initial_age: float
    #: ``must-revalidate``, ``proxy-revalidate`` or ``s-maxage``: never served stale.
    must_revalidate: bool
    #: ``no-cache``, bare or qualified: revalidated on every use.
    no_cache: bool
    stale_while_revalidate: float
    stale_if_error: float
    etag: bytes | None
    last_modified: bytes | None
    #: ``Date`` as seconds, or ``response_time`` when it is missing or invalid
    #: (an addition to the spec'd fields: If-Modified-Since without Last-Modified).
    date_value: float
    _age_value: int
    _heuristic_max: float
    _not_modified: tuple[bytes, ...]

    def __init__(
        self,
        status: int,
        phrase: bytes,
        lines: Sequence[bytes],
        request_time: float,
        response_time: float,
        vary: tuple[tuple[bytes, bytes], ...],
        body_length: int,
        *,
        heuristic_max: float = 86400.0,
    ) -> None:
        named = [(_name(line), line) for line in lines]
        cache_control = [
            line.partition(b":")[2] for name, line in named if name == b"cache-control"
        ]
        directives = parse_cache_control(cache_control)
        dropped = _unstored_fields(directives)
        age: bytes | None = None
        kept: list[tuple[bytes, bytes]] = []
        for name, line in named:
            if name == b"age":
                if age is None:
                    age = _first_member(line.partition(b":")[2])
            elif name not in dropped:
                kept.append((name, line))
        if b"cache-control" in dropped:
            # Derive from what is kept, so that from_json(to_json()) derives the same.
            directives = parse_cache_control(
                line.partition(b":")[2] for name, line in kept if name == b"cache-control"
            )
        first: dict[bytes, bytes] = {}
        for name, line in kept:
            if name not in first:
                first[name] = line.partition(b":")[2].strip(_OWS)

        set_ = object.__setattr__
        set_(self, "status", status)
        set_(self, "phrase", phrase)
        set_(self, "lines", tuple(line for _, line in kept))
        set_(self, "request_time", request_time)
        set_(self, "response_time", response_time)
        set_(self, "vary", vary)
        set_(self, "body_length", body_length)
        set_(self, "_heuristic_max", heuristic_max)
        set_(
            self,
            "_not_modified",
            tuple(line for name, line in kept if name in _NOT_MODIFIED_FIELDS),
        )

        date = first.get(b"date")
        date_value = parse_http_date(date) if date is not None else None
        if date_value is None:
            date_value = response_time
        set_(self, "date_value", date_value)

        # RFC 9111 4.2.1, shared cache: the first of these that is present.
        lifetime = 0.0
        if b"s-maxage" in directives:
            lifetime = float(delta_seconds(directives[b"s-maxage"]) or 0)
        elif b"max-age" in directives:
            lifetime = float(delta_seconds(directives[b"max-age"]) or 0)
        elif b"expires" in first:
            expires = parse_http_date(first[b"expires"])
            if expires is not None:
                lifetime = max(0.0, expires - date_value)
        elif status in HEURISTIC_STATUSES or b"public" in directives:
            modified = first.get(b"last-modified")
            since = parse_http_date(modified) if modified is not None else None
            if since is not None:
                lifetime = max(0.0, min(heuristic_max, (date_value - since) / 10))
        set_(self, "lifetime", lifetime)

        # RFC 9111 4.2.3
        age_value = delta_seconds(age) or 0
        set_(self, "_age_value", age_value)
        apparent_age = max(0.0, response_time - date_value)
        response_delay = response_time - request_time
        corrected_age_value = age_value + response_delay
        set_(self, "initial_age", max(apparent_age, corrected_age_value))

        set_(
            self,
            "must_revalidate",
            b"must-revalidate" in directives
            or b"proxy-revalidate" in directives
            or b"s-maxage" in directives,
        )
        set_(self, "no_cache", b"no-cache" in directives)
        swr = delta_seconds(directives.get(b"stale-while-revalidate"))
        set_(self, "stale_while_revalidate", float(swr or 0))
        sie = delta_seconds(directives.get(b"stale-if-error"))
        set_(self, "stale_if_error", float(sie or 0))
        set_(self, "etag", first.get(b"etag"))
        set_(self, "last_modified", first.get(b"last-modified"))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"StoredHead is immutable ({name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"StoredHead is immutable ({name})")

    def _persisted(self) -> tuple[object, ...]:
        return (
            self.status,
            self.phrase,
            self.lines,
            self.request_time,
            self.response_time,
            self.vary,
            self.body_length,
            self._age_value,
            self._heuristic_max,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredHead):
            return NotImplemented
        return self._persisted() == other._persisted()

    def __hash__(self) -> int:
        return hash(self._persisted())

    def __repr__(self) -> str:
        return (
            f"StoredHead({self.status}, {self.phrase!r}, lines={self.lines!r}, "
            f"lifetime={self.lifetime}, initial_age={self.initial_age}, "
            f"response_time={self.response_time})"
        )

    def age(self, now: float) -> float:
        """``current_age`` (RFC 9111 4.2.3) at ``now``, never negative."""
        age = self.initial_age + (now - self.response_time)
        return age if age > 0.0 else 0.0

    def ttl(self, now: float) -> float:
        """Seconds of freshness left at ``now``; negative once stale."""
        age = self.initial_age + (now - self.response_time)
        return self.lifetime - (age if age > 0.0 else 0.0)

    def to_json(self) -> dict[str, object]:
        """The constructor's arguments as JSON values (bytes as latin-1 text).
        The received ``Age`` travels as an ``Age`` line at the end of
        ``lines``, so :meth:`from_json` derives the same initial age."""
        lines = [line.decode("latin-1") for line in self.lines]
        if self._age_value:
            lines.append(f"Age: {self._age_value}")
        return {
            "status": self.status,
            "phrase": self.phrase.decode("latin-1"),
            "lines": lines,
            "request_time": self.request_time,
            "response_time": self.response_time,
            "vary": [
                [name.decode("latin-1"), value.decode("latin-1")] for name, value in self.vary
            ],
            "body_length": self.body_length,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], *, heuristic_max: float = 86400.0) -> StoredHead:
        """The head :meth:`to_json` described.  ``ValueError`` when ``data`` is
        not such a description."""
        try:
            status = _json_int(data["status"])
            body_length = _json_int(data["body_length"])
            phrase = _json_str(data["phrase"]).encode("latin-1")
            raw_lines = data["lines"]
            raw_vary = data["vary"]
            if not isinstance(raw_lines, list) or not isinstance(raw_vary, list):
                raise ValueError("lines and vary are lists")
            lines = [_json_str(line).encode("latin-1") for line in raw_lines]
            vary: list[tuple[bytes, bytes]] = []
            for pair in raw_vary:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ValueError("a vary entry is a [name, value] pair")
                vary.append(
                    (_json_str(pair[0]).encode("latin-1"), _json_str(pair[1]).encode("latin-1"))
                )
            request_time = _json_float(data["request_time"])
            response_time = _json_float(data["response_time"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a stored head: {error!r}") from error
        return cls(
            status,
            phrase,
            lines,
            request_time,
            response_time,
            tuple(vary),
            body_length,
            heuristic_max=heuristic_max,
        )


def _json_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not an integer: {value!r}")
    return value


def _json_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _json_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    return value


# -- storing ---------------------------------------------------------------------------------


def stored_lines(lines: Sequence[bytes]) -> tuple[bytes, ...]:
    """What is kept of ``lines``: all but ``Age`` and the fields qualified
    ``private`` (RFC 9111 5.2.2.7) and ``no-cache`` (3.1) name."""
    named = [(_name(line), line) for line in lines]
    directives = parse_cache_control(
        line.partition(b":")[2] for name, line in named if name == b"cache-control"
    )
    dropped = _unstored_fields(directives)
    return tuple(line for name, line in named if name not in dropped)


def _may_be_fresh(directives: Directives, first: dict[bytes, bytes]) -> bool:
    """Can this response without validators ever be fresh?  (As
    :class:`StoredHead` computes the lifetime, before the receive time is known.)"""
    if b"s-maxage" in directives:
        return bool(delta_seconds(directives[b"s-maxage"]))
    if b"max-age" in directives:
        return bool(delta_seconds(directives[b"max-age"]))
    if b"expires" in first:
        expires = parse_http_date(first[b"expires"])
        if expires is None:
            return False
        date = parse_http_date(first[b"date"]) if b"date" in first else None
        return date is None or expires > date
    return False  # a heuristic needs Last-Modified, a validator


def storable(
    method: bytes,
    status: int,
    lines: Sequence[bytes],
    request: RequestPolicy,
    authorization: bool,
) -> str | None:
    """``None`` when a shared cache may store this response to a request
    (RFC 9111 3, 3.5, 5.2.1.5, 5.2.2.x), else a reason token for the
    ``Cache-Status`` detail: ``method``, ``status``, ``no-store``,
    ``private``, ``authorization``, ``vary-star``, ``set-cookie``,
    ``no-freshness``."""
    if method != b"GET":
        return "method"
    if status < 200 or status > 599 or status == 206 or status == 304:
        return "status"
    named = [(_name(line), line) for line in lines]
    directives = parse_cache_control(
        line.partition(b":")[2] for name, line in named if name == b"cache-control"
    )
    must_understand = b"must-understand" in directives
    if must_understand and status not in UNDERSTOOD_STATUSES:
        return "status"
    if request.no_store or (b"no-store" in directives and not must_understand):
        return "no-store"
    if b"private" in directives and not _field_names(directives[b"private"]):
        return "private"
    shared_ok = b"public" in directives or b"s-maxage" in directives
    if authorization and not (shared_ok or b"must-revalidate" in directives):
        return "authorization"
    if _vary_names(lines) is None:
        return "vary-star"
    dropped = _unstored_fields(directives)
    if not shared_ok and any(name == b"set-cookie" and name not in dropped for name, _ in named):
        return "set-cookie"
    first: dict[bytes, bytes] = {}  # as StoredHead will see them
    for name, line in named:
        if name not in first and name not in dropped:
            first[name] = line.partition(b":")[2].strip(_OWS)
    explicit = (
        b"public" in directives
        or b"expires" in first
        or b"max-age" in directives
        or b"s-maxage" in directives
    )
    if not explicit and status not in HEURISTIC_STATUSES:
        return "no-freshness"
    if b"etag" not in first and b"last-modified" not in first:
        # Nothing to revalidate with: only worth keeping if it can be served as it is.
        if b"no-cache" in directives:
            return "no-freshness"
        stale_window = delta_seconds(directives.get(b"stale-while-revalidate")) or delta_seconds(
            directives.get(b"stale-if-error")
        )
        if not stale_window and not _may_be_fresh(directives, first):
            return "no-freshness"
    return None


# -- using -----------------------------------------------------------------------------------


class Use(enum.Enum):
    """How a stored response may answer a request (:func:`usable`)."""

    #: Fresh: serve it.
    FRESH = "fresh"
    #: Stale, but the request's ``max-stale`` allows it: serve it.
    STALE_ALLOWED = "stale"
    #: Stale within ``stale-while-revalidate``: serve it, refresh in the background once.
    STALE_WHILE_REVALIDATE = "swr"
    #: Forward a conditional request first.
    REVALIDATE = "revalidate"


def usable(head: StoredHead, request: RequestPolicy, now: float) -> Use:
    """How ``head`` may answer ``request`` at ``now`` (RFC 9111 4, 4.2.4,
    5.2.1, 5.2.2; RFC 5861 3)."""
    if request.no_cache or head.no_cache:
        return Use.REVALIDATE
    age = head.initial_age + (now - head.response_time)
    if age < 0.0:
        age = 0.0
    ttl = head.lifetime - age
    if request is _PLAIN_REQUEST:  # the common case: no request directives
        if ttl > 0.0:
            return Use.FRESH
        swr = head.stale_while_revalidate
        if swr > 0.0 and -ttl <= swr and not head.must_revalidate:
            return Use.STALE_WHILE_REVALIDATE
        return Use.REVALIDATE
    if request.max_age is not None and age > request.max_age:
        return Use.REVALIDATE
    if ttl > 0.0:
        if request.min_fresh is None or ttl >= request.min_fresh:
            return Use.FRESH
        return Use.REVALIDATE
    if head.must_revalidate:
        return Use.REVALIDATE
    staleness = -ttl
    if request.max_stale is not None and staleness <= request.max_stale:
        return Use.STALE_ALLOWED
    swr = head.stale_while_revalidate
    if swr > 0.0 and staleness <= swr and request.max_age is None and request.min_fresh is None:
        return Use.STALE_WHILE_REVALIDATE
    return Use.REVALIDATE


def may_serve_stale_on_error(head: StoredHead, request: RequestPolicy, now: float) -> bool:
    """May ``head`` answer when the origin failed or is unreachable?  Within
    the response's or the request's ``stale-if-error`` (RFC 5861 4), never
    past ``must-revalidate``/``proxy-revalidate``/``s-maxage`` or ``no-cache``
    (RFC 9111 4.2.4, 5.2.2.2)."""
    if head.must_revalidate or head.no_cache:
        return False
    staleness = -head.ttl(now)
    if staleness < 0.0:
        staleness = 0.0
    if head.stale_if_error > 0.0 and staleness <= head.stale_if_error:
        return True
    return request.stale_if_error is not None and staleness <= request.stale_if_error


def validators(head: StoredHead) -> list[tuple[bytes, bytes]]:
    """The preconditions to revalidate ``head`` with (RFC 9111 4.3.1)."""
    found: list[tuple[bytes, bytes]] = []
    if head.etag is not None:
        found.append((b"If-None-Match", head.etag))
    if head.last_modified is not None:
        found.append((b"If-Modified-Since", head.last_modified))
    return found


def refreshed(
    head: StoredHead, lines_304: Sequence[bytes], request_time: float, response_time: float
) -> StoredHead:
    """``head`` updated by a 304 (RFC 9111 3.2, 4.3.4): each field of the 304
    replaces the stored lines of that name, except ``Content-Length``; its
    ``Age`` gives the new initial age; the times are those of the 304's
    exchange.  Without a ``Date`` in the 304 the stored one becomes the time
    it was received (RFC 9110 6.6.1)."""
    replaced: set[bytes] = set()
    added: list[bytes] = []
    for line in lines_304:
        name = _name(line)
        if name == b"content-length":
            continue
        if name != b"age":
            replaced.add(name)
        added.append(line)
    if b"date" not in replaced:
        replaced.add(b"date")
        added.append(b"Date: " + format_http_date(response_time))
    lines = [line for line in head.lines if _name(line) not in replaced]
    lines.extend(added)
    return StoredHead(
        head.status,
        head.phrase,
        lines,
        request_time,
        response_time,
        head.vary,
        head.body_length,
        heuristic_max=head._heuristic_max,
    )


def served_lines(head: StoredHead, now: float) -> list[bytes]:
    """A fresh list: the stored lines and ``Age`` (RFC 9111 5.1) at ``now``."""
    age = head.initial_age + (now - head.response_time)
    return [*head.lines, b"Age: %d" % age if age > 0.0 else b"Age: 0"]


def not_modified_lines(head: StoredHead, now: float) -> list[bytes]:
    """The lines of a 304 made from ``head`` (RFC 9110 15.4.5): its
    Cache-Control, Content-Location, Date, ETag, Expires, Vary, Last-Modified
    lines and ``Age``."""
    age = head.initial_age + (now - head.response_time)
    return [*head._not_modified, b"Age: %d" % age if age > 0.0 else b"Age: 0"]


# -- keys and invalidation -------------------------------------------------------------------

_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}


def _authority(scheme: bytes, authority: bytes) -> bytes:
    authority = authority.lower()
    if authority.endswith(b":"):
        authority = authority[:-1]
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and authority.endswith(default):
        authority = authority[: -len(default)]
    return authority


def cache_key(scheme: bytes, authority: bytes, target: bytes) -> bytes:
    """``b"https://example.com/a?b"``: scheme and authority lower-cased, the
    scheme's default port dropped, the target as it came."""
    return origin_key(scheme, authority) + target


def origin_key(scheme: bytes, authority: bytes) -> bytes:
    """The start of every :func:`cache_key` of one origin (``b"https://example.com"``):
    a caller that sees few origins may keep it and add the target."""
    scheme = scheme.lower()
    return scheme + b"://" + _authority(scheme, authority)


def invalidated_keys(key: bytes, location_lines: Sequence[bytes]) -> list[bytes]:
    """The keys an unsafe request's non-error response invalidates (RFC 9111
    4.4): ``key`` itself, and the ``Location`` and ``Content-Location``
    values among ``location_lines`` (absolute or relative to ``key``) that
    have the same origin as ``key``.  Other lines are ignored."""
    keys = [key]
    base = key.decode("latin-1")
    origin = urlsplit(base)
    scheme = origin.scheme.encode("latin-1")
    authority = _authority(scheme, origin.netloc.encode("latin-1"))
    for line in location_lines:
        name, _, value = line.partition(b":")
        if name.strip(_OWS).lower() not in (b"location", b"content-location"):
            continue
        value = value.strip(_OWS)
        if not value:
            continue
        try:
            url = urlsplit(urljoin(base, value.decode("latin-1")))
        except ValueError:  # e.g. a malformed IPv6 authority
            continue
        url_scheme = url.scheme.lower().encode("latin-1")
        if url_scheme != scheme:
            continue
        if _authority(url_scheme, url.netloc.encode("latin-1")) != authority:
            continue
        target = url.path or "/"
        if url.query:
            target += "?" + url.query
        invalidated = cache_key(scheme, authority, target.encode("latin-1"))
        if invalidated not in keys:
            keys.append(invalidated)
    return keys


# -- Cache-Status ----------------------------------------------------------------------------

_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_INTEGER_MAX = 999_999_999_999_999


def _sf_string(value: bytes) -> bytes:
    """An RFC 8941 sf-string; bytes it cannot hold (controls, non-ASCII) as %XX."""
    out = bytearray(b'"')
    for byte in value:
        if byte == 0x22 or byte == 0x5C:
            out += b"\\%c" % byte
        elif 0x20 <= byte < 0x7F:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    out += b'"'
    return bytes(out)


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: float | None = None,
    key: bytes | None = None,
    detail: str | None = None,
) -> bytes:
    """A ``Cache-Status`` value (RFC 9211) for the cache named ``edgeproxy``:
    ``b"edgeproxy; hit; ttl=30"``, ``b"edgeproxy; fwd=miss; fwd-status=200;
    stored; ttl=60"``.  ``fwd`` must be a token; ``ttl`` is floored;
    ``detail`` is a token if it can be, else an sf-string."""
    parts = [b"edgeproxy"]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        if _SF_TOKEN.fullmatch(fwd) is None:
            raise ValueError(f"fwd is a token: {fwd!r}")
        parts.append(b"fwd=" + fwd.encode("ascii"))
    if fwd_status is not None:
        parts.append(b"fwd-status=%d" % fwd_status)
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if ttl is not None:
        seconds = (
            math.floor(ttl) if math.isfinite(ttl) else (1 if ttl > 0 else -1) * _SF_INTEGER_MAX
        )
        seconds = max(-_SF_INTEGER_MAX, min(_SF_INTEGER_MAX, seconds))
        parts.append(b"ttl=%d" % seconds)
    if key is not None:
        parts.append(b"key=" + _sf_string(key))
    if detail is not None:
        if _SF_TOKEN.fullmatch(detail) is not None:
            parts.append(b"detail=" + detail.encode("ascii"))
        else:
            parts.append(b"detail=" + _sf_string(detail.encode("utf-8")))
    return b"; ".join(parts)
