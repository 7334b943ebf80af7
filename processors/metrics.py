"""Record derived measurements on OpenTelemetry instruments, with a cardinality cap.

One ``FlowtelMetrics`` owns the instruments of ``catalog.ALL_METRICS`` on a meter
provider; every reader of that provider (Prometheus, OTLP, Azure Monitor) sees the same
numbers. Bucket boundaries travel as instrument advice, so no View is needed. Counters
are summed here and reported through observable counters (cumulative; the SDK turns them
into deltas for DELTA readers): one dict update per measurement instead of the SDK's
per-call attribute validation, which dominated the worker's cost. Past
``cardinality_limit`` distinct label sets a metric's new label sets fold into one series
labelled ``otel.metric.overflow=true``, and the folded measurements are counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from flowtel import semconv as sc
from flowtel._log import warn_once
from flowtel.config import FlowtelConfig
from flowtel.selfmetrics import SelfMetrics

from .catalog import ALL_METRICS, COUNTER, MetricSpec

_OVERFLOW = {sc.OVERFLOW_ATTRIBUTE: True}
_OVERFLOW_KEY = ("\x00overflow",)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class FlowtelMetrics:
    def __init__(self, meter_provider: MeterProvider, config: FlowtelConfig, self_metrics: SelfMetrics) -> None:
        meter = meter_provider.get_meter("flowtel", schema_url="https://opentelemetry.io/schemas/1.37.0")
        self._instruments: dict[str, Any] = {}
        self._sums: dict[str, dict[tuple[Any, ...], float]] = {}
        self._sums_lock = threading.Lock()
        for spec in ALL_METRICS:
            if spec.kind == COUNTER:
                self._sums[spec.name] = {}
                meter.create_observable_counter(spec.name, [self._observe(spec.name)], spec.unit, spec.description)
            else:
                self._instruments[spec.name] = meter.create_histogram(
                    spec.name, spec.unit, spec.description, explicit_bucket_boundaries_advisory=list(spec.buckets))
        self._common = dict(config.common_dimensions)
        self._resource_dims = dict(config.resource_dimensions)
        self._limit = config.cardinality_limit
        # label set key -> attributes dict, per metric: the cardinality ledger and a cache of built labels
        self._series: dict[str, dict[tuple[Any, ...], Mapping[str, Any]]] = {spec.name: {} for spec in ALL_METRICS}
        self._self = self_metrics

    def _observe(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            series = self._series[name]
            with self._sums_lock:
                sums = list(self._sums[name].items())
            return [Observation(value, _OVERFLOW if key is _OVERFLOW_KEY else series[key]) for key, value in sums]
        return callback

    def record(self, spec: MetricSpec, value: float, dims: tuple[Any, ...], resource: Mapping[str, Any],
               exemplar: tuple[int, int] | None = None) -> None:
        """Add (counters) or record (histograms) ``value`` with ``dims`` in ``spec.dimensions`` order."""
        res_values = tuple(str(resource.get(key, "")) for key in self._resource_dims.values())
        key = dims + res_values
        series = self._series[spec.name]
        attributes = series.get(key)
        if attributes is None and len(series) < self._limit:
            built = dict(zip(spec.dimensions, dims, strict=True))
            built.update(self._common)
            built.update(zip(self._resource_dims, res_values, strict=True))
            attributes = series[key] = built
        elif attributes is None:
            key, attributes = _OVERFLOW_KEY, _OVERFLOW
            self._self.metric_overflow(spec.name)
            warn_once(f"overflow:{spec.name}",
                      "metric %s reached its cardinality limit of %d label sets; new label sets are folded into "
                      "the otel_metric_overflow=\"true\" series and counted in flowtel_metric_overflow_total",
                      spec.name, self._limit)
        if spec.kind == COUNTER:
            sums = self._sums[spec.name]
            with self._sums_lock:
                sums[key] = sums.get(key, 0) + value
            return
        instrument = self._instruments[spec.name]
        ctx = None
        if exemplar is not None and spec.exemplars:
            span_context = SpanContext(exemplar[0], exemplar[1], is_remote=False, trace_flags=_SAMPLED)
            ctx = trace.set_span_in_context(NonRecordingSpan(span_context), otel_context.Context())
        instrument.record(value, attributes, context=ctx)
