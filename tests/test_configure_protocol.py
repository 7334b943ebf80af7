"""``flowtel.configure()`` with only ``OTEL_EXPORTER_OTLP_ENDPOINT`` (no ``OTEL_TRACES_EXPORTER``) sends traces
over the protocol ``OTEL_EXPORTER_OTLP_PROTOCOL`` names, as the SDK does for a named ``otlp`` exporter: checked
against the real collector, which counts accepted spans per transport."""

from __future__ import annotations

from pathlib import Path

import pytest

import flowtel
from flowtel.config import FlowtelConfig

from collector_proc import CollectorProcess
from conftest import scrape

CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}}}
processors:
  flowtel: {}
  batch: {timeout: 50ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [flowtel, batch], exporters: [prometheus]}
"""


@pytest.mark.parametrize(("protocol", "transport", "exporter_module"), [
    ("grpc", "grpc", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
    ("http/protobuf", "http", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
])
def test_default_otlp_exporter_follows_the_protocol_variable(protocol: str, transport: str, exporter_module: str,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = CollectorProcess(CONFIG, tmp_path).start()
    try:
        endpoint = collector.grpc["otlp"] if transport == "grpc" else collector.http["otlp"]
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint if "://" in endpoint else f"http://{endpoint}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        telemetry = flowtel.configure(config=FlowtelConfig(), prometheus=False, set_global=False,
                                      instrument_promptflow_streaming=False, azure_monitor=False)
        try:
            assert [type(e).__module__ for e in telemetry.span_exporters] == [exporter_module]
            with telemetry.tracer_provider.get_tracer("app").start_as_current_span("request"):
                pass
        finally:
            telemetry.shutdown()  # flushes the export
        url = collector.prometheus["prometheus"]
        accepted = collector.wait_for(lambda: scrape(url).value("otelcol_receiver_accepted_spans_total",
                                                                transport=transport))
        assert accepted == 1
        assert scrape(url).value("otelcol_receiver_accepted_spans_total") == 1  # nothing on the other transport
    finally:
        collector.stop()
