"""The rate-limit Lua script on a real redis-server: the same decisions as the
pure GCRA, its key expiring when the bucket is full again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.ratelimit.redis import SCRIPT, SCRIPT_SHA
from tests.redisserver import RedisServer, command


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_burst_then_refusals_with_the_wait(redis: RedisServer) -> None:
    # rate 0.01/s: 100 000 000 µs a request, burst 3.
    replies = [command(redis.port, "EVAL", SCRIPT, 1, "rl:a", "100000000", 3) for _ in range(5)]
    assert replies[:3] == [[1, 0]] * 3
    for allowed, wait in replies[3:]:
        assert allowed == 0
        assert 99_000_000 < wait <= 100_000_000  # a second at most has passed
    # Another key has its own bucket.
    assert command(redis.port, "EVAL", SCRIPT, 1, "rl:b", "100000000", 3) == [1, 0]


def test_the_key_expires_when_the_bucket_is_full_again(redis: RedisServer) -> None:
    command(redis.port, "EVAL", SCRIPT, 1, "rl:ttl", "2000000", 5)  # 2 s a request
    ttl = command(redis.port, "PTTL", "rl:ttl")
    assert 1_000 < ttl <= 2_000
    command(redis.port, "EVAL", SCRIPT, 1, "rl:ttl", "2000000", 5)
    assert 3_000 < command(redis.port, "PTTL", "rl:ttl") <= 4_000


def test_evalsha_knows_the_script_once_loaded(redis: RedisServer) -> None:
    command(redis.port, "SCRIPT", "FLUSH")
    with pytest.raises(RuntimeError, match="NOSCRIPT"):
        command(redis.port, "EVALSHA", SCRIPT_SHA, 1, "rl:sha", "1000000", 1)
    assert command(redis.port, "SCRIPT", "LOAD", SCRIPT).decode() == SCRIPT_SHA
    assert command(redis.port, "EVALSHA", SCRIPT_SHA, 1, "rl:sha", "1000000", 1) == [1, 0]
