"""flowtel's metrics about itself: what it received, refused, dropped, held, exported, and why.

Both hosts report through this one class, on the same meter provider as the derived
metrics, so the Prometheus endpoint shows them next to each other
(``flowtel_spans_dropped_total{reason=...}`` and so on). The collector's receiver and
exporter counters keep the upstream OpenTelemetry Collector's names
(``otelcol_receiver_accepted_spans`` ...) so its dashboards and alerts carry over.
Counts are kept here and read by observable instruments at collection time: the hot
paths pay one locked integer add, not an SDK call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from flowtel._fork import reinit_after_fork
from flowtel._log import warn_once

Gauge = Callable[[], float]
Labels = tuple[tuple[str, str], ...]
DROP_REASONS = ("queue_full", "internal_error")

_COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # name: (unit, description, label keys)
    "flowtel.spans.dropped": ("{span}", "Spans flowtel lost after accepting them, by reason", ("reason",)),
    "flowtel.spans.processed": ("{span}", "Spans enriched and forwarded to exporters", ()),
    "flowtel.traces.released": ("{trace}", "Local traces released for derivation, by reason", ("reason",)),
    "flowtel.metric.overflow": ("{measurement}", "Measurements folded into a metric's overflow series", ("metric",)),
    "flowtel.metric.labels.cut": ("{measurement}", "Measurements whose label values were cut to "
                                  "label_value_max_bytes", ("metric",)),
    "flowtel.token_counts.ignored": ("{value}", "Token counts ignored because they were negative or not integers",
                                     ()),
    "flowtel.processing.errors": ("{span}", "Spans flowtel's logic failed on, by stage; they are forwarded without "
                                  "what that stage adds, their content still removed unless capture is on",
                                  ("stage",)),
    "flowtel.feedback.uncorrelated": ("{feedback}", "Feedback recorded without the request it judges, by reason "
                                      "(no_trace_context: no valid traceparent; not_found: request not seen or "
                                      "no longer indexed)", ("reason",)),
    # The collector's receivers and exporters, named as the upstream collector names them.
    "otelcol.receiver.accepted.spans": ("{span}", "Spans a receiver accepted into the pipeline",
                                        ("receiver", "transport")),
    "otelcol.receiver.refused.spans": ("{span}", "Spans a receiver refused, by reason (the client was told)",
                                       ("receiver", "transport", "reason")),
    "flowtel.receiver.refused.requests": ("{request}", "Requests a receiver refused, by reason",
                                          ("receiver", "transport", "reason")),
    "otelcol.exporter.sent.spans": ("{span}", "Spans an exporter delivered", ("exporter",)),
    "otelcol.exporter.send_failed.spans": ("{span}", "Spans an exporter gave up on, by reason",
                                           ("exporter", "reason")),
    "otelcol.exporter.enqueue_failed.spans": ("{span}", "Spans an exporter's full queue could not take",
                                              ("exporter",)),
    "flowtel.exporter.queue.damaged_files": ("{file}", "Persistent queue files that could not be trusted and were "
                                             "moved aside (or removed, when unfinished), by reason",
                                             ("exporter", "reason")),
    "otelcol.exporter.sent.metric_points": ("{datapoint}", "Metric points an exporter delivered", ("exporter",)),
    "otelcol.exporter.send_failed.metric_points": ("{datapoint}", "Metric points an exporter gave up on, by reason",
                                                   ("exporter", "reason")),
    "otelcol.exporter.enqueue_failed.metric_points": ("{datapoint}", "Metric points an exporter's full queue could "
                                                      "not take", ("exporter",)),
    "otelcol.exporter.sent.log_records": ("{record}", "Log records an exporter delivered", ("exporter",)),
    "otelcol.exporter.send_failed.log_records": ("{record}", "Log records an exporter gave up on, by reason",
                                                 ("exporter", "reason")),
    "otelcol.exporter.enqueue_failed.log_records": ("{record}", "Log records an exporter's full queue could not take",
                                                    ("exporter",)),
    "otelcol.receiver.accepted.metric_points": ("{datapoint}", "Metric points a receiver accepted into the pipeline",
                                                ("receiver", "transport")),
    "otelcol.receiver.refused.metric_points": ("{datapoint}", "Metric points a receiver refused, by reason (the "
                                               "client was told)", ("receiver", "transport", "reason")),
    "otelcol.receiver.accepted.log_records": ("{record}", "Log records a receiver accepted into the pipeline",
                                              ("receiver", "transport")),
    "otelcol.receiver.refused.log_records": ("{record}", "Log records a receiver refused, by reason (the client "
                                             "was told)", ("receiver", "transport", "reason")),
    # Lost after being accepted, by reason, like flowtel.spans.dropped (metric points and log records).
    "flowtel.metric_points.dropped": ("{datapoint}", "Metric points flowtel lost after accepting them, by reason",
                                      ("reason",)),
    "flowtel.log_records.dropped": ("{record}", "Log records flowtel lost after accepting them, by reason",
                                    ("reason",)),
}
_GAUGES: dict[str, tuple[str, str, str]] = {
    "queue": ("flowtel.queue.size", "{item}", "Spans, metric points or log records waiting between intake and a "
                                              "pipeline's worker"),
    "held_spans": ("flowtel.spans.held", "{span}", "Spans held until their local trace completes"),
    "held_traces": ("flowtel.traces.held", "{trace}", "Local traces waiting for their root span"),
    "feedback_waiting": ("flowtel.feedback.waiting", "{feedback}", "Feedback spans waiting for their request"),
    "feedback_index": ("flowtel.feedback.index.requests", "{request}", "Requests kept for joining feedback"),
    "exporter_queue": ("otelcol.exporter.queue.size", "{batch}", "Batches waiting in an exporter's queue"),
    "exporter_queue_capacity": ("otelcol.exporter.queue.capacity", "{batch}", "Size of an exporter's queue"),
}
#: Series that exist from the start, so alerts and dashboards have them before the first loss.
_ZEROS: dict[str, tuple[Labels, ...]] = {
    "flowtel.spans.dropped": tuple((("reason", r),) for r in DROP_REASONS),
    "flowtel.metric_points.dropped": tuple((("reason", r),) for r in DROP_REASONS),
    "flowtel.log_records.dropped": tuple((("reason", r),) for r in DROP_REASONS),
    "flowtel.spans.processed": ((),),
    "flowtel.feedback.uncorrelated": ((("reason", "no_trace_context"),), (("reason", "not_found"),)),
}


class SelfMetrics:
    """Counts start at once; ``bind`` (or passing a meter provider) makes them visible to its readers."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        self._lock = threading.Lock()
        reinit_after_fork(self, "_lock")
        self._counts: dict[str, dict[Labels, int]] = {name: {} for name in _COUNTERS}
        for name, label_sets in _ZEROS.items():
            for labels in label_sets:
                self._counts[name][labels] = 0
        self._gauges: dict[str, dict[Labels, Gauge]] = {name: {} for name in _GAUGES}
        if meter_provider is not None:
            self.bind(meter_provider)

    def bind(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter("flowtel.self")
        for name, (unit, description, _) in _COUNTERS.items():
            meter.create_observable_counter(name, [self._observe_count(name)], unit, description)
        for gauge, (name, unit, description) in _GAUGES.items():
            meter.create_observable_gauge(name, [self._observe_gauge(gauge)], unit, description)

    def _observe_count(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                counts = list(self._counts[name].items())
            return [Observation(n, dict(labels) or None) for labels, n in counts]
        return callback

    def _observe_gauge(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(gauge(), dict(labels) or None) for labels, gauge in list(self._gauges[name].items())]
        return callback

    def add(self, name: str, count: int, *values: str) -> None:
        """Add to counter ``name``; ``values`` follow the counter's label keys in order."""
        labels = tuple(zip(_COUNTERS[name][2], values, strict=True))
        counts = self._counts[name]
        with self._lock:
            counts[labels] = counts.get(labels, 0) + count

    def count(self, name: str, **labels: str) -> int:
        """Current value of one series (tests, health checks)."""
        key = tuple((k, labels[k]) for k in _COUNTERS[name][2])
        with self._lock:
            return self._counts[name].get(key, 0)

    def register_gauge(self, name: str, gauge: Gauge, labels: Mapping[str, str] | None = None) -> None:
        self._gauges[name][tuple((labels or {}).items())] = gauge

    def gauge_total(self, *names: str) -> float:
        """Sum of every registered gauge called one of ``names``, across its labels (what the process holds)."""
        return sum(gauge() for name in names for gauge in list(self._gauges[name].values()))

    def dropped(self, reason: str, count: int = 1, unit: str = "spans") -> None:
        """Count data lost after it was accepted; ``unit``: spans, metric_points or log_records."""
        self.add(f"flowtel.{unit}.dropped", count, reason)
        warn_once(f"dropped:{unit}:{reason}", "flowtel dropped %s (reason: %s); counted in flowtel_%s_dropped_total",
                  unit.replace("_", " "), reason, unit)

    def processed(self, count: int) -> None:
        self.add("flowtel.spans.processed", count)

    def released(self, reason: str, count: int = 1) -> None:
        self.add("flowtel.traces.released", count, reason)

    def metric_overflow(self, metric: str) -> None:
        self.add("flowtel.metric.overflow", 1, metric)

    def labels_cut(self, metric: str) -> None:
        self.add("flowtel.metric.labels.cut", 1, metric)

    def processing_error(self, stage: str, count: int = 1) -> None:
        self.add("flowtel.processing.errors", count, stage)
