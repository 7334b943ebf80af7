"""Received OTLP metrics on the collector's Prometheus endpoint: translation, accumulation, bounds."""

from __future__ import annotations

import pytest

from flowtel.collector.prometheus_config import ReceivedMetricsConfig
from flowtel.exporters.prometheus_names import COUNTER, GAUGE, HISTOGRAM, label_name, labels, metric_name


@pytest.mark.parametrize(("name", "unit", "kind", "monotonic", "expected"), [
    ("http.server.request.duration", "s", HISTOGRAM, False, "http_server_request_duration_seconds"),
    ("flow_latency", "ms", HISTOGRAM, False, "flow_latency_milliseconds"),
    ("requests", "1", COUNTER, True, "requests_total"),
    ("requests.total.count", "{request}", COUNTER, True, "requests_count_total"),
    ("memory.usage", "By", GAUGE, False, "memory_usage_bytes"),
    ("cpu.utilization", "1", GAUGE, False, "cpu_utilization_ratio"),
    ("queue", "{item}", GAUGE, False, "queue"),
    ("throughput", "By/s", GAUGE, False, "throughput_bytes_per_second"),
    ("latency_seconds", "s", HISTOGRAM, False, "latency_seconds"),
    ("2xx..responses", "", COUNTER, False, "_2xx_responses"),
    ("active", "", COUNTER, False, "active"),
])
def test_metric_names_follow_the_specification(name: str, unit: str, kind: str, monotonic: bool,
                                                 expected: str) -> None:
    assert metric_name(name, unit, kind, monotonic) == expected


def test_label_names_are_sanitised_and_colliding_keys_joined_in_key_order() -> None:
    assert label_name("http.route") == "http_route"
    assert label_name("0day") == "key_0day"
    assert label_name("_private") == "key_private"
    assert label_name("__reserved") == "__reserved"
    assert labels([("b.c", "2"), ("a", "x"), ("b_c", "1")]) == {"b_c": "2;1", "a": "x"}
    assert labels([("b_c", "1"), ("b.c", "2")]) == {"b_c": "2;1"}


def test_config_defaults_are_upstreams_where_upstream_has_the_key() -> None:
    config = ReceivedMetricsConfig()
    assert config.metric_expiration == 300.0
    assert config.resource_to_telemetry_conversion.enabled is False
    assert config.duplicate_derived_metrics == "drop"
    assert ReceivedMetricsConfig.model_validate({"metric_expiration": "2s"}).metric_expiration == 2.0
