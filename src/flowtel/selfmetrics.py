"""flowtel's metrics about itself: what it dropped, held, released and folded, and why.

Both hosts report through this one class, on the same meter provider as the derived
metrics, so the Prometheus endpoint shows them next to each other
(``flowtel_spans_dropped_total{reason=...}`` and so on). Counts are kept here and read
by observable instruments at collection time: the hot paths (the worker per trace, the
request thread when the queue is full) pay one locked integer add, not an SDK call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from flowtel._log import warn_once

Gauge = Callable[[], float]
DROP_REASONS = ("queue_full", "internal_error")

_COUNTERS = {
    # name: (unit, description, attribute key or None, values that start at zero)
    "flowtel.spans.dropped": ("{span}", "Spans flowtel could not process or forward, by reason", "reason",
                              DROP_REASONS),
    "flowtel.spans.processed": ("{span}", "Spans enriched and forwarded to exporters", None, ()),
    "flowtel.traces.released": ("{trace}", "Local traces released for derivation, by reason", "reason", ()),
    "flowtel.metric.overflow": ("{measurement}", "Measurements folded into a metric's overflow series", "metric", ()),
    "flowtel.processing.errors": ("{span}", "Spans forwarded unenriched because flowtel's logic failed on them",
                                  "stage", ()),
}
_GAUGES = {
    "queue": ("flowtel.queue.size", "{span}", "Spans waiting between the request thread and the worker"),
    "held_spans": ("flowtel.spans.held", "{span}", "Spans held until their local trace completes"),
    "held_traces": ("flowtel.traces.held", "{trace}", "Local traces waiting for their root span"),
}


class SelfMetrics:
    """Counts start at once; ``bind`` (or passing a meter provider) makes them visible to its readers."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}
        self._keys: dict[str, str | None] = {}
        for name, (_, _, key, zeros) in _COUNTERS.items():
            # Known reasons start at zero so alerts and dashboards have a series before the first loss.
            self._counts[name] = dict.fromkeys(zeros, 0) if key else {"": 0}
            self._keys[name] = key
        self._gauges: dict[str, Gauge] = {}
        if meter_provider is not None:
            self.bind(meter_provider)

    def bind(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter("flowtel.self")
        for name, (unit, description, _, _) in _COUNTERS.items():
            meter.create_observable_counter(name, [self._observe_count(name)], unit, description)
        for gauge, (name, unit, description) in _GAUGES.items():
            meter.create_observable_gauge(name, [self._observe_gauge(gauge)], unit, description)

    def _observe_count(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        key = self._keys[name]

        def callback(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                counts = list(self._counts[name].items())
            return [Observation(n, {key: value} if key else None) for value, n in counts]
        return callback

    def _observe_gauge(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            gauge = self._gauges.get(name)
            return [Observation(gauge())] if gauge is not None else []
        return callback

    def _add(self, name: str, value: str, count: int) -> None:
        counts = self._counts[name]
        with self._lock:
            counts[value] = counts.get(value, 0) + count

    def register_gauge(self, name: str, gauge: Gauge) -> None:
        self._gauges[name] = gauge

    def dropped(self, reason: str, count: int = 1) -> None:
        self._add("flowtel.spans.dropped", reason, count)
        warn_once(f"dropped:{reason}", "flowtel dropped spans (reason: %s); counted in flowtel_spans_dropped_total",
                  reason)

    def processed(self, count: int) -> None:
        self._add("flowtel.spans.processed", "", count)

    def released(self, reason: str, count: int = 1) -> None:
        self._add("flowtel.traces.released", reason, count)

    def metric_overflow(self, metric: str) -> None:
        self._add("flowtel.metric.overflow", metric, 1)

    def processing_error(self, stage: str, count: int = 1) -> None:
        self._add("flowtel.processing.errors", stage, count)
