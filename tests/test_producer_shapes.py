"""The trace shapes of the real producers, reduced to the attributes that decide them.

tests/producers/ runs the producers themselves (in their own venvs); these pin the rules on
minimal spans so a rule that breaks is named here even where those venvs are not built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowtel.processors.analysis import ROLE_FLOW, ROLE_NODE, ROLE_RPC, analyze
from flowtel.processors.enrichment import content_event_names, enrich
from flowtel.spans import KIND_CLIENT, KIND_INTERNAL, STATUS_ERROR, STATUS_UNSET, SpanData, SpanEvent


def span(span_id: int, parent: int, name: str, attributes: Mapping[str, Any], *, scope: str = "",
         kind: int = KIND_INTERNAL, status: int = STATUS_UNSET, events: list[SpanEvent] | None = None) -> SpanData:
    return SpanData(trace_id=7, span_id=span_id, parent_span_id=parent, parent_is_remote=False, name=name, kind=kind,
                    start_ns=span_id, end_ns=100 - span_id, status=status, status_message="",
                    attributes=dict(attributes), events=events or [], scope_name=scope)


def roles(*spans: SpanData) -> dict[str, tuple[str, str, str]]:
    return {r.span.name: (r.role, r.flow, r.node) for r in analyze(list(spans))}


def test_mlflow_json_encoded_types_and_unknown_root() -> None:
    got = roles(span(1, 0, "qa_flow", {"mlflow.spanType": '"UNKNOWN"'}),
                span(2, 1, "answer", {"mlflow.spanType": '"CHAIN"'}),
                span(3, 2, "Completions", {"mlflow.spanType": '"CHAT_MODEL"'}))
    assert got == {"qa_flow": (ROLE_FLOW, "qa_flow", ""), "answer": (ROLE_NODE, "qa_flow", "answer"),
                   "Completions": (ROLE_RPC, "qa_flow", "answer")}


def test_mlflow_model_call_alone_is_never_a_flow() -> None:
    got = roles(span(1, 0, "Completions", {"mlflow.spanType": '"CHAT_MODEL"'}))
    assert got["Completions"][0] != ROLE_FLOW


def test_openlit_trace_spans_by_scope_even_when_failed() -> None:
    # a failed @openlit.trace span carries no function.args: only its scope marks it
    got = roles(span(1, 0, "fail_flow", {"error.type": "openai.InternalServerError"}, scope="openlit",
                     kind=KIND_CLIENT, status=STATUS_ERROR),
                span(2, 1, "answer", {"function.args": "('q',)"}, scope="openlit", kind=KIND_CLIENT),
                span(3, 2, "chat gpt-4o-mini", {"gen_ai.operation.name": "chat"},
                     scope="openlit.instrumentation.openai", kind=KIND_CLIENT),
                span(4, 3, "POST", {"http.method": "POST"}, scope="opentelemetry.instrumentation.httpx",
                     kind=KIND_CLIENT))
    assert got == {"fail_flow": (ROLE_FLOW, "fail_flow", ""), "answer": (ROLE_NODE, "fail_flow", "answer"),
                   "chat gpt-4o-mini": (ROLE_RPC, "fail_flow", "answer"), "POST": (ROLE_RPC, "fail_flow", "answer")}


def test_openllmetry_nodes_named_by_entity() -> None:
    got = roles(span(1, 0, "qa_flow.workflow", {"traceloop.span.kind": "workflow", "traceloop.workflow.name": "qa"}),
                span(2, 1, "answer.task", {"traceloop.span.kind": "task", "traceloop.entity.name": "answer"}))
    assert got["answer.task"] == (ROLE_NODE, "qa", "answer")


def test_content_removed_for_each_producer() -> None:
    chunk = SpanEvent("mlflow.chunk.item.12", 5, {"mlflow.chunk.value": "secret"})
    first_token = SpanEvent("First Token Stream Event", 5, {})
    llm = span(1, 0, "CreateEmbeddings", {
        "openinference.span.kind": "EMBEDDING", "embedding.embeddings.0.embedding.text": "secret",
        "embedding.embeddings.0.embedding.vector": (0.1, 0.2), "function.args": "('secret',)",
        "function.kwargs": "{}", "embedding.model_name": "m"}, events=[chunk, first_token])
    (role,) = analyze([llm])
    enrichment = enrich(role, capture_content=False)
    assert enrichment is not None
    assert enrichment.removed_attributes == {"embedding.embeddings.0.embedding.text",
                                             "embedding.embeddings.0.embedding.vector", "function.args",
                                             "function.kwargs"}
    assert enrichment.removed_events == {"mlflow.chunk.item.12"}
    assert content_event_names(["First Token Stream Event", "gen_ai.choice"]) == {"gen_ai.choice"}
