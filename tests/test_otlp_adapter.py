"""The OTLP adapter: what ``adapt`` reads and what ``apply_to_otlp_span`` + ``encode_request`` write back."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flowtel.otlp import adapt, apply_to_otlp_span, decode_attributes, encode_request
from flowtel.spans import Enrichment


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
    (data,) = adapt(_request(duplicate_key)).spans
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


def test_unenriched_spans_pass_through_unchanged() -> None:
    request = _request()
    (data,) = adapt(request).spans
    out = ExportTraceServiceRequest.FromString(encode_request([data.native]))
    assert out == request


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
