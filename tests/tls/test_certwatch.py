"""Tests for edgeproxy.tls.certwatch: directory layouts, incremental reloads, the watcher service."""

from __future__ import annotations

import datetime
import os

import pytest
import trustme
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from edgeproxy.core.errors import ConfigProblem
from edgeproxy.tls import certwatch
from edgeproxy.tls.certificates import CertificateIndex
from edgeproxy.tls.certwatch import (
    NO_DEFAULT_CERTIFICATE,
    CertificateDirectory,
    CertificateWatcher,
    check_directory,
)
from tests.certutil import make_ca, utc, write_cert, write_key_mismatch, write_raw

NOW = utc(2030, 6, 1)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return make_ca()


def served(index: CertificateIndex, name: str | None) -> str | None:
    cert = index.select(name.encode() if name is not None else None)
    return cert.source if cert is not None else None


# --- layouts ---------------------------------------------------------------------


def test_layouts_in_one_directory(tmp_path, ca) -> None:
    d = str(tmp_path)
    pem = write_cert(d, "shop", ca, "shop.example", "*.shop.example", layout="pem")
    crt = write_cert(d, "blog", ca, "blog.example", "127.0.0.1", layout="crtkey")
    bot = write_cert(d, "api", ca, "api.example", layout="certbot")  # live/api/...
    result = check_directory(d, NOW)
    assert result.problems == ()
    assert result.changed
    index = result.index
    assert served(index, "shop.example") == pem
    assert served(index, "x.shop.example") == pem
    assert served(index, "blog.example") == crt
    assert served(index, "127.0.0.1") == crt
    assert served(index, "api.example") == bot
    assert bot == os.path.join(d, "live", "api", "fullchain.pem")
    assert os.path.islink(bot)
    assert index.default is None
    assert len(index.certificates) == 3


def test_certbot_live_directory_itself(tmp_path, ca) -> None:
    le = str(tmp_path / "letsencrypt")
    write_cert(le, "shop.example", ca, "shop.example", layout="certbot")
    write_cert(le, "blog.example", ca, "blog.example", layout="certbot")
    # --certs /etc/letsencrypt/live
    live = os.path.join(le, "live")
    index = check_directory(live, NOW).index
    assert served(index, "shop.example") == os.path.join(live, "shop.example", "fullchain.pem")
    assert served(index, "blog.example") == os.path.join(live, "blog.example", "fullchain.pem")
    # --certs /etc/letsencrypt/live/shop.example works too.
    one = os.path.join(live, "shop.example")
    assert check_directory(one, NOW).index.names == {"shop.example"}


def test_unrelated_files_ignored(tmp_path, ca) -> None:
    d = str(tmp_path)
    write_cert(d, "shop", ca, "shop.example", layout="certbot")
    write_raw(os.path.join(d, "README.md"), b"# certs\n")
    write_raw(os.path.join(d, ".hidden.pem"), b"junk")
    write_raw(os.path.join(d, "shop.csr"), b"-----BEGIN CERTIFICATE REQUEST-----\n")
    write_raw(
        os.path.join(d, "ssl-dhparams.pem"),
        b"-----BEGIN DH PARAMETERS-----\nMAYCAQ==\n-----END DH PARAMETERS-----\n",
    )
    write_raw(os.path.join(d, "renewal", "shop.conf"), b"version = 2\n")
    write_raw(os.path.join(d, "keys", "0000_key-certbot.pem"), b"junk")
    os.makedirs(os.path.join(d, ".git"))
    result = check_directory(d, NOW)
    assert result.problems == ()
    assert result.index.names == {"shop.example"}


def test_lone_key_and_crt_without_key_are_problems(tmp_path, ca) -> None:
    d = str(tmp_path)
    crt = write_cert(d, "shop", ca, "shop.example", layout="crtkey")
    os.rename(crt.replace(".crt", ".key"), os.path.join(d, "orphan.key"))
    result = check_directory(d, NOW)
    assert set(result.problems) == {
        ConfigProblem(crt, "certificate without a private key: shop.key not found"),
        ConfigProblem(
            os.path.join(d, "orphan.key"),
            "private key without a certificate: orphan.crt not found",
        ),
    }
    assert result.index.names == frozenset()


@pytest.mark.parametrize("layout", ["pem", "crtkey"])
def test_default_certificate(tmp_path, ca, layout) -> None:
    d = str(tmp_path)
    default = write_cert(d, "default", ca, "fallback.example", layout=layout)
    shop = write_cert(d, "shop", ca, "shop.example")
    index = check_directory(d, NOW).index
    assert index.default is not None and index.default.source == default
    assert index.default.is_default
    assert served(index, None) == default
    assert served(index, "unknown.example") == default
    assert served(index, "fallback.example") == default
    assert served(index, "shop.example") == shop


def test_missing_default_means_refusal(tmp_path, ca) -> None:
    write_cert(str(tmp_path), "shop", ca, "shop.example")
    index = check_directory(str(tmp_path), NOW).index
    assert index.lookup(None) is None
    assert index.lookup(b"unknown.example") is None


# --- incremental scanning ------------------------------------------------------------


def test_unchanged_directory_not_reread(tmp_path, ca) -> None:
    d = str(tmp_path)
    write_cert(d, "shop", ca, "shop.example")
    write_cert(d, "blog", ca, "blog.example", layout="crtkey")
    directory = CertificateDirectory(d)
    first = directory.scan(NOW)
    assert first.changed and directory.reads == 2
    second = directory.scan(NOW)
    assert not second.changed
    assert second.index is first.index
    assert directory.reads == 2
    # One file replaced: only that one is read again.
    write_cert(d, "blog", ca, "blog.example", "www.blog.example", layout="crtkey")
    third = directory.scan(NOW)
    assert third.changed and directory.reads == 3
    assert "www.blog.example" in third.index.names
    # Contexts of untouched certificates are reused, not rebuilt.
    shop_before = first.index.select(b"shop.example")
    shop_after = third.index.select(b"shop.example")
    assert shop_before is shop_after


def test_broken_file_reported_and_previous_kept(tmp_path, ca) -> None:
    d = str(tmp_path)
    path = write_cert(d, "shop", ca, "shop.example")
    directory = CertificateDirectory(d)
    good = directory.scan(NOW)
    fingerprint = good.index.select(b"shop.example").fingerprint

    write_raw(path, b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    broken = directory.scan(NOW)
    assert [p.path for p in broken.problems] == [path]
    assert "cannot parse" in broken.problems[0].message
    assert not broken.changed
    assert broken.index.select(b"shop.example").fingerprint == fingerprint
    # Not reported again while the bad file stays the same.
    again = directory.scan(NOW)
    assert again.problems == () and not again.changed
    assert [p.path for p in directory.current_problems] == [path]
    # Changed but still bad: reported again.
    write_raw(path, b"still not a certificate")
    assert [p.path for p in directory.scan(NOW).problems] == [path]
    # Fixed: picked up, problem gone.
    write_cert(d, "shop", ca, "shop.example", "new.example")
    fixed = directory.scan(NOW)
    assert fixed.changed and fixed.problems == ()
    assert "new.example" in fixed.index.names
    assert directory.current_problems == ()


def test_broken_file_at_startup_serves_nothing_for_it(tmp_path, ca) -> None:
    d = str(tmp_path)
    write_raw(os.path.join(d, "bad.pem"), b"nope")
    write_cert(d, "shop", ca, "shop.example")
    result = check_directory(d, NOW)
    assert [p.path for p in result.problems] == [os.path.join(d, "bad.pem")]
    assert result.index.names == {"shop.example"}


@pytest.mark.parametrize("layout", ["pem", "crtkey", "certbot"])
def test_key_mismatch_reported(tmp_path, ca, layout) -> None:
    d = str(tmp_path)
    path = write_key_mismatch(d, "shop", ca, "shop.example", layout=layout)
    result = check_directory(d, NOW)
    assert len(result.problems) == 1
    assert path in str(result.problems[0])
    assert "does not match" in result.problems[0].message
    assert result.index.certificates == ()


def test_removed_file_dropped(tmp_path, ca) -> None:
    d = str(tmp_path)
    path = write_cert(d, "shop", ca, "shop.example")
    write_cert(d, "blog", ca, "blog.example")
    directory = CertificateDirectory(d)
    directory.scan(NOW)
    os.unlink(path)
    result = directory.scan(NOW)
    assert result.changed
    assert result.index.names == {"blog.example"}


def test_removed_broken_file_with_previous_good_is_dropped(tmp_path, ca) -> None:
    d = str(tmp_path)
    path = write_cert(d, "shop", ca, "shop.example")
    directory = CertificateDirectory(d)
    directory.scan(NOW)
    write_raw(path, b"broken")
    directory.scan(NOW)
    os.unlink(path)
    result = directory.scan(NOW)
    assert result.changed and result.index.certificates == ()
    assert directory.current_problems == ()


def test_certbot_renewal_via_symlinks(tmp_path, ca) -> None:
    d = str(tmp_path)
    write_cert(d, "shop", ca, "shop.example", layout="certbot")
    directory = CertificateDirectory(d)
    before = directory.scan(NOW).index.select(b"shop.example").fingerprint
    write_cert(d, "shop", ca, "shop.example", layout="certbot")  # archive/shop/*2.pem
    result = directory.scan(NOW)
    assert result.changed
    assert result.index.select(b"shop.example").fingerprint != before


def test_file_changing_while_read_is_retried(tmp_path, ca, monkeypatch) -> None:
    d = str(tmp_path)
    path = write_cert(d, "shop", ca, "shop.example")
    real_open = open

    def open_and_append(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        with real_open(file, "ab") as w:  # a writer is still busy with the file
            w.write(b"\n")
        return f

    monkeypatch.setattr(certwatch, "open", open_and_append, raising=False)
    directory = CertificateDirectory(d)
    result = directory.scan(NOW)
    assert result.problems == () and result.index.certificates == ()
    monkeypatch.undo()
    result = directory.scan(NOW)
    assert result.changed and served(result.index, "shop.example") == path


def test_expiry_boundary_rebuilds_without_file_changes(tmp_path, ca) -> None:
    d = str(tmp_path)
    old = write_cert(
        d, "old", ca, "shop.example", not_before=utc(2029, 1, 1), not_after=utc(2030, 7, 1)
    )
    new = write_cert(
        d, "new", ca, "shop.example", not_before=utc(2030, 6, 10), not_after=utc(2031, 6, 1)
    )
    directory = CertificateDirectory(d)
    first = directory.scan(NOW)
    assert served(first.index, "shop.example") == old
    assert first.index.next_change == utc(2030, 6, 10)
    assert not directory.scan(utc(2030, 6, 9)).changed
    at_boundary = directory.scan(utc(2030, 6, 10))
    assert at_boundary.changed
    assert served(at_boundary.index, "shop.example") == new
    assert directory.reads == 2


def test_missing_directory_reported_once_then_picked_up(tmp_path, ca) -> None:
    d = str(tmp_path / "certs")
    directory = CertificateDirectory(d)
    first = directory.scan(NOW)
    assert [p.path for p in first.problems] == [d]
    assert "does not exist" in first.problems[0].message
    assert first.index.lookup(None) is None
    assert directory.scan(NOW).problems == ()
    write_cert(d, "default", ca, "shop.example")
    result = directory.scan(NOW)
    assert result.changed and result.problems == ()
    assert result.index.default is not None


# --- the watcher service ---------------------------------------------------------------


def _watcher(path: str, clock: Clock, **kwargs):  # type: ignore[no-untyped-def]
    indexes: list[CertificateIndex] = []
    watcher = CertificateWatcher(path, clock, indexes.append, **kwargs)
    return watcher, indexes


def test_watcher_initial_scan_and_swap_on_clock(tmp_path, ca) -> None:
    d = str(tmp_path)
    write_cert(d, "shop", ca, "shop.example")
    clock = Clock()
    watcher, indexes = _watcher(d, clock, now=lambda: NOW)
    with capturedLogs() as events:
        watcher.startService()
        assert len(indexes) == 1
        assert indexes[0].names == {"shop.example"}
        assert watcher.index is indexes[0]

        clock.advance(2)
        assert len(indexes) == 1  # nothing changed, nothing swapped

        write_cert(d, "blog", ca, "blog.example")
        clock.advance(2)  # well within 5 s
        assert len(indexes) == 2
        assert indexes[1].names == {"shop.example", "blog.example"}

        bad = write_raw(os.path.join(d, "bad.pem"), b"nope")
        clock.advance(2)
        clock.advance(2)
    assert len(indexes) == 2
    infos = [e for e in events if e["log_level"] == LogLevel.info]
    assert [e["certificates"] for e in infos] == [1, 2]
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert [e["path"] for e in errors] == [bad]  # logged once, with its path

    watcher.stopService()
    assert clock.getDelayedCalls() == []


def test_watcher_missing_directory_then_created(tmp_path, ca) -> None:
    d = str(tmp_path / "certs")
    clock = Clock()
    watcher, indexes = _watcher(d, clock, now=lambda: NOW)
    with capturedLogs() as events:
        watcher.startService()
    assert len(indexes) == 1  # the first scan always hands its (empty) index over
    assert indexes[0].certificates == () and indexes[0].lookup(None) is None
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert len(errors) == 1 and errors[0]["path"] == d
    write_cert(d, "default", ca, "any.example")
    clock.advance(2)
    assert len(indexes) == 2 and indexes[1].default is not None
    watcher.stopService()


def test_watcher_rebuilds_at_next_change_with_clock_time(tmp_path, ca) -> None:
    d = str(tmp_path)
    start = utc(2030, 6, 1)
    write_cert(d, "old", ca, "shop.example", not_before=utc(2029, 1, 1), not_after=utc(2031, 1, 1))
    new = write_cert(
        d, "new", ca, "shop.example",
        not_before=start + datetime.timedelta(seconds=10), not_after=utc(2032, 1, 1),
    )
    clock = Clock()
    clock.advance(start.timestamp())  # the default `now` reads the injected clock
    watcher, indexes = _watcher(d, clock)
    with capturedLogs():
        watcher.startService()
        assert served(indexes[-1], "shop.example") != new
        clock.advance(8)
        assert len(indexes) == 1
        clock.advance(2)
        clock.advance(2)
    assert len(indexes) == 2
    assert served(indexes[-1], "shop.example") == new
    watcher.stopService()


def test_watcher_survives_callback_errors(tmp_path, ca) -> None:
    d = str(tmp_path)
    write_cert(d, "shop", ca, "shop.example")
    clock = Clock()

    def explode(index: CertificateIndex) -> None:
        raise RuntimeError("boom")

    watcher = CertificateWatcher(d, clock, explode, now=lambda: NOW)
    with capturedLogs() as events:
        watcher.startService()
        write_cert(d, "blog", ca, "blog.example")
        clock.advance(2)
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 2
    assert clock.getDelayedCalls() != []  # still polling
    watcher.stopService()


def test_expired_winner_logged_as_warning(tmp_path, ca) -> None:
    d = str(tmp_path)
    write_cert(d, "old", ca, "shop.example", not_before=utc(2020, 1, 1), not_after=utc(2021, 1, 1))
    clock = Clock()
    watcher, indexes = _watcher(d, clock, now=lambda: NOW)
    with capturedLogs() as events:
        watcher.startService()
    warnings = [e for e in events if e["log_level"] == LogLevel.warn and "warning" in e]
    assert len(warnings) == 1 and "expired" in warnings[0]["warning"]
    assert served(indexes[0], "shop.example") is not None
    watcher.stopService()


def test_watcher_warns_while_there_is_no_default_certificate(tmp_path, ca) -> None:
    d = str(tmp_path)
    write_cert(d, "shop", ca, "shop.example")
    clock = Clock()
    watcher, indexes = _watcher(d, clock, now=lambda: NOW)

    def no_default_warnings(events: list) -> list:  # type: ignore[type-arg]
        return [
            e
            for e in events
            if e["log_level"] == LogLevel.warn and e.get("problem") == NO_DEFAULT_CERTIFICATE
        ]

    with capturedLogs() as events:
        watcher.startService()
        clock.advance(2)  # nothing changed: said once, not on every poll
    assert len(indexes) == 1
    [warning] = no_default_warnings(events)
    assert warning["path"] == d
    assert "default.pem" in warning["problem"] and "docs/certificates.md" in warning["problem"]

    with capturedLogs() as events:
        write_cert(d, "default", ca, "any.example")
        clock.advance(2)
    assert len(indexes) == 2 and indexes[1].default is not None
    assert no_default_warnings(events) == []
    watcher.stopService()
