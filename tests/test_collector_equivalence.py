"""One real workload, three ways: in-process flowtel, and the collector behind OTLP/gRPC and OTLP/HTTP.

A single run of promptflow-tracing + openai (against the local fake model) feeds one
tracer provider with three span processors: flowtel's in-process processor, and the
standard OTLP gRPC and HTTP exporters pointed at one running collector process (one
pipeline per transport, each with its own Prometheus endpoint and downstream backend).
The exact same spans therefore reach every path, and the derived metrics and enriched
spans must come out identical.
"""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import flowtel
from flowtel.exporters.prometheus import PrometheusSettings
from flowtel.otlp import decode_attributes
from flowtel.processors.catalog import ALL_METRICS, prometheus_name

from collector_proc import CollectorProcess
from conftest import reset_otel_globals, scrape
from otlp_sink import OTLPSink
from producers import (
    QUESTION,
    STREAM_LLM,
    answer_tool,
    broken_tool,
    client,
    retrieve_tool,
    run_dag_flow,
    stream_flow,
    use_promptflow_openai_injection,
)

COMMON = {"deployment": "blue", "variant": "b"}
CONFIG = """
receivers:
  otlp/grpc: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
  otlp/http: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  flowtel:
    common_dimensions: {deployment: blue, variant: b}
    resource_dimensions: {env: deployment.environment}
  batch: {timeout: 50ms}
exporters:
  prometheus/grpc: {endpoint: "127.0.0.1:0"}
  prometheus/http: {endpoint: "127.0.0.1:0"}
  otlp/grpc_sink: {endpoint: "%(grpc_sink)s", tls: {insecure: true}}
  otlp/http_sink: {endpoint: "%(http_sink)s", tls: {insecure: true}}
service:
  pipelines:
    traces/grpc: {receivers: [otlp/grpc], processors: [flowtel, batch], exporters: [prometheus/grpc, otlp/grpc_sink]}
    traces/http: {receivers: [otlp/http], processors: [flowtel, batch], exporters: [prometheus/http, otlp/http_sink]}
"""
DERIVED = tuple(prometheus_name(spec.name, spec.unit) for spec in ALL_METRICS)


def _derived_samples(url: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for s in scrape(url).samples
            if s.name.startswith(DERIVED)}


def _run_workload(base_url: str) -> None:
    use_promptflow_openai_injection(True)
    nodes = [("retrieve", retrieve_tool(base_url)), ("answer", answer_tool(base_url))]
    for _ in range(3):
        run_dag_flow("chat_flow", {"question": QUESTION}, nodes)
    with pytest.raises(ValueError):
        run_dag_flow("broken_flow", {"question": QUESTION}, [("retrieve", retrieve_tool(base_url)),
                                                             ("broken", broken_tool)])
    with pytest.raises(Exception, match="500"):
        run_dag_flow("chat_flow", {"question": QUESTION}, [("answer", answer_tool(base_url, "fail-500"))])
    STREAM_LLM[:] = [client(base_url)]
    assert "".join(stream_flow(QUESTION)) == "Hello from the fake model"


def test_collector_matches_in_process(tmp_path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    with OTLPSink() as grpc_sink, OTLPSink() as http_sink:
        collector = CollectorProcess(CONFIG % {"grpc_sink": grpc_sink.endpoint, "http_sink": http_sink.endpoint},
                                     tmp_path).start()
        try:
            reset_otel_globals()
            memory = InMemorySpanExporter()
            config = flowtel.FlowtelConfig(common_dimensions=COMMON,
                                           resource_dimensions={"env": "deployment.environment"})
            handle = flowtel.configure(
                config=config, span_exporters=[memory], metric_exporters=[], prometheus=PrometheusSettings(port=0),
                resource=Resource.create({"service.name": "equivalence-app", "deployment.environment": "test"}))
            grpc_processor = BatchSpanProcessor(GRPCSpanExporter(endpoint=collector.grpc["otlp/grpc"], insecure=True))
            http_processor = BatchSpanProcessor(HTTPSpanExporter(endpoint=collector.http["otlp/http"] + "/v1/traces"))
            handle.tracer_provider.add_span_processor(grpc_processor)
            handle.tracer_provider.add_span_processor(http_processor)
            try:
                _run_workload(fake_llm.base_url)
                assert handle.tracer_provider.force_flush(30_000)
                in_process_spans = {s.context.span_id: s for s in memory.get_finished_spans()}
                assert handle.prometheus is not None
                expected = _derived_samples(handle.prometheus.url)
            finally:
                handle.shutdown()
                reset_otel_globals()
            total = len(in_process_spans)
            assert total >= 20
            for sink in (grpc_sink, http_sink):
                collector.wait_for(lambda sink=sink: len(sink.spans()) >= total)
            for pipeline in ("grpc", "http"):
                url = collector.prometheus[f"prometheus/{pipeline}"]
                collector.wait_for(lambda url=url: scrape(url).value("flowtel_spans_processed_total") >= 2 * total)
            # The workload is not trivial: these are the values the in-process tests pin down.
            assert expected[("token_consumption_total", frozenset({
                "flow": "chat_flow", "node": "answer", "llm_engine": "gpt-4o-mini", "token_type": "prompt_tokens",
                **COMMON, "env": "test"}.items()))] == 3 * 4
            assert any(name == "flow_streaming_response_duration_count" for name, _ in expected)
            assert any(dict(labels).get("response_type") == "firstbyte" for _, labels in expected)
            assert len(expected) > 200
            enriched = [s for s in in_process_spans.values() if s.attributes.get("gen_ai.request.model")]
            assert len(enriched) >= 6 and all("gen_ai.operation.name" in s.attributes for s in enriched)

            for pipeline, sink in (("grpc", grpc_sink), ("http", http_sink)):
                got = _derived_samples(collector.prometheus[f"prometheus/{pipeline}"])
                assert set(got) == set(expected), pipeline
                for key, value in expected.items():
                    assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (pipeline, key)

                forwarded = {int.from_bytes(span.span_id, "big"): span for span, _ in sink.spans()}
                assert set(forwarded) == set(in_process_spans), pipeline
                for span_id, reference in in_process_spans.items():
                    span = forwarded[span_id]
                    assert decode_attributes(span.attributes) == dict(reference.attributes), (pipeline, reference.name)
                    assert span.status.code == reference.status.status_code.value, (pipeline, reference.name)
                    events = [e.name for e in span.events]
                    assert events == [e.name for e in reference.events], (pipeline, reference.name)
        finally:
            assert collector.stop() == 0
