"""No default certificate is said out loud: at start-up (the real proxy's log)
and by ``--check`` (tests/e2e/test_check_semantics.py)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.e2e.conftest import write_config
from tests.e2e.harness import ProxyProcess, client_context, raw_exchange

SITE = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["127.0.0.1:9"])
virtual_hosts = [VirtualHost(["shop.example"], routes=[Route("/", app)])]
"""

WARNING = r"certificate warning: {certs}: no default certificate \(default\.pem, or default\.crt"


def test_start_up_warns_without_a_default_certificate(
    tmp_path: Path, ca: trustme.CA, proxies: Callable[..., ProxyProcess]
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_cert("shop.example").private_key_and_cert_chain_pem.write_to_path(
        str(certs / "shop.pem")
    )
    config = write_config(tmp_path / "site.py", SITE)
    proxy = proxies(tmp_path, config, certs)
    line = proxy.wait_for_output(WARNING.format(certs=re.escape(str(certs))))
    assert "docs/certificates.md" in line
    # What it warns about: a client that sends no server name is refused.
    with pytest.raises(ssl.SSLError):
        raw_exchange(proxy.ports["https"], b"GET / HTTP/1.1\r\n\r\n", client_context(), None)


def test_no_warning_with_a_default_certificate(
    tmp_path: Path, certs_dir: Path, proxies: Callable[..., ProxyProcess]
) -> None:
    config = write_config(tmp_path / "site.py", SITE)
    proxy = proxies(tmp_path, config, certs_dir)
    proxy.wait_for_output(r"certificate index loaded from .*default .*default\.pem")
    assert "no default certificate" not in "".join(proxy.output)
