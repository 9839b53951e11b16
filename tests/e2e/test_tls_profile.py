"""
``--tls-profile`` through the real ``twistd edgeproxy``: Python ``ssl``
clients pinned to one protocol version, one TLS 1.2 suite or one key-exchange
group each.  The default (``intermediate``) takes TLS 1.2 with ECDHE and an
AEAD cipher only, and TLS 1.3, over X25519, P-256 and P-384; ``modern``
takes TLS 1.3 alone.  Every handshake that succeeds also carries a request
to the backend, for an ECDSA and an RSA certificate alike.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.e2e.conftest import write_config
from tests.e2e.harness import BackendServer, ProxyProcess, request

CONFIG = """
from edgeproxy.config import Cluster, Route, VirtualHost

app = Cluster("app", endpoints=["{app}"])
virtual_hosts = [VirtualHost(["ecdsa.test", "rsa.test"], routes=[Route("/", app)])]
"""

#: The SNI name whose certificate has each key type.
ECDSA = "ecdsa.test"
RSA = "rsa.test"


@dataclass
class Proxy:
    process: ProxyProcess
    ca: trustme.CA

    @property
    def port(self) -> int:
        return self.process.ports["https"]


def make_certs(directory: Path, ca: trustme.CA) -> Path:
    directory.mkdir()
    for name, key_type in ((ECDSA, trustme.KeyType.ECDSA), (RSA, trustme.KeyType.RSA)):
        leaf = ca.issue_cert(name, key_type=key_type)
        leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / f"{name}.pem"))
    return directory


def start_proxy(
    factory: pytest.TempPathFactory, ca: trustme.CA, backend: BackendServer, *args: str
) -> ProxyProcess:
    tmp = factory.mktemp("tls-profile")
    config = write_config(tmp / "site.py", CONFIG.format(app=backend.address))
    return ProxyProcess(tmp, config, make_certs(tmp / "certs", ca), args).start()


@pytest.fixture(scope="module")
def intermediate(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, backend: BackendServer
) -> Iterator[Proxy]:
    """No --tls-profile: the default."""
    process = start_proxy(tmp_path_factory, ca, backend)
    try:
        yield Proxy(process, ca)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def modern(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, backend: BackendServer
) -> Iterator[Proxy]:
    process = start_proxy(tmp_path_factory, ca, backend, "--tls-profile", "modern")
    try:
        yield Proxy(process, ca)
    finally:
        process.stop()


def pinned(
    ca: trustme.CA,
    version: ssl.TLSVersion,
    cipher: str | None = None,
    group: str | None = None,
) -> ssl.SSLContext:
    """A verifying client that speaks only ``version`` and offers only ``cipher``
    (a TLS 1.2 suite) and ``group`` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    ctx.minimum_version = ctx.maximum_version = version
    if cipher is not None:
        ctx.set_ciphers(cipher)
    if group is not None:
        ctx.set_ecdh_curve(group)
    return ctx


def handshake(proxy: Proxy, sni: str, ctx: ssl.SSLContext) -> ssl.SSLSocket | str:
    """The TLS socket after a completed handshake, or the client's error text."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), 5.0)
    try:
        return ctx.wrap_socket(sock, server_hostname=sni)
    except ssl.SSLError as e:
        sock.close()
        return f"{type(e).__name__}: {e}"


def served(proxy: Proxy, sni: str, ctx: ssl.SSLContext) -> tuple[str, str]:
    """Handshake, then one request: (TLS version, suite) of a site that works."""
    tls = handshake(proxy, sni, ctx)
    assert isinstance(tls, ssl.SSLSocket), f"{sni}: handshake refused: {tls}"
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5.0)
        conn.sock = tls
        response, body = request(conn, "GET", "/", sni)
        assert response.status == 200, body
        cipher = tls.cipher()
        version = tls.version()
        assert cipher is not None and version is not None
        return version, cipher[0]
    finally:
        tls.close()


def refused(proxy: Proxy, sni: str, ctx: ssl.SSLContext) -> str:
    result = handshake(proxy, sni, ctx)
    if isinstance(result, ssl.SSLSocket):
        suite = result.cipher()
        result.close()
        raise AssertionError(f"{sni}: accepted {suite}")
    return result


TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


# --- intermediate (the default) --------------------------------------------------


@pytest.mark.parametrize(
    ("sni", "suite"),
    [
        (ECDSA, "ECDHE-ECDSA-AES128-GCM-SHA256"),
        (ECDSA, "ECDHE-ECDSA-AES256-GCM-SHA384"),
        (ECDSA, "ECDHE-ECDSA-CHACHA20-POLY1305"),
        (RSA, "ECDHE-RSA-AES128-GCM-SHA256"),
        (RSA, "ECDHE-RSA-AES256-GCM-SHA384"),
        (RSA, "ECDHE-RSA-CHACHA20-POLY1305"),
    ],
)
def test_tls12_ecdhe_aead_suites_are_accepted(intermediate: Proxy, sni: str, suite: str) -> None:
    assert served(intermediate, sni, pinned(intermediate.ca, TLS12, suite)) == ("TLSv1.2", suite)


@pytest.mark.parametrize(
    ("sni", "suite"),
    [
        (RSA, "AES128-GCM-SHA256"),  # RSA key exchange: no forward secrecy
        (RSA, "AES256-SHA256"),
        (RSA, "ECDHE-RSA-AES128-SHA"),  # CBC
        (RSA, "ECDHE-RSA-AES256-SHA384"),
        (ECDSA, "ECDHE-ECDSA-AES128-SHA"),
        (ECDSA, "ECDHE-ECDSA-AES256-SHA384"),
        (RSA, "DHE-RSA-AES128-GCM-SHA256"),  # finite-field DHE
    ],
)
def test_tls12_suites_without_ecdhe_or_aead_are_refused(
    intermediate: Proxy, sni: str, suite: str
) -> None:
    assert "HANDSHAKE_FAILURE" in refused(intermediate, sni, pinned(intermediate.ca, TLS12, suite))


@pytest.mark.parametrize("sni", [ECDSA, RSA])
def test_tls13_is_accepted(intermediate: Proxy, sni: str) -> None:
    version, suite = served(intermediate, sni, pinned(intermediate.ca, TLS13))
    assert (version, suite) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256")


def openssl_tls13_suite(proxy: Proxy, sni: str, suite: str) -> str | None:
    """The suite ``openssl s_client`` (Python cannot pin a TLS 1.3 suite)
    agrees on when it offers only ``suite``, or None when it is refused."""
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{proxy.port}",
            "-servername",
            sni,
            "-tls1_3",
            "-ciphersuites",
            suite,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )
    match = re.search(r"^New, TLSv1\.3, Cipher is (\S+)", result.stdout, re.MULTILINE)
    return match.group(1) if match else None


@pytest.mark.parametrize(
    "suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
)
def test_tls13_suites_are_accepted(intermediate: Proxy, suite: str) -> None:
    assert openssl_tls13_suite(intermediate, ECDSA, suite) == suite


def test_tls13_ccm_suites_are_refused(intermediate: Proxy) -> None:
    assert openssl_tls13_suite(intermediate, ECDSA, "TLS_AES_128_CCM_SHA256") is None


# TLS 1.2 groups are tried with the RSA certificate: with an ECDSA one the
# client must also offer the certificate's curve, which would blur the result.
@pytest.mark.parametrize(
    ("version", "sni"), [(TLS12, RSA), (TLS13, ECDSA), (TLS13, RSA)], ids=["1.2", "1.3", "1.3rsa"]
)
@pytest.mark.parametrize("group", ["X25519", "prime256v1", "secp384r1"])
def test_groups_x25519_p256_p384_are_accepted(
    intermediate: Proxy, version: ssl.TLSVersion, sni: str, group: str
) -> None:
    served(intermediate, sni, pinned(intermediate.ca, version, group=group))


@pytest.mark.parametrize(
    ("version", "sni"), [(TLS12, RSA), (TLS13, ECDSA), (TLS13, RSA)], ids=["1.2", "1.3", "1.3rsa"]
)
@pytest.mark.parametrize("group", ["X448", "secp521r1", "ffdhe2048"])
def test_groups_x448_secp521r1_ffdhe_are_refused(
    intermediate: Proxy, version: ssl.TLSVersion, sni: str, group: str
) -> None:
    error = refused(intermediate, sni, pinned(intermediate.ca, version, group=group))
    assert "HANDSHAKE_FAILURE" in error


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls10_and_11_are_refused(intermediate: Proxy, version: ssl.TLSVersion) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # so are they
        ctx = pinned(intermediate.ca, version)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert "PROTOCOL_VERSION" in refused(intermediate, RSA, ctx)


# --- modern ---------------------------------------------------------------------------


@pytest.mark.parametrize("sni", [ECDSA, RSA])
def test_modern_refuses_tls12_and_serves_tls13(modern: Proxy, sni: str) -> None:
    error = refused(modern, sni, pinned(modern.ca, TLS12))
    assert "PROTOCOL_VERSION" in error
    assert served(modern, sni, pinned(modern.ca, TLS13))[0] == "TLSv1.3"


def test_profile_is_logged_at_start(intermediate: Proxy, modern: Proxy) -> None:
    intermediate.process.wait_for_output(
        r"TLS profile intermediate: TLS 1\.2 \(ECDHE, AEAD\) and 1\.3, groups X25519:P-256:P-384"
    )
    modern.process.wait_for_output(r"TLS profile modern: TLS 1\.3, groups X25519:P-256:P-384")


def test_workers_take_the_profile_from_the_command_line(
    tmp_path_factory: pytest.TempPathFactory,
    ca: trustme.CA,
    backend: BackendServer,
) -> None:
    process = start_proxy(
        tmp_path_factory, ca, backend, "--workers", "2", "--tls-profile", "modern"
    )
    proxy = Proxy(process, ca)
    try:
        pattern = re.compile(r"worker=(\d+) pid=\d+\] TLS profile modern: TLS 1\.3,")
        deadline = time.monotonic() + 15
        workers: set[str] = set()
        while len(workers) < 2:
            assert time.monotonic() < deadline, "".join(process.output)
            workers = {m.group(1) for line in list(process.output) if (m := pattern.search(line))}
            time.sleep(0.05)
        assert workers == {"0", "1"}
        for _ in range(4):
            assert "PROTOCOL_VERSION" in refused(proxy, RSA, pinned(ca, TLS12))
            assert served(proxy, RSA, pinned(ca, TLS13))[0] == "TLSv1.3"
    finally:
        process.stop()
