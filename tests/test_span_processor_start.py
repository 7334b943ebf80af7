"""Processors behind flowtel that act when a span starts (OpenLLMetry's and MLflow's set attributes then) still get
``on_start`` with the live span, whether passed in or added to the provider after ``configure()``; exporters'
processors, which do nothing there, are not called for it."""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import flowtel
from flowtel.processors.span_processor import _starters


class NamesWorkflow(SpanProcessor):
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        span.set_attribute("traceloop.workflow.name", "set-on-start")


def test_only_processors_that_act_on_start_are_called() -> None:
    memory = InMemorySpanExporter()
    namer = NamesWorkflow()
    assert _starters([SimpleSpanProcessor(memory), BatchSpanProcessor(memory), namer]) == (namer,)


def test_a_processor_added_after_configure_sets_attributes_on_start(monkeypatch: Any) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    telemetry = flowtel.configure(set_global=False)
    try:
        provider = telemetry.tracer_provider
        assert isinstance(provider, TracerProvider)
        memory = InMemorySpanExporter()
        provider.add_span_processor(NamesWorkflow())
        provider.add_span_processor(SimpleSpanProcessor(memory))
        with provider.get_tracer("app").start_as_current_span("root"):
            pass
        provider.force_flush()
        (span,) = memory.get_finished_spans()
        assert span.attributes["traceloop.workflow.name"] == "set-on-start"
    finally:
        telemetry.shutdown()
