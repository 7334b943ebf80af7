"""Received OTLP metrics and logs through the collector's ``azuremonitor`` exporter and the real Azure exporters
to the validating local ingestion endpoint: customMetrics values per window, log rows with mapped severity, and
the same loss accounting as spans."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from flowtel.collector.components import AzureMonitorExporterConfig  # the collector first: it imports exporters
from flowtel.exporters.azure_received import ReceivedToAzure
from flowtel.exporters.azuremonitor_collector import AzureMonitorCollectorExporter
from flowtel.selfmetrics import SelfMetrics
from flowtel.signals import count_log_records, count_metric_points

from ingestion import QUIET, IngestionServer

#: Application Insights severity levels as the exporter writes them (their numbers).
SEVERITY = {"Verbose": 0, "Information": 1, "Warning": 2, "Error": 3, "Critical": 4}
RESOURCE = Resource.create({"service.name": "shop", "service.instance.id": "pod-1"})


@pytest.fixture
def ingestion(monkeypatch: pytest.MonkeyPatch) -> Iterator[IngestionServer]:
    for key, value in {**QUIET, "APPLICATIONINSIGHTS_OPENTELEMETRY_RESOURCE_METRIC_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    with IngestionServer() as server:
        yield server


@pytest.fixture
def make_exporter(ingestion: IngestionServer) -> Iterator[Callable[..., tuple[AzureMonitorCollectorExporter,
                                                                              SelfMetrics]]]:
    made: list[AzureMonitorCollectorExporter] = []

    def make(**config: Any) -> tuple[AzureMonitorCollectorExporter, SelfMetrics]:
        self_metrics = SelfMetrics()
        cfg = AzureMonitorExporterConfig.model_validate({
            "connection_string": ingestion.connection_string, "disable_offline_storage": True, "retry_total": 0,
            "self_telemetry": False, **config})
        exporter = AzureMonitorCollectorExporter("azuremonitor", cfg, self_metrics)
        exporter.start()
        made.append(exporter)
        return exporter, self_metrics

    yield make
    for exporter in made:
        exporter.shutdown(5)


def _metrics_app(delta: bool) -> tuple[MeterProvider, InMemoryMetricReader]:
    temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
    reader = InMemoryMetricReader(preferred_temporality={Counter: temporality, UpDownCounter: temporality,
                                                         Histogram: temporality})
    return MeterProvider(resource=RESOURCE, metric_readers=[reader]), reader


def _request(reader: InMemoryMetricReader) -> ExportMetricsServiceRequest:
    data = reader.get_metrics_data()
    assert data is not None
    return ExportMetricsServiceRequest.FromString(encode_metrics(data).SerializeToString())


def _export_metrics(exporter: AzureMonitorCollectorExporter, request: ExportMetricsServiceRequest) -> None:
    exporter.export_metrics(request, request.SerializeToString(), count_metric_points(request))


def _values(ingestion: IngestionServer, name: str) -> list[tuple[float, int, Any, Any]]:
    rows = [r["data"]["baseData"]["metrics"][0] for r in ingestion.metric_rows(name)]
    return [(p["value"], p.get("count", 1), p.get("min"), p.get("max")) for p in rows]


@pytest.mark.parametrize("delta", [False, True], ids=["cumulative", "delta"])
def test_received_metrics_become_one_customMetrics_row_per_window(make_exporter, ingestion, delta: bool) -> None:
    exporter, self_metrics = make_exporter()
    provider, reader = _metrics_app(delta)
    meter = provider.get_meter("app")
    orders = meter.create_counter("orders")
    latency = meter.create_histogram("checkout.latency", unit="ms")
    stock = meter.create_up_down_counter("stock")
    orders.add(3, {"shop": "berlin"})
    latency.record(40)
    latency.record(60)
    stock.add(10)
    _export_metrics(exporter, _request(reader))
    assert ingestion.wait_for(lambda: len(ingestion.metric_rows()) == 3, 10)
    orders.add(7, {"shop": "berlin"})
    latency.record(100)
    stock.add(-4)
    _export_metrics(exporter, _request(reader))
    assert ingestion.wait_for(lambda: len(ingestion.metric_rows()) == 6, 10)

    assert _values(ingestion, "orders") == [(3, 1, None, None), (7, 1, None, None)]  # per window, either way
    assert _values(ingestion, "stock") == [(10, 1, None, None), (6, 1, None, None)]  # the running value
    assert _values(ingestion, "checkout.latency") == [(100, 2, 40, 60), (100, 1, 100, 100)]
    assert ingestion.metric_rows("orders")[0]["data"]["baseData"]["properties"] == {"shop": "berlin"}
    assert ingestion.metric_rows("orders")[0]["tags"]["ai.cloud.role"] == "shop"
    assert not ingestion.invalid
    assert self_metrics.count("otelcol.exporter.sent.metric_points", exporter="azuremonitor") == 6


def test_received_logs_become_rows_with_mapped_severity_and_their_trace(make_exporter, ingestion) -> None:
    exporter, self_metrics = make_exporter()
    sent = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(sent))
    logger = logging.getLogger("shop.checkout")
    logger.propagate = False
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    tracer = TracerProvider().get_tracer("app")
    try:
        with tracer.start_as_current_span("checkout") as span:
            logger.warning("card declined for order %s", 42, extra={"order.id": "42"})
            trace_id = span.get_span_context().trace_id
        logger.error("payment service down")
        logger.debug("not sent: below the logger's level")
    finally:
        logger.removeHandler(handler)
    records = sent.get_finished_logs()
    request = ExportLogsServiceRequest.FromString(encode_logs(records).SerializeToString())
    exporter.export_logs(request, request.SerializeToString(), count_log_records(request))
    assert ingestion.wait_for(lambda: len(ingestion.rows("MessageData")) == 2, 10)

    rows = {r["data"]["baseData"]["message"]: r for r in ingestion.rows("MessageData")}
    warning = rows["card declined for order 42"]
    assert warning["data"]["baseData"]["severityLevel"] == SEVERITY["Warning"]
    assert warning["data"]["baseData"]["properties"]["order.id"] == "42"
    assert warning["tags"]["ai.operation.id"] == f"{trace_id:032x}"
    assert rows["payment service down"]["data"]["baseData"]["severityLevel"] == SEVERITY["Error"]
    assert not ingestion.invalid
    assert self_metrics.count("otelcol.exporter.sent.log_records", exporter="azuremonitor") == 2


def test_severity_text_alone_is_mapped_and_rejected_logs_are_counted(make_exporter, ingestion) -> None:
    exporter, self_metrics = make_exporter()
    request = ExportLogsServiceRequest()
    scope_logs = request.resource_logs.add().scope_logs.add()
    for text in ("WARNING", "info"):  # producers that set only the text (no severity number)
        record = scope_logs.log_records.add(severity_text=text, time_unix_nano=1_700_000_000_000_000_000)
        record.body.string_value = f"only text {text}"
    records, dropped = ReceivedToAzure().log_records(request)
    assert [r.log_record.severity_number.value for r in records] == [13, 9]
    assert dropped == {}

    ingestion.respond(400, times=1)  # ingestion refuses the batch: lost, counted as for spans
    exporter.export_logs(request, request.SerializeToString(), 2)
    assert ingestion.wait_for(lambda: self_metrics.count("otelcol.exporter.send_failed.log_records",
                                                         exporter="azuremonitor", reason="rejected") == 2, 10)
    exporter.export_logs(request, request.SerializeToString(), 2)
    assert ingestion.wait_for(lambda: len(ingestion.rows("MessageData")) == 2, 10)
    levels = sorted(r["data"]["baseData"]["severityLevel"] for r in ingestion.rows("MessageData"))
    assert levels == [SEVERITY["Information"], SEVERITY["Warning"]]
    assert self_metrics.count("flowtel.log_records.dropped", reason="azuremonitor_rejected") == 2


def test_cumulative_replays_and_resets_and_the_series_bound(make_exporter) -> None:
    convert = ReceivedToAzure(max_series=1)
    provider, reader = _metrics_app(delta=False)
    counter = provider.get_meter("app").create_counter("c")
    counter.add(5, {"k": "a"})
    first = _request(reader)
    data, dropped = convert.metrics_data(first)
    assert [p.value for p in data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points] == [5]
    _, dropped = convert.metrics_data(first)  # a replay would count the 5 again
    assert dropped == {"out_of_order": 1}
    counter.add(1, {"k": "b"})  # a second series past max_series=1
    counter.add(2, {"k": "a"})
    data, dropped = convert.metrics_data(_request(reader))
    assert dropped == {"series_limit": 1}
    assert [p.value for p in data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points] == [2]


def _genai_log_request() -> ExportLogsServiceRequest:
    """A GenAI content event as an instrumentation that captures content emits it, through the SDK's logger."""
    sent = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(sent))
    emitter = provider.get_logger("opentelemetry.instrumentation.openai_v2")
    emitter.emit(event_name="gen_ai.user.message", body={"content": "my secret prompt"},
                 attributes={"gen_ai.system": "openai"}, severity_number=SeverityNumber.INFO)
    emitter.emit(event_name="gen_ai.client.inference.operation.details", body="details",
                 attributes={"gen_ai.input.messages": "[{\"content\": \"my secret prompt\"}]",
                             "gen_ai.request.model": "gpt-4o-mini"}, severity_number=SeverityNumber.INFO)
    return ExportLogsServiceRequest.FromString(encode_logs(sent.get_finished_logs()).SerializeToString())


@pytest.mark.parametrize("capture", [False, True], ids=["content-off", "content-on"])
def test_prompt_content_in_received_logs_is_sent_only_when_captured(make_exporter, ingestion, capture: bool) -> None:
    exporter, _ = make_exporter(capture_content=capture)
    request = _genai_log_request()
    exporter.export_logs(request, request.SerializeToString(), count_log_records(request))
    assert ingestion.wait_for(lambda: len(ingestion.rows()) == 2, 10)

    text = json.dumps(ingestion.rows())
    assert ("my secret prompt" in text) is capture
    assert "gpt-4o-mini" in text  # what is not content still arrives
    assert not ingestion.invalid


def test_histograms_keep_min_and_max_only_where_the_window_determines_them() -> None:
    convert = ReceivedToAzure()
    provider, reader = _metrics_app(delta=False)
    latency = provider.get_meter("app").create_histogram("latency")
    exponential_reader = InMemoryMetricReader()
    exponential = MeterProvider(resource=RESOURCE, metric_readers=[exponential_reader], views=[
        View(instrument_name="sizes", aggregation=ExponentialBucketHistogramAggregation())])
    sizes = exponential.get_meter("app").create_histogram("sizes")
    windows = []
    for values in ((5, 9), (7,), (1, 20)):
        for value in values:
            latency.record(value)
        data, dropped = convert.metrics_data(_request(reader))
        assert dropped == {}
        [point] = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
        windows.append((point.count, point.sum, point.min, point.max))
    # The first window is the whole history (min / max true); one value fixes them; two do not.
    assert windows == [(2, 14, 5, 9), (1, 7, 7, 7), (2, 21, None, None)]

    sizes.record(3)
    sizes.record(300)
    data, _ = convert.metrics_data(_request(exponential_reader))
    [point] = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert (point.count, point.sum, point.min, point.max) == (2, 303, 3, 300)  # exponential: as a histogram row


def test_a_restarted_collector_takes_older_cumulative_series_as_a_baseline() -> None:
    provider, reader = _metrics_app(delta=False)
    counter = provider.get_meter("app").create_counter("orders")
    counter.add(100)  # counted, and sent to Application Insights, before this collector started
    restarted = ReceivedToAzure()  # started now, after the series did
    data, dropped = restarted.metrics_data(_request(reader))
    assert (data.resource_metrics, dropped) == ([], {})  # the baseline: its 100 is not sent again
    counter.add(5)
    data, _ = restarted.metrics_data(_request(reader))
    [point] = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert point.value == 5
