"""The collector takes every OTLP signal: traces, metrics and logs, from real senders.

An app under ``opentelemetry-instrument`` with only ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and, for
OTLP/HTTP, the protocol) exports all three with no error on either side; the collector
forwards them to a downstream OTLP backend with the exact values sent. Metrics and logs
pipelines keep the spans' persistent-queue guarantee across SIGTERM + restart.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import yaml
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HTTPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPMetricExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from test_collector_exporters import free_port, log_lines, stored_spans

from collector_proc import CollectorProcess
from conftest import ROOT, scrape
from ingestion import IngestionServer
from monitoring_tools import PrometheusServer
from otlp_sink import OTLPSink
from tls_certs import self_signed

BIN = Path(sys.executable).parent
APP = str(ROOT / "tests/apps/signals_app.py")
#: What an exporter prints when it cannot deliver (the SDK logs these on stderr).
EXPORT_ERROR = re.compile(r"(?i)failed to export|exception while exporting|transient error|unimplemented|"
                          r"status_code|404|traceback")


def collector_config(sink: str, *, storage: str | None = None, batch: str = "50ms") -> str:
    forward: dict[str, Any] = {"endpoint": sink, "tls": {"insecure": True},
                               "retry_on_failure": {"initial_interval": "100ms", "max_interval": "500ms"}}
    if storage:
        forward["sending_queue"] = {"storage": "file_storage"}
    every = {"receivers": ["otlp"], "processors": ["memory_limiter", "batch"], "exporters": ["otlp/sink"]}
    return yaml.safe_dump({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:0"},
                                             "http": {"endpoint": "127.0.0.1:0"}}}},
        "processors": {"memory_limiter": {"limit_mib": 2048}, "batch": {"timeout": batch}},
        "exporters": {"otlp/sink": forward, "prometheus": {"endpoint": "127.0.0.1:0"}},
        "extensions": {"file_storage": {"directory": storage}} if storage else {},
        "service": {"extensions": ["file_storage"] if storage else [], "shutdown_timeout": "5s",
                    "pipelines": {"traces": {**every, "exporters": ["otlp/sink", "prometheus"]},
                                  "metrics": {**every, "exporters": ["otlp/sink", "prometheus"]},
                                  "logs": every}}})


def run_app(endpoint: str, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # The in-process Prometheus endpoint flowtel starts would take port 9464; any free port will do.
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_PROMETHEUS_PORT="0", **extra)
    result = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, APP], env=env,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not EXPORT_ERROR.search(result.stderr + result.stdout), result.stderr
    return result


def point_values(sink: OTLPSink) -> dict[str, Any]:
    metrics = sink.metrics()
    out: dict[str, Any] = {}
    for point in metrics.get("app.requests", []):
        route = {kv.key: kv.value.string_value for kv in point.attributes}["route"]
        out[f"requests{route}"] = out.get(f"requests{route}", 0) + point.as_int
    for point in metrics.get("app.latency", []):
        out["latency"] = (point.count, point.sum, list(point.bucket_counts), list(point.explicit_bounds))
        out["exemplar_traces"] = {e.trace_id.hex() for e in point.exemplars}
    out["inflight"] = [p.as_int for p in metrics.get("app.inflight", [])]
    out["temperature"] = [p.as_double for p in metrics.get("app.temperature", [])]
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_instrumented_app_sends_traces_metrics_and_logs_with_no_error(protocol: str, tmp_path: Path) -> None:
    with OTLPSink() as sink:
        collector = CollectorProcess(collector_config(sink.endpoint), tmp_path).start()
        try:
            endpoint = f"http://{collector.grpc['otlp']}" if protocol == "grpc" else collector.http["otlp"]
            extra = {} if protocol == "grpc" else {"OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
            result = run_app(endpoint, tmp_path, **extra)
            trace_id = result.stdout.split("trace_id ")[1].split()[0]
            collector.wait_for(lambda: sink.spans() and sink.log_records() and
                               point_values(sink).get("temperature"))
            assert [span.name for span, _ in sink.spans()] == ["work"]
            values = point_values(sink)
            assert values["requests/a"] == 3 and values["requests/b"] == 4
            assert values["latency"] == (4, 5555.0, [1, 1, 1, 1], [10.0, 100.0, 1000.0])
            assert values["exemplar_traces"] == {trace_id}
            assert values["inflight"] == [3]
            assert values["temperature"] == [21.5]
            ((record, resource),) = sink.log_records()
            assert record.body.string_value == "hello from the app"
            assert (record.severity_text, record.severity_number) == ("WARN", 13)
            assert resource["service.name"].string_value .startswith("unknown_service")
            transport = "grpc" if protocol == "grpc" else "http"
            own = scrape(collector.prometheus["prometheus"])
            points = sum(len(v) for v in sink.metrics().values())
            assert own.value("otelcol_receiver_accepted_metric_points_total", receiver="otlp",
                             transport=transport) == points
            assert own.value("otelcol_receiver_accepted_log_records_total", receiver="otlp",
                             transport=transport) == 1
            assert own.value("otelcol_exporter_sent_log_records_total", exporter="otlp/sink") == 1
            assert own.value("otelcol_exporter_sent_metric_points_total", exporter="otlp/sink") == points
        finally:
            assert collector.stop() == 0
    # The app runs flowtel in-process, which exports its own flowtel_* self-metrics: those names are the
    # collector's own, so the prometheus exporter drops the app's copies (counted as name_conflict), nothing else.
    assert not log_lines(collector, r"refused|ERROR|dropped (?!received metric points \(reason: name_conflict)"), \
        collector.log


def test_metrics_and_logs_survive_sigterm_and_restart_in_the_persistent_queue(tmp_path: Path) -> None:
    port = free_port()
    storage = tmp_path / "storage"
    collector = CollectorProcess(collector_config(f"127.0.0.1:{port}", storage=str(storage)), tmp_path).start()
    resource = Resource.create({"service.name": "persist"})
    try:
        target = collector.grpc["otlp"]
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=target, insecure=True),
                                               export_interval_millis=3_600_000)
        meters = MeterProvider(resource=resource, metric_readers=[reader])
        meters.get_meter("persist").create_counter("persisted.count").add(7, {"k": "v"})
        assert meters.force_flush()
        logs = LoggerProvider(resource=resource)
        logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=target, insecure=True)))
        for i in range(3):
            logs.get_logger("persist").emit(body=f"kept {i}")
        meters.shutdown()  # exports the cumulative counter once more
        logs.shutdown()
        # Accepted means on disk: two points and three records in batch files while the backend is down.
        collector.wait_for(lambda: stored_spans(storage / "otlp_sink@metrics") == 2
                           and stored_spans(storage / "otlp_sink@logs") == 3)
    finally:
        assert collector.stop(timeout=30) == 0
    assert not log_lines(collector, r"dropped"), collector.log

    collector.start()
    try:
        assert log_lines(collector, r"otlp/sink: \d stored batch\(es\) \(2 metric points\) recovered"), collector.log
        with OTLPSink(port) as sink:
            collector.wait_for(lambda: len(sink.log_records()) == 3
                               and len(sink.metrics().get("persisted.count", [])) == 2
                               and not list(storage.rglob("*.batch")))
            assert sorted(r.body.string_value for r, _ in sink.log_records()) == ["kept 0", "kept 1", "kept 2"]
            assert [p.as_int for p in sink.metrics()["persisted.count"]] == [7, 7]
    finally:
        assert collector.stop() == 0


def test_delta_sender_accumulates_on_prometheus_and_is_forwarded_point_by_point(tmp_path: Path) -> None:
    """A DELTA sender's exports add up on the Prometheus endpoint (cumulative there) and pass through an OTLP
    forwarding pipeline unchanged, one increment per export."""
    with OTLPSink() as sink:
        collector = CollectorProcess(collector_config(sink.endpoint), tmp_path).start()
        try:
            run_app(f"http://{collector.grpc['otlp']}", tmp_path, DELTA_ROUNDS="3",
                    OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta")
            collector.wait_for(lambda: len(sink.metrics().get("app.requests", [])) >= 3)
            assert [p.as_int for p in sink.metrics()["app.requests"]] == [2, 2, 2]
            served = scrape(collector.prometheus["prometheus"])
            assert served.value("app_requests_total", route="/a") == 6
            assert served.value("app_latency_milliseconds_count", route="/a") == 3
            assert served.value("app_latency_milliseconds_sum", route="/a") == 150
        finally:
            assert collector.stop() == 0


def default_config_on_free_ports() -> str:
    """The shipped default config, every listener on port 0 (the test machine's fixed ports may be taken)."""
    text = (ROOT / "collector-config/default.yaml").read_text()
    return re.sub(r"(\$\{env:FLOWTEL_LISTEN_HOST:-localhost\}):\d+", r"\1:0", text)


def test_default_config_takes_every_signal_and_serves_the_apps_metrics_to_prometheus(tmp_path: Path) -> None:
    """The shipped config with a real app and a real Prometheus: the app's counter, histogram (with its exemplar),
    up-down counter and gauge are scraped with exactly the values sent; its log record is taken and counted."""
    collector = CollectorProcess(default_config_on_free_ports(), tmp_path,
                                 env={"FLOWTEL_LISTEN_HOST": "127.0.0.1"}).start()
    prometheus = None
    try:
        result = run_app(f"http://{collector.grpc['otlp']}", tmp_path)
        trace_id = result.stdout.split("trace_id ")[1].split()[0]
        url = collector.prometheus["prometheus"]
        collector.wait_for(lambda: scrape(url).find("app_temperature_celsius"))
        buckets = scrape(url, openmetrics=True).find("app_latency_milliseconds_bucket", route="/a")
        assert {s.exemplar.labels["trace_id"] for s in buckets if s.exemplar} == {trace_id}
        own = scrape(url)
        assert own.value("otelcol_receiver_accepted_log_records_total", receiver="otlp", transport="grpc") == 1
        assert own.value("otelcol_exporter_sent_log_records_total", exporter="debug") == 1
        assert own.value("otelcol_receiver_refused_metric_points_total") == 0
        assert log_lines(collector, r"debug: 1 log record\(s\)")

        (tmp_path / "prometheus").mkdir()
        prometheus = PrometheusServer(tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "flowtel", "honor_labels": True,
                                "static_configs": [{"targets": [url.split("/")[2]]}]}]})
        prometheus.start()

        def query(expr: str) -> dict[str, float]:
            return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k in ("route", "room", "le")):
                    float(r["value"][1]) for r in prometheus.query(expr)}

        collector.wait_for(lambda: query("app_temperature_celsius"), timeout=30)
        assert query("app_requests_total") == {"route=/a": 3.0, "route=/b": 4.0}
        assert query("app_latency_milliseconds_bucket") == {
            "le=10.0,route=/a": 1.0, "le=100.0,route=/a": 2.0, "le=1000.0,route=/a": 3.0, "le=+Inf,route=/a": 4.0}
        assert query("app_latency_milliseconds_sum") == {"route=/a": 5555.0}
        assert query("app_inflight") == {"": 3.0}
        assert query("app_temperature_celsius") == {"room=lab": 21.5}
        # The app's resource is on target_info; its job label is its service.name, as the specification says.
        assert {r["metric"]["job"] for r in prometheus.query("app_requests_total")} == {"unknown_service:python"}
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert collector.stop() == 0


# --- the receivers' limits, auth and answers for metrics and logs ----------------------------------------------
LIMITS_CONFIG = """
extensions:
  bearertokenauth: {token: s3cret}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0"}
      http: {endpoint: "127.0.0.1:0", max_request_body_size: 65536}
  otlp/auth:
    protocols:
      grpc: {endpoint: "127.0.0.1:0", auth: {authenticator: bearertokenauth}}
      http: {endpoint: "127.0.0.1:0", auth: {authenticator: bearertokenauth}}
  otlp/memory: {protocols: {grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}}}
  otlp/traces: {protocols: {grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}}}
processors:
  batch: {timeout: 20ms}
  memory_limiter: {limit_mib: 1, check_interval: 2s}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  extensions: [bearertokenauth]
  pipelines:
    traces: {receivers: [otlp/traces], exporters: [prometheus]}
    metrics: {receivers: [otlp, otlp/auth], processors: [batch], exporters: [otlp/sink]}
    logs: {receivers: [otlp, otlp/auth], processors: [batch], exporters: [otlp/sink]}
    metrics/memory: {receivers: [otlp/memory], processors: [memory_limiter], exporters: [otlp/sink]}
    logs/memory: {receivers: [otlp/memory], processors: [memory_limiter], exporters: [otlp/sink]}
"""
TRACE_HEX = "5b8efff798038103d269b633813fc60c"
SPAN_HEX = "eee19b7ec3c1b174"
METRICS_JSON = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "json.requests", "sum": {
    "aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [{
        "asInt": "5", "timeUnixNano": "1700000000000000000",
        "exemplars": [{"asInt": "5", "timeUnixNano": "1700000000000000000", "traceId": TRACE_HEX,
                       "spanId": SPAN_HEX}]}]}}]}]}]}
LOGS_JSON = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{
    "body": {"stringValue": "json log"}, "severityNumber": 17, "severityText": "ERROR", "traceId": TRACE_HEX,
    "spanId": SPAN_HEX}]}]}]}


METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def _logs_request() -> bytes:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "one record"
    return request.SerializeToString()


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CollectorProcess, OTLPSink]]:
    with OTLPSink() as sink:
        collector = CollectorProcess(LIMITS_CONFIG % {"sink": sink.endpoint},
                                     tmp_path_factory.mktemp("limits")).start()
        try:
            yield collector, sink
        finally:
            assert collector.stop() == 0


def _post(url: str, body: bytes, content_type: str = "application/json", **headers: str) -> requests.Response:
    return requests.post(url, data=body, headers={"Content-Type": content_type, **headers}, timeout=10)


def _own(collector: CollectorProcess) -> Any:
    return scrape(collector.prometheus["prometheus"])


def test_json_and_gzip_metrics_and_logs_keep_hex_ids(limits: tuple[CollectorProcess, OTLPSink]) -> None:
    collector, sink = limits
    base = collector.http["otlp"]
    assert _post(base + "/v1/metrics", json.dumps(METRICS_JSON).encode()).status_code == 200
    gzipped = gzip.compress(json.dumps(LOGS_JSON).encode())
    response = _post(base + "/v1/logs", gzipped, **{"Content-Encoding": "gzip"})
    assert (response.status_code, response.json()) == (200, {})
    collector.wait_for(lambda: sink.metrics().get("json.requests") and any(
        r.body.string_value == "json log" for r, _ in sink.log_records()))
    (point,) = sink.metrics()["json.requests"]
    assert point.as_int == 5
    assert (point.exemplars[0].trace_id.hex(), point.exemplars[0].span_id.hex()) == (TRACE_HEX, SPAN_HEX)
    (record,) = [r for r, _ in sink.log_records() if r.body.string_value == "json log"]
    assert (record.trace_id.hex(), record.span_id.hex(), record.severity_number) == (TRACE_HEX, SPAN_HEX, 17)
    bad_id = json.dumps(LOGS_JSON).replace(SPAN_HEX, "not-hex").encode()
    response = _post(base + "/v1/logs", bad_id)
    assert response.status_code == 400 and "spanId must be hex" in response.json()["message"]


def test_limits_auth_and_unknown_signals_answer_as_for_traces(limits: tuple[CollectorProcess, OTLPSink]) -> None:
    collector, _ = limits
    before = _own(collector)
    # 413 past max_request_body_size, 400 for a body that is not a request, 401 without the token.
    big = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "x" * 70_000}}]}]}]}
    assert _post(collector.http["otlp"] + "/v1/logs", json.dumps(big).encode()).status_code == 413
    assert _post(collector.http["otlp"] + "/v1/metrics", b"\xff\xff", "application/x-protobuf").status_code == 400
    assert _post(collector.http["otlp/auth"] + "/v1/metrics", json.dumps(METRICS_JSON).encode()).status_code == 401
    assert _post(collector.http["otlp/auth"] + "/v1/logs", json.dumps(LOGS_JSON).encode(),
                 Authorization="Bearer s3cret").status_code == 200
    with grpc.insecure_channel(collector.grpc["otlp/auth"]) as channel:
        export = channel.unary_unary(METRICS_EXPORT)
        with pytest.raises(grpc.RpcError) as info:
            export(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A receiver no metrics or logs pipeline lists answers as upstream: 404 and UNIMPLEMENTED.
    response = _post(collector.http["otlp/traces"] + "/v1/metrics", json.dumps(METRICS_JSON).encode())
    assert response.status_code == 404 and "no metrics pipeline" in response.json()["message"]
    with grpc.insecure_channel(collector.grpc["otlp/traces"]) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(LOGS_EXPORT)(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = _own(collector)
    delta = {reason: after.value("flowtel_receiver_refused_requests_total", reason=reason)
             - before.value("flowtel_receiver_refused_requests_total", reason=reason)
             for reason in ("too_large", "malformed", "unauthenticated", "not_found")}
    assert delta == {"too_large": 1, "malformed": 1, "unauthenticated": 2, "not_found": 1}
    assert after.value("otelcol_receiver_accepted_log_records_total", receiver="otlp/auth") == 1


def test_memory_limit_refuses_metrics_and_logs_with_retry(limits: tuple[CollectorProcess, OTLPSink]) -> None:
    collector, _ = limits
    response = _post(collector.http["otlp/memory"] + "/v1/metrics", json.dumps(METRICS_JSON).encode())
    assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
    with grpc.insecure_channel(collector.grpc["otlp/memory"]) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(LOGS_EXPORT)(_logs_request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    own = _own(collector)
    assert own.value("otelcol_receiver_refused_metric_points_total", receiver="otlp/memory", transport="http",
                     reason="memory_limit") == 1
    assert own.value("otelcol_receiver_refused_log_records_total", receiver="otlp/memory", transport="grpc",
                     reason="memory_limit") == 1


def test_app_logs_and_metrics_reach_application_insights_through_the_collector(tmp_path: Path) -> None:
    """The instrumented app's log record lands in the traces table (MessageData, severity Warning) and its counter
    in customMetrics, through the collector's azuremonitor exporter, on the validating ingestion endpoint."""
    with IngestionServer() as ingestion, OTLPSink() as sink:
        config = yaml.safe_load(collector_config(sink.endpoint))
        config["exporters"]["azuremonitor"] = {
            "connection_string": ingestion.connection_string, "retry_total": 0, "disable_offline_storage": True,
            "self_telemetry": False, "traces": False}
        for kind in ("metrics", "logs"):
            config["service"]["pipelines"][kind]["exporters"] = ["azuremonitor"]
        collector = CollectorProcess(yaml.safe_dump(config), tmp_path).start()
        try:
            run_app(f"http://{collector.grpc['otlp']}", tmp_path)
            assert ingestion.wait_for(lambda: ingestion.rows("MessageData") and ingestion.metric_rows("app.requests"),
                                      30), collector.log
            (row,) = ingestion.rows("MessageData")
            assert row["data"]["baseData"]["message"] == "hello from the app"
            assert row["data"]["baseData"]["severityLevel"] == 2  # Warning
            assert row["data"]["baseData"]["properties"]["app.step"] == "done"
            requests_by_route = {r["data"]["baseData"]["properties"]["route"]: r["data"]["baseData"]["metrics"][0]
                                 ["value"] for r in ingestion.metric_rows("app.requests")}
            assert requests_by_route == {"/a": 3, "/b": 4}
            assert not ingestion.invalid
            own = scrape(collector.prometheus["prometheus"])
            assert own.value("otelcol_exporter_sent_log_records_total", exporter="azuremonitor") == 1
        finally:
            assert collector.stop() == 0


@pytest.mark.parametrize("capture", [False, True])
def test_logs_leave_without_genai_content_unless_content_is_captured(capture: bool, tmp_path: Path) -> None:
    """A GenAI message event sent as a log (what instrumentations emit when the app captures content) loses its
    body and content attributes in a logs pipeline, as spans lose theirs, unless the config's flowtel processor
    captures content; every other record and attribute passes unchanged."""
    with OTLPSink() as sink:
        config = yaml.safe_load(collector_config(sink.endpoint))
        config["processors"]["flowtel"] = {"capture_content": capture}
        config["service"]["pipelines"]["traces"]["processors"] = ["memory_limiter", "flowtel", "batch"]
        collector = CollectorProcess(yaml.safe_dump(config), tmp_path).start()
        try:
            provider = LoggerProvider(resource=Resource.create({"service.name": "chat"}))
            provider.add_log_record_processor(SimpleLogRecordProcessor(
                OTLPLogExporter(endpoint=collector.grpc["otlp"], insecure=True)))
            logger = provider.get_logger("opentelemetry.instrumentation.openai_v2")
            logger.emit(event_name="gen_ai.user.message", body={"content": "my secret prompt"},
                        attributes={"gen_ai.system": "openai"})
            logger.emit(body="inference done", attributes={"gen_ai.input.messages": "[secret]", "kept": "yes"})
            provider.shutdown()
            collector.wait_for(lambda: len(sink.log_records()) == 2)
        finally:
            assert collector.stop() == 0
    records = {r.event_name or r.body.string_value: r for r, _ in sink.log_records()}
    event, plain = records["gen_ai.user.message"], records["inference done"]
    attributes = {kv.key: kv.value.string_value for kv in plain.attributes}
    assert {kv.key for kv in event.attributes} == {"gen_ai.system"}
    if capture:
        assert event.body.kvlist_value.values[0].value.string_value == "my secret prompt"
        assert attributes == {"gen_ai.input.messages": "[secret]", "kept": "yes"}
    else:
        assert not event.HasField("body")
        assert attributes == {"kept": "yes"}


def test_sigterm_hands_queued_metrics_and_logs_to_the_exporters(tmp_path: Path) -> None:
    """With a long batch timeout nothing leaves before SIGTERM; the drain sends it all (in-memory queues)."""
    with OTLPSink() as sink:
        config = yaml.safe_load(collector_config(sink.endpoint, batch="1h"))
        collector = CollectorProcess(yaml.safe_dump(config), tmp_path).start()
        try:
            resource = Resource.create({"service.name": "drain"})
            reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=collector.grpc["otlp"], insecure=True), export_interval_millis=3_600_000)
            meters = MeterProvider(resource=resource, metric_readers=[reader])
            meters.get_meter("drain").create_counter("drained.count").add(11)
            assert meters.force_flush()
            logs = LoggerProvider(resource=resource)
            logs.add_log_record_processor(SimpleLogRecordProcessor(
                OTLPLogExporter(endpoint=collector.grpc["otlp"], insecure=True)))
            logs.get_logger("drain").emit(body="drained")
            meters.shutdown()  # exports the cumulative counter once more
            logs.shutdown()
            assert not sink.metrics() and not sink.log_records()  # held by the batch timeout
        finally:
            assert collector.stop() == 0
    assert [p.as_int for p in sink.metrics()["drained.count"]] == [11, 11]
    assert [r.body.string_value for r, _ in sink.log_records()] == ["drained"]


def test_request_pipeline_cuts_batches_between_requests_and_bounds_its_queue() -> None:
    """The worker joins queued requests into one export of at most send_batch_max_size items (cut only between
    requests) and refuses a request that would pass the queue bound. Hand-made requests: an edge case."""
    from flowtel.collector.processors.batch import BatchConfig
    from flowtel.collector.refusal import Refused
    from flowtel.collector.request_pipeline import RequestPipeline
    from flowtel.selfmetrics import SelfMetrics
    from flowtel.signals import LOGS

    got: list[tuple[int, list[str]]] = []

    class Exporter:
        id = "capture"

        def export_logs(self, request: ExportLogsServiceRequest, payload: bytes, records: int) -> None:
            assert ExportLogsServiceRequest.FromString(payload) == request
            got.append((records, [r.body.string_value for rl in request.resource_logs for sl in rl.scope_logs
                                  for r in sl.log_records]))

    def request(*bodies: str) -> bytes:
        message = ExportLogsServiceRequest()
        scope = message.resource_logs.add().scope_logs.add()
        for body in bodies:
            scope.log_records.add().body.string_value = body
        return message.SerializeToString()

    pipeline = RequestPipeline("logs", LOGS, [Exporter()], SelfMetrics(), max_queue=6,
                               batch=BatchConfig(timeout=3600, send_batch_size=100, send_batch_max_size=3))
    for bodies in (("a", "b"), ("c",), ("d", "e"), ("f",)):
        pipeline.admit(len(bodies))
        pipeline.consume(request(*bodies), len(bodies))
    with pytest.raises(Refused) as info:
        pipeline.admit(1)
    assert info.value.reason == "queue_full"
    pipeline.shutdown()  # never started: the drain runs on this thread
    assert got == [(3, ["a", "b", "c"]), (3, ["d", "e", "f"])]


def test_metrics_and_logs_over_tls_with_the_real_exporters(tmp_path: Path) -> None:
    """The same TLS receivers take the SDK's metric and log exporters (gRPC and HTTP) as they take spans."""
    cert, key = self_signed(tmp_path, "server")
    tls = {"cert_file": str(cert), "key_file": str(key)}
    config = yaml.safe_dump({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:0", "tls": tls},
                                             "http": {"endpoint": "127.0.0.1:0", "tls": tls}}}},
        "exporters": {"debug": {}, "prometheus": {"endpoint": "127.0.0.1:0"}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["prometheus"]},
                                  "metrics": {"receivers": ["otlp"], "exporters": ["debug"]},
                                  "logs": {"receivers": ["otlp"], "exporters": ["debug"]}}}})
    collector = CollectorProcess(config, tmp_path).start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the exporter's certificate_file
        base = collector.http["otlp"]
        assert base.startswith("https://")
        metric_exporters = [
            OTLPMetricExporter(endpoint=collector.grpc["otlp"], credentials=credentials),
            HTTPMetricExporter(endpoint=base + "/v1/metrics", certificate_file=str(cert), session=session)]
        log_exporters = [
            OTLPLogExporter(endpoint=collector.grpc["otlp"], credentials=credentials),
            HTTPLogExporter(endpoint=base + "/v1/logs", certificate_file=str(cert), session=session)]
        resource = Resource.create({"service.name": "tls"})
        for exporter in metric_exporters:
            meters = MeterProvider(resource=resource, metric_readers=[
                PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)])
            meters.get_meter("tls").create_counter("tls.count").add(1)
            assert meters.force_flush()
            meters.shutdown()
        for exporter in log_exporters:
            logs = LoggerProvider(resource=resource)
            logs.add_log_record_processor(SimpleLogRecordProcessor(exporter))
            logs.get_logger("tls").emit(body="over tls")
            logs.shutdown()
        own = _own(collector)
        for transport in ("grpc", "http"):
            # each meter provider exported its counter twice: at force_flush and at shutdown
            assert own.value("otelcol_receiver_accepted_metric_points_total", transport=transport) == 2, transport
            assert own.value("otelcol_receiver_accepted_log_records_total", transport=transport) == 1, transport
    finally:
        assert collector.stop() == 0


def test_an_apps_own_copy_of_a_derived_metric_is_dropped_and_counted(tmp_path: Path) -> None:
    """Prompt flow serving sends its standard metrics itself while the collector derives them from its spans: with
    the shipped config the received copy is dropped (counted, reason derived_duplicate), so Prometheus never sees a
    second flow_request_total family or double counts; the app's other metrics pass."""
    collector = CollectorProcess(default_config_on_free_ports(), tmp_path,
                                 env={"FLOWTEL_LISTEN_HOST": "127.0.0.1"}).start()
    try:
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=collector.grpc["otlp"], insecure=True),
                                               export_interval_millis=3_600_000)
        meters = MeterProvider(resource=Resource.create({"service.name": "pf-serving"}), metric_readers=[reader])
        meter = meters.get_meter("promptflow")
        meter.create_counter("flow_request", unit="1").add(2, {"flow": "chat", "response_code": "200"})
        meter.create_counter("app.other").add(1)
        assert meters.force_flush()
        url = collector.prometheus["prometheus"]
        collector.wait_for(lambda: scrape(url).find("app_other_total"))
        served = scrape(url)
        assert not served.find("flow_request_total", flow="chat")
        assert served.value("otelcol_exporter_send_failed_metric_points_total", exporter="prometheus",
                            reason="derived_duplicate") == 1
        meters.shutdown()
    finally:
        assert collector.stop() == 0
