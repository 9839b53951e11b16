from __future__ import annotations

from prometheus_client import generate_latest

from edgeproxy.core.errors import Outcome, Reason
from edgeproxy.ops.accesslog import AccessRecord
from edgeproxy.ops.metrics import Metrics


def record(**overrides: object) -> AccessRecord:
    fields: dict[str, object] = dict(
        time=1_800_000_000.0, client="192.0.2.1", method="GET", host="shop.example",
        path="/api/x", protocol="HTTP/1.1", status=200, bytes=5, duration=0.01,
        referer="-", user_agent="-", vhost="shop.example", route="/api/", cluster="api",
        endpoint="10.0.0.1:80", upstream_status=200, upstream_time=0.005, attempts=1,
        outcome="ok", reason=None, tls_version="TLSv1.3", sni="shop.example", request_id="abc",
        cache=None,
    )
    fields.update(overrides)
    return AccessRecord(**fields)  # type: ignore[arg-type]


def observe(metrics: Metrics, r: AccessRecord, body_in: int) -> None:
    """What the access log hands the metrics for a request like ``r``."""
    metrics.observe(
        r.vhost, r.route, r.cluster, r.status, r.duration, r.upstream_time, body_in, r.bytes
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return value


def test_requests_are_counted_by_bounded_labels() -> None:
    metrics = Metrics()
    observe(metrics, record(), body_in=7)
    observe(metrics, record(status=503, upstream_time=None), body_in=0)
    observe(metrics, record(vhost=None, route=None, cluster=None, status=404), body_in=0)
    labels = dict(vhost="shop.example", route="/api/", cluster="api")
    assert sample(metrics, "edgeproxy_requests_total", status_class="2xx", **labels) == 1
    assert sample(metrics, "edgeproxy_requests_total", status_class="5xx", **labels) == 1
    assert sample(metrics, "edgeproxy_requests_total", status_class="4xx", vhost="-", route="-", cluster="-") == 1
    assert sample(metrics, "edgeproxy_upstream_response_duration_seconds_count", cluster="api") == 1
    assert sample(metrics, "edgeproxy_request_bytes_total", vhost="shop.example") == 7
    assert sample(metrics, "edgeproxy_response_bytes_total", vhost="shop.example") == 10
    # No client, path or endpoint ever becomes a label.
    text = generate_latest(metrics.registry).decode()
    assert "192.0.2.1" not in text and "/api/x" not in text


def test_refusals_are_counted_by_reason_only() -> None:
    metrics = Metrics()
    metrics.count_outcome(Outcome.REJECTED, Reason.BAD_REQUEST_LINE)
    metrics.count_outcome(Outcome.REJECTED, Reason.BAD_REQUEST_LINE)
    metrics.count_outcome(Outcome.REJECTED, Reason.HEADER_TOO_LARGE)
    metrics.count_outcome(Outcome.NO_ROUTE, Reason.NO_VIRTUAL_HOST)
    # Not refusals: the client left, the upstream failed, a limit shed it.
    metrics.count_outcome(Outcome.CLIENT_CLOSED, Reason.QUEUED)
    metrics.count_outcome(Outcome.UPSTREAM_ERROR, Reason.CONNECT_FAILED)
    metrics.count_outcome(Outcome.LIMITED, Reason.MAX_PENDING)
    name = "edgeproxy_requests_rejected_total"
    assert sample(metrics, name, reason="bad_request_line") == 2
    assert sample(metrics, name, reason="header_too_large") == 1
    assert sample(metrics, name, reason="no_virtual_host") == 1
    text = generate_latest(metrics.registry).decode()
    rejected = [line for line in text.splitlines() if line.startswith(name + "{")]
    assert len(rejected) == 3, rejected


def test_upstream_errors_are_counted_by_reason() -> None:
    metrics = Metrics()
    metrics.count_outcome(Outcome.UPSTREAM_ERROR, Reason.UPSTREAM_TLS)
    metrics.count_outcome(Outcome.UPSTREAM_ERROR, Reason.UPSTREAM_TLS)
    metrics.count_outcome(Outcome.UPSTREAM_ERROR, Reason.CONNECT_FAILED)
    metrics.count_outcome(Outcome.REJECTED, Reason.BAD_REQUEST_LINE)
    name = "edgeproxy_upstream_errors_total"
    assert sample(metrics, name, reason="upstream_tls") == 2
    assert sample(metrics, name, reason="connect_failed") == 1
    text = generate_latest(metrics.registry).decode()
    assert len([line for line in text.splitlines() if line.startswith(name + "{")]) == 2


def test_every_reason_token_is_a_short_snake_case_label() -> None:
    import re

    for token in [*Outcome, *Reason]:
        assert re.fullmatch(r"[a-z][a-z0-9_]{1,30}", token.value), token
    # The metric's label set stays small (40 with HTTP/2's window_timeout and upgrade_refused).
    assert len(Reason) <= 44


def test_connections_gauge() -> None:
    metrics = Metrics()
    metrics.connection_opened("https")
    metrics.connection_opened("https")
    metrics.connection_closed("https")
    assert sample(metrics, "edgeproxy_active_connections", listener="https") == 1


def test_dashboard_uses_only_metrics_that_exist() -> None:
    import random
    import re
    from pathlib import Path

    from twisted.internet.task import Clock

    from edgeproxy.cluster.snapshot import Snapshot
    from edgeproxy.config import Cluster, OutlierDetection, Route, VirtualHost
    from edgeproxy.tls.certificates import CertificateIndex
    from tests.memproxy import make_config

    cluster = Cluster("api", endpoints=["10.0.0.1:80"], outlier_detection=OutlierDetection())
    snapshot = Snapshot.build(
        make_config(VirtualHost(["a.example"], routes=[Route("/", cluster)])),
        Clock(),
        random.Random(1),
    )
    metrics = Metrics()
    metrics.watch(lambda: snapshot, CertificateIndex.empty, lambda: 1)
    observe(metrics, record(), body_in=1)
    metrics.tls_handshakes.labels("TLSv1.3").inc()
    metrics.tls_failures.labels("tls_error").inc()
    metrics.config_reloads.labels("ok").inc()
    metrics.count_outcome(Outcome.REJECTED, Reason.BAD_HEADER)
    snapshot.clusters["api"].counters.count_overflow(Reason.MAX_REQUESTS)
    exposed = {
        sample.name for family in metrics.registry.collect() for sample in family.samples
    } | {family.name for family in metrics.registry.collect()}
    dashboard = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
    used = set(re.findall(r"edgeproxy_[a-z_]+", dashboard.read_text()))
    missing = {name for name in used if name not in exposed}
    # Certificate expiry is a family without samples when no certificate is loaded.
    assert missing <= {"edgeproxy_certificate_expiry_timestamp_seconds"}, missing


def test_duration_histogram_buckets_are_cumulative_le() -> None:
    metrics = Metrics()
    for duration in (0.001, 0.0011, 0.3, 100.0):
        observe(metrics, record(duration=duration), body_in=0)
    labels = dict(vhost="shop.example", route="/api/")
    name = "edgeproxy_request_duration_seconds"
    assert sample(metrics, name + "_bucket", le="0.001", **labels) == 1  # le: bound included
    assert sample(metrics, name + "_bucket", le="0.0025", **labels) == 2
    assert sample(metrics, name + "_bucket", le="0.25", **labels) == 2
    assert sample(metrics, name + "_bucket", le="0.5", **labels) == 3
    assert sample(metrics, name + "_bucket", le="30.0", **labels) == 3
    assert sample(metrics, name + "_bucket", le="+Inf", **labels) == 4
    assert sample(metrics, name + "_count", **labels) == 4
    assert sample(metrics, name + "_sum", **labels) == 0.001 + 0.0011 + 0.3 + 100.0
    text = generate_latest(metrics.registry).decode()
    assert 'edgeproxy_requests_total{cluster="api",route="/api/",status_class="2xx",vhost="shop.example"} 4.0' in text
