"""In-process flowtel with real producers: promptflow-tracing + openai against a local model server."""

from __future__ import annotations

import pytest
from promptflow.tracing import trace as pf_trace

from flowtel.processors.catalog import PF_BUCKETS_MS

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

ANSWER_TOKENS = 5  # "Hello from the fake model"


@pytest.fixture(autouse=True)
def _promptflow_injection() -> None:
    use_promptflow_openai_injection(True)


def test_dag_flow_metrics_and_enrichment(harness, fake_llm) -> None:  # type: ignore[no-untyped-def]
    nodes = [("retrieve", retrieve_tool(fake_llm.base_url)), ("answer", answer_tool(fake_llm.base_url))]
    for _ in range(3):
        assert run_dag_flow("chat_flow", {"question": QUESTION}, nodes) == "Hello from the fake model"
    with pytest.raises(ValueError):
        run_dag_flow("broken_flow", {"question": QUESTION}, [("retrieve", retrieve_tool(fake_llm.base_url)),
                                                             ("broken", broken_tool)])
    with pytest.raises(Exception, match="500"):
        run_dag_flow("chat_flow", {"question": QUESTION}, [("answer", answer_tool(fake_llm.base_url, "fail-500"))])

    m = harness.scrape()
    tokens = dict(flow="chat_flow", node="answer", llm_engine="gpt-4o-mini")
    assert m.value("token_consumption_total", **tokens, token_type="prompt_tokens") == 3 * 4
    assert m.value("token_consumption_total", **tokens, token_type="completion_tokens") == 3 * ANSWER_TOKENS
    assert m.value("token_consumption_total", flow="chat_flow", node="retrieve", llm_engine="text-embedding-3-small",
                   token_type="prompt_tokens") == 3 * 4
    assert m.value("token_consumption_total", flow="broken_flow", node="retrieve", token_type="prompt_tokens") == 4
    assert m.value("token_consumption_total", token_type="completion_tokens") == 3 * ANSWER_TOKENS

    assert m.value("flow_request_total", flow="chat_flow", response_code="200", exception="", streaming="False") == 3
    assert m.value("flow_request_total", flow="chat_flow", response_code="500", exception="InternalServerError",
                   streaming="False") == 1
    assert m.value("flow_request_total", flow="broken_flow", response_code="500", exception="ValueError") == 1
    assert m.value("flow_latency_count", flow="chat_flow", response_type="default", response_code="200") == 3

    assert m.value("node_request_total", flow="broken_flow", node="retrieve", run_status="Completed",
                   exception="") == 1
    assert m.value("node_request_total", flow="broken_flow", node="broken", run_status="Failed",
                   exception="ValueError") == 1
    assert m.value("node_request_total", flow="chat_flow", node="answer", run_status="Completed") == 3
    assert m.value("node_request_total", flow="chat_flow", node="answer", run_status="Failed",
                   exception="InternalServerError") == 1
    assert m.value("node_latency_count", flow="chat_flow", node="answer") == 4

    assert m.value("rpc_request_total", flow="chat_flow", node="answer", api_call="openai_chat", exception="") == 3
    assert m.value("rpc_request_total", flow="chat_flow", node="answer", api_call="openai_chat",
                   exception="InternalServerError") == 1
    assert m.value("rpc_request_total", flow="chat_flow", node="retrieve", api_call="openai_embeddings") == 3
    assert m.value("rpc_latency_count", flow="chat_flow", node="answer", api_call="openai_chat") == 4
    # No series invents a node for the flow span itself, and the eight metrics carry exactly their dimensions.
    assert {frozenset(s) for s in m.series("node_request_total")} == {
        frozenset({"flow", "node", "exception", "run_status"})}
    assert {frozenset(s) for s in m.series("rpc_request_total")} == {
        frozenset({"flow", "node", "api_call", "exception"})}

    spans = {(s.name, s.status.status_code.name): s for s in harness.spans()}
    llm = next(s for s in harness.spans() if s.name == "openai_chat" and s.status.is_ok)
    assert llm.attributes["gen_ai.operation.name"] == "chat"
    assert llm.attributes["gen_ai.provider.name"] == llm.attributes["gen_ai.system"] == "openai"
    assert llm.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert llm.attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert llm.attributes["gen_ai.usage.input_tokens"] == 4
    assert llm.attributes["gen_ai.usage.output_tokens"] == ANSWER_TOKENS
    assert llm.attributes["gen_ai.request.temperature"] == 0.3
    assert llm.attributes["gen_ai.request.max_tokens"] == 64
    assert tuple(llm.attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert llm.attributes["llm.usage.prompt_tokens"] == 4  # the producer's own attributes stay
    assert "inputs" not in llm.attributes and "output" not in llm.attributes  # content capture is off
    assert not [e for e in llm.events if e.name.startswith("promptflow.function")]
    failed = spans[("openai_chat", "ERROR")]
    assert failed.attributes["error.type"] == "openai.InternalServerError"
    flow = next(s for s in harness.spans() if s.name == "chat_flow")
    assert flow.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert flow.attributes["gen_ai.workflow.name"] == "chat_flow"
    embed = next(s for s in harness.spans() if s.name == "openai_embeddings")
    assert embed.attributes["gen_ai.operation.name"] == "embeddings"
    assert embed.attributes["gen_ai.request.model"] == "text-embedding-3-small"


def test_latency_buckets_and_exemplars_match_the_spans(harness, fake_llm) -> None:  # type: ignore[no-untyped-def]
    run_dag_flow("timed_flow", {"question": QUESTION}, [("answer", answer_tool(fake_llm.base_url))])
    spans = harness.spans()
    node = next(s for s in spans if s.name == "answer")
    flow = next(s for s in spans if s.name == "timed_flow")
    node_ms = (node.end_time - node.start_time) / 1e6
    m = harness.scrape(openmetrics=True)
    assert m.value("node_latency_sum", flow="timed_flow", node="answer") == pytest.approx(node_ms)
    for bound in PF_BUCKETS_MS:
        expected = 1 if node_ms <= bound else 0
        assert m.value("node_latency_bucket", flow="timed_flow", node="answer", le=str(float(bound))) == expected
    (flow_bucket,) = [s for s in m.find("flow_latency_bucket", flow="timed_flow") if s.exemplar is not None]
    assert flow_bucket.exemplar.labels["trace_id"] == f"{flow.context.trace_id:032x}"
    assert flow_bucket.exemplar.labels["span_id"] == f"{flow.context.span_id:016x}"
    (node_bucket,) = [s for s in m.find("node_latency_bucket", node="answer") if s.exemplar is not None]
    assert node_bucket.exemplar.labels["span_id"] == f"{node.context.span_id:016x}"
    assert node_bucket.exemplar.value == pytest.approx(node_ms)
    assert m.value("flow_latency_count", flow="timed_flow") == 1
    plain = harness.scrape(openmetrics=False)
    assert all(s.exemplar is None for s in plain.samples)


def test_flex_flow_streaming(make_harness) -> None:  # type: ignore[no-untyped-def]
    from fake_llm import FakeLLMServer

    harness = make_harness()
    with FakeLLMServer(chunk_delay_s=0.03) as slow:
        STREAM_LLM[:] = [client(slow.base_url)]
        assert "".join(stream_flow(QUESTION)) == "Hello from the fake model"

    m = harness.scrape()
    labels = dict(flow="stream_flow", response_code="200", streaming="True")
    assert m.value("flow_request_total", **labels, exception="") == 1
    assert m.value("flow_latency_count", **labels, response_type="firstbyte") == 1
    assert m.value("flow_latency_count", **labels, response_type="lastbyte") == 1
    assert m.value("flow_latency_count", response_type="default") == 0
    first = m.value("flow_latency_sum", **labels, response_type="firstbyte")
    last = m.value("flow_latency_sum", **labels, response_type="lastbyte")
    streamed = m.value("flow_streaming_response_duration_sum", flow="stream_flow")
    assert 0 < first < last
    assert streamed == pytest.approx(last - first, rel=1e-6)
    assert streamed >= 2 * 30  # five chunks sent 30 ms apart; delivery may bunch them, so half the gaps
    # flex flow: the outermost @trace function is the flow, its direct child a node, the model call below it an RPC
    assert m.value("node_request_total", flow="stream_flow", node="helper", run_status="Completed") == 1
    assert m.value("rpc_request_total", flow="stream_flow", node="helper", api_call="openai_chat") == 1
    assert m.value("node_request_total", flow="stream_flow", node="openai_chat", run_status="Completed") == 1
    # the streamed call's usage comes from its final chunk (prompt flow itself records none for streams)
    assert m.value("token_consumption_total", token_type="completion_tokens") == 2 * ANSWER_TOKENS


def test_content_capture_switch_keeps_content(make_harness, fake_llm) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness(environ={"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    run_dag_flow("content_flow", {"question": QUESTION}, [("answer", answer_tool(fake_llm.base_url))])
    llm = next(s for s in harness.spans() if s.name == "openai_chat")
    assert QUESTION in llm.attributes["inputs"]
    assert [e.name for e in llm.events if e.name == "promptflow.function.inputs"]
    assert llm.attributes["gen_ai.request.model"] == "gpt-4o-mini"


def test_common_dimensions_from_prompt_flow_variable(make_harness, fake_llm) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness(environ={"PF_SERVING_METRICS_COMMON_DIMENSIONS": '{"deployment": "blue", "variant": "b"}'})
    run_dag_flow("ab_flow", {"question": QUESTION}, [("answer", answer_tool(fake_llm.base_url))])
    m = harness.scrape()
    for name in ("flow_request_total", "flow_latency_count", "node_request_total", "rpc_request_total",
                 "token_consumption_total"):
        series = m.series(name)
        assert series, name
        assert all(s["deployment"] == "blue" and s["variant"] == "b" for s in series), (name, series)
    assert m.value("flow_request_total", flow="ab_flow", deployment="blue", variant="b") == 1


def test_cardinality_limit_folds_into_overflow_series(make_harness) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness(cardinality_limit=5)
    for i in range(12):
        def flow_fn(x: int) -> int:
            return x
        flow_fn.__name__ = flow_fn.__qualname__ = f"flow_{i}"
        pf_trace(flow_fn)(i)
    m = harness.scrape()
    series = m.series("flow_request_total")
    normal = [s for s in series if "otel_metric_overflow" not in s]
    overflow = m.find("flow_request_total", otel_metric_overflow="true")
    assert len(normal) == 5
    assert len(overflow) == 1 and overflow[0].value == 7
    assert overflow[0].labels == {"otel_metric_overflow": "true"}
    assert m.value("flowtel_metric_overflow_total", metric="flow_request") == 7
    assert m.value("flow_request_total") == 12  # nothing lost: every request is still counted


def test_instrumentation_values_are_never_overwritten(harness) -> None:  # type: ignore[no-untyped-def]
    from opentelemetry import trace

    tracer = trace.get_tracer("custom")
    with tracer.start_as_current_span("openai_chat", attributes={
        "framework": "promptflow", "span_type": "LLM",
        "function": "openai.resources.chat.completions.completions.Completions.create",
        "inputs": '{"model": "from-inputs"}', "gen_ai.request.model": "set-by-instrumentation",
        "gen_ai.operation.name": "custom_op", "llm.usage.prompt_tokens": 7, "gen_ai.usage.input_tokens": 9,
    }):
        pass
    (span,) = harness.spans()
    assert span.attributes["gen_ai.request.model"] == "set-by-instrumentation"
    assert span.attributes["gen_ai.operation.name"] == "custom_op"
    assert span.attributes["gen_ai.usage.input_tokens"] == 9
    m = harness.scrape()
    assert m.value("token_consumption_total", token_type="prompt_tokens", llm_engine="set-by-instrumentation") == 9
