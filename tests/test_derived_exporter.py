"""Derived metrics reach push exporters in the temporality each asks for, next to Prometheus, never twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from flowtel.config import FlowtelConfig
from flowtel.exporters.derived import DerivedMetricsExporter
from flowtel.processors import catalog as c
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics

DELTA, CUMULATIVE = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE


class Capture(MetricExporter):
    def __init__(self, temporality: AggregationTemporality) -> None:
        super().__init__(preferred_temporality={Counter: temporality, Histogram: temporality})
        self.batches: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass

    def points(self, batch: int, name: str) -> list:
        return [p for rm in self.batches[batch].resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                if m.name == name for p in m.data.data_points]

    def temporality(self, batch: int, name: str) -> AggregationTemporality:
        return next(m.data.aggregation_temporality for rm in self.batches[batch].resource_metrics
                    for sm in rm.scope_metrics for m in sm.metrics if m.name == name)


@pytest.fixture
def stack():  # type: ignore[no-untyped-def]
    self_metrics = SelfMetrics()
    metrics = FlowtelMetrics(FlowtelConfig(), self_metrics)
    delta, cumulative = Capture(DELTA), Capture(CUMULATIVE)
    readers = [PeriodicExportingMetricReader(DerivedMetricsExporter(e, metrics), export_interval_millis=3_600_000)
               for e in (delta, cumulative)]
    provider = MeterProvider(metric_readers=readers)
    self_metrics.bind(provider)
    yield metrics, delta, cumulative, provider
    provider.shutdown()


def _flows(metrics: FlowtelMetrics, values: Sequence[float], flow: str = "f") -> None:
    for i, value in enumerate(values):
        metrics.record(c.FLOW_REQUEST, 1, (flow, "200", "", "False"), {})
        metrics.record(c.FLOW_LATENCY, value, (flow, "200", "False", "default"), {}, (0xABC, i + 1))


def test_delta_and_cumulative_exporters_each_get_exact_numbers(stack) -> None:  # type: ignore[no-untyped-def]
    metrics, delta, cumulative, provider = stack
    _flows(metrics, [3, 40, 700])
    provider.force_flush()
    _flows(metrics, [2, 9000])
    _flows(metrics, [1], flow="g")
    provider.force_flush()

    assert delta.temporality(0, "flow_latency") == DELTA and cumulative.temporality(0, "flow_latency") == CUMULATIVE
    (d0,) = delta.points(0, "flow_latency")
    assert (d0.count, d0.sum, d0.min, d0.max) == (3, 743, 3, 700)
    bounds = list(c.PF_BUCKETS_MS)
    assert d0.bucket_counts[bounds.index(5)] == 1 and d0.bucket_counts[bounds.index(50)] == 1
    assert d0.bucket_counts[bounds.index(750)] == 1 and sum(d0.bucket_counts) == 3
    d1 = {p.attributes["flow"]: p for p in delta.points(1, "flow_latency")}
    assert (d1["f"].count, d1["f"].sum, d1["f"].min, d1["f"].max) == (2, 9002, 2, 9000)  # this window only
    assert d1["f"].bucket_counts[bounds.index(5)] == 1 and d1["f"].bucket_counts[bounds.index(10000)] == 1
    assert {e.value for e in d1["f"].exemplars} == {2, 9000}  # exemplars of this window only
    assert (d1["g"].count, d1["g"].sum) == (1, 1)
    assert d1["f"].start_time_unix_nano == d0.time_unix_nano  # windows tile without gap or overlap

    (c1,) = [p for p in cumulative.points(1, "flow_latency") if p.attributes["flow"] == "f"]
    assert (c1.count, c1.sum, c1.min, c1.max) == (5, 9745, 2, 9000)
    assert [a + b for a, b in zip(d0.bucket_counts, d1["f"].bucket_counts, strict=True)] == list(c1.bucket_counts)

    assert [p.value for p in delta.points(0, "flow_request")] == [3]
    assert sorted(p.value for p in delta.points(1, "flow_request")) == [1, 2]
    assert sorted(p.value for p in cumulative.points(1, "flow_request")) == [1, 5]


def test_unchanged_series_are_not_resent_as_deltas(stack) -> None:  # type: ignore[no-untyped-def]
    metrics, delta, cumulative, provider = stack
    _flows(metrics, [10])
    _flows(metrics, [10], flow="g")
    provider.force_flush()
    _flows(metrics, [20], flow="g")
    provider.force_flush()
    assert [p.attributes["flow"] for p in delta.points(1, "flow_latency")] == ["g"]
    assert [p.attributes["flow"] for p in delta.points(1, "flow_request")] == ["g"]
    assert sorted(p.attributes["flow"] for p in cumulative.points(1, "flow_latency")) == ["f", "g"]
    # the meter provider's own data (flowtel's self-metrics) still reaches the wrapped exporter
    assert delta.points(1, "flowtel.spans.dropped")


def test_configure_wraps_metric_exporters(make_harness) -> None:  # type: ignore[no-untyped-def]
    import flowtel
    from flowtel.exporters.prometheus import PrometheusSettings

    from conftest import reset_otel_globals

    reset_otel_globals()
    capture = Capture(DELTA)
    handle = flowtel.configure(config=FlowtelConfig(), span_exporters=[], metric_exporters=[capture],
                               prometheus=PrometheusSettings(port=0))
    try:
        tracer = trace.get_tracer("t")
        for _ in range(3):
            with tracer.start_as_current_span("my_flow", attributes={"framework": "promptflow",
                                                                     "span_type": "Function"}):
                pass
        handle.span_processor.force_flush()
        handle.meter_provider.force_flush()
        assert [p.value for p in capture.points(-1, "flow_request")] == [3]
        from conftest import scrape
        assert scrape(handle.prometheus.url).value("flow_request_total", flow="my_flow") == 3
    finally:
        handle.shutdown()
        reset_otel_globals()
