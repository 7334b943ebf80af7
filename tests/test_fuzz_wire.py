"""Property-based: flowtel's wire reader (``flowtel._wire``, ``flowtel.otlp.adapt``) reads every request as upb reads
it, and what it forwards decodes, under upb, to what came in.

Requests are generated as protobuf messages, serialized by upb, and sometimes stitched the way the wire allows but
serializers do not write: a message field written twice (a Span, a Resource, a scope: the reader must merge as upb
does), fields of a ResourceSpans / ScopeSpans in any order. Bounded examples so CI stays well under a minute.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from flowtel import _wire as w
from flowtel.otlp import adapt, apply_to_otlp_span, decode_attributes, encode_request
from flowtel.semconv import CONTENT_ATTRIBUTES
from flowtel.spans import Enrichment, SpanEvent

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])

# Keys repeat on purpose (a key written twice keeps its last value), and some are content keys (removed on apply).
KEYS = st.sampled_from(["a", "b", "span_type", "framework", "inputs", "output", "gen_ai.prompt.0.content",
                        "gen_ai.request.model", "k" * 200, "é"])
TEXT = st.text(max_size=40) | st.text(min_size=120, max_size=300)


def _any_value(children: st.SearchStrategy[AnyValue]) -> st.SearchStrategy[AnyValue]:
    arrays = st.lists(children, max_size=3).map(lambda vs: AnyValue(array_value={"values": vs}))
    kvlists = st.lists(st.tuples(KEYS, children), max_size=3).map(
        lambda kvs: AnyValue(kvlist_value={"values": [KeyValue(key=k, value=v) for k, v in kvs]}))
    return arrays | kvlists


SCALARS = st.one_of(
    TEXT.map(lambda s: AnyValue(string_value=s)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.floats(allow_nan=False).map(lambda f: AnyValue(double_value=f)),
    st.binary(max_size=20).map(lambda b: AnyValue(bytes_value=b)),
    st.just(AnyValue()),
)
VALUES = st.recursive(SCALARS, _any_value, max_leaves=6)
ATTRIBUTES = st.lists(st.tuples(KEYS, VALUES), max_size=6).map(lambda kvs: [KeyValue(key=k, value=v) for k, v in kvs])


def _mostly(valid: st.SearchStrategy[bytes], invalid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.integers(0, 9).flatmap(lambda i: invalid if i == 0 else valid)


# Mostly valid ids; sometimes empty, short or all zero (the span is then rejected, as partial success).
TRACE_IDS = _mostly(st.binary(min_size=16, max_size=16).filter(any), st.sampled_from([b"", bytes(16), b"\x01" * 5]))
SPAN_IDS = _mostly(st.binary(min_size=8, max_size=8).filter(any), st.sampled_from([b"", bytes(8), b"\x01" * 3]))
PARENT_IDS = _mostly(st.just(b"") | st.binary(min_size=8, max_size=8), st.just(b"\x02" * 4))
U64 = st.integers(0, 2**64 - 1)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    span = Span(trace_id=draw(TRACE_IDS), span_id=draw(SPAN_IDS), parent_span_id=draw(PARENT_IDS),
                name=draw(TEXT), kind=draw(st.integers(0, 5)), start_time_unix_nano=draw(U64),
                end_time_unix_nano=draw(U64), flags=draw(st.sampled_from([0, 0x100, 0x300, 0x301, 2**32 - 1])),
                trace_state=draw(st.sampled_from(["", "k=v"])))
    span.attributes.extend(draw(ATTRIBUTES))
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(name=draw(st.sampled_from(["exception", "gen_ai.choice", "x"])),
                                time_unix_nano=draw(U64))
        event.attributes.extend(draw(ATTRIBUTES))
    if draw(st.booleans()):
        span.status.code = draw(st.integers(0, 2))
        span.status.message = draw(st.text(max_size=10))
    if draw(st.integers(0, 4)) == 0:
        span.links.add(trace_id=draw(TRACE_IDS), span_id=draw(SPAN_IDS))
    return span


def _field(tag: int, payload: bytes) -> bytes:
    return w.field(tag, payload)


@st.composite
def span_fields(draw: st.DrawFn) -> bytes:
    """One ``ScopeSpans.spans`` field; now and then two Span messages in one field: upb merges them."""
    payload = draw(spans()).SerializeToString()
    if draw(st.integers(0, 5)) == 0:
        payload += draw(spans()).SerializeToString()
    return _field(0x12, payload)


@st.composite
def messages_field(draw: st.DrawFn, tag: int, message: st.SearchStrategy[Any]) -> list[bytes]:
    """A message field absent, once, or (merged by upb) twice."""
    return [_field(tag, draw(message).SerializeToString()) for _ in range(draw(st.sampled_from([0, 1, 1, 2])))]


SCOPES = st.builds(lambda name, attrs: InstrumentationScope(name=name, attributes=attrs), TEXT, ATTRIBUTES)
RESOURCES = ATTRIBUTES.map(lambda attrs: Resource(attributes=attrs))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(1, 2))):
        resource_fields: list[bytes] = draw(messages_field(0x0A, RESOURCES))
        for _ in range(draw(st.integers(1, 2))):
            scope_fields = draw(messages_field(0x0A, SCOPES)) + draw(st.lists(span_fields(), min_size=1, max_size=4))
            if draw(st.booleans()):
                scope_fields.append(_field(0x1A, b"https://schema/1"))
            resource_fields.append(_field(0x12, b"".join(draw(st.permutations(scope_fields)))))
        if draw(st.booleans()):
            resource_fields.append(_field(0x1A, b"https://schema/2"))
        out += _field(0x0A, b"".join(draw(st.permutations(resource_fields))))
    return out


def _valid(span: Span) -> bool:
    return (len(span.trace_id) == 16 and any(span.trace_id) and len(span.span_id) == 8 and any(span.span_id)
            and len(span.parent_span_id) in (0, 8))


def _expected(upb: ExportTraceServiceRequest) -> tuple[list[tuple[Any, ...]], int]:
    """What flowtel must read from a request, by upb: each valid span's facts, and how many are invalid."""
    out, invalid = [], 0
    for rs in upb.resource_spans:
        resource = decode_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                if not _valid(span):
                    invalid += 1
                    continue
                out.append((
                    int.from_bytes(span.trace_id, "big"), int.from_bytes(span.span_id, "big"),
                    int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else 0, span.name,
                    max(span.kind - 1, 0), span.start_time_unix_nano, span.end_time_unix_nano, span.status.code,
                    span.status.message, decode_attributes(span.attributes),
                    [(e.name, e.time_unix_nano, decode_attributes(e.attributes)) for e in span.events],
                    ss.scope.name, resource))
    return out, invalid


def _read(spans: list[Any]) -> list[tuple[Any, ...]]:
    return [(s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.start_ns, s.end_ns, s.status,
             s.status_message, dict(s.attributes), [(e.name, e.timestamp, dict(e.attributes)) for e in s.events],
             s.scope_name, dict(s.resource)) for s in spans]


def _forwarded(upb: ExportTraceServiceRequest) -> list[tuple[bytes, bytes, bytes]]:
    """Each valid span with its resource and scope, as upb serializes them (deterministic for equal messages)."""
    return [(rs.resource.SerializeToString(deterministic=True), ss.scope.SerializeToString(deterministic=True),
             span.SerializeToString(deterministic=True))
            for rs in upb.resource_spans for ss in rs.scope_spans for span in ss.spans if _valid(span)]


@FUZZ
@given(requests())
def test_adapt_reads_what_upb_reads_and_forwards_it_unchanged(raw: bytes) -> None:
    upb = ExportTraceServiceRequest.FromString(raw)
    expected, invalid = _expected(upb)
    adapted = adapt(raw)
    assert _read(adapted.spans) == expected
    assert adapted.rejected == invalid
    forwarded = ExportTraceServiceRequest.FromString(encode_request([s.native for s in adapted.spans]))
    assert sorted(_forwarded(forwarded)) == sorted(_forwarded(upb))


@FUZZ
@given(requests(), st.dictionaries(st.sampled_from(["gen_ai.operation.name", "gen_ai.usage.input_tokens", "x"]),
                                   st.integers(-5, 5) | st.text(max_size=5), max_size=2),
       st.booleans())
def test_applied_enrichment_reads_back_under_upb(raw: bytes, added: dict[str, Any], error: bool) -> None:
    """Content keys and events cut out of a span's bytes, attributes, an event and a status appended: upb reads
    the result as the span minus what was removed plus what was added."""
    adapted = adapt(raw)
    for span in adapted.spans:
        removed = frozenset(k for k in span.attributes if k in CONTENT_ATTRIBUTES or k.startswith("gen_ai.prompt."))
        enrichment = Enrichment(dict(added), removed, frozenset({"gen_ai.choice"}),
                                "boom" if error else None, (SpanEvent("flowtel.test", 5, {"n": 1}),))
        encoded, _ = apply_to_otlp_span(span, enrichment)
        out = Span.FromString(encoded)
        attributes = decode_attributes(out.attributes)
        want = {k: v for k, v in span.attributes.items() if k not in removed}
        want.update(added)
        assert attributes == want
        assert [e.name for e in out.events] == [e.name for e in span.events if e.name != "gen_ai.choice"] + [
            "flowtel.test"]
        if error:
            assert (out.status.code, out.status.message) == (2, "boom")
        else:
            assert out.status.code == span.status
