"""The host-neutral view of a finished span that every piece of flowtel logic reads.

The in-process host builds it from an SDK ``ReadableSpan``; the collector builds it from
an OTLP ``Span``. ``native`` keeps the host's object so the host can apply what the
shared logic decided (``Enrichment``) without the logic knowing which host it runs in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

# Span kinds as the SDK numbers them (OTLP numbers are one higher); status codes as both number them.
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 0, 1, 2, 3, 4
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


@dataclass(slots=True)
class SpanEvent:
    """Shaped like the SDK's ``Event`` (name, timestamp in ns, attributes), so SDK events are used as they are."""

    name: str
    timestamp: int
    attributes: Mapping[str, Any]


@dataclass(slots=True)
class SpanData:
    trace_id: int
    span_id: int
    parent_span_id: int  # 0 when the span has no parent
    parent_is_remote: bool
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status: int
    status_message: str
    attributes: Mapping[str, Any]
    events: Sequence[SpanEvent]
    scope_name: str = ""
    resource: Mapping[str, Any] = field(default_factory=dict)
    native: Any = None
    #: Per-span cache for values parsed from attributes (e.g. prompt flow's ``inputs`` JSON), so
    #: analysis, enrichment and derivation parse each at most once.
    memo: dict[str, Any] | None = None

    @property
    def is_local_root(self) -> bool:
        return self.parent_span_id == 0 or self.parent_is_remote

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


@dataclass(slots=True)
class Enrichment:
    """What the shared logic decided for one span; the host applies it to its native span."""

    added: dict[str, Any] = field(default_factory=dict)
    removed_attributes: frozenset[str] = frozenset()
    removed_events: frozenset[str] = frozenset()
    set_error_status: str | None = None  # description for an UNSET span that evidently failed
    added_events: Sequence[SpanEvent] = ()


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


def _events(span: ReadableSpan) -> Sequence[Any]:
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
