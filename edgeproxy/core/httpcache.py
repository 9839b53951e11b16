"""
STAND-IN for the cache stores' branch only: the few names of the RFC 9111 policy module
(docs: /work/notes/cache15-spec.md section 1) that ``edgeproxy.cache`` needs, with the spec's
signatures.  The real module comes from the cache-policy branch and replaces this file whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def _normalise(values: list[bytes]) -> bytes:
    joined = b", ".join(values)
    return b",".join(part.strip(b" \t") for part in joined.split(b",")).replace(b",", b", ")


def _request_value(name: bytes, request_headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    return _normalise([v for n, v in request_headers if n.lower() == name])


def vary_key(
    lines: Sequence[bytes], request_headers: Iterable[tuple[bytes, bytes]]
) -> tuple[tuple[bytes, bytes], ...] | None:
    names: set[bytes] = set()
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"vary":
            continue
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item == b"*":
                return None
            if item:
                names.add(item)
    headers = list(request_headers)
    return tuple((name, _request_value(name, headers)) for name in sorted(names))


def vary_matches(
    vary: tuple[tuple[bytes, bytes], ...], request_headers: Iterable[tuple[bytes, bytes]]
) -> bool:
    headers = list(request_headers)
    return all(_request_value(name, headers) == value for name, value in vary)


class StoredHead:
    __slots__ = (
        "body_length",
        "lines",
        "phrase",
        "request_time",
        "response_time",
        "status",
        "vary",
    )

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
        self.status = status
        self.phrase = phrase
        self.lines = tuple(lines)
        self.request_time = request_time
        self.response_time = response_time
        self.vary = vary
        self.body_length = body_length

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "phrase": self.phrase.decode("latin-1"),
            "lines": [line.decode("latin-1") for line in self.lines],
            "request_time": self.request_time,
            "response_time": self.response_time,
            "vary": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.vary],
            "body_length": self.body_length,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], *, heuristic_max: float = 86400.0) -> StoredHead:
        d: Any = data
        return cls(
            int(d["status"]),
            str(d["phrase"]).encode("latin-1"),
            tuple(str(line).encode("latin-1") for line in d["lines"]),
            float(d["request_time"]),
            float(d["response_time"]),
            tuple((str(n).encode("latin-1"), str(v).encode("latin-1")) for n, v in d["vary"]),
            int(d["body_length"]),
            heuristic_max=heuristic_max,
        )
