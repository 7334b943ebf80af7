"""Conformance: each real producer, in its own venv, through the collector and in-process.

Every producer runs ``app.py``'s workload (two ``qa_flow``, one streamed ``stream_flow``, one
``fail_flow`` whose model call fails with 500) against the fake LLM; the question and the
fake model's answer carry a canary. Both hosts must yield the same values, equal to what
was sent and what the fake model answered, and the canary must appear in no exported byte
(OTLP at the downstream sink, Application Insights envelopes, Prometheus, logs).

The README's conformance table is ``conformance.render_table()``; ``test_readme_table`` keeps
the two equal, and each producer's test asserts exactly what its row claims.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conformance import (
    CANARY,
    PRODUCERS,
    QUESTION,
    REPLY,
    ROOT,
    Spec,
    expected_values,
    producer_python,
    render_table,
)

from flowtel.otlp import decode_attributes

from collector_proc import CollectorProcess
from conftest import Scrape, scrape
from fake_llm import FakeLLMServer
from ingestion import QUIET, IngestionServer
from otlp_sink import OTLPSink

CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  flowtel: {}
  batch: {timeout: 50ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
  azuremonitor:
    connection_string: "%(connection)s"
    metric_export_interval: 1s
service:
  pipelines:
    traces: {receivers: [otlp], processors: [flowtel, batch], exporters: [prometheus, otlp/sink, azuremonitor]}
"""
APP = Path(__file__).with_name("app.py")


def _python(spec: Spec) -> str:
    python = producer_python(spec)
    if python is None:
        if os.environ.get("CI"):
            pytest.fail(f"{spec.venv} venv missing: .ci/install builds it (.ci/producer-venvs)")
        pytest.skip(f"{spec.venv} venv missing: run bash .ci/producer-venvs")
    return python


def _run_app(spec: Spec, host: str, base_url: str, env: dict[str, str], cwd: Path, result: Path | None = None) -> str:
    """Run the app; in ``cwd``, where what a producer writes locally (MLflow's sqlite store) goes."""
    args = [_python(spec), str(APP), spec.name, base_url, QUESTION, host] + ([str(result)] if result else [])
    full_env = {**os.environ, **QUIET, **spec.env, **env, "PYTHONPATH": str(ROOT / "examples"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    done = subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=240, cwd=cwd)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _exported_bytes(sink: OTLPSink, ingestion: IngestionServer) -> bytes:
    with sink.lock:
        otlp = b"".join(r.SerializeToString() for r in sink.requests)
    return otlp + json.dumps(ingestion.rows()).encode()


def _value(m: Scrape, name: str, labels: dict[str, str]) -> float:
    """Sum of the samples with these labels; an empty label matches an absent one (as in Prometheus)."""
    return sum(s.value for s in m.samples
               if s.name == name and all(s.labels.get(k, "") == v for k, v in labels.items()))


def _check(spec: Spec, host: str, m: Scrape, exported: bytes, logs: str) -> None:
    for (name, labels), value in expected_values(spec, host).items():
        assert _value(m, name, labels) == value, (spec.name, name, labels, m.find(name))
    assert m.value("flow_request_total") == 4 + len(spec.extra_flows), m.series("flow_request_total")
    assert not m.find("rpc_request_total", flow=""), m.find("rpc_request_total", flow="")  # all inside flows
    assert CANARY.encode() not in exported
    assert CANARY not in logs


#: What each producer documents as its first-chunk signal (an independent list: flowtel's is in semconv).
FIRST_CHUNK_EVENTS = ("First Token Stream Event", "gen_ai.content.completion.chunk", "mlflow.chunk.item.0")


#: Content keys the producers were seen to send (besides the canary check, which misses vectors and numbers).
CONTENT_KEYS = ("function.args", "function.kwargs", "mlflow.spanInputs", "mlflow.spanOutputs", "input.value",
                "output.value", "traceloop.entity.input", "traceloop.entity.output", "gen_ai.input.messages",
                "gen_ai.output.messages", "gen_ai.system_instructions", "inputs", "output")
CONTENT_KEY_PREFIXES = ("embedding.embeddings.", "llm.input_messages.", "llm.output_messages.", "gen_ai.prompt.",
                        "gen_ai.completion.")


def _check_no_content_keys(sink: OTLPSink) -> None:
    for span, _ in sink.spans():
        keys = {kv.key for kv in span.attributes}
        assert not keys.intersection(CONTENT_KEYS), (span.name, keys.intersection(CONTENT_KEYS))
        assert not [k for k in keys if k.startswith(CONTENT_KEY_PREFIXES)], (span.name, keys)
        assert not [e.name for e in span.events if e.name.startswith("mlflow.chunk.item.")], span.name


def _check_stream_timing(spec: Spec, m: Scrape, sink: OTLPSink) -> None:
    """lastbyte = the end of the streamed request's last span; firstbyte = its earliest first-chunk signal, both
    from the request's start, as the spans that left the collector say."""
    spans = [span for span, _ in sink.spans()]
    root = next(s for s in spans if not s.parent_span_id and s.name.startswith("stream_flow"))
    trace = [s for s in spans if s.trace_id == root.trace_id]
    last_ms = (max(s.end_time_unix_nano for s in trace) - root.start_time_unix_nano) / 1e6
    kind = "lastbyte" if spec.streaming_seen else "default"
    assert _value(m, "flow_latency_sum", {"flow": "stream_flow", "response_type": kind}) == pytest.approx(last_ms)
    if not _value(m, "flow_latency_count", {"flow": "stream_flow", "response_type": "firstbyte"}):
        return
    signals = [e.time_unix_nano for s in trace for e in s.events if e.name in FIRST_CHUNK_EVENTS]
    for s in trace:  # OpenLIT: seconds from the streamed call's start
        attrs = decode_attributes(s.attributes)
        if attrs.get("gen_ai.request.stream") is True and "gen_ai.server.time_to_first_token" in attrs:
            signals.append(s.start_time_unix_nano + int(attrs["gen_ai.server.time_to_first_token"] * 1e9))
    first_ms = _value(m, "flow_latency_sum", {"flow": "stream_flow", "response_type": "firstbyte"})
    if signals:
        assert first_ms == pytest.approx((min(signals) - root.start_time_unix_nano) / 1e6, abs=1e-3)
    else:  # MLflow's chunk events carry the answer: removed on the way out, so only their order can be checked
        assert 0 < first_ms < last_ms
    assert _value(m, "flow_streaming_response_duration_sum", {"flow": "stream_flow"}) == \
        pytest.approx(last_ms - first_ms, abs=1e-3)


@pytest.mark.parametrize("spec", PRODUCERS, ids=[p.name for p in PRODUCERS])
def test_through_the_collector(spec: Spec, tmp_path: Path) -> None:
    with FakeLLMServer(reply=REPLY) as llm, OTLPSink() as sink, IngestionServer() as ingestion:
        collector = CollectorProcess(CONFIG % {"sink": sink.endpoint, "connection": ingestion.connection_string},
                                     tmp_path, env=QUIET).start()
        try:
            endpoint = collector.http["otlp"]
            logs = _run_app(spec, "collector", llm.base_url, {
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "TRACELOOP_BASE_URL": endpoint}, tmp_path)
            url = collector.prometheus["prometheus"]
            flows = 4 + len(spec.extra_flows)
            m = collector.wait_for(lambda: (s := scrape(url)).value("flow_request_total") >= flows and s)
            collector.wait_for(lambda: len(sink.spans()) >= m.value("flowtel_spans_processed_total"))
            collector.wait_for(lambda: len(ingestion.span_rows()) >= len(sink.spans()))
            m = scrape(url)
            _check(spec, "collector", m, _exported_bytes(sink, ingestion) + _raw(url), logs + collector.log)
            _check_stream_timing(spec, m, sink)
            _check_no_content_keys(sink)
        finally:
            assert collector.stop() == 0


@pytest.mark.parametrize("spec", PRODUCERS, ids=[p.name for p in PRODUCERS])
def test_in_process(spec: Spec, tmp_path: Path) -> None:
    with FakeLLMServer(reply=REPLY) as llm, OTLPSink() as sink, IngestionServer() as ingestion:
        result = tmp_path / "scrape.txt"
        logs = _run_app(spec, "inprocess", llm.base_url, {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink.endpoint}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRICS_EXPORTER": "prometheus",  # the sink takes traces only
            "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
            "TRACELOOP_BASE_URL": f"http://{sink.endpoint}"}, tmp_path, result)
        body = result.read_bytes()
        from prometheus_client.parser import text_string_to_metric_families

        m = Scrape([s for f in text_string_to_metric_families(body.decode()) for s in f.samples])
        assert ingestion.wait_for(lambda: len(ingestion.span_rows()) >= len(sink.spans()) > 0, 30)
        _check(spec, "inprocess", m, _exported_bytes(sink, ingestion) + body, logs)
        _check_no_content_keys(sink)


def _raw(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()  # type: ignore[no-any-return]


def test_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = render_table()
    assert table in readme, "README's conformance table is stale: run python tests/producers/conformance.py"

