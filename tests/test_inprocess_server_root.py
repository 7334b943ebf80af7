"""A plain OpenTelemetry app: an HTTP server (the real WSGI instrumentation, a SERVER span per request)
calling a model through the real openai client and the official openai-v2 instrumentation.

A user expects one request per SERVER span: the SERVER span is the flow when its trace holds a
model call and no other flow, the model call stays a remote call (node ""), and an inner step of
the handler is a node. A root the app marks ``invoke_agent`` is the flow instead, and the SERVER
span stays the request it answers.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

from producers import client, use_promptflow_openai_injection


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def openai_v2(harness) -> Iterator:  # type: ignore[no-untyped-def]
    use_promptflow_openai_injection(False)  # the bare openai client: no prompt flow in this app
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=trace.get_tracer_provider(), meter_provider=metrics.get_meter_provider())
    yield harness
    instrumentor.uninstrument()
    use_promptflow_openai_injection(True)


def _serve(app: Callable[..., Iterable[bytes]]) -> tuple[WSGIServer, str]:
    server = make_server("127.0.0.1", 0, OpenTelemetryMiddleware(app), handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _post(url: str, question: str) -> int:
    request = urllib.request.Request(f"{url}/chat", data=json.dumps({"q": question}).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _chat_app(base_url: str, agent: bool = False) -> Callable[..., Iterable[bytes]]:
    llm = client(base_url)
    tracer = trace.get_tracer("app")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        question = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))["q"]
        model = "fail-500" if "fail" in question else "gpt-4o-mini"
        try:
            if agent:
                with tracer.start_as_current_span("invoke_agent helper", attributes={
                        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}):
                    answer = _ask(llm, tracer, model, question)
            else:
                answer = _ask(llm, tracer, model, question)
        except Exception:
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
            return [b"model failed\n"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer.encode()]

    return app


def _ask(llm: Any, tracer: trace.Tracer, model: str, question: str) -> str:
    with tracer.start_as_current_span("build_prompt"):
        messages = [{"role": "user", "content": question}]
    reply = llm.chat.completions.create(model=model, messages=messages)
    return str(reply.choices[0].message.content or "")


def test_a_server_span_around_a_model_call_is_one_request(openai_v2, fake_llm) -> None:  # type: ignore[no-untyped-def]
    server, url = _serve(_chat_app(fake_llm.base_url))
    try:
        assert [_post(url, q) for q in ("one two three", "four five", "please fail")] == [200, 200, 502]
    finally:
        server.shutdown()
        server.server_close()
    spans = openai_v2.spans()
    roots = [s for s in spans if s.parent is None]
    assert [s.kind.name for s in roots] == ["SERVER"] * 3
    flow = roots[0].name  # the WSGI instrumentation names it after method and path
    assert flow == "POST /chat"

    m = openai_v2.scrape()
    # one request per SERVER span, with the status the server answered
    assert m.value("flow_request_total", flow=flow, response_code="200", streaming="False", exception="") == 2
    assert m.value("flow_request_total", flow=flow, response_code="502") == 1
    assert m.value("flow_request_total") == 3
    assert m.value("flow_latency_count", flow=flow, response_type="default") == 3
    # the model call stays a remote call, directly under the request (no node); the handler's own step is a node
    assert m.value("rpc_request_total", flow=flow, node="", api_call="chat gpt-4o-mini", exception="") == 2
    assert m.value("rpc_request_total", flow=flow, node="", api_call="chat fail-500",
                   exception="InternalServerError") == 1
    assert m.value("rpc_latency_count", flow=flow, node="", api_call="chat gpt-4o-mini") == 2
    assert m.value("node_request_total", flow=flow, node="build_prompt") == 3
    assert m.value("node_request_total", node="chat gpt-4o-mini") == 0
    assert m.value("token_consumption_total", flow=flow, node="", llm_engine="gpt-4o-mini",
                   token_type="prompt_tokens") == 3 + 2
    # openai-v2 records the GenAI client metrics itself; they are not counted twice
    assert m.value("gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="gpt-4o-mini") == 2


def test_an_agent_under_the_server_span_is_the_flow(openai_v2, fake_llm) -> None:  # type: ignore[no-untyped-def]
    server, url = _serve(_chat_app(fake_llm.base_url, agent=True))
    try:
        assert [_post(url, q) for q in ("one two three", "please fail")] == [200, 502]
    finally:
        server.shutdown()
        server.server_close()
    m = openai_v2.scrape()
    # the agent is the flow; the SERVER span is still the request it answers (its status is the response code)
    assert m.value("flow_request_total", flow="helper", response_code="200") == 1
    assert m.value("flow_request_total", flow="helper", response_code="502") == 1
    assert m.value("flow_request_total", flow="POST /chat") == 0
    # the agent's direct children are its nodes (README trace-shape table), so its model call is a node
    assert m.value("node_request_total", flow="helper", node="chat gpt-4o-mini") == 1
    assert m.value("node_request_total", flow="helper", node="build_prompt") == 2


def test_a_server_span_without_a_model_call_is_no_request(harness) -> None:  # type: ignore[no-untyped-def]
    def health(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    server, url = _serve(health)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()
    assert [s.kind.name for s in harness.spans()] == ["SERVER"]
    assert harness.scrape().value("flow_request_total") == 0  # health checks and pages are not LLM requests
