"""The OTLP adapter: what ``adapt`` reads from the wire and what ``apply_to_otlp_span`` + ``encode_request`` write
back, checked against upb's own parse of the same bytes."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from flowtel.otlp import MalformedRequest, adapt, apply_to_otlp_span, decode_attributes, encode_request
from flowtel.spans import Enrichment, SpanEvent


def _request(duplicate_key: bool = False) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "app"
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "promptflow", "1.0"
    span = ss.spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "openai_chat"
    span.status.message = "kept until overridden"
    for key, value in (("inputs", '{"model": "gpt-4o-mini"}'), ("span_type", "LLM"), ("output", "hello"),
                       ("llm.usage.total_tokens", 9)):
        kv = span.attributes.add()
        kv.key = key
        if isinstance(value, int):
            kv.value.int_value = value
        else:
            kv.value.string_value = value
    if duplicate_key:
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "output", "again"
    for name in ("promptflow.llm.generated_message", "flowtel.first_chunk", "promptflow.llm.generated_message"):
        span.events.add().name = name
    return request


@pytest.mark.parametrize("duplicate_key", [False, True])
def test_applied_enrichment_round_trips_through_the_wire(duplicate_key: bool) -> None:
    (data,) = adapt(_request(duplicate_key).SerializeToString()).spans
    added = {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 4, "gen_ai.usage.output_tokens": -1,
             "temperature": 0.25, "gen_ai.response.finish_reasons": ("stop", "length"), "streaming": False,
             "nested": {"a": 1, "b": ("x",)}, "blob": b"\x00\x01"}
    enrichment = Enrichment(added, frozenset({"inputs", "output"}), frozenset({"promptflow.llm.generated_message"}),
                            "RateLimitError")
    item = apply_to_otlp_span(data, enrichment)
    out = ExportTraceServiceRequest.FromString(encode_request([item]))

    (rs,) = out.resource_spans
    assert rs.schema_url == "https://opentelemetry.io/schemas/1.26.0"
    assert decode_attributes(rs.resource.attributes) == {"service.name": "app"}
    (ss,) = rs.scope_spans
    assert (ss.scope.name, ss.scope.version) == ("promptflow", "1.0")
    (span,) = ss.spans
    assert span.trace_id == bytes(range(1, 17)) and span.name == "openai_chat"
    assert decode_attributes(span.attributes) == {"span_type": "LLM", "llm.usage.total_tokens": 9, **added}
    assert [kv.key for kv in span.attributes][:2] == ["span_type", "llm.usage.total_tokens"]
    assert [e.name for e in span.events] == ["flowtel.first_chunk"]
    assert (span.status.code, span.status.message) == (2, "RateLimitError")


def test_events_not_read_from_the_wire_cannot_be_cut_so_apply_fails() -> None:
    # Removal cuts an event's bytes out of the span; an event without a place in them must fail the span (the
    # pipeline then fails closed), never pass with its content.
    (data,) = adapt(_request().SerializeToString()).spans
    data.events = [SpanEvent("promptflow.llm.generated_message", 1, {})]
    with pytest.raises(TypeError, match="OTLPEvent"):
        apply_to_otlp_span(data, Enrichment(removed_events=frozenset({"promptflow.llm.generated_message"})))


def test_unenriched_spans_pass_through_unchanged() -> None:
    request = _request()
    (data,) = adapt(request.SerializeToString()).spans
    out = ExportTraceServiceRequest.FromString(encode_request([data.native]))
    assert out == request


def _attribute(container: object, key: str, value: object) -> None:
    kv = container.attributes.add()  # type: ignore[attr-defined]
    kv.key = key
    _set_value(kv.value, value)


def _set_value(target: AnyValue, value: object) -> None:
    if value is None:
        return  # an empty AnyValue
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, dict):
        target.kvlist_value.SetInParent()
        for k, v in value.items():
            kv = target.kvlist_value.values.add()
            kv.key = k
            _set_value(kv.value, v)
    else:
        target.array_value.SetInParent()
        for v in value:  # type: ignore[attr-defined]
            _set_value(target.array_value.values.add(), v)


EVERY_KIND: dict[str, object] = {
    "s": "plain", "unicode": "caf\u00e9 \u6f22\u5b57 \U0001f600", "empty": "", "long": "x" * 200,
    "longer": "y" * 20_000,
    "t": True, "f": False, "zero": 0, "neg": -7, "min": -(2**63), "max": 2**63 - 1, "pi": 3.25, "nd": -0.0,
    "raw": b"\x00\xff", "arr": ("a", 1, 2.5, True, ("nested",)), "emptyarr": (), "kv": {"a": 1, "b": {"c": "d"}},
    "none": None, "k" * 300: "long key",
}


def test_every_attribute_value_kind_reads_as_upb_reads_it() -> None:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    _attribute(rs.resource, "service.name", "app")
    ss = rs.scope_spans.add()
    ss.scope.name = "scope"
    span = ss.spans.add()
    span.trace_id, span.span_id, span.parent_span_id = bytes(range(1, 17)), bytes(range(1, 9)), bytes(range(9, 17))
    span.kind, span.start_time_unix_nano, span.end_time_unix_nano = 3, 2**62 + 5, 2**63 + 7
    span.flags = 0x301  # has_is_remote + is_remote, past one byte: field 16 has a two-byte tag
    span.status.code, span.status.message = 2, "failed"
    span.trace_state = "k=v"
    span.dropped_attributes_count = 3
    for key, value in EVERY_KIND.items():
        _attribute(span, key, value)
    event = span.events.add()
    event.name, event.time_unix_nano = "exception", 2**63 + 1
    _attribute(event, "exception.type", "ValueError")
    _attribute(event, "n", 2)
    span.links.add().trace_id = bytes(16)
    raw = request.SerializeToString()

    (data,) = adapt(raw).spans
    expected = decode_attributes(span.attributes)
    assert data.attributes == expected
    assert {k: type(v) for k, v in data.attributes.items()} == {k: type(v) for k, v in expected.items()}
    assert (data.trace_id, data.span_id, data.parent_span_id) == (
        int.from_bytes(span.trace_id, "big"), int.from_bytes(span.span_id, "big"),
        int.from_bytes(span.parent_span_id, "big"))
    assert (data.kind, data.start_ns, data.end_ns, data.parent_is_remote) == (2, 2**62 + 5, 2**63 + 7, True)
    assert (data.status, data.status_message, data.scope_name, dict(data.resource)) == (
        2, "failed", "scope", {"service.name": "app"})
    (read_event,) = data.events
    assert (read_event.name, read_event.timestamp, read_event.attributes) == (
        "exception", 2**63 + 1, {"exception.type": "ValueError", "n": 2})
    # Forwarded untouched, the span is byte for byte what came in.
    assert encode_request([data.native]) == raw


def test_fields_in_any_order_and_unknown_fields_are_read() -> None:
    """Serializers write fields in number order, but the wire allows any order, and newer senders may add
    fields flowtel does not know: both are read (and the unknown ones forwarded)."""
    request = _request()
    span_bytes = request.resource_spans[0].scope_spans[0].spans[0].SerializeToString()
    unknown = b"\xa8\x06\x2a" + b"\xb2\x06\x03abc"  # field 101 varint 42, field 102 bytes "abc"
    reordered_span = unknown + span_bytes  # unknown fields first
    scope = request.resource_spans[0].scope_spans[0].scope.SerializeToString()
    scope_spans = b"\x12" + _len(reordered_span) + reordered_span + b"\x0a" + _len(scope) + scope
    resource = request.resource_spans[0].resource.SerializeToString()
    resource_spans = b"\x12" + _len(scope_spans) + scope_spans + b"\x0a" + _len(resource) + resource
    raw = b"\x0a" + _len(resource_spans) + resource_spans
    ExportTraceServiceRequest.FromString(raw)  # valid protobuf
    (data,) = adapt(raw).spans
    assert (data.name, data.scope_name, dict(data.resource)) == ("openai_chat", "promptflow", {"service.name": "app"})
    assert data.attributes["span_type"] == "LLM"
    out = ExportTraceServiceRequest.FromString(encode_request([data.native]))
    assert out.resource_spans[0].scope_spans[0].spans[0] == ExportTraceServiceRequest.FromString(raw) \
        .resource_spans[0].scope_spans[0].spans[0]


def _sdk_span(**fields: object) -> bytes:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    span = Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="chat", kind=3,
                start_time_unix_nano=2**62 + 5, end_time_unix_nano=2**62 + 9)
    for key, value in fields.items():
        setattr(span, key, value)
    span.attributes.add(key="span_type").value.string_value = "LLM"
    return span.SerializeToString()


def _one_span_request(span: bytes) -> bytes:
    scope_spans = b"\x12" + _len(span) + span
    resource_spans = b"\x12" + _len(scope_spans) + scope_spans
    return b"\x0a" + _len(resource_spans) + resource_spans


@pytest.mark.parametrize(("layout", "span"), [
    ("in field order, with a parent", _sdk_span(parent_span_id=bytes(range(9, 17)))),
    ("a root (no parent field)", _sdk_span()),
    ("trace_state between the ids and the parent", _sdk_span(trace_state="k=v", parent_span_id=b"\x07" * 8)),
    ("kind unspecified (not written)", _sdk_span(kind=0)),
    ("a name longer than 127 bytes", _sdk_span(name="n" * 300)),
    ("ids and name written again later: the last ones win",
     _sdk_span() + b"\x0a\x10" + bytes(range(17, 33)) + b"\x12\x08" + bytes(range(33, 41)) + b"\x2a\x02zz"
     + b"\x30\x05\x39" + (7).to_bytes(8, "little")),
    ("shorter than the header read", b"\x0a\x10" + bytes(range(1, 17)) + b"\x12\x08" + bytes(range(1, 9))),
], ids=lambda value: value if isinstance(value, str) else "span")
def test_span_header_reads_as_upb_reads_it(layout: str, span: bytes) -> None:
    """The leading fields are read in one go when laid out as the SDKs write them; any other layout,
    including fields repeated later (the last one wins), must read exactly as upb reads it."""
    raw = _one_span_request(span)
    (expected,) = ExportTraceServiceRequest.FromString(raw).resource_spans[0].scope_spans[0].spans
    (data,) = adapt(raw).spans
    parent = int.from_bytes(expected.parent_span_id, "big") if expected.parent_span_id else 0
    assert (data.trace_id, data.span_id, data.parent_span_id) == (
        int.from_bytes(expected.trace_id, "big"), int.from_bytes(expected.span_id, "big"), parent), layout
    assert (data.name, data.kind, data.start_ns, data.end_ns) == (
        expected.name, max(expected.kind - 1, 0), expected.start_time_unix_nano, expected.end_time_unix_nano), layout
    assert dict(data.attributes) == decode_attributes(expected.attributes), layout
    assert encode_request([data.native]) == raw, layout


def _len(payload: bytes) -> bytes:
    from flowtel._wire import encode_varint
    return encode_varint(len(payload))


def test_invalid_span_ids_are_rejected_one_by_one() -> None:
    request = _request()
    bad = request.resource_spans[0].scope_spans[0].spans.add()
    bad.trace_id, bad.span_id, bad.name = bytes(16), bytes(range(1, 9)), "zero trace id"
    adapted = adapt(request.SerializeToString())
    assert [s.name for s in adapted.spans] == ["openai_chat"]
    assert (adapted.rejected, adapted.error_message) == (
        1, "1 span(s) rejected: trace_id must be 16 bytes and not all zero")


def test_what_upb_accepts_but_flowtel_cannot_read_is_malformed() -> None:
    resource_spans = _request().resource_spans[0].SerializeToString()
    group = b"\xab\x06" + b"\xac\x06"  # field 101 as a (deprecated) group: start, end
    with_group = b"\x0a" + _len(group + resource_spans) + group + resource_spans
    ExportTraceServiceRequest.FromString(with_group)
    with pytest.raises(MalformedRequest, match="unsupported wire type 3"):
        adapt(with_group)


def test_readable_spans_round_trip_sdk_spans() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Link, SpanKind, StatusCode

    from flowtel.otlp import readable_spans

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rt", "deployment": "blue"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("promptflow", "1.2.3")
    with tracer.start_as_current_span("flow", kind=SpanKind.SERVER, attributes={"a": 1, "b": ("x", "y")}) as root:  # noqa: SIM117 (the link needs root)
        with tracer.start_as_current_span("call", kind=SpanKind.CLIENT,
                                          links=[Link(root.get_span_context(), {"why": "test"})]) as child:
            child.add_event("flowtel.first_chunk", {"n": 1.5})
            child.set_status(StatusCode.ERROR, "boom")
    originals = {s.context.span_id: s for s in memory.get_finished_spans()}
    converted = readable_spans(ExportTraceServiceRequest.FromString(encode_spans(list(originals.values()))
                                                                    .SerializeToString()))
    assert len(converted) == 2
    for span in converted:
        original = originals[span.context.span_id]
        assert span.context.trace_id == original.context.trace_id
        assert (span.parent.span_id if span.parent else None) == (original.parent.span_id if original.parent
                                                                  else None)
        assert (span.name, span.kind, span.start_time, span.end_time) == (
            original.name, original.kind, original.start_time, original.end_time)
        assert dict(span.attributes) == dict(original.attributes)
        assert (span.status.status_code, span.status.description) == (
            original.status.status_code, original.status.description)
        assert [(e.name, dict(e.attributes), e.timestamp) for e in span.events] == [
            (e.name, dict(e.attributes), e.timestamp) for e in original.events]
        assert [(lk.context.span_id, dict(lk.attributes)) for lk in span.links] == [
            (lk.context.span_id, dict(lk.attributes)) for lk in original.links]
        assert dict(span.resource.attributes) == dict(original.resource.attributes)
        assert (span.instrumentation_scope.name, span.instrumentation_scope.version) == ("promptflow", "1.2.3")


def test_short_fields_are_remembered_but_not_content_nor_mutable_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowtel import otlp

    memory: dict[bytes, tuple[str, object]] = {}
    monkeypatch.setattr(otlp, "_KEY_VALUES", memory)
    fields = {"span_type": "LLM", "inputs": '{"question": "what is secret?"}', "gen_ai.prompt.0.content": "hi",
              "nested": {"a": 1}, "listed": ({"a": 1},), "long": "x" * 200}
    spans = []
    for _ in range(2):
        request = ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "s"
        for key, value in fields.items():
            _attribute(span, key, value)
        (data,) = adapt(request.SerializeToString()).spans
        spans.append(data)
    assert [kv[0] for kv in memory.values()] == ["span_type"]
    for data in spans:
        assert dict(data.attributes) == {**fields, "listed": ({"a": 1},)}
    spans[0].attributes["nested"]["a"] = 2  # each span owns its mutable values
    assert spans[1].attributes["nested"] == {"a": 1}


def test_field_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowtel import otlp

    memory: dict[bytes, tuple[str, object]] = {}
    monkeypatch.setattr(otlp, "_KEY_VALUES", memory)
    monkeypatch.setattr(otlp, "_MAX_MEMO_ENTRIES", 10)
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "s"
    for i in range(25):
        _attribute(span, f"k{i}", i)
    (data,) = adapt(request.SerializeToString()).spans
    assert data.attributes == {f"k{i}": i for i in range(25)}
    # emptied when full before an insert: 25 fields into 10 places leave the last 5
    assert sorted(kv[0] for kv in memory.values()) == [f"k{i}" for i in range(20, 25)]


@pytest.mark.parametrize("length", [0, 127, 128, 16_383, 16_384, 70_000])
def test_field_bounds_for_one_two_and_three_byte_lengths(length: int) -> None:
    from flowtel._wire import field, field_bounds

    encoded = b"\x99" + field(0x4A, b"x" * length) + b"\x99"
    assert field_bounds(encoded, 1) == (1, len(encoded) - 1)
