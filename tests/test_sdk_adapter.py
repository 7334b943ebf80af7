"""The in-process adapter reads an SDK span's fields where the SDK keeps them; any other ``ReadableSpan``
(only the public API) must read, and be enriched, the same."""

from __future__ import annotations

import dataclasses
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from flowtel._otel_sdk import from_readable_span
from flowtel.processors.span_processor import apply_to_readable_span
from flowtel.spans import Enrichment, SpanEvent

PUBLIC = ("name", "context", "parent", "resource", "attributes", "events", "links", "kind", "status", "start_time",
          "end_time", "instrumentation_scope")


class PublicOnly:
    """A span that offers nothing but ``ReadableSpan``'s public properties."""

    __slots__ = ("wrapped",)

    def __init__(self, wrapped: ReadableSpan) -> None:
        self.wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        if name in PUBLIC:
            return getattr(self.wrapped, name)
        raise AttributeError(name)


def _span() -> ReadableSpan:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("promptflow").start_as_current_span("root"), provider.get_tracer(
            "promptflow").start_as_current_span("openai_chat", kind=SpanKind.CLIENT,
                                                attributes={"inputs": "{}", "span_type": "LLM"}) as span:
        span.add_event("promptflow.llm.generated_message", {"payload": "hi"})
        span.add_event("exception", {"exception.type": "openai.RateLimitError"})
    return next(s for s in memory.get_finished_spans() if s.name == "openai_chat")


def test_public_api_span_reads_as_the_sdk_span_does() -> None:
    sdk = _span()
    fields = {f.name for f in dataclasses.fields(from_readable_span(sdk))} - {"native", "events", "memo"}
    fast, public = from_readable_span(sdk), from_readable_span(PublicOnly(sdk))  # type: ignore[arg-type]
    assert {k: getattr(public, k) for k in fields} == {k: getattr(fast, k) for k in fields}
    assert [e.name for e in public.events] == [e.name for e in fast.events] == [
        "promptflow.llm.generated_message", "exception"]
    assert (fast.kind, fast.parent_span_id != 0, fast.scope_name) == (2, True, "promptflow")


def test_public_api_span_is_enriched_as_the_sdk_span_is() -> None:
    sdk = _span()
    added_event = SpanEvent("gen_ai.evaluation.result", 5, {"gen_ai.evaluation.score.label": "thumbup"})

    def enriched(span: Any) -> ReadableSpan:
        data = from_readable_span(span)
        return apply_to_readable_span(data, Enrichment(
            {"gen_ai.operation.name": "chat"}, frozenset({"inputs"}), frozenset({"promptflow.llm.generated_message"}),
            "openai.RateLimitError", (added_event,)))

    fast, public = enriched(sdk), enriched(PublicOnly(sdk))
    for out in (fast, public):
        assert dict(out.attributes) == {"span_type": "LLM", "gen_ai.operation.name": "chat"}
        assert [e.name for e in out.events] == ["exception", "gen_ai.evaluation.result"]
        assert (out.status.status_code, out.status.description) == (StatusCode.ERROR, "openai.RateLimitError")
        assert (out.name, out.context, out.parent, out.kind, out.start_time, out.end_time) == (
            sdk.name, sdk.context, sdk.parent, sdk.kind, sdk.start_time, sdk.end_time)
    assert dict(sdk.attributes) == {"inputs": "{}", "span_type": "LLM"}  # the ended span is never edited
