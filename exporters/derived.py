"""``DerivedMetricsExporter``: give a push metric exporter flowtel's derived metrics too.

Wrap any SDK ``MetricExporter`` (OTLP, Azure Monitor, console) and put it in a
``PeriodicExportingMetricReader`` as usual. On every export the derived metrics are
added, in the temporality the wrapped exporter prefers, to the data the meter provider
collected (flowtel's self-metrics and the app's own instruments):

    reader = PeriodicExportingMetricReader(DerivedMetricsExporter(OTLPMetricExporter(), flowtel_metrics))
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from flowtel._otel_sdk import metric_exporter_preferences
from flowtel.processors.metrics import Consumer, FlowtelMetrics

SCOPE = InstrumentationScope("flowtel", schema_url="https://opentelemetry.io/schemas/1.37.0")


class DerivedMetricsExporter(MetricExporter):
    def __init__(self, exporter: MetricExporter, metrics: FlowtelMetrics | None,
                 resource: Resource | None = None) -> None:
        temporality, aggregation = metric_exporter_preferences(exporter)
        super().__init__(preferred_temporality=temporality, preferred_aggregation=aggregation)
        self.exporter = exporter
        self._producers: list[tuple[FlowtelMetrics, Consumer]] = []
        if metrics is not None:
            self.add_producer(metrics)
        self._resource = resource or Resource.create()

    def add_producer(self, metrics: FlowtelMetrics) -> None:
        """Also export these derived metrics (the collector has one set per pipeline)."""
        self._producers.append((metrics, metrics.consumer(self.exporter._preferred_temporality)))

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        derived = [m for metrics, consumer in self._producers for m in metrics.produce(consumer)]
        if derived:
            scope = ScopeMetrics(SCOPE, derived, SCOPE.schema_url or "")
            resource_metrics = list(metrics_data.resource_metrics)
            if resource_metrics:
                first = resource_metrics[0]
                resource_metrics[0] = ResourceMetrics(first.resource, [*first.scope_metrics, scope], first.schema_url)
            else:
                resource_metrics = [ResourceMetrics(self._resource, [scope], "")]
            metrics_data = MetricsData(resource_metrics)
        return self.exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.exporter.shutdown(timeout_millis=timeout_millis, **kwargs)
