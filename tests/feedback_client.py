"""Seed 000's scoring + feedback exchange, for real: a traced scoring app and the sample client.

``ScoringApp`` stands in for a prompt flow deployment's ``/score``: it extracts the W3C
trace context and baggage the client sends (as prompt flow serving does), answers under a
SERVER span, and runs a DAG flow with promptflow-tracing and the real openai client against
the fake model. Its spans go wherever the global tracer provider sends them.

``seed_client`` is the seed's sample client with only the URLs (and an optional baggage
header) changed: it starts its own span, injects ``traceparent`` into the headers of the
``/score`` call, then sends the feedback to ``/feedback`` with the same headers.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

from opentelemetry import baggage, context, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flowtel._wsgi import WSGIEndpoint

from producers import QUESTION, answer_tool, retrieve_tool, run_dag_flow

_W3C = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


class ScoringApp:
    def __init__(self, llm_base_url: str) -> None:
        self._nodes = [("retrieve", retrieve_tool(llm_base_url)), ("answer", answer_tool(llm_base_url))]
        self._endpoint = WSGIEndpoint(self._app, "127.0.0.1", 0, name="scoring-app")

    @property
    def url(self) -> str:
        return self._endpoint.url + "/score"

    def __enter__(self) -> ScoringApp:
        self._endpoint.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._endpoint.shutdown()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        carrier = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        parent = _W3C.extract(carrier)
        tracer = trace.get_tracer("scoring-app")
        with tracer.start_as_current_span("POST /score", context=parent, kind=SpanKind.SERVER) as span:
            token = context.attach(trace.set_span_in_context(span, parent))  # baggage stays visible below
            try:
                request = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
                answer = run_dag_flow("chat_flow", {"question": request.get("question") or QUESTION}, self._nodes)
            finally:
                context.detach(token)
            span.set_attribute("http.response.status_code", 200)
        body = json.dumps({"answer": answer}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


@dataclass
class Exchange:
    client_span: SpanContext
    headers: dict[str, str]
    answer: dict[str, Any]
    feedback_status: int
    feedback_response: dict[str, Any]


def seed_client(url: str, feedback_url: str, feedback: Any = "thumbdown", api_key: str = "test-key",
                baggage_entries: Mapping[str, str] | None = None, query: str = "") -> Exchange:
    """The seed's client (its lines kept), with the URLs given and optional baggage added to the context."""
    tracer = TracerProvider().get_tracer("my.genai.tracer")  # the seed's own provider; it exports nowhere
    data = {"question": QUESTION, "chat_history": []}
    body = str.encode(json.dumps(data))
    headers = {"Content-Type": "application/json", "Authorization": ("Bearer " + api_key),
               "azureml-model-deployment": "basic-chat-deployment"}
    with tracer.start_as_current_span("genai-request") as span:
        ctx = context.get_current()
        for key, value in (baggage_entries or {}).items():
            ctx = baggage.set_baggage(key, value, ctx)
        TraceContextTextMapPropagator().inject(headers, ctx)
        if baggage_entries:
            W3CBaggagePropagator().inject(headers, ctx)
        req = urllib.request.Request(url, body, headers)
        response = urllib.request.urlopen(req, timeout=30)
        result = response.read()
        # Now you can process the answer and collect feedback
        feedback_body = str.encode(json.dumps(feedback))
        feedback_req = urllib.request.Request(feedback_url + query, feedback_body, headers)
        feedback_response = urllib.request.urlopen(feedback_req, timeout=30)
        return Exchange(span.get_span_context(), headers, json.loads(result), feedback_response.status,
                        json.loads(feedback_response.read()))


def post(url: str, body: bytes, headers: Mapping[str, str] | None = None,
         method: str = "POST") -> tuple[int, Message, bytes]:
    """A raw request that returns error statuses instead of raising; header names are case-insensitive, as in HTTP
    (servers may send them in lower case)."""
    request = urllib.request.Request(url, body if method != "GET" else None, dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()
