"""flowtel's metrics about itself: what it dropped, held, released and folded, and why.

Both hosts report through this one class, on the same meter provider as the derived
metrics, so the Prometheus endpoint shows them next to each other
(``flowtel_spans_dropped_total{reason=...}`` and so on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from flowtel._log import warn_once

Gauge = Callable[[], float]
DROP_REASONS = ("queue_full", "internal_error")


class SelfMetrics:
    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter("flowtel.self")
        self._dropped = meter.create_counter("flowtel.spans.dropped", "{span}",
                                             "Spans flowtel could not process or forward, by reason")
        self._processed = meter.create_counter("flowtel.spans.processed", "{span}",
                                               "Spans enriched and forwarded to exporters")
        self._released = meter.create_counter("flowtel.traces.released", "{trace}",
                                              "Local traces released for derivation, by reason")
        self._overflow = meter.create_counter("flowtel.metric.overflow", "{measurement}",
                                              "Measurements folded into a metric's overflow series")
        self._errors = meter.create_counter("flowtel.processing.errors", "{span}",
                                            "Spans forwarded unenriched because flowtel's logic failed on them")
        # Known reasons start at zero so alerts and dashboards have a series before the first loss.
        for reason in DROP_REASONS:
            self._dropped.add(0, {"reason": reason})
        self._gauges: dict[str, Gauge] = {}
        meter.create_observable_gauge("flowtel.queue.size", [self._observe("queue")], "{span}",
                                      "Spans waiting between the request thread and the worker")
        meter.create_observable_gauge("flowtel.spans.held", [self._observe("held_spans")], "{span}",
                                      "Spans held until their local trace completes")
        meter.create_observable_gauge("flowtel.traces.held", [self._observe("held_traces")], "{trace}",
                                      "Local traces waiting for their root span")

    def _observe(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            gauge = self._gauges.get(name)
            return [Observation(gauge())] if gauge is not None else []
        return callback

    def register_gauge(self, name: str, gauge: Gauge) -> None:
        self._gauges[name] = gauge

    def dropped(self, reason: str, count: int = 1) -> None:
        self._dropped.add(count, {"reason": reason})
        warn_once(f"dropped:{reason}", "flowtel dropped spans (reason: %s); counted in flowtel_spans_dropped_total",
                  reason)

    def processed(self, count: int) -> None:
        self._processed.add(count)

    def released(self, reason: str, count: int = 1) -> None:
        self._released.add(count, {"reason": reason})

    def metric_overflow(self, metric: str) -> None:
        self._overflow.add(1, {"metric": metric})

    def processing_error(self, stage: str, count: int = 1) -> None:
        self._errors.add(count, {"stage": stage})
