"""Prompt flow's ``inputs`` / ``output`` as GenAI content attributes, for when content capture is on.

The GenAI semantic conventions carry content as JSON strings: ``gen_ai.input.messages`` (a list of
``{"role", "parts": [{"type": "text", "content"}]}``), ``gen_ai.system_instructions`` (a list of parts) and
``gen_ai.output.messages`` (messages with a ``finish_reason``). Azure's Gen AI views read only those, so a prompt
flow app shows no input, system prompt or answer there unless flowtel writes them:

* an LLM span (``openai_chat``): the request's ``messages`` from ``inputs`` (system messages become the system
  instructions), the answer from ``output`` (the chat completion's choices) or, for a streamed call, from
  ``llm.generated_message``;
* a flow span: its inputs as one user message (the lone text input when there is one, else the inputs as JSON),
  earlier turns from a ``chat_history`` input (prompt flow's ``[{"inputs": ..., "outputs": ...}]``), and its output
  as one assistant message (the lone text output, else the JSON).

Called only when capture is on: with capture off these keys are content and are removed like the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flowtel import semconv as sc
from flowtel.spans import SpanData

from .vocabulary import _json_attr, is_pf_model_call, pf_inputs, pf_output


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _message(role: str, content: Any, finish_reason: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": _text(content)}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return message


def _lone_text(values: Mapping[str, Any], skip: str = "") -> Any:
    """The only text value of a mapping (besides ``skip``), else the whole mapping."""
    texts = [v for k, v in values.items() if k != skip and isinstance(v, str)]
    others = [k for k, v in values.items() if k != skip and not isinstance(v, str)]
    return texts[0] if len(texts) == 1 and not others else {k: v for k, v in values.items() if k != skip}


def _llm_messages(span: SpanData) -> dict[str, str]:
    out: dict[str, str] = {}
    messages = pf_inputs(span).get("messages")
    if isinstance(messages, list):
        system = [{"type": "text", "content": _text(m.get("content"))} for m in messages
                  if isinstance(m, dict) and m.get("role") == "system"]
        others = [_message(str(m.get("role", "user")), m.get("content")) for m in messages
                  if isinstance(m, dict) and m.get("role") != "system"]
        if system:
            out[sc.SYSTEM_INSTRUCTIONS] = json.dumps(system, ensure_ascii=False)
        if others:
            out[sc.INPUT_MESSAGES] = json.dumps(others, ensure_ascii=False)
    answers: list[dict[str, Any]] = []
    output = pf_output(span)
    if isinstance(output, dict) and isinstance(output.get("choices"), list):
        for choice in output["choices"]:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                answers.append(_message(str(message.get("role", "assistant")), message.get("content") or "",
                                        choice.get("finish_reason")))
    if not answers:
        generated = _json_attr(span, sc.PF_GENERATED_MESSAGE)
        if isinstance(generated, dict):
            answers.append(_message(str(generated.get("role", "assistant")), generated.get("content") or ""))
    if answers:
        out[sc.OUTPUT_MESSAGES] = json.dumps(answers, ensure_ascii=False)
    return out


def _flow_messages(span: SpanData) -> dict[str, str]:
    out: dict[str, str] = {}
    inputs = pf_inputs(span)
    if inputs:
        turns: list[dict[str, Any]] = []
        history = inputs.get("chat_history")
        if isinstance(history, list):
            for turn in history:
                if isinstance(turn, dict):
                    if isinstance(turn.get("inputs"), dict):
                        turns.append(_message("user", _lone_text(turn["inputs"])))
                    if isinstance(turn.get("outputs"), dict):
                        turns.append(_message("assistant", _lone_text(turn["outputs"])))
        turns.append(_message("user", _lone_text(inputs, skip="chat_history")))
        out[sc.INPUT_MESSAGES] = json.dumps(turns, ensure_ascii=False)
    output = pf_output(span)  # parsed only when it is a JSON object or array
    raw = span.attributes.get(sc.PF_OUTPUT)
    if output is None and isinstance(raw, str):  # a flow answering a string: a JSON string literal
        try:
            output = json.loads(raw)
        except ValueError:
            output = raw
    if output not in (None, {}, []):
        answer = _lone_text(output) if isinstance(output, dict) else output
        out[sc.OUTPUT_MESSAGES] = json.dumps([_message("assistant", answer)], ensure_ascii=False)
    return out


def genai_messages(span: SpanData, is_flow: bool) -> dict[str, str]:
    """The GenAI content attributes for a prompt flow span (empty for other spans)."""
    if span.attributes.get(sc.PF_FRAMEWORK) != "promptflow":
        return {}
    if is_pf_model_call(span):
        return _llm_messages(span)
    return _flow_messages(span) if is_flow else {}
