"""The collector's ``azuremonitor`` exporter: a real prompt flow workload, sent as plain OTLP by an app
without flowtel, reaches the local ingestion endpoint as the rows a user sees; derived metrics match
the collector's Prometheus endpoint; and an outage spanning a collector restart loses nothing."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from collector_proc import CollectorProcess
from conftest import reset_otel_globals, scrape
from ingestion import QUIET, IngestionServer, metric_sums
from producers import (
    QUESTION,
    answer_tool,
    retrieve_tool,
    run_dag_flow,
    use_promptflow_openai_injection,
)

CONFIG = """
extensions:
  file_storage: {directory: "%(storage)s"}
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
  feedback: {endpoint: "127.0.0.1:0"}
processors:
  flowtel: {common_dimensions: {deployment: blue}}
  batch: {timeout: 50ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  azuremonitor:
    connection_string: "%(connection)s"
    storage: file_storage
    storage_retry_interval: 1s
    metric_export_interval: 1s
    retry_total: 1
    retry_backoff: 200ms
service:
  extensions: [file_storage]
  pipelines:
    traces: {receivers: [otlp, feedback], processors: [flowtel, batch], exporters: [prometheus, azuremonitor]}
"""


@pytest.fixture
def ingestion() -> Iterator[IngestionServer]:
    with IngestionServer() as server:
        yield server


def _collector(tmp_path, ingestion: IngestionServer) -> CollectorProcess:  # type: ignore[no-untyped-def]
    text = CONFIG % {"storage": tmp_path / "storage", "connection": ingestion.connection_string}
    return CollectorProcess(text, tmp_path, env=QUIET)


def _send_flows(endpoint: str, base_url: str, flows: int, for_s: float = 0.0) -> set[str]:
    """Run ``flows`` real DAG flows in an app that only has the SDK and the OTLP exporter; span ids sent."""
    reset_otel_globals()
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "plain-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces")))
    sent = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(sent))
    trace.set_tracer_provider(provider)
    use_promptflow_openai_injection(True)
    try:
        deadline = time.monotonic() + for_s
        done = 0
        while done < flows or time.monotonic() < deadline:
            done += 1
            run_dag_flow("chat_flow", {"question": QUESTION}, [("retrieve", retrieve_tool(base_url)),
                                                                ("answer", answer_tool(base_url))])
        assert provider.force_flush(30_000)
        return {f"{s.context.span_id:016x}" for s in sent.get_finished_spans()}
    finally:
        provider.shutdown()
        reset_otel_globals()


def test_rows_and_metrics_through_the_collector(tmp_path, ingestion, fake_llm) -> None:  # type: ignore[no-untyped-def]
    collector = _collector(tmp_path, ingestion).start()
    try:
        sent = _send_flows(collector.http["otlp"], fake_llm.base_url, 3)
        assert len(sent) == 3 * 5  # flow, 2 nodes, 2 model calls
        assert ingestion.wait_for(lambda: set(ingestion.span_rows()) >= sent, 30)
        rows = ingestion.span_rows()
        assert set(rows) == sent and ingestion.invalid == []
        chats = [r for r in rows.values() if r["data"]["baseData"]["name"] == "openai_chat"]
        assert len(chats) == 3
        for row in chats:
            assert row["data"]["baseType"] == "RemoteDependencyData"
            assert row["data"]["baseData"]["type"] == "GenAI | openai"
            props = row["data"]["baseData"]["properties"]
            assert (props["gen_ai.request.model"], props["gen_ai.usage.input_tokens"],
                    props["gen_ai.usage.output_tokens"]) == ("gpt-4o-mini", "4", "5")
            assert "inputs" not in props
        flows = [r for r in rows.values() if r["data"]["baseData"]["name"] == "chat_flow"]
        assert [(r["data"]["baseType"], r["data"]["baseData"]["responseCode"]) for r in flows] == [
            ("RequestData", "200")] * 3

        prometheus = collector.prometheus["prometheus"]
        m = scrape(prometheus)
        assert m.value("token_consumption_total", token_type="prompt_tokens") == 3 * 4 * 2
        dims = ("flow", "node", "llm_engine", "token_type", "deployment")

        def azure_tokens() -> dict:
            return metric_sums(ingestion.metric_rows("token_consumption"), "token_consumption", dims)
        assert ingestion.wait_for(lambda: sum(v["value"] for v in azure_tokens().values()) == 3 * (4 + 5 + 4), 15)
        for key, sums in azure_tokens().items():
            labels = dict(key)
            assert sums["value"] == m.value("token_consumption_total", **labels), labels
        assert max(ingestion.deliveries().values()) == 1
    finally:
        assert collector.stop() == 0


def test_outage_across_a_collector_restart_loses_nothing(tmp_path, ingestion, fake_llm) -> None:  # type: ignore[no-untyped-def]
    ingestion.down()
    collector = _collector(tmp_path, ingestion).start()
    try:
        sent = _send_flows(collector.http["otlp"], fake_llm.base_url, 4)
        stored = tmp_path / "storage"
        collector.wait_for(lambda: any((stored / "azuremonitor" / "traces").glob("*.blob*")), timeout=30)
    finally:
        assert collector.stop() == 0
    assert ingestion.span_rows() == {}

    ingestion.up()
    restarted = _collector(tmp_path, ingestion).start()
    try:
        assert ingestion.wait_for(lambda: set(ingestion.span_rows()) >= sent, 45), restarted.log
        assert set(ingestion.span_rows()) == sent
        span_deliveries = [n for key, n in ingestion.deliveries().items() if key[0] == "span"]
        assert len(span_deliveries) == len(sent) and set(span_deliveries) == {1}
        assert ingestion.invalid == []
    finally:
        assert restarted.stop() == 0


def test_outage_under_steady_load_through_the_collector(tmp_path, ingestion, fake_llm) -> None:  # type: ignore[no-untyped-def]
    collector = _collector(tmp_path, ingestion).start()
    try:
        ingestion.respond(503)  # every request, until recover()
        sent = _send_flows(collector.http["otlp"], fake_llm.base_url, 1, for_s=20.0)
        assert not ingestion.span_rows()
        ingestion.recover()
        assert ingestion.wait_for(lambda: set(ingestion.span_rows()) >= sent, 60), collector.log[-3000:]
        assert set(ingestion.span_rows()) == sent and ingestion.invalid == []
        spans = [n for key, n in ingestion.deliveries().items() if key[0] == "span"]
        assert len(spans) == len(sent) and set(spans) == {1}

        m = scrape(collector.prometheus["prometheus"])
        flows = len(sent) // 5
        assert m.value("flow_request_total") == flows
        dims = ("flow", "response_code", "exception", "streaming", "deployment")
        assert ingestion.wait_for(lambda: sum(v["value"] for v in metric_sums(
            ingestion.metric_rows("flow_request"), "flow_request", dims).values()) == flows, 30)
        metric_points = [n for key, n in ingestion.deliveries().items() if key[0] == "metric"]
        assert set(metric_points) == {1}
        assert m.value("otelcol_exporter_send_failed_spans_total") == 0
        # counted once, by the Azure exporter's own accounting, not again by the queue in front of it
        assert m.value("otelcol_exporter_sent_spans_total", exporter="azuremonitor") == len(sent)
        assert m.value("flowtel_spans_dropped_total") == 0
    finally:
        assert collector.stop() == 0


def test_feedback_reaches_app_insights_in_the_request_operation(tmp_path, ingestion, fake_llm) -> None:  # type: ignore[no-untyped-def]
    collector = _collector(tmp_path, ingestion).start()
    try:
        sent = _send_flows(collector.http["otlp"], fake_llm.base_url, 1)
        assert ingestion.wait_for(lambda: set(ingestion.span_rows()) >= sent, 30)
        [flow] = [r for r in ingestion.span_rows().values() if r["data"]["baseData"]["name"] == "chat_flow"]
        operation, flow_id = flow["tags"]["ai.operation.id"], flow["data"]["baseData"]["id"]
        request = urllib.request.Request(collector.feedback["feedback"], json.dumps("thumbdown").encode(),
                                         {"Content-Type": "application/json",
                                          "traceparent": f"00-{operation}-{flow_id}-01"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

        def feedback_rows() -> list:
            return [r for r in ingestion.span_rows().values()
                    if r["data"]["baseData"]["name"] == "promptflow-feedback"]
        assert ingestion.wait_for(lambda: len(feedback_rows()) == 1, 30), collector.log[-3000:]
        [row] = feedback_rows()
        # In the judged request's end-to-end transaction, under the flow it judges.
        assert row["tags"]["ai.operation.id"] == operation and row["tags"]["ai.operation.parentId"] == flow_id
        props = row["data"]["baseData"]["properties"]
        assert props["feedback"] == '"thumbdown"'
        assert props["flowtel.feedback.correlated"] == "True"
        assert props["flowtel.request.flow"] == "chat_flow" and props["flowtel.request.response_code"] == "200"
        assert ingestion.invalid == []

        def azure_feedback() -> dict:
            return metric_sums(ingestion.metric_rows("feedback"), "feedback",
                               ("flow", "score_label", "correlated", "deployment"))
        key = (("flow", "chat_flow"), ("score_label", "thumbdown"), ("correlated", "true"), ("deployment", "blue"))
        assert ingestion.wait_for(lambda: azure_feedback().get(key, {}).get("value") == 1, 15), azure_feedback()
    finally:
        assert collector.stop() == 0
