"""Reading `/metrics` answers in tests: parsed with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# Every family issue 16 asks for, by its name in the exposition (counters
# without their _total suffix, as the parser names them).
FAMILIES = {
    "dashboard_connections": "gauge",
    "dashboard_logins": "counter",
    "dashboard_login_failures": "counter",
    "dashboard_subscriptions": "gauge",
    "dashboard_live_queries": "gauge",
    "dashboard_evaluation_seconds": "histogram",
    "dashboard_push_latency_seconds": "histogram",
    "dashboard_pushes": "counter",
    "dashboard_push_bytes": "counter",
    "dashboard_outbox_bytes": "gauge",
    "dashboard_coalesced_pushes": "counter",
    "dashboard_slow_consumer_closes": "counter",
    "dashboard_layer_probe_failures": "counter",
    "dashboard_layer_healthy": "gauge",
    "dashboard_write_transactions": "counter",
    "dashboard_written_records": "counter",
    "dashboard_ingest_requests": "counter",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of every sample in an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def families(text: str) -> dict[str, str]:
    """{family name: type}."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled counter child not created yet."""
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)
