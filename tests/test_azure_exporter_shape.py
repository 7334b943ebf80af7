"""The private API of azure-monitor-opentelemetry-exporter flowtel uses (all of it in
``flowtel.exporters._azure_exporter_private``) still has the shape used there. Without these hooks the loss
accounting switches itself off with one warning and flow roots stay dependencies: an upgrade that moves them would
only make flowtel silently blind. Here it fails, naming what moved. The behaviour built on them (what is counted as
sent or lost, against a local ingestion endpoint) is tested in ``test_appinsights_inprocess.py``."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from packaging.version import Version

from flowtel.exporters import _azure_exporter_private as private

from ingestion import QUIET

CONNECTION = f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:9/"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from azure.monitor.opentelemetry.exporter import (
        AzureMonitorLogExporter,
        AzureMonitorMetricExporter,
        AzureMonitorTraceExporter,
    )

    made = {signal: cls(connection_string=CONNECTION, storage_directory=str(tmp_path / signal))
            for signal, cls in (("traces", AzureMonitorTraceExporter), ("metrics", AzureMonitorMetricExporter),
                                ("logs", AzureMonitorLogExporter))}
    yield made
    for exporter in made.values():
        exporter.shutdown()


def _models() -> Any:
    """The exporter's generated models: ``_generated.exporter.models`` in 1.0.0b58, ``_generated.models`` before."""
    for path in ("exporter._generated.exporter.models", "exporter._generated.models"):
        try:
            return importlib.import_module(f"azure.monitor.opentelemetry.{path}")
        except ImportError:
            continue
    raise AssertionError("the exporter's generated models (TelemetryItem, TrackResponse) moved")


def _server_span() -> ReadableSpan:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("flow", kind=SpanKind.SERVER):
        pass
    (span,) = memory.get_finished_spans()
    return span


def test_accounting_hooks_are_where_flowtel_wraps_them(exporters: dict[str, Any]) -> None:
    for signal, exporter in exporters.items():
        assert private.accounting_hooks_missing(exporter) == [], f"{signal} exporter: update _azure_exporter_private"
        first = next(iter(inspect.signature(exporter._transmit).parameters))
        assert first == "envelopes", f"{signal} exporter's _transmit(envelopes, ...) changed: now ({first}, ...)"
        storage = private.offline_storage(exporter)
        assert storage is not None and callable(getattr(storage, "put", None)), \
            f"{signal} exporter's storage.put moved"


def test_wrappers_replace_the_hooks_keeping_what_the_exporter_reads(exporters: dict[str, Any]) -> None:
    exporter = exporters["traces"]
    original_track, calls = exporter.client.track, []

    def watch(name: str) -> Any:
        def wrap(original: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return original(*args, **kwargs)
            return wrapper
        return wrap

    private.wrap_transmit(exporter, watch("transmit"))
    private.wrap_track(exporter, watch("track"))
    private.wrap_storage_put(private.offline_storage(exporter), watch("put"))
    assert private.wrap_span_to_envelope(exporter, watch("envelope"))
    # 1.0.0b45's generated client reads the operation's metadata through the instance, from the wrapper.
    assert getattr(exporter.client.track, "metadata", None) == getattr(original_track, "metadata", None)
    exporter._span_to_envelope(_server_span())
    assert calls == ["envelope"]


def test_a_request_envelope_is_shaped_as_flowtel_reads_it(exporters: dict[str, Any]) -> None:
    envelope = exporters["traces"]._span_to_envelope(_server_span())
    assert private.item_kind(envelope) == "span", "TelemetryItem data.baseType moved"
    # What storage.put gets: the envelopes as dicts (keyed by wire name since 1.0.0b46, by attribute in 1.0.0b45).
    assert private.item_kind(envelope.as_dict()) == "span", "a stored envelope's dict no longer has data.baseType"
    assert envelope.data.base_data.response_code == "0", "a Request without HTTP attributes no longer answers 0"
    private.mark_request_answered(envelope, ok=False)
    assert envelope.data.base_data.response_code == "500"


def test_metric_rows_are_told_from_the_resource_row() -> None:
    models = _models()

    def row(name: str) -> Any:
        points = [models.MetricDataPoint(name=name, value=1)]
        return models.TelemetryItem(name="Microsoft.ApplicationInsights.Metric", time="2026-01-01T00:00:00Z",
                                    data=models.MonitorBase(base_type="MetricData",
                                                            base_data=models.MetricsData(version=2, metrics=points)))

    assert private.item_kind(row("flow_request")) == "metric"
    assert private.item_kind(row(private.RESOURCE_METRIC_NAME)) == "other"


def test_partial_answers_are_read_as_the_exporter_reads_them() -> None:
    models = _models()
    TrackResponse, TelemetryErrorDetails = models.TrackResponse, models.TelemetryErrorDetails

    answer = TrackResponse(items_received=3, items_accepted=1, errors=[
        TelemetryErrorDetails(index=1, status_code=206, message="Telemetry sampled out."),
        TelemetryErrorDetails(index=2, status_code=500, message="Internal")])
    assert private.track_answer((answer, None)) is answer
    assert private.partial_errors(answer) == [(1, 206, private.SAMPLED_OUT_MESSAGE), (2, 500, "internal")]
    assert private.partial_errors(TrackResponse(items_received=1, items_accepted=1, errors=[])) == []


def test_result_names_status_codes_and_texts_are_the_exporters() -> None:
    from azure.monitor.opentelemetry.exporter import _constants, _storage
    from azure.monitor.opentelemetry.exporter.export import _base
    from azure.monitor.opentelemetry.exporter.export.trace import _exporter as trace_exporter

    assert tuple(member.name for member in _base.ExportResult) == private.EXPORT_RESULTS, "ExportResult changed"
    unknown = {member.name for member in _storage.StorageExportResult} - set(private.STORAGE_RESULTS)
    assert not unknown, f"StorageExportResult has new members {unknown}: map them in STORAGE_RESULTS"
    assert private.storage_loss_reason(_storage.StorageExportResult.LOCAL_FILE_BLOB_SUCCESS) is None
    assert private.storage_loss_reason(_storage.StorageExportResult.CLIENT_PERSISTENCE_CAPACITY_REACHED) == \
        "storage_full"
    assert set(_constants._RETRYABLE_STATUS_CODES) == private.RETRYABLE_STATUS_CODES, "retried status codes changed"
    assert set(_constants._THROTTLE_STATUS_CODES) == private.THROTTLE_STATUS_CODES, "quota status codes changed"
    # The exporter drops sampled-out items by this text since a beta after 1.0.0b45 (which files them by status code
    # alone); at the newest tested version it must be there.
    if Version(importlib.metadata.version("azure-monitor-opentelemetry-exporter")) >= Version("1.0.0b58"):
        assert private.SAMPLED_OUT_MESSAGE in inspect.getsource(_base).lower(), "the sampled-out message changed"
    assert f'"{private.RESOURCE_METRIC_NAME}"' in inspect.getsource(trace_exporter), "the resource row's name changed"


def test_a_received_log_record_is_built_as_this_sdk_and_exporter_take_it(exporters: dict[str, Any]) -> None:
    """``ReadableLogRecord`` on newer SDKs, ``LogData`` on 1.35 (exporter 1.0.0b45): either becomes the right row."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from flowtel import _otel_sdk

    resource, scope = Resource({"service.name": "svc"}), InstrumentationScope("scope")
    item = _otel_sdk.exportable_log_record(resource, scope, timestamp=1_700_000_000_000_000_000, body="hello",
                                           severity_text="WARNING", severity_number=SeverityNumber.WARN,
                                           attributes={"k": "v"})
    record, got_resource, got_scope = _otel_sdk.exported_log_parts(item)
    assert (record.body, record.attributes["k"], got_resource, got_scope) == ("hello", "v", resource, scope)
    envelope = exporters["logs"]._log_to_envelope(item)
    base = envelope.data.base_data
    # Application Insights severity levels: 0 Verbose, 1 Information, 2 Warning, 3 Error, 4 Critical.
    assert (envelope.data.base_type, base.message, base.severity_level) == ("MessageData", "hello", 2)
