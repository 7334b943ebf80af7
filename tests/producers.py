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
from promptflow.tracing._integrations._openai_injector import inject_openai_api, recover_openai_api
from promptflow.tracing._trace import enrich_span_with_input, enrich_span_with_output, start_as_current_span
from promptflow.tracing._tracer import Tracer


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
