"""Read GenAI facts from any of the span vocabularies real traffic carries.

Each reader tries the OpenTelemetry GenAI names first (new, then old), then prompt flow,
OpenInference, OpenLLMetry and MLflow. Values parsed from JSON attributes are memoised on
the span so analysis, enrichment and derivation share one parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flowtel import semconv as sc
from flowtel.spans import SpanData

_MISSING = object()

_USAGE_KEYS = ((sc.USAGE_INPUT_TOKENS, sc.USAGE_OUTPUT_TOKENS),
               (sc.USAGE_PROMPT_TOKENS_OLD, sc.USAGE_COMPLETION_TOKENS_OLD),
               (sc.PF_USAGE_PROMPT, sc.PF_USAGE_COMPLETION),
               (sc.OI_TOKENS_PROMPT, sc.OI_TOKENS_COMPLETION))
_ANY_USAGE_KEY = frozenset([key for pair in _USAGE_KEYS for key in pair] + [sc.ML_TOKEN_USAGE])
_PF_OPERATION_BY_NAME = (
    ("openai_chat", sc.OP_CHAT),
    ("openai_completion", sc.OP_TEXT_COMPLETION),
    ("openai_embeddings", sc.OP_EMBEDDINGS),
)
_PF_OPERATION_BY_TYPE = {"LLM": sc.OP_CHAT, "Embedding": sc.OP_EMBEDDINGS, "Retrieval": sc.OP_RETRIEVAL}
_OI_OPERATION = {"LLM": sc.OP_CHAT, "EMBEDDING": sc.OP_EMBEDDINGS, "RETRIEVER": sc.OP_RETRIEVAL,
                 "TOOL": sc.OP_EXECUTE_TOOL, "AGENT": sc.OP_INVOKE_AGENT}
_TL_REQUEST_TYPE = {"chat": sc.OP_CHAT, "completion": sc.OP_TEXT_COMPLETION, "embedding": sc.OP_EMBEDDINGS,
                    "rerank": sc.OP_RETRIEVAL}
_TL_SPAN_KIND = {"tool": sc.OP_EXECUTE_TOOL, "agent": sc.OP_INVOKE_AGENT, "workflow": sc.OP_INVOKE_WORKFLOW}
_ML_SPAN_TYPE = {"CHAT_MODEL": sc.OP_CHAT, "LLM": sc.OP_CHAT, "EMBEDDING": sc.OP_EMBEDDINGS,
                 "RETRIEVER": sc.OP_RETRIEVAL, "TOOL": sc.OP_EXECUTE_TOOL, "AGENT": sc.OP_INVOKE_AGENT}


def plain(value: Any) -> Any:
    """MLflow JSON-encodes every attribute value; unwrap a JSON string literal."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_count(value: Any) -> int | None:
    """A token count: a non-negative integer (a negative one would make a counter go down), else None."""
    count = _as_int(value)
    return count if count is not None and count >= 0 else None


_IGNORED = "token_counts_ignored"


def ignored_token_counts(span: SpanData) -> int:
    """How many of the token counts ``token_usage`` read from the span were not counts (negative, fractional,
    not a number) and so were ignored; the deriver counts them."""
    memo = span.memo
    return memo.get(_IGNORED, 0) if memo else 0


def _memo(span: SpanData) -> dict[str, Any]:
    if span.memo is None:
        span.memo = {}
    return span.memo


T = TypeVar("T")


def _memoized(read: Callable[[SpanData], T]) -> Callable[[SpanData], T]:
    """Analysis, derivation and enrichment all ask the same questions of a span; answer each once."""
    key = read.__name__

    def memoized(span: SpanData) -> T:
        memo = span.memo
        if memo is None:
            memo = span.memo = {}
        else:
            value = memo.get(key, _MISSING)
            if value is not _MISSING:
                return value
        value = memo[key] = read(span)
        return value

    memoized.__name__ = memoized.__qualname__ = key
    memoized.__doc__ = read.__doc__
    return memoized


# The C scanner behind json.loads, without its three Python frames. typeshed leaves scan_once out of
# JSONDecoder (its __init__ sets it), hence the ignore.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


#: Bounds of the JSON flowtel parses out of attributes: longer values are not parsed (linear, but a parse
#: holds several times its size in objects), and nesting deeper than the interpreter's recursion limit
#: (about 1,000 levels) is not JSON to flowtel. Either way the span is still enriched from everything else.
MAX_JSON_ATTRIBUTE_CHARS = 8 << 20


def _parse_json(raw: str) -> Any:
    """``json.loads`` for a string starting with ``{`` or ``[``; None when it is not JSON or past the bounds."""
    if len(raw) > MAX_JSON_ATTRIBUTE_CHARS:
        return None
    try:
        value, end = _SCAN(raw, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    return value if end == len(raw) or not raw[end:].strip() else None


def _json_attr(span: SpanData, key: str) -> Any:
    """Parse a JSON-valued attribute once per span; None when absent or not JSON."""
    memo = _memo(span)
    cached = memo.get(key, _MISSING)
    if cached is not _MISSING:
        return cached
    raw = span.attributes.get(key)
    parsed = _parse_json(raw) if isinstance(raw, str) and raw[:1] in ("{", "[") else None
    memo[key] = parsed
    return parsed


def pf_inputs(span: SpanData) -> Mapping[str, Any]:
    parsed = _json_attr(span, sc.PF_INPUTS)
    return parsed if isinstance(parsed, dict) else {}


def pf_output(span: SpanData) -> Any:
    return _json_attr(span, sc.PF_OUTPUT)


def is_pf_model_call(span: SpanData) -> bool:
    attrs = span.attributes  # span type first: it rules out most spans with one lookup
    return attrs.get(sc.PF_SPAN_TYPE) in ("LLM", "Embedding") and attrs.get(sc.PF_FRAMEWORK) == "promptflow"


@_memoized
def genai_operation(span: SpanData) -> str | None:
    attrs = span.attributes
    op = attrs.get(sc.OPERATION_NAME)
    if isinstance(op, str) and op:
        return op
    if attrs.get(sc.PF_FRAMEWORK) == "promptflow":
        span_type = attrs.get(sc.PF_SPAN_TYPE)
        if span_type in ("LLM", "Embedding"):
            for prefix, name in _PF_OPERATION_BY_NAME:
                if span.name.startswith(prefix):
                    return name
            function = str(attrs.get(sc.PF_FUNCTION, ""))
            if span_type == "LLM" and ".chat." not in function and "completions" in function:
                return sc.OP_TEXT_COMPLETION
        return _PF_OPERATION_BY_TYPE.get(str(span_type))
    for key, table in ((sc.OI_SPAN_KIND, _OI_OPERATION), (sc.TL_REQUEST_TYPE, _TL_REQUEST_TYPE),
                       (sc.TL_SPAN_KIND, _TL_SPAN_KIND)):
        value = attrs.get(key)
        if isinstance(value, str) and value in table:
            return table[value]
    ml = plain(attrs.get(sc.ML_SPAN_TYPE))
    if isinstance(ml, str):
        return _ML_SPAN_TYPE.get(ml)
    return None


@_memoized
def token_usage(span: SpanData) -> tuple[int | None, int | None] | None:
    """(input, output) tokens of a model call, from whichever vocabulary the span speaks."""
    # Most spans carry no usage key at all: one C-level pass over their keys rules them out.
    usage = None if _ANY_USAGE_KEY.isdisjoint(span.attributes) else _stated_usage(span)
    if usage is None:
        if is_pf_model_call(span):
            usage = _pf_streamed_usage(span)
        elif is_ml_model_call(span):
            usage = _ml_response_usage(span)
    return usage


def _stated_usage(span: SpanData) -> tuple[int | None, int | None] | None:
    """Usage as one of the vocabularies states it in attributes."""
    attrs = span.attributes
    for in_key, out_key in _USAGE_KEYS:
        if in_key not in attrs and out_key not in attrs:
            continue
        raw_i, raw_o = attrs.get(in_key), attrs.get(out_key)
        i, o = _as_count(raw_i), _as_count(raw_o)
        if (i is None and raw_i is not None) or (o is None and raw_o is not None):
            _memo(span)[_IGNORED] = (i is None and raw_i is not None) + (o is None and raw_o is not None)
        if i is not None or o is not None:
            return i, o
    if sc.ML_TOKEN_USAGE in attrs:
        parsed = _json_attr(span, sc.ML_TOKEN_USAGE)
        if isinstance(parsed, dict):
            i, o = _as_count(parsed.get("input_tokens")), _as_count(parsed.get("output_tokens"))
            if i is not None or o is not None:
                return i, o
    return None


def _pf_streamed_usage(span: SpanData) -> tuple[int | None, int | None] | None:
    """prompt flow drops usage of streamed calls; the chunks keep it when the caller asked for it."""
    output = pf_output(span)
    if isinstance(output, list):
        for chunk in reversed(output):
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if isinstance(usage, dict):
                return _as_count(usage.get("prompt_tokens")), _as_count(usage.get("completion_tokens"))
    return None


def is_ml_model_call(span: SpanData) -> bool:
    value = span.attributes.get(sc.ML_SPAN_TYPE)
    return value is not None and plain(value) in sc.ML_MODEL_SPAN_TYPES


def _ml_response_usage(span: SpanData) -> tuple[int | None, int | None] | None:
    """MLflow states no usage for embedding calls; the provider's response it keeps as output has it."""
    output = _json_attr(span, sc.ML_SPAN_OUTPUTS)
    usage = output.get("usage") if isinstance(output, dict) else None
    if not isinstance(usage, dict):
        return None
    i, o = _as_int(usage.get("prompt_tokens")), _as_int(usage.get("completion_tokens"))
    return (i, o) if i is not None or o is not None else None


def _model_argument(span: SpanData) -> str | None:
    """The `model` the caller passed, where only the call's arguments say it (a failed call has no response):
    MLflow's span inputs, OpenInference's invocation parameters."""
    if is_ml_model_call(span):
        parsed = _json_attr(span, sc.ML_SPAN_INPUTS)
    else:
        attrs = span.attributes
        key = sc.OI_INVOCATION_PARAMETERS if sc.OI_INVOCATION_PARAMETERS in attrs else \
            sc.OI_EMBEDDING_INVOCATION_PARAMETERS
        parsed = _json_attr(span, key) if key in attrs else None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) and model else None


@_memoized
def request_model(span: SpanData) -> str | None:
    attrs = span.attributes
    value = attrs.get(sc.REQUEST_MODEL)
    if isinstance(value, str) and value:
        return value
    if is_pf_model_call(span):
        inputs = pf_inputs(span)
        for key in ("model", "deployment_name", "azure_deployment", "engine"):
            candidate = inputs.get(key)
            if isinstance(candidate, str) and candidate:
                return candidate
    for key in (sc.ML_MODEL, sc.OI_MODEL_NAME, sc.OI_EMBEDDING_MODEL_NAME):
        candidate = plain(attrs.get(key))
        if isinstance(candidate, str) and candidate:
            return candidate
    return _model_argument(span)


def response_model(span: SpanData) -> str | None:
    attrs = span.attributes
    for key in (sc.RESPONSE_MODEL, sc.PF_RESPONSE_MODEL, sc.OI_MODEL_NAME):
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return None


@_memoized
def provider(span: SpanData) -> str | None:
    attrs = span.attributes
    for key in (sc.PROVIDER_NAME, sc.SYSTEM, sc.OI_PROVIDER, sc.OI_SYSTEM, sc.ML_PROVIDER):
        value = plain(attrs.get(key))
        if isinstance(value, str) and value:
            return value.lower() if key in (sc.OI_PROVIDER, sc.OI_SYSTEM) else value
    if is_ml_model_call(span):
        # mlflow.<library>.autolog() names the client library it wrapped; for the provider libraries
        # (openai, anthropic, ...) that is the provider.
        value = plain(attrs.get(sc.ML_MESSAGE_FORMAT))
        if isinstance(value, str) and value:
            return value
    if is_pf_model_call(span) and str(attrs.get(sc.PF_FUNCTION, "")).startswith("openai."):
        inputs = pf_inputs(span)
        return "azure.ai.openai" if "azure_deployment" in inputs or "deployment_name" in inputs else "openai"
    return None


def request_parameters(span: SpanData) -> dict[str, float | int]:
    """temperature / max_tokens / top_p the caller asked for, from prompt flow inputs or OpenInference."""
    source: Mapping[str, Any] = {}
    if is_pf_model_call(span):
        source = pf_inputs(span)
    elif sc.OI_INVOCATION_PARAMETERS in span.attributes:
        parsed = _json_attr(span, sc.OI_INVOCATION_PARAMETERS)
        source = parsed if isinstance(parsed, dict) else {}
    out: dict[str, float | int] = {}
    for key, attr in (("temperature", sc.REQUEST_TEMPERATURE), ("top_p", sc.REQUEST_TOP_P),
                      ("max_tokens", sc.REQUEST_MAX_TOKENS), ("max_completion_tokens", sc.REQUEST_MAX_TOKENS)):
        value = source.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and attr not in out:
            out[attr] = value
    return out


def response_details(span: SpanData) -> tuple[str | None, tuple[str, ...]]:
    """(response id, finish reasons) from prompt flow's ``output`` JSON, whole or streamed chunks."""
    if not is_pf_model_call(span):
        return None, ()
    output = pf_output(span)
    chunks = output if isinstance(output, list) else [output]
    response_id: str | None = None
    reasons: list[str] = []
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if response_id is None and isinstance(chunk.get("id"), str):
            response_id = chunk["id"]
        for choice in chunk.get("choices") or ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str):
                reasons.append(reason)
    return response_id, tuple(reasons)


def is_streaming(span: SpanData) -> bool:
    """Whether the span's output was streamed, in any vocabulary's words."""
    attrs = span.attributes
    if (attrs.get(sc.PF_OUTPUT_TYPE) == "iterated" or attrs.get(sc.TL_IS_STREAMING) is True
            or attrs.get(sc.TL_IS_STREAMING_GENAI) is True or attrs.get(sc.OL_REQUEST_STREAM) is True):
        return True
    if is_pf_model_call(span):
        return pf_inputs(span).get("stream") is True
    if is_ml_model_call(span):
        return plain(attrs.get(sc.ML_STREAM)) in (True, "true")
    if sc.OI_INVOCATION_PARAMETERS in attrs:
        parameters = _json_attr(span, sc.OI_INVOCATION_PARAMETERS)
        return isinstance(parameters, dict) and parameters.get("stream") is True
    return False


def first_chunk_ns(span: SpanData) -> int | None:
    """When the span's first streamed chunk arrived: the earliest first-chunk event, else OpenLIT's
    time-to-first-token (seconds from the span's start; OpenLIT also sets it on whole answers, so only
    for streamed calls)."""
    first: int | None = None
    for event in span.events:
        if event.name in sc.FIRST_CHUNK_EVENTS and (first is None or event.timestamp < first):
            first = event.timestamp
    if first is None and sc.OL_TIME_TO_FIRST_TOKEN in span.attributes and is_streaming(span):
        ttft = span.attributes[sc.OL_TIME_TO_FIRST_TOKEN]
        if isinstance(ttft, (int, float)) and not isinstance(ttft, bool) and ttft >= 0:
            first = span.start_ns + int(ttft * 1e9)
    return first


def exception_type(span: SpanData) -> str | None:
    """Fully qualified type of the error that ended the span, if any."""
    for event in reversed(span.events):
        if event.name == "exception" and event.attributes:  # an SDK Event made without attributes has None
            value = event.attributes.get("exception.type")
            if isinstance(value, str) and value:
                return value
    value = span.attributes.get(sc.ERROR_TYPE)
    if isinstance(value, str) and value:
        return value
    return None


def short_error_name(error_type: str) -> str:
    """``openai.InternalServerError`` and ``<class 'openai.InternalServerError'>`` -> ``InternalServerError``."""
    name = error_type.strip()
    if name.startswith("<class '") and name.endswith("'>"):
        name = name[8:-2]
    return name.rsplit(".", 1)[-1]


def http_status(span: SpanData) -> int | None:
    for key in (sc.HTTP_STATUS_CODE, sc.HTTP_STATUS_CODE_OLD):
        value = _as_int(span.attributes.get(key))
        if value is not None:
            return value
    return None


#: prompt flow 1.18's system errors (``SystemErrorException`` subclasses; serving answers them 500). Every other
#: prompt flow exception is a user error, answered 400: a node raising is ``ToolExecutionError``.
_PF_SYSTEM_ERRORS = frozenset({
    "ArtifactInternalError", "AssetInternalError", "AzureContentSafetySystemError", "BuildConnectionError",
    "CoreInternalError", "DownloadInternalError", "ExecutorServiceUnhealthy", "GenerateMetaSystemError",
    "InputNotFoundFromAncestorNodeOutput", "InvalidAggregationInput", "MetricInternalError", "NoNodeExecutedError",
    "NoToolTypeDefined", "OpenURLFailed", "ProcessInfoObtainedTimeout", "ProcessPoolError", "ProcessTerminatedTimeout",
    "ResumeCopyError", "RunHistoryInternalError", "RunRecordNotFound", "SDKInternalError", "SerpAPISystemError",
    "SpawnedForkProcessManagerStartFailure", "SystemErrorException", "ThreadCrashError", "UnexpectedError",
    "UninitializedError", "UploadInternalError", "YamlParseError",
})


def pf_failed_flow_status(span: SpanData) -> int | None:
    """The status prompt flow serving answers for this failed prompt flow flow span, judged from its exception as
    prompt flow classifies it: 400 for a prompt flow user error, 500 for a system error or any exception prompt
    flow did not raise itself; None when the span is not prompt flow's or says nothing."""
    if span.attributes.get(sc.PF_FRAMEWORK) != "promptflow":
        return None
    error = exception_type(span)
    if not error:
        return None
    module, _, name = error.rpartition(".")
    if module.split(".", 1)[0] != "promptflow":
        return 500
    return 500 if name in _PF_SYSTEM_ERRORS else 400
