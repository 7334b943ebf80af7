"""Every private OpenTelemetry SDK API flowtel reads, in one place.

flowtel supports the SDK range in ``pyproject.toml`` (the oldest is the one prompt flow serving environments
resolve to, see README "Installing next to prompt flow"). What is read here is not the SDK's public API, so
``tests/test_otel_sdk_shape.py`` checks, for the installed SDK, that each name still exists with the shape used
here, and fails loudly naming what moved. Each fast path also falls back to the public API at run time, so a
changed SDK costs speed, never correctness.

- ``opentelemetry.sdk._configuration``: how ``opentelemetry-instrument`` maps ``OTEL_*`` variables to exporter
  entry points, samplers and id generators, and its configurator base class; reused so ``flowtel.configure()``
  chooses exactly what the SDK would.
- ``ReadableSpan`` / ``Status`` / ``Resource`` / ``InstrumentationScope`` fields, ``BoundedAttributes._dict``,
  ``BoundedList._dq``: read where the SDK keeps them; the public properties copy on every read (hot path).
- ``BatchSpanProcessor``'s queue: to count the spans its full queue drops (the SDK only logs them).
- ``MetricExporter``'s preferred temporality and aggregation (no public getter): a wrapping exporter must prefer
  what the wrapped one does.
- The logs API and SDK, which every supported release still keeps under ``opentelemetry._logs`` /
  ``opentelemetry.sdk._logs`` (``set_logger_provider``, ``LogRecord``, ``SeverityNumber``, ``LoggerProvider``,
  ``LoggingHandler``, ``BatchLogRecordProcessor``: the documented way to use them), and the shape log exporters take
  a record in, which changed inside the supported range: ``exportable_log_record`` builds either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from opentelemetry.sdk._configuration import (
    _BaseConfigurator,
    _get_exporter_entry_point,
    _get_exporter_names,
    _get_id_generator,
    _get_sampler,
    _import_exporters,
    _import_id_generator,
    _import_sampler,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter
from opentelemetry.sdk.metrics.view import Aggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

from flowtel.spans import EventView, SpanData

Signal = Literal["traces", "metrics", "logs"]
BaseConfigurator = _BaseConfigurator
import_exporters = _import_exporters


def exporter_names_from_env(signal: Signal) -> list[str]:
    """``OTEL_{signal}_EXPORTER`` as entry point names (``otlp`` resolved through the OTLP protocol variables)."""
    return _get_exporter_names(signal)


def exporter_entry_point(name: str, signal: Signal) -> str:
    """The entry point a default exporter name stands for: ``otlp`` is ``otlp_proto_grpc`` or
    ``otlp_proto_http`` after ``OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``."""
    return str(_get_exporter_entry_point(name, signal))


def sampler_from_env() -> Any:
    return _import_sampler(_get_sampler())


def id_generator_from_env() -> Any:
    return _import_id_generator(_get_id_generator())


def batch_queue_full(processor: BatchSpanProcessor) -> bool:
    """Whether the processor's queue is full right now (the next span is dropped); False when unknowable."""
    inner = getattr(processor, "_batch_processor", None)
    queue = getattr(inner, "_queue", None)
    return (queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen
            and not getattr(inner, "_shutdown", False))


def metric_exporter_preferences(
        exporter: MetricExporter) -> tuple[dict[type, AggregationTemporality] | None, dict[type, Aggregation] | None]:
    """The (temporality, aggregation) preferences the exporter was built with, per instrument type."""
    return exporter._preferred_temporality, exporter._preferred_aggregation


# Keyed by identity: enum members are singletons, and hashing one is a Python-level call.
_KIND_VALUES = {id(kind): kind.value for kind in SpanKind}
_STATUS_VALUES = {id(code): code.value for code in StatusCode}


def _plain_attributes(span: ReadableSpan) -> dict[str, Any]:
    # The SDK keeps attributes in BoundedAttributes (a Python-level mapping over a dict); copying its
    # inner dict is a C-level copy. Fall back to the public mapping if that layout ever changes.
    inner = getattr(span._attributes, "_dict", None)
    if isinstance(inner, dict):
        return dict(inner)
    return dict(span.attributes) if span.attributes else {}


def _events(span: ReadableSpan) -> Sequence[EventView]:
    # ``span.events`` copies the SDK's locked BoundedList into a tuple on every read; an ended span's list
    # no longer changes, so its inner deque is read as it is (most spans have no events at all).
    inner = getattr(span._events, "_dq", None)
    if inner is not None:
        return inner if inner else ()
    return span.events


def from_readable_span(span: ReadableSpan) -> SpanData:
    """Adapt an SDK span: attributes become a plain dict once (the SDK mapping's Python-level ``get`` is
    what every later read would pay), events are the SDK's own objects. The SDK's public properties
    build, copy or at least cost a call on each read, so the fields are read where the SDK keeps them,
    with the public API as the fallback for other ``ReadableSpan`` implementations."""
    resource_attributes: Mapping[str, Any]
    try:
        ctx, parent, status, scope, resource = (span._context, span._parent, span._status,
                                                span._instrumentation_scope, span._resource)
        name, kind, start, end = span._name, span._kind, span._start_time, span._end_time
        status_code, description = status._status_code, status._description
        scope_name = scope._name if scope else ""
        resource_attributes = resource._attributes if resource else {}
        attributes, events = _plain_attributes(span), _events(span)
    except AttributeError:
        ctx, parent, status, scope, resource = (span.context, span.parent, span.status,
                                                span.instrumentation_scope, span.resource)
        name, kind, start, end = span.name, span.kind, span.start_time, span.end_time
        status_code, description = status.status_code, status.description
        scope_name = scope.name if scope else ""
        resource_attributes = resource.attributes if resource else {}
        attributes, events = dict(span.attributes or {}), span.events
    return SpanData(
        ctx.trace_id if ctx else 0,
        ctx.span_id if ctx else 0,
        parent.span_id if parent else 0,
        bool(parent and parent.is_remote),
        name,
        _KIND_VALUES.get(id(kind), 0),
        start or 0,
        end or 0,
        _STATUS_VALUES.get(id(status_code), 0),
        description or "",
        attributes,
        events,
        scope_name,
        resource_attributes,
        span,
    )


def readable_span_fields(span: ReadableSpan, events: Sequence[Any]) -> tuple[Any, ...]:
    """(name, context, parent, resource, kind, status, start, end, scope, events, links) as the SDK keeps them,
    to build an enriched copy; ``events`` (the adapted span's) is used when only the public API is there."""
    try:  # the public properties copy events and links on each read
        return (span._name, span._context, span._parent, span._resource, span._kind, span._status,
                span._start_time, span._end_time, span._instrumentation_scope, span._events, span._links)
    except AttributeError:
        return (span.name, span.context, span.parent, span.resource, span.kind, span.status, span.start_time,
                span.end_time, span.instrumentation_scope, events, span.links)


def exportable_log_record(resource: Resource, scope: InstrumentationScope | None, **fields: Any) -> Any:
    """A log record (``fields``: the API ``LogRecord``'s keyword arguments) as the SDK's log exporters take it:
    ``ReadableLogRecord(LogRecord, resource, scope)`` on newer SDKs; on older ones (1.35, which prompt flow serving
    environments resolve to, and whose Azure log exporter 1.0.0b45 reads ``LogData``) ``LogData`` holding an SDK
    ``LogRecord`` that carries the resource."""
    from opentelemetry.sdk import _logs

    readable = getattr(_logs, "ReadableLogRecord", None)
    if readable is not None:
        from opentelemetry._logs import LogRecord

        return readable(LogRecord(**fields), resource, scope)
    # Names of the older SDKs only (the installed one may not have them), so looked up, not imported.
    log_data, sdk_log_record = getattr(_logs, "LogData"), getattr(_logs, "LogRecord")  # noqa: B009
    return log_data(sdk_log_record(resource=resource, **fields), scope)


def exported_log_parts(item: Any) -> tuple[Any, Resource, InstrumentationScope | None]:
    """``(record, resource, scope)`` of what ``exportable_log_record`` made, whichever SDK made it."""
    if hasattr(item, "resource"):  # ReadableLogRecord
        return item.log_record, item.resource, item.instrumentation_scope
    return item.log_record, item.log_record.resource, item.instrumentation_scope


#: The private names read above, per SDK object, for the shape test.
PRIVATE_SPAN_FIELDS = ("_name", "_context", "_parent", "_resource", "_kind", "_status", "_start_time", "_end_time",
                       "_instrumentation_scope", "_events", "_links", "_attributes")
