"""The private API of promptflow-tracing flowtel uses (all of it in ``flowtel._promptflow_private``) still has the
shape used there. If the stream proxies moved or kept their span elsewhere, the first-chunk mark (and with it the
``firstbyte`` latency) would silently vanish; here the test fails, naming what moved."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from promptflow.tracing import _trace
from promptflow.tracing import trace as pf_trace

from flowtel import _promptflow_private as private
from flowtel.instrumentation import FIRST_CHUNK_EVENT, PromptflowStreamingInstrumentor

from conftest import reset_otel_globals


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    reset_otel_globals()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    instrumentor = PromptflowStreamingInstrumentor()
    instrumentor.instrument()
    yield memory
    instrumentor.uninstrument()
    provider.shutdown()
    reset_otel_globals()


@pf_trace
def _words() -> Iterator[str]:
    yield from ("a", "b", "c")


@pf_trace
async def _async_words() -> AsyncIterator[str]:
    for word in ("a", "b", "c"):
        yield word


def test_stream_proxies_are_where_flowtel_patches_them() -> None:
    for cls, step in (("TracedIterator", "__next__"), ("TracedAsyncIterator", "__anext__")):
        assert callable(getattr(getattr(_trace, cls, None), step, None)), \
            f"promptflow.tracing._trace.{cls}.{step} moved: update flowtel._promptflow_private"
    originals = private.stream_steps()
    patched = private.patch_stream_steps(lambda f: f, lambda f: f)
    assert patched == originals
    private.restore_stream_steps(originals)
    assert private.stream_steps() == originals


def test_a_stream_proxy_holds_its_span_where_flowtel_reads_it(spans: InMemorySpanExporter) -> None:
    proxy = _words()
    assert isinstance(proxy, _trace.TracedIterator), "a traced generator is no longer wrapped in TracedIterator"
    span = private.stream_span(proxy)
    assert span is not None and span.is_recording(), "TracedIterator no longer keeps its span in _span"
    assert list(proxy) == ["a", "b", "c"]
    (ended,) = spans.get_finished_spans()
    assert ended.context.span_id == span.get_span_context().span_id
    assert [event.name for event in ended.events].count(FIRST_CHUNK_EVENT) == 1


def test_an_async_stream_is_marked_once(spans: InMemorySpanExporter) -> None:
    async def consume() -> list[str]:
        proxy = _async_words()
        assert isinstance(proxy, _trace.TracedAsyncIterator), "an async traced generator is no longer wrapped"
        assert private.stream_span(proxy) is not None, "TracedAsyncIterator no longer keeps its span in _span"
        return [word async for word in proxy]

    assert asyncio.run(consume()) == ["a", "b", "c"]
    (ended,) = spans.get_finished_spans()
    assert [event.name for event in ended.events].count(FIRST_CHUNK_EVENT) == 1


def test_what_the_test_producers_use_is_still_there() -> None:
    for name in ("start_tracing", "end_tracing"):
        assert callable(getattr(private.Tracer, name, None)), f"promptflow.tracing._tracer.Tracer.{name} moved"
    for function in (private.start_as_current_span, private.enrich_span_with_input, private.enrich_span_with_output,
                     private.inject_openai_api, private.recover_openai_api):
        assert callable(function)
