"""Issue 21, attack 2: made-up methods and paths must not grow /metrics/prometheus. Every label
comes from a closed set (methods outside the standard ones are ``other``, unknown paths
``unmatched``), so 5,000 of them add no series and no bytes beyond the counts themselves."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.app.conftest import AUTH


def series(text: str) -> int:
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


def test_made_up_methods_and_paths_add_no_series(make_client):
    client = make_client()
    client.request("MADEUP0", "/healthz")  # the `other` and `unmatched` series exist from here on
    client.get("/no/such/path/0")
    before = client.get("/metrics/prometheus", headers=AUTH).text
    for i in range(2500):
        client.request(f"X{i:04d}" + "Q" * (i % 40), "/healthz")
        client.get(f"/no/such/path/{i}-{'a' * (i % 50)}")
    after = client.get("/metrics/prometheus", headers=AUTH).text
    assert series(after) == series(before) + _new_samples_of_the_scrapes(before, after)
    assert len(after) <= len(before) + 2048  # only counts grew (digits), never series
    assert "X0001" not in after and "/no/such/path" not in after
    labels = {
        (s.labels.get("method"), s.labels.get("route"))
        for family in text_string_to_metric_families(after)
        if family.name == "exposr_http_request_duration_seconds"
        for s in family.samples
    }
    assert ("other", "/healthz") in labels and ("GET", "unmatched") in labels


def _new_samples_of_the_scrapes(before: str, after: str) -> int:
    """The first scrape of /metrics/prometheus itself adds its own latency series (once)."""
    route = 'route="/metrics/prometheus"'
    return sum(route in line for line in after.splitlines() if not line.startswith("#")) - sum(
        route in line for line in before.splitlines() if not line.startswith("#")
    )
