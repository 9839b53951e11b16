"""
Which TLS versions, suites and groups a real ``twistd edgeproxy`` accepts.

Starts the proxy on 127.0.0.1 (the e2e harness: an ephemeral port, a temporary
directory) with an ECDSA P-256 and an RSA 2048 certificate, then runs
``openssl s_client`` once per TLS 1.2 suite of
``openssl ciphers -v ALL:COMPLEMENTOFALL:@SECLEVEL=0`` and per TLS 1.3 suite
(for each certificate), once per group (TLS 1.2 and 1.3), and once for each of
TLS 1.0 and 1.1.  Prints what was accepted.  A mozilla-profile check with
sslyze says the same in other words; this needs only the ``openssl`` binary.

Run from the repository root:
``.venv/bin/python bench/tlsscan.py [-- EXTRA TWISTD ARGS, e.g. --tls-profile modern]``
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme

from tests.e2e.harness import ProxyProcess

GROUPS = (
    "X25519", "P-256", "P-384", "P-521", "X448",
    "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192",
    "secp224r1", "secp256k1", "brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1",
    "sect283r1", "sect571r1",
)  # fmt: skip
CERTIFICATES = (("ecdsa.test", trustme.KeyType.ECDSA), ("rsa.test", trustme.KeyType.RSA))
SITE = """\
from edgeproxy.config import Cluster, Route, VirtualHost
virtual_hosts = [VirtualHost(["ecdsa.test", "rsa.test"],
                             routes=[Route("/", Cluster("c", endpoints=["127.0.0.1:9"]))])]
"""

Handshake = tuple[str, str, str] | None  # (version, suite, key exchange) or refused


def s_client(port: int, *args: str) -> Handshake:
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )
    done = re.search(r"^New, (\S+), Cipher is (\S+)", result.stdout, re.M)
    if done is None or done.group(2) == "(NONE)":
        return None
    key = re.search(r"^(?:Server|Peer) Temp Key: (.*)$", result.stdout, re.M)
    return done.group(1), done.group(2), key.group(1) if key else "-"


def openssl_suites() -> tuple[list[str], list[str]]:
    """(TLS 1.2 and older suites, TLS 1.3 suites) this openssl knows."""
    listing = subprocess.run(
        ["openssl", "ciphers", "-v", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = [line.split() for line in listing.splitlines() if line.strip()]
    tls13 = [f[0] for f in fields if f[1] == "TLSv1.3"]
    tls13 += [s for s in ("TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256") if s not in tls13]
    return [f[0] for f in fields if f[1] != "TLSv1.3"], tls13


def scan(port: int) -> dict[tuple[str, str, str], Handshake]:
    tls12, tls13 = openssl_suites()
    jobs: dict[tuple[str, str, str], Future[Handshake]] = {}
    with ThreadPoolExecutor(4) as pool:
        for sni, _ in CERTIFICATES:
            name = ("-servername", sni)
            for suite in tls12:
                cipher = ("-cipher", suite + ":@SECLEVEL=0")
                jobs["TLS 1.2", sni, suite] = pool.submit(s_client, port, *name, "-tls1_2", *cipher)
            for suite in tls13:
                only = ("-ciphersuites", suite)
                jobs["TLS 1.3", sni, suite] = pool.submit(s_client, port, *name, "-tls1_3", *only)
            for flag, version in (("-tls1", "TLS 1.0"), ("-tls1_1", "TLS 1.1")):
                every = ("-cipher", "ALL:@SECLEVEL=0")
                jobs[version, sni, "any"] = pool.submit(s_client, port, *name, flag, *every)
        for group in GROUPS:
            ecdhe = ("-cipher", "ECDHE:@SECLEVEL=0")
            jobs["groups TLS 1.2", "rsa.test", group] = pool.submit(
                s_client, port, "-servername", "rsa.test", "-tls1_2", "-groups", group, *ecdhe
            )
            jobs["groups TLS 1.3", "ecdsa.test", group] = pool.submit(
                s_client, port, "-servername", "ecdsa.test", "-tls1_3", "-groups", group
            )
    return {key: job.result() for key, job in jobs.items()}


def report(results: dict[tuple[str, str, str], Handshake]) -> None:
    rows: dict[tuple[str, str], tuple[list[str], int]] = {}
    for (kind, sni, item), outcome in results.items():
        accepted, total = rows.get((kind, sni), ([], 0))
        if outcome is not None:
            accepted.append(item)
        rows[kind, sni] = (accepted, total + 1)
    print("| scan | certificate | accepted | of |")
    print("|---|---|---|---:|")
    for (kind, sni), (accepted, total) in rows.items():
        print(f"| {kind} | {sni} | {', '.join(accepted) or 'none'} | {total} |")


def main() -> None:
    extra = sys.argv[1:]
    if extra[:1] == ["--"]:
        extra = extra[1:]
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-tlsscan-"))
    certs = tmp / "certs"
    certs.mkdir()
    ca = trustme.CA()
    for name, key_type in CERTIFICATES:
        leaf = ca.issue_cert(name, key_type=key_type)
        leaf.private_key_and_cert_chain_pem.write_to_path(str(certs / f"{name}.pem"))
    (tmp / "site.py").write_text(SITE)
    proxy = ProxyProcess(tmp, tmp / "site.py", certs, extra).start()
    try:
        results = scan(proxy.ports["https"])
    finally:
        proxy.stop()
    report(results)


if __name__ == "__main__":
    main()
