"""Join user feedback to the request it judges.

Derivation leaves a ``RequestRecord`` per request it measured (flow, status, latency,
model, tokens, the resource that carries deployment / variant); ``RequestIndex`` keeps
the recent ones, bounded in number and age. ``FeedbackCorrelator`` takes each
``promptflow-feedback`` span, finds its request by trace id (and by the span its
``traceparent`` named), and decides what the span gains and what the ``feedback`` metric
records.

Apps export the request's spans in batches, so feedback sent right after the answer can
reach flowtel before the request does: a feedback span whose trace is not indexed yet
waits up to ``wait_ns`` for it, then goes out uncorrelated. Everything here runs on the
pipeline's worker thread, so it needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flowtel import semconv as sc
from flowtel.spans import Enrichment, SpanData, SpanEvent

from .scoring import UNSCORED, FeedbackScoring

NO_TRACE_CONTEXT, NOT_FOUND = "no_trace_context", "not_found"


@dataclass(slots=True)
class RequestRecord:
    trace_id: int
    #: The flow span, the span whose timing is the request's, and that span's parent (usually the
    #: client span whose traceparent the app received): feedback may name any of them.
    span_ids: tuple[int, ...]
    flow: str
    response_code: str
    failed: bool
    latency_ms: float
    resource: Mapping[str, Any]
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


class RequestIndex:
    """Recent requests by trace id: at most ``max_requests``, none older than ``window_ns``."""

    def __init__(self, max_requests: int, window_ns: int) -> None:
        self._max = max_requests
        self._window_ns = window_ns
        self._traces: OrderedDict[int, tuple[int, list[RequestRecord]]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, trace_id: int) -> bool:
        return trace_id in self._traces

    def add(self, record: RequestRecord, now_ns: int) -> None:
        entry = self._traces.pop(record.trace_id, None)
        records = entry[1] if entry else []
        records.append(record)
        self._traces[record.trace_id] = (now_ns, records)  # re-inserted: the order stays oldest first
        self._count += 1
        self.expire(now_ns)
        while self._count > self._max:
            _, (_, oldest) = self._traces.popitem(last=False)
            self._count -= len(oldest)

    def expire(self, now_ns: int) -> None:
        traces = self._traces
        while traces:
            indexed_ns, records = next(iter(traces.values()))
            if now_ns - indexed_ns < self._window_ns:
                return
            traces.popitem(last=False)
            self._count -= len(records)

    def find(self, trace_id: int, span_id: int) -> RequestRecord | None:
        entry = self._traces.get(trace_id)
        if entry is None:
            return None
        records = entry[1]
        for record in records:
            if span_id in record.span_ids:
                return record
        return records[-1]  # a traceparent naming another span of the trace judges its latest request


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """What one feedback span became: its enrichment and the ``feedback`` metric's measurement."""

    enrichment: Enrichment
    flow: str
    score_label: str
    correlated: bool
    resource: Mapping[str, Any]
    uncorrelated_reason: str = ""


class FeedbackCorrelator:
    def __init__(self, scoring: FeedbackScoring, max_requests: int, window_ns: int, wait_ns: int,
                 max_waiting: int, dimensions: Mapping[str, str] | None = None) -> None:
        self._scoring = scoring
        self.index = RequestIndex(max_requests, window_ns)
        self._wait_ns = wait_ns
        self._max_waiting = max_waiting
        self._dimensions = dict(dimensions or {})  # dimension -> resource key, copied onto the feedback span
        self._waiting: OrderedDict[int, list[tuple[int, SpanData]]] = OrderedDict()  # trace -> (deadline, span)
        self._waiting_count = 0
        self._arrived: list[int] = []

    @property
    def waiting(self) -> int:
        return self._waiting_count

    @staticmethod
    def is_feedback(span: SpanData) -> bool:
        return span.name == sc.FEEDBACK_SPAN_NAME and span.is_local_root

    def add_requests(self, records: list[RequestRecord], now_ns: int) -> None:
        for record in records:
            self.index.add(record, now_ns)
            if record.trace_id in self._waiting:
                self._arrived.append(record.trace_id)

    def add_feedback(self, span: SpanData, now_ns: int) -> Iterator[SpanData]:
        """Feedback ready now (its request is known, or waiting would not help); the rest waits."""
        if span.parent_span_id == 0 or self._wait_ns <= 0 or span.trace_id in self.index:
            yield span
            return
        self._waiting.setdefault(span.trace_id, []).append((now_ns + self._wait_ns, span))
        self._waiting_count += 1
        while self._waiting_count > self._max_waiting:
            _, spans = self._waiting.popitem(last=False)
            self._waiting_count -= len(spans)
            yield from (s for _, s in spans)

    def ready(self, now_ns: int, everything: bool = False) -> Iterator[SpanData]:
        """Waiting feedback whose request arrived, whose wait is over, or all of it (shutdown)."""
        for trace_id in self._arrived:
            spans = self._waiting.pop(trace_id, None)
            if spans:
                self._waiting_count -= len(spans)
                yield from (s for _, s in spans)
        self._arrived.clear()
        self.index.expire(now_ns)
        while self._waiting:
            trace_id, spans = next(iter(self._waiting.items()))
            if not everything and spans[0][0] > now_ns:
                return
            del self._waiting[trace_id]
            self._waiting_count -= len(spans)
            yield from (s for _, s in spans)

    def outcome(self, span: SpanData) -> FeedbackOutcome:
        attrs = span.attributes
        added: dict[str, Any] = {}

        def put(key: str, value: Any) -> None:
            if value is not None and value != "" and key not in attrs:
                added[key] = value

        score = self._scoring.read(attrs)
        events: tuple[SpanEvent, ...] = ()
        has_result = any(e.name == sc.EVALUATION_RESULT_EVENT for e in span.events)
        if score is not None and not has_result:
            event_attrs: dict[str, Any] = {sc.EVALUATION_NAME: self._scoring.evaluation_name,
                                           sc.EVALUATION_SCORE_VALUE: score.value,
                                           sc.EVALUATION_SCORE_LABEL: score.label}
            if score.explanation:
                event_attrs[sc.EVALUATION_EXPLANATION] = score.explanation
            events = (SpanEvent(sc.EVALUATION_RESULT_EVENT, span.end_ns, event_attrs),)

        record = self.index.find(span.trace_id, span.parent_span_id) if span.parent_span_id else None
        put(sc.FEEDBACK_CORRELATED, record is not None)
        reason = "" if record is not None else NOT_FOUND if span.parent_span_id else NO_TRACE_CONTEXT
        if record is None:
            put(sc.FEEDBACK_UNCORRELATED_REASON, reason)
            # Baggage entries are span attributes: they stand in for the resource the request would have given.
            resource: Mapping[str, Any] = {**span.resource, **attrs}
            flow = ""
        else:
            p = sc.REQUEST_PREFIX
            put(p + "flow", record.flow)
            put(p + "span_id", f"{record.span_ids[0]:016x}")
            put(p + "response_code", record.response_code)
            put(p + "status", "error" if record.failed else "ok")
            put(p + "latency_ms", round(record.latency_ms, 3))
            put(p + "model", record.model)
            if record.input_tokens or record.output_tokens:
                put(p + "input_tokens", record.input_tokens)
                put(p + "output_tokens", record.output_tokens)
            for dimension, key in self._dimensions.items():
                value = record.resource.get(key)
                put(p + dimension, value if isinstance(value, (str, bool, int, float)) else None)
            resource, flow = record.resource, record.flow
        return FeedbackOutcome(Enrichment(added, added_events=events), flow,
                               score.label if score else UNSCORED, record is not None, resource, reason)
