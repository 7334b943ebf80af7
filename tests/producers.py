"""Real telemetry producers for the tests: promptflow-tracing over the real openai client.

``run_dag_flow`` reproduces what promptflow-core's FlowExecutor does around a DAG flow
(a ``span_type=Flow`` span named after the flow, then each node run under
``Tracer.start_tracing(run_id, node_name)`` so its traced tool becomes a span named after
the node carrying ``node_name``), using promptflow-tracing's own functions.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import openai
from opentelemetry import trace as otel_trace
from promptflow.tracing import trace as pf_trace

from flowtel._promptflow_private import (  # promptflow-tracing's private API, all of it in one module
    Tracer,
    enrich_span_with_input,
    enrich_span_with_output,
    inject_openai_api,
    recover_openai_api,
    start_as_current_span,
)

QUESTION = "what is flowtel exactly"  # 4 words -> 4 prompt tokens at the fake server


def use_promptflow_openai_injection(enabled: bool = True) -> None:
    if enabled:
        inject_openai_api()
    else:
        recover_openai_api()


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0)


def run_dag_flow(flow_name: str, inputs: Mapping[str, Any],
                 nodes: list[tuple[str, Callable[..., Any]]]) -> Any:
    """Run ``nodes`` in order, each fed the previous output, under a DAG flow span; re-raises node errors."""
    tracer = otel_trace.get_tracer("promptflow")
    with start_as_current_span(tracer, flow_name) as span:
        span.set_attributes({"framework": "promptflow", "span_type": "Flow"})
        enrich_span_with_input(span, dict(inputs))
        value: Any = dict(inputs)
        for node_name, tool in nodes:
            run_id = f"{uuid.uuid4()}_{node_name}"
            Tracer.start_tracing(run_id, node_name)
            try:
                value = pf_trace(tool)(value)
            finally:
                Tracer.end_tracing(run_id)
        enrich_span_with_output(span, value)
        return value


def answer_tool(base_url: str, model: str = "gpt-4o-mini") -> Callable[[dict], str]:
    """A DAG node tool: chat completion of the question (temperature 0.3, max_tokens 64)."""
    def answer(inputs: dict) -> str:
        response = client(base_url).chat.completions.create(
            model=model, messages=[{"role": "user", "content": inputs["question"]}], temperature=0.3, max_tokens=64)
        return response.choices[0].message.content or ""
    return answer


def retrieve_tool(base_url: str) -> Callable[[dict], dict]:
    """A DAG node tool: embeddings of the question; passes the inputs on."""
    def retrieve(inputs: dict) -> dict:
        client(base_url).embeddings.create(model="text-embedding-3-small", input=inputs["question"])
        return inputs
    return retrieve


def broken_tool(_: object) -> None:
    raise ValueError("the tool broke")


#: The client the streamed flex flow uses; tests point it at their fake model.
STREAM_LLM: list = []


@pf_trace
def helper(question: str) -> str:
    return STREAM_LLM[0].chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]).choices[0].message.content or ""


def _text(chunks):  # type: ignore[no-untyped-def]
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


@pf_trace
def stream_flow(question: str):  # type: ignore[no-untyped-def]
    """A flex flow that answers with a stream: its span stays open until the stream is consumed."""
    helper(question)
    return _text(STREAM_LLM[0].chat.completions.create(model="gpt-4o-mini", stream=True,
                                                        stream_options={"include_usage": True},
                                                        messages=[{"role": "user", "content": question}]))
