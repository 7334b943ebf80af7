"""The metrics flowtel derives: names, instruments, dimensions, units and buckets.

The eight standard metrics follow prompt flow serving exactly (names, dimension order,
milliseconds, its twenty bucket boundaries); the GenAI ones follow the OpenTelemetry
GenAI semantic conventions with their advised buckets. Prometheus names follow from
``prometheus_name``: ``flow_latency`` stays ``flow_latency``, counters gain ``_total``
on exposition, seconds gain ``_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER, HISTOGRAM = "counter", "histogram"

PF_BUCKETS_MS: tuple[float, ...] = (1, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000,
                                    25000, 50000, 75000, 100000, 300000)
GENAI_TOKEN_BUCKETS: tuple[float, ...] = tuple(4.0**i for i in range(14))  # 1, 4, 16, ... 67108864
GENAI_DURATION_BUCKETS_S: tuple[float, ...] = tuple(0.01 * 2**i for i in range(14))  # 0.01 ... 81.92


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: str
    unit: str
    dimensions: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] = ()
    exemplars: bool = False


TOKEN_CONSUMPTION = MetricSpec(
    "token_consumption", COUNTER, "{token}", ("flow", "node", "llm_engine", "token_type"),
    "LLM tokens consumed; token_type is prompt_tokens or completion_tokens")
FLOW_LATENCY = MetricSpec(
    "flow_latency", HISTOGRAM, "ms", ("flow", "response_code", "streaming", "response_type"),
    "Request latency; response_type default (whole response), firstbyte / lastbyte (streaming)",
    PF_BUCKETS_MS, exemplars=True)
FLOW_REQUEST = MetricSpec(
    "flow_request", COUNTER, "1", ("flow", "response_code", "exception", "streaming"),
    "Flow requests")
NODE_LATENCY = MetricSpec(
    "node_latency", HISTOGRAM, "ms", ("flow", "node", "run_status"), "Node run latency", PF_BUCKETS_MS, exemplars=True)
NODE_REQUEST = MetricSpec(
    "node_request", COUNTER, "1", ("flow", "node", "exception", "run_status"), "Node runs")
RPC_LATENCY = MetricSpec(
    "rpc_latency", HISTOGRAM, "ms", ("flow", "node", "api_call"), "Remote call latency", PF_BUCKETS_MS, exemplars=True)
RPC_REQUEST = MetricSpec(
    "rpc_request", COUNTER, "1", ("flow", "node", "api_call", "exception"), "Remote calls")
FLOW_STREAMING_RESPONSE_DURATION = MetricSpec(
    "flow_streaming_response_duration", HISTOGRAM, "ms", ("flow",),
    "First byte sent to last byte sent, streaming responses only",
    PF_BUCKETS_MS, exemplars=True)

FEEDBACK = MetricSpec(
    "feedback", COUNTER, "{feedback}", ("flow", "score_label", "correlated"),
    "User feedback received; score_label is thumbup, thumbdown or unscored, correlated says whether the "
    "request it judges was found")

_GENAI_DIMS = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model",
               "server.address", "error.type")
GENAI_TOKEN_USAGE = MetricSpec(
    "gen_ai.client.token.usage", HISTOGRAM, "{token}", (*_GENAI_DIMS[:4], "server.address", "gen_ai.token.type"),
    "Tokens used per GenAI client operation", GENAI_TOKEN_BUCKETS)
GENAI_OPERATION_DURATION = MetricSpec(
    "gen_ai.client.operation.duration", HISTOGRAM, "s", _GENAI_DIMS,
    "GenAI client operation duration", GENAI_DURATION_BUCKETS_S,
    exemplars=True)

STANDARD_METRICS = (TOKEN_CONSUMPTION, FLOW_LATENCY, FLOW_REQUEST, NODE_LATENCY, NODE_REQUEST, RPC_LATENCY,
                    RPC_REQUEST, FLOW_STREAMING_RESPONSE_DURATION)
GENAI_METRICS = (GENAI_TOKEN_USAGE, GENAI_OPERATION_DURATION)
ALL_METRICS = (*STANDARD_METRICS, *GENAI_METRICS, FEEDBACK)


def prometheus_name(name: str, unit: str) -> str:
    """OpenTelemetry name to Prometheus name: dots become underscores; seconds gain ``_seconds``."""
    out = "".join(c if c.isalnum() or c in "_:" else "_" for c in name)
    if out[:1].isdigit():
        out = "_" + out
    if unit == "s" and not out.endswith("_seconds"):
        out += "_seconds"
    return out
