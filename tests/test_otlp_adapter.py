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
