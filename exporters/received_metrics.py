"""``ReceivedMetrics``: OTLP metrics a collector received, kept cumulative and exposed to Prometheus.

Each collector ``prometheus`` exporter owns one. The metrics pipeline calls
``PrometheusExporter.export_metrics(request, payload, points)``, which calls

    dropped = received.consume(request, derived_names=names)   # {reason: points}

with the upb-parsed ``ExportMetricsServiceRequest``; what it returns is counted by the caller
(``otelcol_exporter_send_failed_metric_points_total{reason=...}``) and logged once per reason.
``consume`` is thread-safe and costs a small multiple of the request's size. Every scrape calls
``families(exclude=...)`` (the prometheus-client collection hook: metric families), which
first forgets series not updated for ``metric_expiration``.

Translation (``prometheus_names`` has the naming rules):

- monotonic sums -> counters (``_total``); non-monotonic sums and gauges -> gauges;
  explicit-bucket histograms -> ``_bucket``/``_sum``/``_count``; summaries -> quantiles,
  ``_sum``/``_count``. Exemplars (trace and span id) ride on histogram buckets and counters
  and are served in OpenMetrics (the last one per bucket is kept).
- DELTA sums and histograms are accumulated into cumulative series; a point that ends no
  later than the stored one, or starts before it ends, is dropped (``out_of_order``): replays
  and overlapping windows would count twice. Gaps are fine (nothing was measured in them).
  CUMULATIVE points and gauges replace the stored point unless older (``out_of_order``); a
  reset (new start time, lower value) simply restarts the series, as Prometheus expects.
  A point flagged "no recorded value" ends its series (as upstream). A histogram whose bounds
  change restarts.
- exponential histograms are dropped and counted (``unsupported_type``): upstream keeps them as
  native histograms, which only its protobuf exposition carries; flowtel serves the text formats.
  Points of an unset temporality, with bucket counts that do not match their bounds or count,
  or negative (or NaN) values of monotonic sums, summaries with a quantile given twice are ``invalid``.
- ``job`` / ``instance`` come from ``service.namespace``/``service.name`` and
  ``service.instance.id``; the other resource attributes go to one ``target_info`` series per
  resource; ``resource_to_telemetry_conversion.enabled`` copies all of them onto every series,
  ``promote_resource_attributes`` copies the ones it names (a point's own attribute of the same
  name wins). ``otel_scope_name`` / ``otel_scope_version`` label each series, as upstream. A point's
  attribute named ``le`` on a histogram or ``quantile`` on a summary becomes ``key_le`` / ``key_quantile`` (the
  exposition adds those labels itself).

Never two families under one name: a received metric named like one flowtel derives
(``derived_names``, OTel names such as ``flow_latency``) is dropped (``derived_duplicate``)
or, with ``duplicate_derived_metrics: prefix``, kept under ``duplicate_prefix`` + its name;
a name taken by the collector's own or derived metrics (``reserved_names`` and, at scrape
time, ``exclude``), or by a received metric of another type, is dropped (``name_conflict``).

Bounds (all counted): ``max_metrics`` received families (``metric_limit``);
``cardinality_limit`` series per family, past which new label sets fold into the
``otel_metric_overflow="true"`` series (``flowtel_metric_overflow_total``): sums and histograms
add their increase (a cumulative label set's last value is remembered for up to
``cardinality_limit`` folded label sets; past that, or for summaries and histograms with other
bounds than the overflow series, points are dropped: ``cardinality_limit``); label values cut to
``label_value_max_bytes`` UTF-8 bytes (the points they label are counted in
``flowtel_metric_labels_cut_total{metric}``, as for derived metrics).
``target_info`` keeps at most ``cardinality_limit`` resources. Memory is therefore bounded by
``max_metrics`` x 2 x ``cardinality_limit`` series, each of the size of the point it came from.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Any, TypeAlias

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar

from flowtel._log import warn_once
from flowtel.otlp import decode_attributes
from flowtel.processors.catalog import ALL_METRICS, prometheus_name
from flowtel.selfmetrics import SelfMetrics

from .prometheus_config import ReceivedMetricsConfig
from .prometheus_names import COUNTER, GAUGE, HISTOGRAM, SUMMARY, label_value, labels, metric_name

#: Reasons ``consume`` drops points for (the keys of its answer).
DROP_REASONS = ("derived_duplicate", "name_conflict", "unsupported_type", "out_of_order", "metric_limit",
                "cardinality_limit", "invalid", "internal_error")

_NO_RECORDED_VALUE = 1  # DataPointFlags.FLAG_NO_RECORDED_VALUE
_DELTA, _CUMULATIVE = 1, 2  # AggregationTemporality
_OVERFLOW_LABELS = {"otel_metric_overflow": "true"}
_IDENTIFYING = ("service.name", "service.namespace", "service.instance.id")
Key: TypeAlias = tuple[tuple[str, str], ...]  # a series' labels, sorted
Labels: TypeAlias = tuple[tuple[str, str], ...]
_OWN_LABELS = frozenset({"job", "instance", "otel_scope_name", "otel_scope_version"})
#: The label a family's exposition adds to its samples, which a point's attribute must not take.
_EXPOSITION_LABELS = {HISTOGRAM: "le", SUMMARY: "quantile"}
#: At the family limit, stored series are expired (freeing families) at most this often, in seconds.
_EXPIRE_AT_LIMIT_EVERY_S = 1.0
_LABEL_CACHE_SIZE = 16_384  # translated label sets remembered (cleared when full)


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
    return frozenset(names)


@dataclass(slots=True)
class _Point:
    """One OTLP data point, read once: what a series stores."""

    start_ns: int
    time_ns: int
    value: float  # sums and gauges: the value; histograms and summaries: the sum
    count: float = 0
    has_sum: bool = True
    bounds: tuple[float, ...] = ()  # histogram bounds; summary quantiles
    buckets: list[float] = field(default_factory=list)  # histogram bucket counts (not cumulative); quantile values
    exemplars: dict[int, Exemplar] = field(default_factory=dict)  # bucket index (counters: 0) -> last exemplar


@dataclass(slots=True)
class _Series:
    labels: dict[str, str]
    point: _Point
    seen: float  # monotonic time of the last update


@dataclass(slots=True)
class _Folded:
    """Last cumulative point of a label set folded into the overflow series (to add only its increase)."""

    point: _Point
    seen: float


@dataclass(slots=True)
class _Family:
    name: str  # counters: without ``_total``
    kind: str
    doc: str
    names: tuple[str, ...]
    series: dict[Key, _Series] = field(default_factory=dict)
    overflow: _Series | None = None
    folded: dict[Key, _Folded] = field(default_factory=dict)


@dataclass(slots=True)
class _Resource:
    labels: dict[str, str]  # added to every series: promoted attributes, job, instance
    info: dict[str, str] | None  # target_info labels, None when the resource has nothing beyond job/instance


class ReceivedMetrics:
    """Cumulative state of received OTLP metrics for one Prometheus endpoint."""

    def __init__(self, config: ReceivedMetricsConfig | None = None, self_metrics: SelfMetrics | None = None,
                 reserved_names: Iterable[str] = ()) -> None:
        """``reserved_names``: Prometheus names received metrics must never take (the endpoint's own)."""
        self.config = config or ReceivedMetricsConfig()
        self._self = self_metrics
        self._reserved = frozenset(reserved_names)
        self._excluded: frozenset[str] = frozenset()  # names the last scrape found taken by the endpoint's own
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._owners: dict[str, str] = {}  # sample name -> family name
        self._targets: dict[Key, tuple[dict[str, str], float]] = {}
        self._promote_all = self.config.resource_to_telemetry_conversion.enabled
        self._promote = frozenset(self.config.promote_resource_attributes)
        self._max_value_bytes = self.config.label_value_max_bytes
        self._label_cache: dict[tuple[Any, ...], tuple[Key, dict[str, str], bool]] = {}
        self._cuts = 0  # label values cut so far
        self._expired_at = -_EXPIRE_AT_LIMIT_EVERY_S  # monotonic time of the last _expire

    # -- consume -------------------------------------------------------------------------------------------------

    def consume(self, request: ExportMetricsServiceRequest, *, derived_names: set[str]) -> dict[str, int]:
        """Fold ``request``'s points into the exposed state; answer points dropped per reason."""
        dropped: dict[str, int] = {}
        now = time.monotonic()
        with self._lock:
            for resource_metrics in request.resource_metrics:
                cuts_before = self._cuts
                resource = self._resource(resource_metrics.resource.attributes, now)
                for scope_metrics in resource_metrics.scope_metrics:
                    scope = scope_metrics.scope
                    scope_labels = dict(resource.labels)
                    if scope.name:
                        scope_labels["otel_scope_name"] = self._cut(scope.name)
                    if scope.version:
                        scope_labels["otel_scope_version"] = self._cut(scope.version)
                    common = tuple(scope_labels.items())
                    common_cut = self._cuts != cuts_before  # a resource or scope label was cut
                    for metric in scope_metrics.metrics:
                        self._metric(metric, common, common_cut, derived_names, now, dropped)
        return dropped

    def _metric(self, metric: Any, common: Labels, common_cut: bool, derived_names: set[str], now: float,
                dropped: dict[str, int]) -> None:
        kind_of_data = metric.WhichOneof("data")
        if kind_of_data is None:
            return
        data = getattr(metric, kind_of_data)
        points = data.data_points
        if not points:
            return
        reason = None
        if kind_of_data == "exponential_histogram":
            reason = "unsupported_type"
        elif kind_of_data != "gauge" and kind_of_data != "summary" and data.aggregation_temporality not in (
                _DELTA, _CUMULATIVE):
            reason = "invalid"
        if reason is None:
            name = metric.name
            if name.lower() in derived_names:  # instrument names are case-insensitive
                if self.config.duplicate_derived_metrics == "drop":
                    reason = "derived_duplicate"
                else:
                    name = self.config.duplicate_prefix + name
        family = None
        if reason is None:
            monotonic = kind_of_data == "sum" and data.is_monotonic
            kind = {"gauge": GAUGE, "histogram": HISTOGRAM, "summary": SUMMARY}.get(
                kind_of_data, COUNTER if monotonic else GAUGE)
            # HELP: the description, or the metric's OpenTelemetry name (lint tools want one, and it says the origin)
            family, reason = self._family(metric_name(name, metric.unit, kind, monotonic), kind,
                                          metric.description or metric.name, now)
        if family is None:
            dropped[reason or "invalid"] = dropped.get(reason or "invalid", 0) + len(points)
            return
        delta = kind_of_data in ("sum", "histogram") and data.aggregation_temporality == _DELTA
        counter = family.kind == COUNTER
        read = _READERS[kind_of_data]
        for point in points:
            if point.flags & _NO_RECORDED_VALUE:  # the sender says the series ended: stop exposing it (upstream)
                family.series.pop(self._series_labels(family, point.attributes, common)[0], None)
                continue
            parsed = read(point)
            if parsed is None or (counter and not parsed.value >= 0):  # a counter is never negative (nor NaN)
                reason = "invalid"
            else:
                key, series_labels, cut = self._series_labels(family, point.attributes, common)
                if (cut or common_cut) and self._self is not None:
                    self._self.labels_cut(family.name)
                reason = self._apply(family, key, series_labels, parsed, delta, now)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1

    def _family(self, name: str, kind: str, doc: str, now: float) -> tuple[_Family | None, str | None]:
        if kind == COUNTER:
            name = name[:-6] if name.endswith("_total") else name
        family = self._families.get(name)
        if family is not None:
            return (family, None) if family.kind == kind else (None, "name_conflict")
        names = sample_names(name, kind)
        if any(n in self._reserved or n in self._excluded or n in self._owners for n in names):
            return None, "name_conflict"
        if len(self._families) >= self.config.max_metrics:
            # Expiring walks every stored series: once per second at most, not once per metric past the limit
            # (a request of many new metrics made that quadratic: 4,000 one-point metrics cost 1 s of CPU).
            if now - self._expired_at >= _EXPIRE_AT_LIMIT_EVERY_S:
                self._expire(now)
            if len(self._families) >= self.config.max_metrics:
                return None, "metric_limit"
        family = self._families[name] = _Family(name, kind, doc, names)
        for n in names:
            self._owners[n] = name
        return family, None

    def _resource(self, attributes: Any, now: float) -> _Resource:
        attrs = decode_attributes(attributes)
        added: dict[str, str] = {}
        service = attrs.get("service.name")
        if service is not None:
            namespace = attrs.get("service.namespace")
            added["job"] = self._cut(f"{label_value(namespace)}/{label_value(service)}" if namespace
                                     else label_value(service))
        if "service.instance.id" in attrs:
            added["instance"] = self._cut(label_value(attrs["service.instance.id"]))
        rest = self._limited([(k, v) for k, v in attrs.items() if k not in _IDENTIFYING])
        promoted = labels(rest if self._promote_all else [(k, v) for k, v in rest if k in self._promote])
        info = None
        if rest:
            info = {**labels(rest), **added}
            key = tuple(sorted(added.items()))
            if key in self._targets or len(self._targets) < self.config.cardinality_limit:
                self._targets[key] = (info, now)
            elif self._self is not None:
                self._self.metric_overflow("target_info")
        return _Resource({**promoted, **added}, info)

    def _series_labels(self, family: _Family, attributes: Any, common: Labels) -> tuple[Key, dict[str, str], bool]:
        """``_labels``, with an attribute named as the label the family's exposition adds itself (``le`` of a
        histogram's buckets, ``quantile`` of a summary) renamed ``key_le`` / ``key_quantile``: kept, it would be
        overwritten on some samples of the series and not on others, and two series differing only in it would
        expose the same bucket twice."""
        key, series_labels, cut = self._labels(attributes, common)
        reserved = _EXPOSITION_LABELS.get(family.kind)
        if reserved is None or reserved not in series_labels:
            return key, series_labels, cut
        renamed = dict(series_labels)
        value, kept = renamed.pop(reserved), "key_" + reserved
        renamed[kept] = f"{renamed[kept]};{value}" if kept in renamed else value  # as keys that collide (spec)
        return tuple(sorted(renamed.items())), renamed, cut

    def _labels(self, attributes: Any, common: Labels) -> tuple[Key, dict[str, str], bool]:
        """A point's series key and labels (its attributes', then the resource's and scope's ``common`` ones), and
        whether one of its attributes' values was cut.

        Label sets recur in every export, so their translation is remembered (a bounded cache)."""
        raw = decode_attributes(attributes)
        label_items = (common, tuple(raw.items()))
        cache_key: tuple[Any, ...] | None = label_items
        try:
            hit = self._label_cache.get(label_items)
        except TypeError:  # a map-valued attribute is not hashable: translate it every time
            cache_key, hit = None, None
        if hit is not None:
            return hit
        cuts_before = self._cuts
        merged = dict(common)
        for k, v in labels(self._limited(list(raw.items()))).items():
            if k not in _OWN_LABELS or k not in merged:  # the point's attributes win over promoted resource
                merged[k] = v                            # attributes, not over job, instance and scope
        key = tuple(sorted(merged.items()))
        if cache_key is not None:
            if len(self._label_cache) >= _LABEL_CACHE_SIZE:
                self._label_cache.clear()
            self._label_cache[cache_key] = (key, merged, self._cuts != cuts_before)
        return key, merged, self._cuts != cuts_before

    def _limited(self, attributes: list[tuple[str, Any]]) -> list[tuple[str, str]]:
        """At most ``label_count_limit`` attributes (the first ones), names and values cut to
        ``label_value_max_bytes``: what one label set may hold, whatever a sender puts in a point or a resource."""
        limit = self.config.label_count_limit
        if len(attributes) > limit:
            self._cuts += 1
            warn_once("received-label-count", "received metric points or resources with more than %d attributes keep "
                      "the first %d (label_count_limit); counted in flowtel_metric_labels_cut_total", limit, limit)
            attributes = attributes[:limit]
        return [(self._cut(k), self._cut(label_value(v))) for k, v in attributes]

    def _cut(self, value: str) -> str:
        if len(value) * 4 <= self._max_value_bytes:  # fast path: short enough whatever its characters
            return value
        encoded = value.encode()
        if len(encoded) <= self._max_value_bytes:
            return value
        self._cuts += 1
        warn_once("received-label-cut", "received metric label names and values longer than %d bytes are cut to that "
                  "(label_value_max_bytes); counted in flowtel_metric_labels_cut_total", self._max_value_bytes)
        return encoded[:self._max_value_bytes].decode(errors="ignore")

    def _apply(self, family: _Family, key: Key, series_labels: dict[str, str], point: _Point, delta: bool,
               now: float) -> str | None:
        series = family.series.get(key)
        if series is None:
            if len(family.series) >= self.config.cardinality_limit:
                return self._fold(family, key, point, delta, now)
            family.series[key] = _Series(series_labels, point, now)
            return None
        stored = series.point
        if point.time_ns <= stored.time_ns or (delta and point.start_ns and point.start_ns < stored.time_ns):
            return "out_of_order"
        series.seen = now
        if delta and stored.bounds == point.bounds:
            _add(stored, point)
            stored.time_ns = point.time_ns
        else:
            if stored.bounds == point.bounds:  # the last exemplar of each bucket stays until a newer one comes
                point.exemplars = {**stored.exemplars, **point.exemplars}
            series.point = point
        return None

    def _fold(self, family: _Family, key: Key, point: _Point, delta: bool, now: float) -> str | None:
        """Fold a point of a label set past the limit into the family's overflow series."""
        if family.kind == SUMMARY:
            return "cardinality_limit"
        overflow = family.overflow
        if overflow is not None and overflow.point.bounds != point.bounds:
            return "cardinality_limit"
        increase = point
        if family.kind != GAUGE and not delta:
            folded = family.folded.get(key)
            if folded is None and len(family.folded) >= self.config.cardinality_limit:
                return "cardinality_limit"
            family.folded[key] = _Folded(point, now)
            if folded is not None:
                last = folded.point
                if point.time_ns <= last.time_ns:
                    return "out_of_order"
                if point.start_ns == last.start_ns and point.value >= last.value and point.count >= last.count:
                    increase = _difference(point, last)
        if overflow is None:
            family.overflow = _Series(dict(_OVERFLOW_LABELS), _copy(increase), now)
        else:
            overflow.seen = now
            if family.kind == GAUGE:
                overflow.point = _copy(increase)
            else:
                _add(overflow.point, increase)
                overflow.point.time_ns = max(overflow.point.time_ns, increase.time_ns)
        if self._self is not None:
            self._self.metric_overflow(family.name)
        warn_once(f"received-overflow:{family.name}",
                  "received metric %s reached its cardinality limit of %d label sets; new label sets are folded into "
                  "the otel_metric_overflow=\"true\" series and counted in flowtel_metric_overflow_total",
                  family.name, self.config.cardinality_limit)
        return None

    # -- expose --------------------------------------------------------------------------------------------------

    def families(self, exclude: Iterable[str] = ()) -> list[Metric]:
        """Metric families to expose now, none named in ``exclude``; forgets expired series first."""
        excluded = frozenset(exclude)
        out: list[Metric] = []
        with self._lock:
            self._excluded = excluded
            self._expire(time.monotonic())
            for family in self._families.values():
                if any(n in excluded for n in family.names):
                    warn_once(f"received-hidden:{family.name}", "received metric %s is not exposed: its name is "
                              "taken by the collector's own metrics", family.name)
                    continue
                out.append(_expose(family))
            if self._targets and "target_info" not in excluded:
                info = Metric("target", "Target metadata", "info")
                for target_labels, _ in self._targets.values():
                    info.add_sample("target_info", target_labels, 1)
                out.append(info)
        return out

    def collect(self) -> list[Metric]:
        """prometheus-client collector hook (for an endpoint that serves received metrics alone)."""
        return self.families()

    def _expire(self, now: float) -> None:
        self._expired_at = now
        horizon = now - self.config.metric_expiration
        for name in list(self._families):
            family = self._families[name]
            family.series = {k: s for k, s in family.series.items() if s.seen >= horizon}
            family.folded = {k: f for k, f in family.folded.items() if f.seen >= horizon}
            if family.overflow is not None and family.overflow.seen < horizon:
                family.overflow = None
            if not family.series and family.overflow is None:
                del self._families[name]
                for n in family.names:
                    self._owners.pop(n, None)
        self._targets = {k: t for k, t in self._targets.items() if t[1] >= horizon}


# -- reading OTLP points ---------------------------------------------------------------------------------------


def _number(point: Any) -> _Point | None:
    kind = point.WhichOneof("value")
    if kind is None:
        return None
    value = float(point.as_double if kind == "as_double" else point.as_int)
    return _Point(point.start_time_unix_nano, point.time_unix_nano, value,
                  exemplars=_exemplars(point.exemplars, ()) if point.exemplars else {})


def _histogram(point: Any) -> _Point | None:
    bounds = tuple(point.explicit_bounds)
    buckets: list[float] = list(point.bucket_counts)
    if not buckets:  # only count and sum: one +Inf bucket
        if bounds:
            return None
        buckets = [point.count]
    if len(buckets) != len(bounds) + 1 or not _increasing(bounds) or sum(buckets) != point.count:
        return None
    has_sum = point.HasField("sum")
    return _Point(point.start_time_unix_nano, point.time_unix_nano, point.sum if has_sum else 0.0, point.count,
                  has_sum, bounds, buckets, _exemplars(point.exemplars, bounds) if point.exemplars else {})


@lru_cache(maxsize=256)  # a metric's bounds recur in every point
def _increasing(bounds: tuple[float, ...]) -> bool:
    return all(a < b for a, b in pairwise(bounds))


def _summary(point: Any) -> _Point | None:
    quantiles = sorted((q.quantile, q.value) for q in point.quantile_values)
    bounds = tuple(q for q, _ in quantiles)
    if not _increasing(bounds):  # a quantile twice (or NaN among others) would expose one sample twice: invalid
        return None
    return _Point(point.start_time_unix_nano, point.time_unix_nano, point.sum, point.count, True,
                  bounds, [v for _, v in quantiles])


_READERS = {"gauge": _number, "sum": _number, "histogram": _histogram, "summary": _summary}


def _exemplars(exemplars: Iterable[Any], bounds: tuple[float, ...]) -> dict[int, Exemplar]:
    out: dict[int, Exemplar] = {}
    for ex in exemplars:
        if len(ex.trace_id) != 16 or len(ex.span_id) != 8:
            continue  # OpenMetrics exemplars here link to traces; one without a trace adds nothing
        value = float(ex.as_double if ex.WhichOneof("value") == "as_double" else ex.as_int)
        index = bisect_left(bounds, value) if bounds else 0
        out[index] = Exemplar({"trace_id": ex.trace_id.hex(), "span_id": ex.span_id.hex()}, value,
                              ex.time_unix_nano / 1e9 if ex.time_unix_nano else None)
    return out


def _add(into: _Point, point: _Point) -> None:
    into.value += point.value
    into.count += point.count
    into.has_sum = into.has_sum and point.has_sum
    if into.buckets:
        into.buckets = [a + b for a, b in zip(into.buckets, point.buckets, strict=True)]
    into.exemplars.update(point.exemplars)


def _difference(point: _Point, last: _Point) -> _Point:
    return _Point(last.time_ns, point.time_ns, point.value - last.value, point.count - last.count, point.has_sum,
                  point.bounds, [a - b for a, b in zip(point.buckets, last.buckets, strict=True)],
                  dict(point.exemplars))


def _copy(point: _Point) -> _Point:
    return _Point(point.start_ns, point.time_ns, point.value, point.count, point.has_sum, point.bounds,
                  list(point.buckets), dict(point.exemplars))


# -- exposition ------------------------------------------------------------------------------------------------


def _expose(family: _Family) -> Metric:
    out = Metric(family.name, family.doc, family.kind)
    series = list(family.series.values())
    if family.overflow is not None:
        series.append(family.overflow)
    name = family.name
    for s in series:
        p = s.point
        if family.kind == COUNTER:
            out.add_sample(f"{name}_total", s.labels, p.value, exemplar=p.exemplars.get(0))
        elif family.kind == GAUGE:
            out.add_sample(name, s.labels, p.value)
        elif family.kind == HISTOGRAM:
            cumulative = 0.0
            for i, count in enumerate(p.buckets):
                cumulative += count
                le = repr(float(p.bounds[i])) if i < len(p.bounds) else "+Inf"
                out.add_sample(f"{name}_bucket", {**s.labels, "le": le}, cumulative, exemplar=p.exemplars.get(i))
            out.add_sample(f"{name}_count", s.labels, p.count)
            if p.has_sum:
                out.add_sample(f"{name}_sum", s.labels, p.value)
        else:
            for quantile, value in zip(p.bounds, p.buckets, strict=True):
                out.add_sample(name, {**s.labels, "quantile": repr(float(quantile))}, value)
            out.add_sample(f"{name}_count", s.labels, p.count)
            out.add_sample(f"{name}_sum", s.labels, p.value)
    return out
