"""With content capture on, prompt flow's ``inputs`` / ``output`` are also written as the GenAI content attributes
(``gen_ai.input.messages``, ``gen_ai.system_instructions``, ``gen_ai.output.messages``) that Azure's Gen AI views
read; with capture off none of them is written (and prompt flow's own content is removed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fake_llm import REPLY
from producers import QUESTION, client, run_dag_flow, use_promptflow_openai_injection

SYSTEM = "You answer in one short sentence."


@pytest.fixture(autouse=True)
def _promptflow_injection() -> None:
    use_promptflow_openai_injection(True)


def _chat_tool(base_url: str, stream: bool = False):  # type: ignore[no-untyped-def]
    def chat(inputs: dict) -> str:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": inputs["question"]}]
        if stream:
            chunks = client(base_url).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return client(base_url).chat.completions.create(model="gpt-4o-mini", messages=messages).choices[0] \
            .message.content or ""
    return chat


def _json(span: Any, key: str) -> Any:
    return json.loads(span.attributes[key])


def test_llm_and_flow_spans_carry_genai_messages(make_harness, fake_llm) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness(environ={"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    history = [{"inputs": {"question": "hi"}, "outputs": {"answer": "hello"}}]
    run_dag_flow("chat_flow", {"question": QUESTION, "chat_history": history},
                 [("answer", _chat_tool(fake_llm.base_url))])
    spans = harness.spans()
    llm = next(s for s in spans if s.name == "openai_chat")
    assert _json(llm, "gen_ai.system_instructions") == [{"type": "text", "content": SYSTEM}]
    assert _json(llm, "gen_ai.input.messages") == [
        {"role": "user", "parts": [{"type": "text", "content": QUESTION}]}]
    assert _json(llm, "gen_ai.output.messages") == [
        {"role": "assistant", "parts": [{"type": "text", "content": REPLY}], "finish_reason": "stop"}]
    flow = next(s for s in spans if s.name == "chat_flow")
    assert _json(flow, "gen_ai.input.messages") == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
        {"role": "assistant", "parts": [{"type": "text", "content": "hello"}]},
        {"role": "user", "parts": [{"type": "text", "content": QUESTION}]}]
    assert _json(flow, "gen_ai.output.messages") == [
        {"role": "assistant", "parts": [{"type": "text", "content": REPLY}]}]


def test_streamed_call_output_comes_from_the_generated_message(make_harness, fake_llm) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness(environ={"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    run_dag_flow("stream_flow", {"question": QUESTION}, [("answer", _chat_tool(fake_llm.base_url, stream=True))])
    llm = next(s for s in harness.spans() if s.name == "openai_chat")
    assert _json(llm, "gen_ai.output.messages") == [
        {"role": "assistant", "parts": [{"type": "text", "content": REPLY}]}]


def test_nothing_is_written_with_capture_off(harness, fake_llm) -> None:  # type: ignore[no-untyped-def]
    run_dag_flow("chat_flow", {"question": QUESTION}, [("answer", _chat_tool(fake_llm.base_url))])
    for span in harness.spans():
        assert not {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "inputs",
                    "output"} & set(span.attributes), span.name
        assert QUESTION not in json.dumps(dict(span.attributes))
