"""The host-neutral view of a finished span that every piece of flowtel logic reads.

The in-process host builds it from an SDK ``ReadableSpan``; the collector builds it from
an OTLP ``Span``. ``native`` keeps the host's object so the host can apply what the
shared logic decided (``Enrichment``) without the logic knowing which host it runs in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Span kinds as the SDK numbers them (OTLP numbers are one higher); status codes as both number them.
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 0, 1, 2, 3, 4
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


class EventView(Protocol):
    """What the shared logic reads of a span event. The in-process host passes the SDK's own ``Event`` objects
    (whose attributes may be None), the collector passes ``flowtel.otlp.OTLPEvent`` (read from the span's bytes),
    and the logic creates ``SpanEvent``; all three have this shape."""

    @property
    def name(self) -> str: ...

    @property
    def timestamp(self) -> int: ...  # ns since the epoch

    @property
    def attributes(self) -> Mapping[str, Any] | None: ...


@dataclass(slots=True)
class SpanEvent:
    """An event the shared logic adds to a span (name, timestamp in ns, attributes), shaped like the SDK's ``Event``."""

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
    events: Sequence[EventView]
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
