"""edgeproxy.cache.registry: every store of the process by name, kept across
reloads, purged by URL or prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeproxy.cache.disk import DiskStore
from edgeproxy.cache.registry import CacheStores, store_name, url_key
from edgeproxy.cache.store import MemoryStore, Store
from edgeproxy.config import Cache, Cluster, Route, VirtualHost
from edgeproxy.core.errors import ConfigError
from edgeproxy.core.httpcache import StoredHead

ORIGIN = Cluster("origin", endpoints=["10.0.0.1:80"])


def put(store: Store, key: bytes, body: bytes = b"body") -> None:
    writer = store.begin(key, len(body))
    assert writer is not None and writer.write(body)
    head = StoredHead(200, b"OK", (b"Cache-Control: max-age=60",), 0.0, 0.0, (), len(body))
    assert writer.commit(head) is not None


def test_store_names_say_which_store() -> None:
    vhost = VirtualHost(["a.example", "b.example"], routes=[Route("/", ORIGIN)])
    route = Route("/s/", ORIGIN)
    assert store_name(vhost, route, Cache()) == "memory:a.example/s/"
    assert store_name(vhost, route, Cache(store="disk:/var/c")) == "disk:/var/c"


def test_a_store_asked_for_again_with_the_same_bounds_is_the_same_store() -> None:
    stores = CacheStores(clock=lambda: 0.0)
    first, counters = stores.store_for("memory:a/", Cache(max_bytes=2**20))
    again, same_counters = stores.store_for("memory:a/", Cache(max_bytes=2**20))
    assert again is first and same_counters is counters
    other, other_counters = stores.store_for("memory:a/", Cache(max_bytes=2**21))
    assert other is not first and isinstance(other, MemoryStore)
    assert other_counters is counters  # the counts go on: same name, same metric series


def test_keep_only_closes_the_stores_no_route_uses(tmp_path: Path) -> None:
    stores = CacheStores(clock=lambda: 0.0)
    memory, _ = stores.store_for("memory:a/", Cache())
    disk, _ = stores.store_for(f"disk:{tmp_path}", Cache(store=f"disk:{tmp_path}"))
    assert isinstance(disk, DiskStore)
    put(memory, b"https://a/x")
    stores.keep_only([f"disk:{tmp_path}"])
    assert [name for name, _, _ in stores.figures()] == [f"disk:{tmp_path}"]
    assert memory.figures().objects == 0


def test_purge_by_url_and_prefix_reaches_every_store(tmp_path: Path) -> None:
    stores = CacheStores(clock=lambda: 0.0)
    memory, _ = stores.store_for("memory:a/", Cache())
    disk, _ = stores.store_for(f"disk:{tmp_path}", Cache(store=f"disk:{tmp_path}"))
    for store in (memory, disk):
        put(store, b"https://a.example/s/1")
        put(store, b"https://a.example/s/2?q")
        put(store, b"https://a.example:8443/s/3")
    assert stores.purge_url("https://A.example:443/s/1") == 2
    assert stores.purge_prefix("https://a.example/s/") == 2
    assert stores.purge_prefix("https://a.example:8443") == 2
    assert memory.figures().objects == disk.figures().objects == 0


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://a.example/x?y=1", b"https://a.example/x?y=1"),
        ("http://A.Example:80/", b"http://a.example/"),
        ("https://a.example", b"https://a.example/"),
        ("https://a.example:8443/p", b"https://a.example:8443/p"),
    ],
)
def test_url_keys_are_the_keys_the_stage_makes(url: str, key: bytes) -> None:
    assert url_key(url) == key


@pytest.mark.parametrize("url", ["ftp://a/x", "/x", "https://", "https://u@a/x", "https://a/é"])
def test_url_key_refuses_what_is_not_an_absolute_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        url_key(url)


def test_a_directory_that_cannot_be_used_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    stores = CacheStores(clock=lambda: 0.0)
    directory = str(blocker / "cache")
    with pytest.raises(ConfigError) as raised:
        stores.store_for(f"disk:{directory}", Cache(store=f"disk:{directory}"))
    (problem,) = raised.value.problems
    assert problem.path == directory
    assert problem.message.startswith("cannot use it as a cache directory: ")
