"""
Endpoint selection policies: small classes over a candidate list.

Pure: no reactor, no I/O; randomness (a ``random.Random``) and the requests in
flight per endpoint (a callable) are injected.  Every selector answers one
question, :meth:`Selector.pick`: of the endpoints available right now, which
one takes this request?  The caller works out the candidates (healthy, not
ejected, not full, not already tried), always a subset of the cluster's
endpoints in cluster order.

- :class:`RoundRobinSelector`: nginx's smooth weighted round robin.
- :class:`RandomSelector`: a random endpoint in proportion to weight.
- :class:`LeastRequestSelector`: the power of N choices on requests in flight.
- :class:`MaglevSelector`: consistent hashing with a Maglev lookup table.

:func:`request_hash_key` extracts the key a ``ConsistentHash`` or a sticky
``Split`` hashes on; :func:`stable_roll` turns a key into the uniform roll a
:class:`~edgeproxy.config.routing.SplitChooser` takes.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from array import array
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = [
    "MAGLEV_CACHE_SIZE",
    "LeastRequestSelector",
    "MaglevSelector",
    "MaglevTable",
    "RandomSelector",
    "RoundRobinSelector",
    "Selector",
    "Weighted",
    "request_hash_key",
    "stable_roll",
]


class Weighted(Protocol):
    """What selection needs of an endpoint: a weight, and a text form (its
    address) that is stable across processes, for hashing.  Hashable."""

    @property
    def weight(self) -> int: ...


E = TypeVar("E", bound=Weighted)


#: How many Maglev tables (one per distinct candidate set) a selector keeps.
MAGLEV_CACHE_SIZE = 8


class Selector(Protocol[E]):
    """Picks the endpoint for one request (or one retry) of a cluster."""

    def pick(self, candidates: Sequence[E], hash_key: bytes | None = None) -> E | None:
        """One of ``candidates``, or ``None`` if and only if there are none.

        ``candidates`` are the endpoints available right now, a subset of the
        cluster's endpoints in cluster order.  ``hash_key`` is the request's
        key for consistent hashing (see :func:`request_hash_key`); policies
        that do not hash ignore it.
        """
        ...


def _weighted_choice(rng: random.Random, candidates: Sequence[E]) -> E | None:
    """A candidate drawn in proportion to its weight (exact integer arithmetic)."""
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    point = rng.randrange(sum(e.weight for e in candidates))
    for endpoint in candidates:
        point -= endpoint.weight
        if point < 0:
            return endpoint
    return candidates[-1]  # unreachable: point < total


class RoundRobinSelector(Generic[E]):
    """nginx's smooth weighted round robin.

    Each pick adds every candidate's weight to its running score, takes the
    highest score (the first in order on a tie) and subtracts the candidates'
    total weight from the winner.  With weights 5,1,1 that yields
    ``a a b a c a a`` rather than ``a a a a a b c``; with equal weights it is
    plain round robin.  Scores are kept per endpoint across picks, and an
    endpoint missing from the candidates is simply skipped, so the others keep
    their relative proportions and the missing one resumes its turn when it is
    back.
    """

    __slots__ = ("_scores",)

    def __init__(self, endpoints: Sequence[E]) -> None:
        self._scores: dict[E, int] = dict.fromkeys(endpoints, 0)

    def pick(self, candidates: Sequence[E], hash_key: bytes | None = None) -> E | None:
        scores = self._scores
        best: E | None = None
        best_score = 0
        total = 0
        for endpoint in candidates:
            weight = endpoint.weight
            score = scores.get(endpoint, 0) + weight
            scores[endpoint] = score
            total += weight
            if best is None or score > best_score:
                best, best_score = endpoint, score
        if best is not None:
            scores[best] = best_score - total
        return best

    def __repr__(self) -> str:
        return f"<RoundRobinSelector ({len(self._scores)} endpoints)>"


class RandomSelector(Generic[E]):
    """A random candidate, in proportion to its weight, from the injected ``rng``."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[E], hash_key: bytes | None = None) -> E | None:
        return _weighted_choice(self._rng, candidates)

    def __repr__(self) -> str:
        return "<RandomSelector>"


class LeastRequestSelector(Generic[E]):
    """The power of N choices (Mitzenmacher; Envoy's ``LEAST_REQUEST``).

    Samples ``choices`` distinct candidates *uniformly* (weights do not bias
    the sample) and takes the one with the lowest ``(in_flight + 1) / weight``:
    the load it would have with this request, per unit of weight.  The ``+ 1``
    makes an idle heavier endpoint win over an idle lighter one, so weights
    count even when nothing is in flight.  Ties go to the first sampled, which
    is random.  With ``choices`` at least the number of candidates every
    candidate is compared (a full least-request scan); ``choices=1`` is plain
    uniform random.
    """

    __slots__ = ("_choices", "_in_flight", "_rng")

    def __init__(self, choices: int, *, rng: random.Random, in_flight: Callable[[E], int]) -> None:
        if choices < 1:
            raise ValueError(f"choices must be at least 1, not {choices}")
        self._choices = choices
        self._rng = rng
        self._in_flight = in_flight

    def pick(self, candidates: Sequence[E], hash_key: bytes | None = None) -> E | None:
        count = len(candidates)
        if count <= 1:
            return candidates[0] if candidates else None
        sample = self._rng.sample(candidates, min(self._choices, count))
        in_flight = self._in_flight
        best = sample[0]
        best_load = in_flight(best) + 1
        for endpoint in sample[1:]:
            load = in_flight(endpoint) + 1
            # load / weight < best_load / best.weight, without floats
            if load * best.weight < best_load * endpoint.weight:
                best, best_load = endpoint, load
        return best

    def __repr__(self) -> str:
        return f"<LeastRequestSelector choices={self._choices}>"


# -- Maglev ------------------------------------------------------------------


def _hash64(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


def _endpoint_key(endpoint: Weighted) -> bytes:
    return str(endpoint).encode("utf-8")


def _permutation(endpoint: Weighted, size: int) -> tuple[int, int]:
    """Maglev's (offset, skip) for an endpoint: two independent hashes of its address."""
    key = _endpoint_key(endpoint)
    offset = _hash64(key, b"maglev-offset") % size
    if size == 1:
        return offset, 1
    skip = _hash64(key, b"maglev-skip") % (size - 1) + 1
    # With a prime size (the default, and what Maglev needs) every skip in
    # 1..size-1 is coprime to it.  Otherwise make it so: a skip sharing a
    # factor with the size would not visit every slot and the build would
    # never finish.
    while math.gcd(skip, size) != 1:
        skip = skip % (size - 1) + 1
    return offset, skip


def _schedule(weights: Sequence[int]) -> Iterator[int]:
    """The order endpoints claim slots in: Envoy's weighted Maglev.

    In iteration ``k`` (from 1) an endpoint claims a slot when
    ``k * weight >= claimed * max_weight``: the heaviest endpoints claim one
    slot every iteration, one of a third of that weight every third.
    """
    count = len(weights)
    top = max(weights)
    if all(weight == top for weight in weights):
        return itertools.cycle(range(count))
    turns = _weighted_turns(weights, top)
    period = sum(weights)
    if period > _MAX_SCHEDULE_PERIOD:
        return turns
    # In the first iteration every endpoint claims a slot; from the second on
    # the order repeats every ``top`` iterations, in which each endpoint
    # claims ``weight`` slots.  Keeping one period makes the build cheaper.
    first = list(itertools.islice(turns, count))
    return itertools.chain(first, itertools.cycle(list(itertools.islice(turns, period))))


_MAX_SCHEDULE_PERIOD = 1 << 20


def _weighted_turns(weights: Sequence[int], top: int) -> Iterator[int]:
    targets = [0] * len(weights)
    for iteration in itertools.count(1):
        for index, weight in enumerate(weights):
            if iteration * weight >= targets[index]:
                targets[index] += top
                yield index


_SWITCH_FACTOR = 6


def _build_slots(endpoints: Sequence[Weighted], size: int) -> list[int]:
    """Maglev's table population (the paper's listing 1, weighted as Envoy does).

    Each endpoint walks its own permutation of the slots,
    ``(offset + skip * j) % size``, and in turn claims the next slot not yet
    taken.  Walking is cheap while the table is mostly empty but costs about
    ``size / free`` steps per claim near the end, so once few slots are free
    each endpoint's remaining walk is computed directly instead: the free
    slots sorted by their distance along its permutation (the result is the
    same table, just faster in Python).
    """
    count = len(endpoints)
    offsets: list[int] = []
    skips: list[int] = []
    for endpoint in endpoints:
        offset, skip = _permutation(endpoint, size)
        offsets.append(offset)
        skips.append(skip)
    slots = [-1] * size
    position = offsets  # the next slot on each endpoint's walk
    schedule = _schedule([e.weight for e in endpoints])
    # Switch to the sorted walk once free slots are few; the constant was
    # measured (10 endpoints, 65537 slots: 61 ms walking alone, 41 ms hybrid).
    switch = min(size, max(1, size // (_SWITCH_FACTOR * count)))
    filled = 0
    walk_until = size - switch
    index = next(schedule)
    while filled < walk_until:
        slot = position[index]
        skip = skips[index]
        while slots[slot] >= 0:
            slot += skip
            if slot >= size:
                slot -= size
        slots[slot] = index
        slot += skip
        position[index] = slot - size if slot >= size else slot
        filled += 1
        index = next(schedule)
    free = [slot for slot in range(size) if slots[slot] < 0]
    walks: list[list[int] | None] = [None] * count
    cursors = [0] * count
    # ``index`` was taken from the schedule but not served yet: serve it first.
    for turn in itertools.chain((index,), schedule):
        walk = walks[turn]
        if walk is None:
            start = position[turn]
            inverse = pow(skips[turn], -1, size)
            # Every slot before ``start`` on this walk is taken, so the free
            # ones all lie ahead of it, in order of their distance along it.
            walk = sorted(free, key=lambda slot: (slot - start) * inverse % size)
            walks[turn] = walk
        cursor = cursors[turn]
        while slots[walk[cursor]] >= 0:
            cursor += 1
        slots[walk[cursor]] = turn
        cursors[turn] = cursor + 1
        filled += 1
        if filled >= size:
            break
    return slots


class MaglevTable(Generic[E]):
    """A Maglev lookup table over a fixed set of endpoints.

    The table depends only on the set (endpoints are ordered by address before
    the build), so every edgeproxy process with the same configuration and
    the same endpoints up maps a key to the same endpoint.  ``size`` should
    be a prime well above the number of endpoints (Maglev suggests 100x):
    each endpoint then owns close to ``size * weight / total_weight`` slots,
    and removing one endpoint moves only the keys it owned plus a small
    fraction of the others'.
    """

    __slots__ = ("_slots", "endpoints", "size")

    def __init__(self, endpoints: Collection[E], size: int) -> None:
        if size < 1:
            raise ValueError(f"table size must be at least 1, not {size}")
        if not endpoints:
            raise ValueError("a Maglev table needs at least one endpoint")
        self.endpoints: tuple[E, ...] = tuple(sorted(endpoints, key=_endpoint_key))
        self.size = size
        slots = _build_slots(self.endpoints, size)
        typecode = (
            "B" if len(self.endpoints) <= 0xFF else "H" if len(self.endpoints) <= 0xFFFF else "I"
        )
        self._slots = array(typecode, slots)

    def lookup(self, key: bytes) -> E:
        """The endpoint for ``key``."""
        return self.endpoints[self._slots[_hash64(key, b"maglev-key") % self.size]]

    def slot_counts(self) -> dict[E, int]:
        """How many slots each endpoint owns (its share of keys is its share of slots)."""
        counts = dict.fromkeys(self.endpoints, 0)
        for index in self._slots:
            counts[self.endpoints[index]] += 1
        return counts

    def __repr__(self) -> str:
        return f"<MaglevTable size={self.size} ({len(self.endpoints)} endpoints)>"


class MaglevSelector(Generic[E]):
    """Consistent hashing with Maglev (Eisenbud et al., NSDI 2016; Envoy's ``MAGLEV``).

    The same key goes to the same endpoint while the candidates stay the same;
    when one of N candidates goes away, only about 1/N of the keys move.  A
    table is built per candidate set and the last :data:`MAGLEV_CACHE_SIZE`
    are kept, so a health change costs one build, not one per request; the
    table for all the endpoints is built up front.  A request without a key
    (``hash_key=None``) gets a weighted random candidate.
    """

    __slots__ = ("_cache", "_rng", "table_size")

    def __init__(self, endpoints: Sequence[E], table_size: int, *, rng: random.Random) -> None:
        self.table_size = table_size
        self._rng = rng
        self._cache: OrderedDict[frozenset[E], MaglevTable[E]] = OrderedDict()
        if len(endpoints) > 1:
            self.table_for(endpoints)

    def table_for(self, candidates: Collection[E]) -> MaglevTable[E]:
        """The (cached) table for this set of candidates."""
        key = frozenset(candidates)
        cache = self._cache
        table = cache.get(key)
        if table is None:
            table = MaglevTable(key, self.table_size)
            cache[key] = table
            if len(cache) > MAGLEV_CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return table

    def pick(self, candidates: Sequence[E], hash_key: bytes | None = None) -> E | None:
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        if hash_key is None:
            return _weighted_choice(self._rng, candidates)
        return self.table_for(candidates).lookup(hash_key)

    def __repr__(self) -> str:
        return f"<MaglevSelector table_size={self.table_size} ({len(self._cache)} cached)>"


def request_hash_key(
    spec: str,
    *,
    client_ip: str,
    header: Callable[[bytes], bytes | None],
    cookie: Callable[[bytes], bytes | None],
) -> bytes | None:
    """The key a ``ConsistentHash(key=spec)`` or ``Split(sticky=spec)`` hashes on.

    ``spec`` is ``"client_ip"``, ``"header:NAME"`` or ``"cookie:NAME"``.
    ``header`` is called with the lower-cased header name (header names are
    case-insensitive, so it should be too: ``Request.getHeader`` is), ``cookie``
    with the cookie name as written.  ``None`` when the request lacks the key
    or it is empty: such requests are not hashed at all rather than all
    landing on one endpoint.
    """
    if spec == "client_ip":
        return client_ip.encode("utf-8") or None
    kind, _, name = spec.partition(":")
    name = name.strip()
    if kind == "header" and name:
        return header(name.lower().encode("utf-8")) or None
    if kind == "cookie" and name:
        return cookie(name.encode("utf-8")) or None
    raise ValueError(f"hash key must be 'client_ip', 'header:NAME' or 'cookie:NAME', not {spec!r}")


def stable_roll(key: bytes) -> float:
    """A roll in [0, 1) that depends only on ``key``, spread uniformly.

    For sticky splits: ``SplitChooser.choose(stable_roll(key))`` sends a key
    to the same cluster for as long as the split's weights stay the same.
    The top 53 bits of a 64-bit BLAKE2b (so the float is exact and below 1).
    """
    return (_hash64(key, b"split-roll") >> 11) * 2.0**-53
