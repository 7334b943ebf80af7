"""The main job as a user runs it: ``flowtel collector`` with no file, on its default ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from conftest import scrape


def _wait(predicate, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _health() -> tuple[int, dict]:
    try:
        with urllib.request.urlopen("http://127.0.0.1:13133/", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _flow(provider: TracerProvider, name: str, tokens: int) -> None:
    tracer = provider.get_tracer("promptflow")
    with tracer.start_as_current_span(name, attributes={"framework": "promptflow", "span_type": "Flow"}), \
            tracer.start_as_current_span("openai_chat", attributes={
                "framework": "promptflow", "span_type": "LLM", "function": "openai.resources.chat.Completions.create",
                "node_name": "answer", "inputs": json.dumps({"model": "gpt-4o-mini"}),
                "llm.usage.prompt_tokens": tokens, "llm.usage.completion_tokens": 1,
                "llm.usage.total_tokens": tokens + 1}):
        pass


def test_default_config_serves_otlp_metrics_and_health() -> None:
    env = {"FLOWTEL_LISTEN_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "flowtel.cli", "collector"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    try:
        _, body = _wait(lambda: _health()[0] == 200 and _health())
        assert body["status"] == "Server available" and body["state"] == "ready"
        log = "".join(lines)
        for what in ("OTLP/gRPC listening on 127.0.0.1:4317", "OTLP/HTTP listening on http://127.0.0.1:4318/v1/traces",
                     "Prometheus metrics on http://127.0.0.1:9464/metrics",
                     "health and readiness on http://127.0.0.1:13133/"):
            assert what in log, log

        resource = Resource.create({"service.name": "main-job-test"})
        for exporter, flow, tokens in ((HTTPSpanExporter(endpoint="http://127.0.0.1:4318/v1/traces"), "via_http", 7),
                                       (GRPCSpanExporter(endpoint="127.0.0.1:4317", insecure=True), "via_grpc", 11)):
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            for _ in range(3):
                _flow(provider, flow, tokens)
            provider.shutdown()

        url = "http://127.0.0.1:9464/metrics"
        m = _wait(lambda: (s := scrape(url)).value("flow_request_total") == 6 and s)
        assert m.value("token_consumption_total", flow="via_http", node="answer", token_type="prompt_tokens") == 21
        assert m.value("token_consumption_total", flow="via_grpc", node="answer", token_type="prompt_tokens") == 33
        assert m.value("token_consumption_total", llm_engine="gpt-4o-mini", token_type="completion_tokens") == 6
        assert m.value("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="http") == 6
        assert m.value("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="grpc") == 6
        assert m.value("flowtel_traces_released_total", reason="complete") == 6
        assert m.value("flowtel_spans_dropped_total") == 0

        try:
            urllib.request.urlopen("http://127.0.0.1:13133/nope", timeout=5)
            raise AssertionError("unknown health path answered 200")
        except urllib.error.HTTPError as error:
            assert error.code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log = "".join(lines)
        assert "draining" in log and "stopped in" in log
    finally:
        if proc.poll() is None:
            proc.kill()



def test_every_component_comes_from_the_one_registry() -> None:
    from flowtel.collector.components import FACTORIES
    from flowtel.collector.config import COMPONENTS

    assert {section: set(types) for section, types in COMPONENTS.items()} == {
        section: set(factories) for section, factories in FACTORIES.items()}
    for section in ("receivers", "exporters"):
        for factory in FACTORIES[section].values():
            assert factory.create is not None and factory.signals, factory
    assert {t for t, f in FACTORIES["exporters"].items() if "logs" in f.signals} == {
        "otlp", "otlphttp", "debug", "azuremonitor"}
    assert FACTORIES["processors"]["flowtel"].signals == {"traces"}
