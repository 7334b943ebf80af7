"""``ReceivedMetrics``: OTLP metrics a collector received, kept cumulative and exposed to Prometheus.

Each collector ``prometheus`` exporter owns one. The metrics pipeline calls
``PrometheusExporter.export_metrics(request, payload, points)``, which calls

    dropped = received.consume(request, derived_names=names)   # {reason: points}

with the upb-parsed ``ExportMetricsServiceRequest``; what it returns is counted by the caller
(``otelcol_exporter_send_failed_metric_points_total{reason=...}``) and logged once per reason.
``consume`` is thread-safe and costs a small multiple of the request's size. Every scrape calls
``families(exclude=...)`` (the prometheus-client collection hook: metric families), which
also forgets series not updated for ``metric_expiration``.

Translation (``prometheus_names`` has the naming rules):

- monotonic sums -> counters (``_total``); non-monotonic sums and gauges -> gauges;
  explicit-bucket histograms -> ``_bucket``/``_sum``/``_count``; summaries -> quantiles,
  ``_sum``/``_count``. Exemplars (trace and span id) ride on histogram buckets and counters
  and are served in OpenMetrics.
- DELTA sums and histograms are accumulated into cumulative series (a point whose window
  starts before the stored one ends is dropped: ``out_of_order``); CUMULATIVE points replace
  the stored one (older ones are dropped as ``out_of_order``); a reset (new start time)
  simply restarts the series, as Prometheus expects.
- exponential histograms are dropped and counted (``unsupported_type``), as upstream does:
  the text formats cannot carry native histograms.
- ``job`` / ``instance`` come from ``service.namespace``/``service.name`` and
  ``service.instance.id``; the other resource attributes go to one ``target_info`` series per
  resource; ``resource_to_telemetry_conversion.enabled`` copies all of them onto every series,
  ``promote_resource_attributes`` copies the ones it names. ``otel_scope_name`` /
  ``otel_scope_version`` label each series, as upstream.

Never two families under one name: a received metric named like one flowtel derives
(``derived_names``, OTel names such as ``flow_latency``) is dropped (``derived_duplicate``)
or, with ``duplicate_derived_metrics: prefix``, kept under ``duplicate_prefix`` + its name;
a name taken by the collector's own metrics, by a derived family, or by a received metric of
another type is dropped (``name_conflict``).

Bounds (all counted): ``max_metrics`` received families (``metric_limit``);
``cardinality_limit`` series per family, past which new label sets fold into the
``otel_metric_overflow="true"`` series (``flowtel_metric_overflow_total``); label values cut
to ``max_label_value_bytes`` UTF-8 bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from prometheus_client.metrics_core import Metric

from flowtel.collector.prometheus_config import ReceivedMetricsConfig
from flowtel.processors.catalog import ALL_METRICS, prometheus_name
from flowtel.selfmetrics import SelfMetrics

from .prometheus_names import COUNTER, GAUGE, HISTOGRAM, SUMMARY

#: Reasons ``consume`` drops points for (the keys of its answer).
DROP_REASONS = ("derived_duplicate", "name_conflict", "unsupported_type", "out_of_order", "metric_limit",
                "invalid")


def sample_names(family: str, kind: str) -> tuple[str, ...]:
    """Every name a family of this Prometheus type occupies in text and OpenMetrics exposition."""
    if kind == COUNTER:
        base = family[:-6] if family.endswith("_total") else family
        return base, f"{base}_total", f"{base}_created"
    if kind == HISTOGRAM:
        return family, f"{family}_bucket", f"{family}_count", f"{family}_sum", f"{family}_created"
    if kind == SUMMARY:
        return family, f"{family}_count", f"{family}_sum", f"{family}_created"
    return (family,)


def reserved_family_names() -> frozenset[str]:
    """Names the collector's own and derived metrics occupy on a Prometheus endpoint."""
    from flowtel.selfmetrics import _COUNTERS, _GAUGES  # the one table of self-metric names

    names: set[str] = set()
    for spec in ALL_METRICS:
        names.update(sample_names(prometheus_name(spec.name, spec.unit), spec.kind))
    for name, (unit, _, _) in _COUNTERS.items():
        names.update(sample_names(prometheus_name(name, unit), COUNTER))
    for name, unit, _ in _GAUGES.values():
        names.update(sample_names(prometheus_name(name, unit), GAUGE))
    names.add("target_info")  # ours: one per received resource
    return frozenset(names)


class ReceivedMetrics:
    """Cumulative state of received OTLP metrics for one Prometheus endpoint."""

    def __init__(self, config: ReceivedMetricsConfig | None = None, self_metrics: SelfMetrics | None = None,
                 reserved_names: Iterable[str] = ()) -> None:
        """``reserved_names``: Prometheus family names received metrics must never take (the endpoint's own)."""
        self.config = config or ReceivedMetricsConfig()
        self._self = self_metrics
        self._reserved = frozenset(reserved_names)
        self._lock = threading.Lock()

    def consume(self, request: ExportMetricsServiceRequest, *, derived_names: set[str]) -> dict[str, int]:
        """Fold ``request``'s points into the exposed state; answer points dropped per reason."""
        return {}

    def families(self, exclude: Iterable[str] = ()) -> list[Metric]:
        """Metric families to expose now, none named in ``exclude``; forgets expired series first."""
        return []

    def collect(self) -> list[Metric]:
        """prometheus-client collector hook (for an endpoint that serves received metrics alone)."""
        return self.families()
