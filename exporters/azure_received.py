"""Received OTLP metrics and logs as the OpenTelemetry SDK's export data, for the Azure Monitor exporters.

``ReceivedToAzure`` (one per collector ``azuremonitor`` exporter) turns

- an ``ExportMetricsServiceRequest`` into the SDK's ``MetricsData`` in the temporalities the
  Azure metric exporter asks its SDK for (``APPLICATION_INSIGHTS_METRIC_TEMPORALITIES``):
  monotonic sums and histograms DELTA, non-monotonic sums CUMULATIVE, gauges as they are. The
  exporter makes one customMetrics row per point: a sum's or gauge's value; a histogram's
  sum, count, min and max (it drops bucket counts). So:

  - CUMULATIVE monotonic sums, histograms and summaries become the increase since the last
    point of their series (the first point after a reset, or of a series that started after
    this collector: its whole value since its start time). The first point of a series that
    started earlier is only a baseline, sent as nothing, as upstream's ``cumulativetodelta``
    with ``initial_value: auto``: a restarted collector must not send every counter's history
    again (what the sender counted between the last export before the restart and the first
    after it is not sent). Their min / max only survive where the window holds one value
    (min = max = sum), as a cumulative min / max says nothing about the window;
  - DELTA non-monotonic sums are added up into their running value (from zero again after a
    collector restart: the state is in memory);
  - exponential histograms and summaries travel as histogram points without buckets
    (customMetrics keeps no buckets anyway): nothing is lost that the table could hold.

  The per-series memory this needs is bounded (``max_series``); entries not updated for
  ``series_expiration_s`` make room, and points of new series past the bound are dropped and
  counted (``series_limit``). Points older than their series' last one are dropped
  (``out_of_order``: a replay would count twice), and points with no value or an unset
  temporality are ``invalid``.
- an ``ExportLogsServiceRequest`` into SDK log records (``ReadableLogRecord``, or ``LogData`` on older
  SDKs: ``flowtel._otel_sdk.exportable_log_record``), which the Azure log exporter
  sends to the traces table (or to exceptions, with ``exception.*`` attributes). Severity
  numbers become Application Insights severity levels in the exporter (1-8 Verbose, 9-12
  Information, 13-16 Warning, 17-20 Error, 21-24 Critical); a record with only a severity
  text (``WARNING``, ``error``...) gets the number that text names, so it is not filed as
  Verbose. Trace and span ids become the row's operation id and parent id. Unless
  ``capture_content`` is on, prompts and completions do not leave: content attributes
  (``semconv.CONTENT_ATTRIBUTES``, as removed from spans) are removed, and GenAI content events
  (``gen_ai.user.message``, ``gen_ai.choice``, ... ``semconv.CONTENT_EVENTS``) lose their body.

Both answer ``(data, dropped per reason)``; the exporter counts what is dropped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from opentelemetry.trace.span import INVALID_SPAN

from flowtel._otel_sdk import exportable_log_record
from flowtel.otlp import decode_attributes, decode_value
from flowtel.semconv import CONTENT_ATTRIBUTE_PREFIXES, CONTENT_ATTRIBUTES, CONTENT_EVENTS

#: Reasons points or records are dropped (the keys of the answers).
DROP_REASONS = ("series_limit", "out_of_order", "invalid")

_DELTA, _CUMULATIVE = 1, 2
_NO_RECORDED_VALUE = 1
DELTA, CUMULATIVE = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
#: Severity texts as loggers write them, to the first number of their range (OpenTelemetry log data model).
SEVERITY_TEXTS = {
    "TRACE": 1, "DEBUG": 5, "INFO": 9, "INFORMATION": 9, "NOTICE": 10, "WARN": 13, "WARNING": 13, "ERROR": 17,
    "CRITICAL": 21, "FATAL": 21, "ALERT": 22, "EMERGENCY": 23,
}


@dataclass(slots=True)
class _Last:
    start_ns: int
    time_ns: int
    value: float  # sums: the value; histograms and summaries: the sum
    count: int
    seen: float


class ReceivedToAzure:
    def __init__(self, max_series: int = 10_000, series_expiration_s: float = 900.0,
                 capture_content: bool = False, started_ns: int | None = None) -> None:
        self.capture_content = capture_content
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self.max_series = max_series
        self.series_expiration_s = series_expiration_s
        self._lock = threading.Lock()
        self._last: dict[tuple[Any, ...], _Last] = {}

    # -- metrics -------------------------------------------------------------------------------------------------

    def metrics_data(self, request: ExportMetricsServiceRequest) -> tuple[MetricsData, dict[str, int]]:
        """The request's points as ``MetricsData`` for the Azure metric exporter, and the points dropped per reason."""
        dropped: dict[str, int] = {}
        out: list[ResourceMetrics] = []
        now = time.monotonic()
        with self._lock:
            for rm in request.resource_metrics:
                resource = Resource(decode_attributes(rm.resource.attributes), rm.schema_url or None)
                resource_key = rm.resource.SerializeToString(deterministic=True)
                scopes = []
                for sm in rm.scope_metrics:
                    scope = InstrumentationScope(sm.scope.name, sm.scope.version or None, sm.schema_url or None,
                                                 decode_attributes(sm.scope.attributes) or None)
                    prefix = (resource_key, sm.scope.name, sm.scope.version)
                    metrics = [m for m in (self._metric(metric, prefix, now, dropped) for metric in sm.metrics)
                               if m is not None]
                    if metrics:
                        scopes.append(ScopeMetrics(scope, metrics, sm.schema_url))
                if scopes:
                    out.append(ResourceMetrics(resource, scopes, rm.schema_url))
        return MetricsData(out), dropped

    def _metric(self, metric: Any, prefix: tuple[Any, ...], now: float, dropped: dict[str, int]) -> Metric | None:
        kind = metric.WhichOneof("data")
        if kind is None:
            return None
        data = getattr(metric, kind)
        temporality = getattr(data, "aggregation_temporality", _CUMULATIVE)  # gauges: values; summaries: cumulative
        if temporality not in (_DELTA, _CUMULATIVE):
            _drop(dropped, "invalid", len(data.data_points))
            return None
        delta = temporality == _DELTA
        points: list[Any] = []
        for point in data.data_points:
            if point.flags & _NO_RECORDED_VALUE:
                continue
            key = (*prefix, metric.name, b"".join(kv.SerializeToString(deterministic=True)
                                                  for kv in point.attributes))
            converted, reason = self._point(kind, data, point, key, delta, now)
            if reason is not None:
                _drop(dropped, reason, 1)
            elif converted is not None:
                points.append(converted)
        if not points:
            return None
        if kind == "gauge":
            payload: Any = Gauge(points)
        elif kind == "sum":
            payload = Sum(points, CUMULATIVE if not data.is_monotonic else DELTA, data.is_monotonic)
        else:
            payload = HistogramData(points, DELTA)
        return Metric(metric.name, metric.description or None, metric.unit or None, payload)

    def _point(self, kind: str, data: Any, point: Any, key: tuple[Any, ...], delta: bool,
               now: float) -> tuple[Any, str | None]:
        attributes = decode_attributes(point.attributes)
        start, end = point.start_time_unix_nano, point.time_unix_nano
        if kind == "gauge" or kind == "sum":
            which = point.WhichOneof("value")
            if which is None:
                return None, "invalid"
            value = float(point.as_double if which == "as_double" else point.as_int)
            if kind == "gauge" or (not data.is_monotonic and not delta) or (data.is_monotonic and delta):
                return NumberDataPoint(attributes, start, end, value), None  # already as the exporter wants it
            if not data.is_monotonic:  # DELTA up-down: the running value
                last, reason = self._running(key, start, end, value, now)
                if reason is not None or last is None:
                    return None, reason
                return NumberDataPoint(attributes, last.start_ns, end, last.value), None
            increase, reason = self._increase(key, start, end, value, 0, now)
            if reason is not None or increase is None:
                return None, reason
            return NumberDataPoint(attributes, increase[0], end, increase[1]), None
        count = int(point.count)
        total = point.sum if (kind == "summary" or point.HasField("sum")) else 0.0
        has_range = kind != "summary" and point.HasField("min") and point.HasField("max")
        low, high = (point.min, point.max) if has_range else (None, None)
        if not delta:
            increase, reason = self._increase(key, start, end, total, count, now)
            if reason is not None or increase is None:
                return None, reason
            window_start, total, window_count = increase
            if (window_start, window_count) != (start, count):  # a window of a running total: its min / max unknown
                low = high = total if window_count == 1 else None
            start, count = window_start, window_count
        if count == 0:
            return None, None  # nothing happened in this window: no row, as the SDK sends none
        # None min / max: unknown. The SDK types them float, but the Azure exporter, the only reader of these
        # points, sends None as "no min / max" (its own default), which is what customMetrics should get.
        return HistogramDataPoint(attributes, start, end, count, total, (), (), low, high), None  # type: ignore[arg-type]

    def _increase(self, key: tuple[Any, ...], start: int, end: int, value: float, count: int,
                  now: float) -> tuple[Any, str | None]:
        """``(window start, increase, count increase)`` of a cumulative point since its series' last one."""
        last = self._last.get(key)
        if last is not None and end <= last.time_ns:
            return None, "out_of_order"
        if last is None and not self._room(now):
            return None, "series_limit"
        self._last[key] = _Last(start, end, value, count, now)
        if last is None and start < self.started_ns:
            # A series older than this collector: a previous run may have sent what it holds, so this point is
            # only the baseline (upstream cumulativetodelta's initial_value: auto). A restart must not resend
            # every counter's whole history.
            return None, None
        if last is None or start != last.start_ns or value < last.value or count < last.count:
            return (start, value, count), None  # a new series or a reset: all of it is new
        return (last.time_ns, value - last.value, count - last.count), None

    def _running(self, key: tuple[Any, ...], start: int, end: int, value: float,
                 now: float) -> tuple[_Last | None, str | None]:
        """The running value of a DELTA up-down counter after adding this point."""
        last = self._last.get(key)
        if last is None:
            if not self._room(now):
                return None, "series_limit"
            last = self._last[key] = _Last(start, end, value, 0, now)
            return last, None
        if end <= last.time_ns or (start and start < last.time_ns):
            return None, "out_of_order"
        last.value += value
        last.time_ns, last.seen = end, now
        return last, None

    def _room(self, now: float) -> bool:
        if len(self._last) < self.max_series:
            return True
        horizon = now - self.series_expiration_s
        self._last = {k: v for k, v in self._last.items() if v.seen >= horizon}
        return len(self._last) < self.max_series

    # -- logs ----------------------------------------------------------------------------------------------------

    def log_records(self, request: ExportLogsServiceRequest) -> tuple[list[Any], dict[str, int]]:
        """The request's log records as SDK records (as the SDK's log exporters take them) and the records dropped
        per reason."""
        out: list[Any] = []
        for rl in request.resource_logs:
            resource = Resource(decode_attributes(rl.resource.attributes), rl.schema_url or None)
            for sl in rl.scope_logs:
                scope = InstrumentationScope(sl.scope.name, sl.scope.version or None, sl.schema_url or None,
                                             decode_attributes(sl.scope.attributes) or None)
                out.extend(exportable_log_record(resource, scope, **_log_record(record, self.capture_content))
                           for record in sl.log_records)
        return out, {}


def _log_record(record: Any, capture_content: bool) -> dict[str, Any]:
    """The keyword arguments of the API ``LogRecord`` for an OTLP log record."""
    attributes = decode_attributes(record.attributes)
    event_name = getattr(record, "event_name", "") or attributes.get("event.name")
    body = decode_value(record.body) if record.HasField("body") else None
    if not capture_content:  # fail closed: GenAI content events lose their body, content attributes go
        attributes = {k: v for k, v in attributes.items()
                      if k not in CONTENT_ATTRIBUTES and not k.startswith(CONTENT_ATTRIBUTE_PREFIXES)}
        if event_name in CONTENT_EVENTS:
            body = None
    number = record.severity_number
    if not number and record.severity_text:
        number = SEVERITY_TEXTS.get(record.severity_text.strip().upper(), 0)
    if len(record.trace_id) == 16 and len(record.span_id) == 8 and any(record.trace_id):
        context = set_span_in_context(NonRecordingSpan(SpanContext(
            int.from_bytes(record.trace_id, "big"), int.from_bytes(record.span_id, "big"), is_remote=True,
            trace_flags=TraceFlags(record.flags & 0xFF))))
    else:
        context = set_span_in_context(INVALID_SPAN)  # not the exporter thread's current context
    return dict(
        timestamp=record.time_unix_nano or None,
        observed_timestamp=record.observed_time_unix_nano or record.time_unix_nano or None,
        context=context,
        severity_text=record.severity_text or None,
        severity_number=SeverityNumber(number) if 0 < number <= 24 else None,
        body=body,
        attributes=attributes,
        event_name=event_name or None,
    )


def _drop(dropped: dict[str, int], reason: str, count: int) -> None:
    dropped[reason] = dropped.get(reason, 0) + count
