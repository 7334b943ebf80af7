"""The private OpenTelemetry SDK API flowtel reads (all of it in ``flowtel._otel_sdk``) still has the shape used
there. Each fast path falls back to the public API at run time, so without this test an SDK change would only
make flowtel silently slower (or stop counting dropped spans): here it fails, naming what moved."""

from __future__ import annotations

import collections

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from flowtel import _otel_sdk


def _ended_span() -> ReadableSpan:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("scope").start_as_current_span("s", kind=SpanKind.CLIENT, attributes={"a": 1}) as span:
        span.add_event("e")
    (ended,) = memory.get_finished_spans()
    return ended


def test_span_fields_are_where_flowtel_reads_them() -> None:
    span = _ended_span()
    missing = [name for name in _otel_sdk.PRIVATE_SPAN_FIELDS if not hasattr(span, name)]
    assert not missing, f"ReadableSpan no longer has {missing}: update flowtel._otel_sdk"
    assert isinstance(span._attributes._dict, dict), "BoundedAttributes._dict moved"  # type: ignore[attr-defined]
    assert isinstance(span._events._dq, collections.deque), "BoundedList._dq moved"  # type: ignore[attr-defined]
    assert (span._status._status_code, span._status._description) == (span.status.status_code,
                                                                      span.status.description)
    assert span._instrumentation_scope._name == "scope"
    assert span._resource._attributes == span.resource.attributes
    public = (span.name, span.context, span.parent, span.resource, span.kind, span.status, span.start_time,
              span.end_time, span.instrumentation_scope)
    assert _otel_sdk.readable_span_fields(span, ())[:9] == public
    assert list(_otel_sdk.readable_span_fields(span, ())[9]) == list(span.events)


def test_batch_span_processor_queue_is_where_flowtel_reads_it() -> None:
    processor = BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=1, max_export_batch_size=1,
                                   schedule_delay_millis=60_000)
    try:
        inner = processor._batch_processor  # type: ignore[attr-defined]
        assert isinstance(inner._queue, collections.deque) and inner._queue.maxlen == 1, \
            "BatchSpanProcessor._batch_processor._queue moved: update flowtel._otel_sdk.batch_queue_full"
        assert hasattr(inner, "_shutdown")
        assert not _otel_sdk.batch_queue_full(processor)
        processor.on_end(_ended_span())
        assert _otel_sdk.batch_queue_full(processor)
    finally:
        processor.shutdown()


@pytest.mark.parametrize(("protocol", "entry_point"), [(None, "otlp_proto_grpc"), ("grpc", "otlp_proto_grpc"),
                                                        ("http/protobuf", "otlp_proto_http")])
def test_sdk_configuration_helpers_resolve_as_the_sdk_does(protocol: str | None, entry_point: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    if protocol is None:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    assert _otel_sdk.exporter_entry_point("otlp", "traces") == entry_point
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,console")
    assert _otel_sdk.exporter_names_from_env("traces") == [entry_point, "console"]
    traces, metrics, logs = _otel_sdk.import_exporters([entry_point], [], [])
    assert list(traces) == [entry_point] and not metrics and not logs
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert _otel_sdk.sampler_from_env().get_description() == "AlwaysOffSampler"
    assert _otel_sdk.id_generator_from_env() is not None
    assert callable(getattr(_otel_sdk.BaseConfigurator, "configure", None))


def test_metric_exporter_preferences_are_where_flowtel_reads_them() -> None:
    from opentelemetry.sdk.metrics import Counter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, ConsoleMetricExporter
    from opentelemetry.sdk.metrics.view import DropAggregation

    drop = DropAggregation()
    exporter = ConsoleMetricExporter(preferred_temporality={Counter: AggregationTemporality.DELTA},
                                     preferred_aggregation={Counter: drop})
    temporality, aggregation = _otel_sdk.metric_exporter_preferences(exporter)
    assert temporality[Counter] == AggregationTemporality.DELTA, "MetricExporter._preferred_temporality moved"
    assert aggregation[Counter] is drop, "MetricExporter._preferred_aggregation moved"


def test_logs_api_and_sdk_names_flowtel_imports_are_there() -> None:
    """The logs API and SDK still live under ``_logs`` (see ``flowtel._otel_sdk``); ``configure()`` and the Azure
    log path import these names from there."""
    import importlib

    wanted = {"opentelemetry._logs": ("set_logger_provider", "LogRecord", "SeverityNumber"),
              "opentelemetry.sdk._logs": ("LoggerProvider", "LoggingHandler"),
              "opentelemetry.sdk._logs.export": ("BatchLogRecordProcessor",)}
    missing = [f"{module}.{name}" for module, names in wanted.items() for name in names
               if not hasattr(importlib.import_module(module), name)]
    assert not missing, f"moved: {missing}: update flowtel._otel_sdk and its users"
