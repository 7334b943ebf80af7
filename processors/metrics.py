"""Aggregate derived measurements in flowtel and hand them to readers as SDK metric data.

``FlowtelMetrics`` keeps, per metric of ``catalog.ALL_METRICS`` and per label set, a
cumulative sum (counters) or explicit-bucket histogram (count, sum, min, max, bucket
counts, last exemplar per bucket). Recording is one dict lookup and a few additions under
a lock; the SDK's synchronous instruments validate, sort and hash attributes on every
call and repeat that per reader, which made them most of the worker's cost.

Readers get the same numbers through ``produce(consumer)``, which returns ordinary
``opentelemetry.sdk.metrics.export.Metric`` objects in the consumer's temporality:
cumulative for Prometheus, cumulative or delta for push exporters (the Azure exporter
asks for delta), so every backend sees one set of values.

Past ``cardinality_limit`` label sets, a metric's new label sets fold into one series
labelled ``otel.metric.overflow=true`` and the folded measurements are counted. Label values
longer than ``label_value_max_bytes`` (UTF-8) are cut to it and counted, so a scrape is bounded in
bytes too, not only in series. The cut is looked at only when a label set is not found, so the
usual short labels cost nothing more.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import Counter, Exemplar, Histogram
from opentelemetry.sdk.metrics.export import AggregationTemporality, HistogramDataPoint, Metric, NumberDataPoint, Sum
from opentelemetry.sdk.metrics.export import Histogram as HistogramData

from flowtel import semconv as sc
from flowtel._fork import reinit_after_fork
from flowtel._log import warn_once
from flowtel.config import FlowtelConfig
from flowtel.selfmetrics import SelfMetrics

from .catalog import ALL_METRICS, COUNTER, MetricSpec

_OVERFLOW: Mapping[str, Any] = {sc.OVERFLOW_ATTRIBUTE: True}
_OVERFLOW_KEY = ("\x00overflow",)
CUMULATIVE, DELTA = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA

#: One measurement for ``record_all``: spec, value, dimension values in ``spec.dimensions`` order, the span's
#: resource attributes, and the (trace id, span id) of an exemplar or None.
Measurement = tuple[MetricSpec, float, tuple[Any, ...], Mapping[str, Any], "tuple[int, int] | None"]


@dataclass(slots=True)
class _Series:
    attributes: Mapping[str, Any]
    start_ns: int
    value: float = 0  # counters: the running sum; histograms: the sum of values
    count: int = 0
    min: float = float("inf")
    max: float = float("-inf")
    buckets: list[int] = field(default_factory=list)
    exemplars: dict[int, tuple[float, int, int, int]] = field(default_factory=dict)  # bucket -> value, t, trace, span


@dataclass
class Consumer:
    """One reader's view: its temporality and, for delta, what it was last given."""

    temporality: Mapping[type, AggregationTemporality]
    last_ns: int = field(default_factory=time.time_ns)
    last: dict[tuple[str, tuple[Any, ...]], tuple[float, int, list[int]]] = field(default_factory=dict)
    window: dict[tuple[str, tuple[Any, ...]], list[float]] = field(default_factory=dict)  # delta min / max

    def delta(self, kind: type) -> bool:
        return self.temporality.get(kind, CUMULATIVE) == DELTA


class FlowtelMetrics:
    def __init__(self, config: FlowtelConfig, self_metrics: SelfMetrics) -> None:
        self._specs = {spec.name: spec for spec in ALL_METRICS}
        self._common = dict(config.common_dimensions)
        self._resource_dims = dict(config.resource_dimensions)
        self._resource_keys = tuple(self._resource_dims.values())
        self._limit = config.cardinality_limit
        self._max_label_bytes = config.label_value_max_bytes
        self._series: dict[str, dict[tuple[Any, ...], _Series]] = {spec.name: {} for spec in ALL_METRICS}
        self._self = self_metrics
        self._lock = threading.Lock()
        reinit_after_fork(self, "_lock")
        self._delta_consumers: list[Consumer] = []

    def consumer(self, temporality: Mapping[type, AggregationTemporality] | None = None) -> Consumer:
        consumer = Consumer(dict(temporality or {}))
        if consumer.delta(Histogram):
            with self._lock:
                self._delta_consumers.append(consumer)
        return consumer

    def record(self, spec: MetricSpec, value: float, dims: tuple[Any, ...], resource: Mapping[str, Any],
               exemplar: tuple[int, int] | None = None) -> None:
        """Add (counters) or observe (histograms) ``value`` with ``dims`` in ``spec.dimensions`` order."""
        self.record_all(((spec, value, dims, resource, exemplar),))

    def record_all(self, measurements: Iterable[Measurement]) -> None:
        """``record`` for each measurement, under one lock (a trace yields a dozen)."""
        resource_keys, tables = self._resource_keys, self._series
        now = time.time_ns()  # one exemplar time for the trace's measurements
        with self._lock:
            windowed = bool(self._delta_consumers)
            for spec, value, dims, resource, exemplar in measurements:
                key = dims + tuple([str(resource.get(k, "")) for k in resource_keys]) if resource_keys else dims
                series = tables[spec.name].get(key)
                if series is None:
                    series = self._series_for(spec, key, len(dims))
                series.value += value  # counters: the running sum; histograms: the sum of values
                if spec.kind == COUNTER:
                    continue
                series.count += 1
                if value < series.min:
                    series.min = value
                if value > series.max:
                    series.max = value
                index = bisect_left(spec.buckets, value)
                series.buckets[index] += 1
                if exemplar is not None and spec.exemplars:
                    series.exemplars[index] = (value, now, exemplar[0], exemplar[1])
                if windowed:
                    self._observe_window(spec.name, key, value)

    def _series_for(self, spec: MetricSpec, key: tuple[Any, ...], n_dims: int) -> _Series:
        """The series of a label set not found as it is: its values cut to the byte limit, found or new."""
        cut = self._cut(key)
        if cut is not key:
            self._self.labels_cut(spec.name)
            warn_once(f"labelcut:{spec.name}", "metric %s got label values longer than %d bytes; they are cut to "
                      "that (label_value_max_bytes) and counted in flowtel_metric_labels_cut_total", spec.name,
                      self._max_label_bytes)
            series = self._series[spec.name].get(cut)
            if series is not None:
                return series
        return self._new_series(spec, cut, n_dims)

    def _cut(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        """``key`` itself when every value is within the byte limit, else a copy with long values cut (at a
        character boundary)."""
        limit = self._max_label_bytes
        # A str of n characters has at most 4n UTF-8 bytes: most values are ruled out without encoding.
        if all(not isinstance(v, str) or len(v) * 4 <= limit or len(v.encode()) <= limit for v in key):
            return key
        return tuple(v.encode()[:limit].decode(errors="ignore") if isinstance(v, str) and len(v.encode()) > limit
                     else v for v in key)

    def _new_series(self, spec: MetricSpec, key: tuple[Any, ...], n_dims: int) -> _Series:
        table = self._series[spec.name]
        if len(table) >= self._limit:
            self._self.metric_overflow(spec.name)
            warn_once(f"overflow:{spec.name}",
                      "metric %s reached its cardinality limit of %d label sets; new label sets are folded "
                      "into the otel_metric_overflow=\"true\" series and counted in "
                      "flowtel_metric_overflow_total", spec.name, self._limit)
            series = table.get(_OVERFLOW_KEY)
            if series is not None:
                return series
            attributes, key = _OVERFLOW, _OVERFLOW_KEY
        else:
            attributes = self._attributes(spec, key[:n_dims], key[n_dims:])
        series = table[key] = _Series(attributes, time.time_ns(), buckets=[0] * (len(spec.buckets) + 1)
                                      if spec.buckets else [])
        return series

    def _observe_window(self, name: str, key: tuple[Any, ...], value: float) -> None:
        for consumer in self._delta_consumers:
            window = consumer.window.get((name, key))
            if window is None:
                consumer.window[(name, key)] = [value, value]
            else:
                window[0] = min(window[0], value)
                window[1] = max(window[1], value)

    def _attributes(self, spec: MetricSpec, dims: tuple[Any, ...], res_values: tuple[Any, ...]) -> Mapping[str, Any]:
        built = dict(zip(spec.dimensions, dims, strict=True))
        built.update(self._common)
        built.update(zip(self._resource_dims, res_values, strict=True))
        return built

    def produce(self, consumer: Consumer) -> list[Metric]:
        """The derived metrics as SDK data, in the consumer's temporality; advances a delta consumer."""
        now = time.time_ns()
        out: list[Metric] = []
        with self._lock:
            for name, table in self._series.items():
                if not table:
                    continue
                spec = self._specs[name]
                if spec.kind == COUNTER:
                    out.append(self._sum(spec, table, consumer, now))
                else:
                    out.append(self._histogram(spec, table, consumer, now))
            consumer.window = {}
            consumer.last_ns = now
        return [m for m in out if m.data.data_points]

    def _sum(self, spec: MetricSpec, table: dict[tuple[Any, ...], _Series], consumer: Consumer, now: int) -> Metric:
        delta = consumer.delta(Counter)
        points = []
        for key, s in table.items():
            value, start = s.value, s.start_ns
            if delta:
                previous = consumer.last.get((spec.name, key))
                if previous is not None and previous[0] == s.value:
                    continue
                consumer.last[(spec.name, key)] = (s.value, 0, [])
                value, start = s.value - (previous[0] if previous else 0), max(consumer.last_ns, s.start_ns)
            points.append(NumberDataPoint(s.attributes, start, now, value))
        return Metric(spec.name, spec.description, spec.unit,
                      Sum(points, DELTA if delta else CUMULATIVE, is_monotonic=True))

    def _histogram(self, spec: MetricSpec, table: dict[tuple[Any, ...], _Series], consumer: Consumer,
                   now: int) -> Metric:
        delta = consumer.delta(Histogram)
        points = []
        for key, s in table.items():
            count, total, buckets, start = s.count, s.value, list(s.buckets), s.start_ns
            low, high = s.min, s.max
            since = 0
            if delta:
                previous = consumer.last.get((spec.name, key))
                if previous is not None and previous[1] == s.count:
                    continue
                consumer.last[(spec.name, key)] = (s.value, s.count, list(s.buckets))
                if previous is not None:
                    count, total = s.count - previous[1], s.value - previous[0]
                    buckets = [a - b for a, b in zip(s.buckets, previous[2], strict=True)]
                low, high = consumer.window.get((spec.name, key), (s.min, s.max))
                start, since = max(consumer.last_ns, s.start_ns), consumer.last_ns
            exemplars = [Exemplar({}, v, t, span_id, trace_id)
                         for v, t, trace_id, span_id in s.exemplars.values() if t >= since]
            points.append(HistogramDataPoint(s.attributes, start, now, count, total, buckets, spec.buckets,
                                             low, high, exemplars))
        return Metric(spec.name, spec.description, spec.unit, HistogramData(points, DELTA if delta else CUMULATIVE))
