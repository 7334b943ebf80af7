"""The official OpenTelemetry OpenAI instrumentation (openai-v2), alone and under prompt flow's own wrapper."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

from producers import client, run_dag_flow, use_promptflow_openai_injection


@pytest.fixture
def openai_v2(harness) -> Iterator:  # type: ignore[no-untyped-def]
    use_promptflow_openai_injection(False)  # start from the bare client so the wrapping order is known
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=trace.get_tracer_provider(), meter_provider=metrics.get_meter_provider())
    yield harness
    use_promptflow_openai_injection(False)
    instrumentor.uninstrument()
    use_promptflow_openai_injection(True)


def test_openai_v2_spans_alone(openai_v2, fake_llm) -> None:  # type: ignore[no-untyped-def]
    llm = client(fake_llm.base_url)
    llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}])
    llm.embeddings.create(model="text-embedding-3-small", input="four five")
    for _ in llm.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                         messages=[{"role": "user", "content": "six"}]):
        pass
    with pytest.raises(Exception, match="500"):
        llm.chat.completions.create(model="fail-500", messages=[{"role": "user", "content": "x"}])

    spans = openai_v2.spans()
    assert len(spans) == 4
    chat = next(s for s in spans if s.name == "chat gpt-4o-mini" and s.attributes.get("gen_ai.usage.input_tokens") == 3)
    assert chat.attributes["gen_ai.system"] == "openai"  # added: the Azure exporter reads only this name
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    failed = next(s for s in spans if s.name == "chat fail-500")
    # the instrumentation's own (odd) value stays
    assert failed.attributes["error.type"] == "<class 'openai.InternalServerError'>"
    assert failed.status.status_code.name == "ERROR"

    m = openai_v2.scrape()
    assert m.value("token_consumption_total", flow="", node="", llm_engine="gpt-4o-mini",
                   token_type="prompt_tokens") == 3 + 1
    assert m.value("token_consumption_total", llm_engine="gpt-4o-mini", token_type="completion_tokens") == 10
    assert m.value("token_consumption_total", llm_engine="text-embedding-3-small", token_type="prompt_tokens") == 2
    assert m.value("rpc_request_total", flow="", node="", api_call="chat fail-500",
                   exception="InternalServerError") == 1
    # openai-v2 records gen_ai.client.* itself into the same meter provider; flowtel must not count them again.
    assert m.value("gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="gpt-4o-mini") == 2
    assert m.value("gen_ai_client_token_usage_sum", gen_ai_token_type="input", gen_ai_request_model="gpt-4o-mini") == 4


def test_wrapped_call_counts_tokens_once(openai_v2, fake_llm) -> None:  # type: ignore[no-untyped-def]
    # Inject after openai-v2 so prompt flow's wrapper is the outer one.
    use_promptflow_openai_injection(True)

    def answer(inputs: dict) -> str:
        return client(fake_llm.base_url).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": inputs["q"]}]).choices[0].message.content or ""

    run_dag_flow("wrapped_flow", {"q": "a b c d e f"}, [("answer", answer)])
    spans = openai_v2.spans()
    names = sorted(s.name for s in spans)
    assert names == ["answer", "chat gpt-4o-mini", "openai_chat", "wrapped_flow"]
    m = openai_v2.scrape()
    # Both the prompt flow span and the openai-v2 span carry the usage; the call is counted once, at the innermost.
    assert m.value("token_consumption_total", flow="wrapped_flow", node="answer", token_type="prompt_tokens") == 6
    assert m.value("token_consumption_total", token_type="completion_tokens") == 5
    assert m.value("rpc_request_total", flow="wrapped_flow", node="answer", api_call="openai_chat") == 1
    assert m.value("rpc_request_total", flow="wrapped_flow", node="answer",
                   api_call="openai_chat_chat gpt-4o-mini") == 1
