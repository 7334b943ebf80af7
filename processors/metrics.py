"""Record derived measurements on OpenTelemetry instruments, with a cardinality cap.

One ``FlowtelMetrics`` owns the instruments of ``catalog.ALL_METRICS`` on a meter
provider; every reader of that provider (Prometheus, OTLP, Azure Monitor) sees the same
numbers. Bucket boundaries travel as instrument advice, so no View is needed. Past
``cardinality_limit`` distinct label sets a metric's new label sets fold into one series
labelled ``otel.metric.overflow=true``, and the folded measurements are counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from flowtel import semconv as sc
from flowtel._log import warn_once
from flowtel.config import FlowtelConfig
from flowtel.selfmetrics import SelfMetrics

from .catalog import ALL_METRICS, COUNTER, MetricSpec

_OVERFLOW = {sc.OVERFLOW_ATTRIBUTE: True}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class FlowtelMetrics:
    def __init__(self, meter_provider: MeterProvider, config: FlowtelConfig, self_metrics: SelfMetrics) -> None:
        meter = meter_provider.get_meter("flowtel", schema_url="https://opentelemetry.io/schemas/1.37.0")
        self._instruments: dict[str, Any] = {}
        for spec in ALL_METRICS:
            if spec.kind == COUNTER:
                self._instruments[spec.name] = meter.create_counter(spec.name, spec.unit, spec.description)
            else:
                self._instruments[spec.name] = meter.create_histogram(
                    spec.name, spec.unit, spec.description, explicit_bucket_boundaries_advisory=list(spec.buckets))
        self._common = dict(config.common_dimensions)
        self._resource_dims = dict(config.resource_dimensions)
        self._limit = config.cardinality_limit
        self._series: dict[str, set[tuple[Any, ...]]] = {spec.name: set() for spec in ALL_METRICS}
        self._self = self_metrics

    def dimension_keys(self, spec: MetricSpec) -> tuple[str, ...]:
        return (*spec.dimensions, *self._common, *self._resource_dims)

    def record(self, spec: MetricSpec, value: float, dims: tuple[Any, ...], resource: Mapping[str, Any],
               exemplar: tuple[int, int] | None = None) -> None:
        """Add (counters) or record (histograms) ``value`` with ``dims`` in ``spec.dimensions`` order."""
        res_values = tuple(str(resource.get(key, "")) for key in self._resource_dims.values())
        key = dims + res_values
        series = self._series[spec.name]
        attributes: Mapping[str, Any]
        if key in series or len(series) < self._limit:
            series.add(key)
            attributes = dict(zip(spec.dimensions, dims, strict=True))
            attributes.update(self._common)
            attributes.update(zip(self._resource_dims, res_values, strict=True))
        else:
            attributes = _OVERFLOW
            self._self.metric_overflow(spec.name)
            warn_once(f"overflow:{spec.name}",
                      "metric %s reached its cardinality limit of %d label sets; new label sets are folded into "
                      "the otel_metric_overflow=\"true\" series and counted in flowtel_metric_overflow_total",
                      spec.name, self._limit)
        instrument = self._instruments[spec.name]
        if spec.kind == COUNTER:
            instrument.add(value, attributes)
            return
        ctx = None
        if exemplar is not None and spec.exemplars:
            span_context = SpanContext(exemplar[0], exemplar[1], is_remote=False, trace_flags=_SAMPLED)
            ctx = trace.set_span_in_context(NonRecordingSpan(span_context), otel_context.Context())
        instrument.record(value, attributes, context=ctx)
