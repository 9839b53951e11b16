from __future__ import annotations

import json

from edgeproxy.core.errors import Outcome, Reason
from edgeproxy.ops.accesslog import combined_time, format_combined, format_json
from tests.ops.test_metrics import record


def test_json_line_has_every_field_and_rfc3339_time() -> None:
    line = format_json(record(time=1_800_000_000.25))
    fields = json.loads(line)
    assert fields["time"] == "2027-01-15T08:00:00.250Z"
    assert fields["request_id"] == "abc" and fields["upstream_time"] == 0.005
    assert fields["outcome"] == "ok" and fields["reason"] is None
    assert "\n" not in line


def test_outcome_and_reason_are_their_tokens_in_both_formats() -> None:
    r = record(status=400, outcome=Outcome.REJECTED, reason=Reason.BAD_REQUEST_LINE)
    fields = json.loads(format_json(r))
    assert (fields["outcome"], fields["reason"]) == ("rejected", "bad_request_line")
    assert " outcome=rejected reason=bad_request_line " in format_combined(r)
    assert " outcome=ok reason=- " in format_combined(record())


def test_combined_line_is_combined_format_then_fields() -> None:
    line = format_combined(record(time=1_800_000_000.0))
    assert line.startswith('192.0.2.1 - - [15/Jan/2027:08:00:00 +0000] "GET /api/x HTTP/1.1" 200 5 "-" "-" ')
    assert "vhost=shop.example route=/api/ cluster=api endpoint=10.0.0.1:80" in line
    assert line.endswith("request_id=abc cache=-")
    assert format_combined(record(cache="hit")).endswith("request_id=abc cache=hit")
    assert json.loads(format_json(record(cache="hit")))["cache"] == "hit"


def test_combined_time_is_cached_per_second() -> None:
    assert combined_time(1_800_000_000.1) is combined_time(1_800_000_000.9)


def test_referer_and_user_agent_are_the_first_of_each_in_any_case() -> None:
    from edgeproxy.ops.accesslog import _referer_and_agent

    headers = [
        (b"Host", b"shop.example"),
        (b"X-Other", b"same length as referer"),
        (b"X-Agent-Id", b"same length as user-agent"),
        (b"REFERER", b"https://a.example/"),
        (b"user-agent", b"first"),
        (b"Referer", b"https://b.example/"),
        (b"User-Agent", b"second"),
    ]
    assert _referer_and_agent(headers) == (b"https://a.example/", b"first")
    assert _referer_and_agent([(b"Host", b"x")]) == (None, None)


def test_method_and_protocol_text_is_made_once_and_quotes_are_escaped() -> None:
    from edgeproxy.ops.accesslog import _short_text

    assert _short_text(b"GET") == "GET"
    assert _short_text(b"GET") is _short_text(b"GET")
    assert _short_text(b'M"X') == "M%22X"
    assert _short_text(b"") == "-"
