"""Tests for edgeproxy.tls.devcert."""

from __future__ import annotations

import datetime
import os
import stat

from edgeproxy.tls.certificates import CertificateIndex, SNIConnectionCreator, load_certificate
from edgeproxy.tls.certwatch import check_directory
from edgeproxy.tls.devcert import DEFAULT_NAMES, ensure_dev_certificate, main
from tests.certutil import client_context, make_ca, memory_handshake, write_cert


def test_writes_default_pem_in_new_directory(tmp_path) -> None:
    d = str(tmp_path / "certs" / "dev")
    path = ensure_dev_certificate(d)
    assert path == os.path.join(d, "default.pem")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(d) == ["default.pem"]
    loaded = load_certificate(path, None, is_default=True)
    assert loaded.names == ("localhost", "shop.example", "*.shop.example", "127.0.0.1", "::1")
    assert set(loaded.names) == set(DEFAULT_NAMES)
    validity = loaded.not_after - loaded.not_before
    assert datetime.timedelta(days=364) < validity < datetime.timedelta(days=366)
    now = datetime.datetime.now(datetime.UTC)
    assert loaded.is_valid_at(now)


def test_is_picked_up_as_default_and_serves_tls(tmp_path) -> None:
    d = str(tmp_path)
    ensure_dev_certificate(d, ["dev.example", "10.0.0.1"])
    now = datetime.datetime.now(datetime.UTC)
    result = check_directory(d, now)
    assert result.problems == ()
    index = result.index
    assert index.default is not None
    assert index.names == {"dev.example", "10.0.0.1"}
    creator = SNIConnectionCreator(lambda: index)
    handshake = memory_handshake(creator, None, client_context())
    assert handshake.ok and handshake.fingerprint == index.default.fingerprint


def test_existing_certificate_left_alone(tmp_path) -> None:
    d = str(tmp_path)
    write_cert(d, "shop", make_ca(), "shop.example", layout="certbot")
    assert ensure_dev_certificate(d) is None
    assert not os.path.exists(os.path.join(d, "default.pem"))


def test_second_call_is_a_no_op(tmp_path) -> None:
    d = str(tmp_path)
    first = ensure_dev_certificate(d)
    assert first is not None
    with open(first, "rb") as f:
        before = f.read()
    assert ensure_dev_certificate(d) is None
    with open(first, "rb") as f:
        assert f.read() == before


def test_unrelated_files_do_not_count(tmp_path) -> None:
    d = str(tmp_path)
    (tmp_path / "README.md").write_text("certs go here\n")
    assert ensure_dev_certificate(d) is not None


def test_command_line(tmp_path, capsys) -> None:
    d = str(tmp_path / "c")
    assert main([d]) == 0
    assert "default.pem" in capsys.readouterr().out
    assert main([d]) == 0
    assert "already holds a certificate" in capsys.readouterr().out
    assert main([]) == 2
    index = check_directory(d, datetime.datetime.now(datetime.UTC)).index
    assert isinstance(index, CertificateIndex) and index.default is not None
