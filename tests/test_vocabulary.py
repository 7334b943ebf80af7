"""Reading GenAI facts from the vocabularies real traffic speaks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from flowtel.processors import vocabulary as v
from flowtel.spans import KIND_CLIENT, KIND_INTERNAL, STATUS_UNSET, SpanData


def span(attributes: Mapping[str, Any], name: str = "call", kind: int = KIND_INTERNAL) -> SpanData:
    return SpanData(trace_id=1, span_id=2, parent_span_id=0, parent_is_remote=False, name=name, kind=kind,
                    start_ns=0, end_ns=1, status=STATUS_UNSET, status_message="", attributes=dict(attributes),
                    events=[])


def pf_llm(inputs: Mapping[str, Any] | None = None, **extra: Any) -> SpanData:
    attrs: dict[str, Any] = {"framework": "promptflow", "span_type": "LLM",
                             "function": "openai.resources.chat.completions.Completions.create"}
    if inputs is not None:
        attrs["inputs"] = json.dumps(inputs)
    attrs.update(extra)
    return span(attrs, name="openai_chat")


# --- token_usage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("attributes", "expected"), [
    ({"gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 7}, (11, 7)),
    ({"gen_ai.usage.prompt_tokens": 13, "gen_ai.usage.completion_tokens": 5}, (13, 5)),
    ({"llm.usage.prompt_tokens": 21, "llm.usage.completion_tokens": 3}, (21, 3)),
    ({"llm.token_count.prompt": 34, "llm.token_count.completion": 8}, (34, 8)),
    ({"mlflow.chat.tokenUsage": '{"input_tokens": 55, "output_tokens": 9, "total_tokens": 64}'}, (55, 9)),
], ids=["gen_ai", "gen_ai_old", "promptflow", "openinference", "mlflow"])
def test_token_usage_each_vocabulary(attributes: dict[str, Any], expected: tuple[int, int]) -> None:
    assert v.token_usage(span(attributes)) == expected


def test_token_usage_one_side_only() -> None:
    assert v.token_usage(span({"gen_ai.usage.input_tokens": 12})) == (12, None)
    assert v.token_usage(span({"llm.token_count.completion": 4})) == (None, 4)


def test_token_usage_zero_counts_are_kept() -> None:
    assert v.token_usage(span({"gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0})) == (0, 0)


def test_token_usage_new_names_win_over_old_and_promptflow() -> None:
    s = span({"gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 2,
              "gen_ai.usage.prompt_tokens": 100, "gen_ai.usage.completion_tokens": 200,
              "llm.usage.prompt_tokens": 300, "llm.usage.completion_tokens": 400})
    assert v.token_usage(s) == (1, 2)


def test_token_usage_integral_float_accepted_bool_and_string_ignored() -> None:
    assert v.token_usage(span({"llm.usage.prompt_tokens": 10.0, "llm.usage.completion_tokens": 2.0})) == (10, 2)
    assert v.token_usage(span({"gen_ai.usage.input_tokens": True, "gen_ai.usage.output_tokens": "5"})) is None


def test_token_usage_absent_or_bad_mlflow_json() -> None:
    assert v.token_usage(span({})) is None
    assert v.token_usage(span({"mlflow.chat.tokenUsage": "not json"})) is None
    assert v.token_usage(span({"mlflow.chat.tokenUsage": '{"total_tokens": 5}'})) is None


def test_token_usage_promptflow_streamed_chunks() -> None:
    output = [{"choices": [{"delta": {"content": "hi"}}]},
              {"choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 6, "total_tokens": 23}}]
    assert v.token_usage(pf_llm({"model": "gpt-4o"}, output=json.dumps(output))) == (17, 6)


def test_token_usage_is_memoised_on_the_span() -> None:
    s = span({"gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 4})
    assert v.token_usage(s) == (3, 4)
    s.attributes = {}  # a second read comes from the memo, not the attributes
    assert v.token_usage(s) == (3, 4)
    none = span({})
    assert v.token_usage(none) is None
    none.attributes = {"gen_ai.usage.input_tokens": 3}  # "no usage" is remembered too
    assert v.token_usage(none) is None


def test_answers_read_from_json_are_memoised_on_the_span() -> None:
    s = pf_llm({"model": "gpt-4o-mini", "azure_deployment": "dep"})
    assert (v.request_model(s), v.provider(s)) == ("gpt-4o-mini", "azure.ai.openai")
    s.attributes = {}
    assert (v.request_model(s), v.provider(s)) == ("gpt-4o-mini", "azure.ai.openai")


# --- request_model / response_model -------------------------------------------------------------------------


def test_request_model_from_promptflow_inputs() -> None:
    s = pf_llm({"model": "gpt-4o-mini", "messages": [], "stream": False})
    assert v.request_model(s) == "gpt-4o-mini"


def test_request_model_promptflow_inputs_key_order() -> None:
    assert v.request_model(pf_llm({"deployment_name": "dep-a", "engine": "eng"})) == "dep-a"
    assert v.request_model(pf_llm({"azure_deployment": "dep-b", "engine": "eng"})) == "dep-b"
    assert v.request_model(pf_llm({"engine": "eng", "model": ""})) == "eng"
    assert v.request_model(pf_llm({"messages": []})) is None


def test_request_model_inputs_ignored_outside_promptflow_model_calls() -> None:
    inputs = json.dumps({"model": "gpt-4o"})
    assert v.request_model(span({"framework": "promptflow", "span_type": "Function", "inputs": inputs})) is None
    assert v.request_model(span({"span_type": "LLM", "inputs": inputs})) is None


def test_request_model_gen_ai_attribute_wins() -> None:
    s = pf_llm({"model": "from-inputs"}, **{"gen_ai.request.model": "from-attr"})
    assert v.request_model(s) == "from-attr"


def test_request_model_mlflow_and_openinference() -> None:
    assert v.request_model(span({"mlflow.llm.model": '"gpt-4.1"'})) == "gpt-4.1"
    assert v.request_model(span({"llm.model_name": "claude-x"})) == "claude-x"


def test_request_model_inputs_parsed_once() -> None:
    s = pf_llm({"model": "gpt-4o"})
    assert v.request_model(s) == "gpt-4o"
    assert s.memo["inputs"] == {"model": "gpt-4o"}


def test_response_model() -> None:
    assert v.response_model(span({"gen_ai.response.model": "gpt-4o-2024", "llm.response.model": "x"})) == "gpt-4o-2024"
    assert v.response_model(span({"llm.response.model": "gpt-4o-2024-08-06"})) == "gpt-4o-2024-08-06"
    assert v.response_model(span({})) is None


# --- short_error_name / exception_type ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("openai.InternalServerError", "InternalServerError"),
    ("<class 'openai.InternalServerError'>", "InternalServerError"),
    ("  <class 'openai.InternalServerError'>  ", "InternalServerError"),
    ("openai._exceptions.RateLimitError", "RateLimitError"),
    ("ValueError", "ValueError"),
    ("<class 'KeyError'>", "KeyError"),
])
def test_short_error_name(raw: str, expected: str) -> None:
    assert v.short_error_name(raw) == expected


def test_exception_type_reads_sdk_events_with_and_without_attributes() -> None:
    # The in-process host passes the SDK's own Event objects; one made without attributes has None for them.
    from opentelemetry.sdk.trace import Event

    failed = span({"error.type": "TimeoutError"})
    failed.events = [Event("exception", {"exception.type": "openai.RateLimitError"}, 5), Event("exception")]
    assert v.exception_type(failed) == "openai.RateLimitError"
    failed.events = [Event("exception")]
    assert v.exception_type(failed) == "TimeoutError"


# --- genai_operation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("attributes", "expected"), [
    ({"openinference.span.kind": "LLM"}, "chat"),
    ({"openinference.span.kind": "EMBEDDING"}, "embeddings"),
    ({"openinference.span.kind": "RETRIEVER"}, "retrieval"),
    ({"openinference.span.kind": "TOOL"}, "execute_tool"),
    ({"openinference.span.kind": "AGENT"}, "invoke_agent"),
    ({"openinference.span.kind": "CHAIN"}, None),
    ({"llm.request.type": "chat"}, "chat"),
    ({"llm.request.type": "completion"}, "text_completion"),
    ({"llm.request.type": "embedding"}, "embeddings"),
    ({"llm.request.type": "rerank"}, "retrieval"),
    ({"traceloop.span.kind": "tool"}, "execute_tool"),
    ({"traceloop.span.kind": "agent"}, "invoke_agent"),
    ({"traceloop.span.kind": "workflow"}, "invoke_workflow"),
    ({"traceloop.span.kind": "task"}, None),
    ({"mlflow.spanType": '"CHAT_MODEL"'}, "chat"),
    ({"mlflow.spanType": '"LLM"'}, "chat"),
    ({"mlflow.spanType": '"EMBEDDING"'}, "embeddings"),
    ({"mlflow.spanType": '"RETRIEVER"'}, "retrieval"),
    ({"mlflow.spanType": '"TOOL"'}, "execute_tool"),
    ({"mlflow.spanType": '"AGENT"'}, "invoke_agent"),
    ({"mlflow.spanType": '"CHAIN"'}, None),
    ({"mlflow.spanType": "CHAT_MODEL"}, "chat"),  # not JSON-encoded still reads
    ({}, None),
])
def test_genai_operation_vocabularies(attributes: dict[str, Any], expected: str | None) -> None:
    assert v.genai_operation(span(attributes)) == expected


def test_genai_operation_explicit_name_wins() -> None:
    s = span({"gen_ai.operation.name": "generate_content", "openinference.span.kind": "LLM"})
    assert v.genai_operation(s) == "generate_content"


@pytest.mark.parametrize(("name", "span_type", "function", "expected"), [
    ("openai_chat", "LLM", "", "chat"),
    ("openai_completion", "LLM", "", "text_completion"),
    ("openai_embeddings", "Embedding", "", "embeddings"),
    ("Completions.create", "LLM", "openai.resources.completions.Completions.create", "text_completion"),
    ("Completions.create", "LLM", "openai.resources.chat.completions.Completions.create", "chat"),
    ("Embeddings.create", "Embedding", "openai.resources.embeddings.Embeddings.create", "embeddings"),
    ("search", "Retrieval", "", "retrieval"),
    ("my_tool", "Function", "", None),
])
def test_genai_operation_promptflow(name: str, span_type: str, function: str, expected: str | None) -> None:
    s = span({"framework": "promptflow", "span_type": span_type, "function": function}, name=name)
    assert v.genai_operation(s) == expected


# --- provider ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("attributes", "expected"), [
    ({"gen_ai.provider.name": "azure.ai.openai", "gen_ai.system": "openai"}, "azure.ai.openai"),
    ({"gen_ai.system": "openai"}, "openai"),
    ({"llm.provider": "OpenAI"}, "openai"),
    ({"llm.provider": "Anthropic"}, "anthropic"),
    ({"mlflow.llm.provider": '"openai"'}, "openai"),
    ({"gen_ai.provider.name": ""}, None),
    ({}, None),
])
def test_provider_from_attributes(attributes: dict[str, Any], expected: str | None) -> None:
    assert v.provider(span(attributes)) == expected


def test_provider_promptflow_openai_vs_azure() -> None:
    assert v.provider(pf_llm({"model": "gpt-4o"})) == "openai"
    assert v.provider(pf_llm({"deployment_name": "gpt4"})) == "azure.ai.openai"
    assert v.provider(pf_llm({"azure_deployment": "gpt4"})) == "azure.ai.openai"
    not_openai = span({"framework": "promptflow", "span_type": "LLM", "function": "my_llm",
                       "inputs": json.dumps({"model": "x"})})
    assert v.provider(not_openai) is None


# --- small readers -------------------------------------------------------------------------------------------


def test_plain_unwraps_json_string_literals_only() -> None:
    assert v.plain('"CHAT_MODEL"') == "CHAT_MODEL"
    assert v.plain('"a\\"b"') == 'a"b'
    assert v.plain("CHAT_MODEL") == "CHAT_MODEL"
    assert v.plain(5) == 5
    assert v.plain('"') == '"'


def test_request_parameters_from_promptflow_and_openinference() -> None:
    s = pf_llm({"temperature": 0.2, "top_p": 1, "max_tokens": 256, "max_completion_tokens": 99})
    assert v.request_parameters(s) == {"gen_ai.request.temperature": 0.2, "gen_ai.request.top_p": 1,
                                       "gen_ai.request.max_tokens": 256}
    oi = span({"llm.invocation_parameters": '{"temperature": 0.7, "max_completion_tokens": 50, "top_p": true}'})
    assert v.request_parameters(oi) == {"gen_ai.request.temperature": 0.7, "gen_ai.request.max_tokens": 50}


def test_http_status_prefers_new_name() -> None:
    assert v.http_status(span({"http.response.status_code": 503, "http.status_code": 200}, kind=KIND_CLIENT)) == 503
    assert v.http_status(span({"http.status_code": 404})) == 404
    assert v.http_status(span({"http.status_code": "404"})) is None


# --- what the real producers send (tests/producers/ runs them; these pin the edge cases) --------------------


def test_mlflow_embedding_usage_from_its_response_and_not_elsewhere() -> None:
    output = json.dumps({"data": [], "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    assert v.token_usage(span({"mlflow.spanType": '"EMBEDDING"', "mlflow.spanOutputs": output})) == (4, None)
    # a plain function's output is the app's, not a provider response: never read for usage
    assert v.token_usage(span({"mlflow.spanType": '"CHAIN"', "mlflow.spanOutputs": output})) is None
    assert v.token_usage(span({"mlflow.spanType": '"EMBEDDING"', "mlflow.spanOutputs": "[1, 2]"})) is None


def test_failed_call_model_from_its_arguments() -> None:
    failed_ml = span({"mlflow.spanType": '"CHAT_MODEL"', "mlflow.spanInputs": '{"model": "fail-500", "messages": []}'})
    assert v.request_model(failed_ml) == "fail-500"
    failed_oi = span({"openinference.span.kind": "LLM", "llm.invocation_parameters": '{"model": "fail-500"}'})
    assert v.request_model(failed_oi) == "fail-500"
    embedding_oi = span({"openinference.span.kind": "EMBEDDING", "embedding.model_name": "text-embedding-3-small"})
    assert v.request_model(embedding_oi) == "text-embedding-3-small"
    assert v.request_model(span({"mlflow.spanType": '"CHAIN"', "mlflow.spanInputs": '{"model": "x"}'})) is None


def test_provider_openinference_system_and_mlflow_message_format() -> None:
    assert v.provider(span({"llm.system": "OpenAI"})) == "openai"
    assert v.provider(span({"mlflow.spanType": '"CHAT_MODEL"', "mlflow.message.format": '"openai"'})) == "openai"
    assert v.provider(span({"mlflow.spanType": '"CHAIN"', "mlflow.message.format": '"openai"'})) is None


@pytest.mark.parametrize(("attributes", "expected"), [
    ({"gen_ai.is_streaming": True}, True),
    ({"gen_ai.is_streaming": False}, False),
    ({"gen_ai.request.stream": True}, True),
    ({"mlflow.spanType": '"CHAT_MODEL"', "stream": "true"}, True),
    ({"mlflow.spanType": '"CHAT_MODEL"'}, False),
    ({"llm.invocation_parameters": '{"model": "m", "stream": true}'}, True),
    ({"llm.invocation_parameters": '{"model": "m"}'}, False),
], ids=["openllmetry", "openllmetry-not", "openlit", "mlflow", "mlflow-not", "openinference", "openinference-not"])
def test_is_streaming_each_vocabulary(attributes: dict[str, Any], expected: bool) -> None:
    assert v.is_streaming(span(attributes)) is expected


def test_first_chunk_openlit_ttft_only_on_streamed_calls() -> None:
    streamed = span({"gen_ai.request.stream": True, "gen_ai.server.time_to_first_token": 0.25})
    streamed.start_ns = 1_000_000_000
    assert v.first_chunk_ns(streamed) == 1_250_000_000
    # OpenLIT sets it on whole answers too, where it is the time to the whole answer
    assert v.first_chunk_ns(span({"gen_ai.request.stream": False, "gen_ai.server.time_to_first_token": 0.25})) is None
    bad = span({"gen_ai.request.stream": True, "gen_ai.server.time_to_first_token": -1.0})
    assert v.first_chunk_ns(bad) is None
