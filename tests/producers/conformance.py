"""What each producer sends and what flowtel must make of it: the source of the README's conformance table.

Figures follow from ``app.py``'s workload and the fake LLM's rule (a token per word): a chat
call's prompt is the system message (2 words) plus the question (4), its answer ``REPLY`` (6
words); an embedding call's input is the question (4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CANARY = "zq7canary41x"  # a string no producer, library or exporter would ever write by itself
QUESTION = f"{CANARY} what is flowtel"
REPLY = f"Hello {CANARY} from the fake model"
CHAT_IN, CHAT_OUT, EMBED_IN = 2 + 4, 6, 4


@dataclass(frozen=True)
class Spec:
    name: str  # app.py's producer name
    title: str  # the README's name for it
    package: str  # what is installed, pinned
    venv: str | None  # .cache/producers/<venv>; None: the test environment itself
    flow_marker: str
    node_marker: str
    chat_call: str  # the api_call of the chat inside node `answer` (rpc_request_total)
    first_chunk: str  # where firstbyte comes from; "" when the producer sends no first-chunk signal
    content: str  # content-carrying fields the canary went through (all removed)
    env: dict[str, str] = field(default_factory=dict)
    flow_exception: str = "InternalServerError"  # exception label of the failed flow
    streaming_seen: bool = True  # whether anything in the spans says the streamed call streamed
    first_chunk_hosts: tuple[str, ...] = ("collector", "inprocess")
    embedding_provider: str = "openai"  # gen_ai.provider.name of the embedding calls
    #: In-process, the instrumentation records gen_ai.client.* itself (flowtel then does not, so nothing is counted
    #: twice); the values are the instrumentation's, with its labels.
    own_genai_metrics: bool = False
    gaps: str = ""  # what flowtel cannot get right for this producer, and why
    extra_flows: tuple[tuple[str, str], ...] = ()  # (flow, node) app.py's Producer.extra_flows runs once each


PRODUCERS: tuple[Spec, ...] = (
    Spec("mlflow", "MLflow", "mlflow 3.17.2", "mlflow",
         "`@mlflow.trace` (`UNKNOWN` span type), `MlflowClient.start_trace`",
         "`mlflow.start_span` / `@mlflow.trace` (`CHAIN`)", "Completions", "`mlflow.chunk.item.0` event",
         "`mlflow.spanInputs` / `spanOutputs`, `mlflow.chunk.item.N` events",
         env={"MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false", "MLFLOW_EXPERIMENT_ID": "0"},
         extra_flows=(("client_flow", "lookup"),),  # MlflowClient.start_trace / start_span
         embedding_provider="",
         gaps="embedding calls name no provider (`mlflow.message.format` is on chat spans only): "
              "`gen_ai.provider.name=\"\"` for them; in-process MLflow also writes every trace, content "
              "included, to its own tracking store (its local store, not an export)"),
    Spec("openlit", "OpenLIT", "openlit 1.44.0", "openlit", "`@openlit.trace` (outermost)", "`@openlit.trace`",
         "chat gpt-4o-mini", "TTFT attribute (`gen_ai.server.time_to_first_token`)",
         "`function.args` / `function.kwargs` / `gen_ai.input/output.messages` / `gen_ai.system_instructions`",
         env={"OPENLIT_DISABLE_METRICS": "true"},
         gaps="its content log events leave through its own logger provider, not through flowtel's span path: "
              "the suite's collector has no logs pipeline and refuses them; a logs pipeline (the default config "
              "has one) removes content by event name and attribute, not checked here for OpenLIT's events; "
              "in-process, turn them off (`disable_events=True`)"),
    Spec("openinference", "OpenInference", "openinference-instrumentation-openai 0.1.66", "openinference",
         "`chain` span (outermost)", "`chain` span", "ChatCompletion", "`First Token Stream Event`",
         "`input.value` / `output.value`, `llm.*_messages.*`, `embedding.embeddings.N.embedding.text` / `.vector`"),
    Spec("openinference-genai", "OpenInference (GenAI semconv on)", "openinference-instrumentation-openai 0.1.66",
         "openinference", "`chain` span (outermost)", "`chain` span", "ChatCompletion",
         "`First Token Stream Event`", "as above, plus `gen_ai.input/output.messages`",
         env={"OPENINFERENCE_ENABLE_GENAI_SEMCONV": "true"}),
    Spec("traceloop", "OpenLLMetry", "traceloop-sdk 0.62.4", "traceloop", "`@workflow`", "`@task`",
         "openai.chat", "`gen_ai.content.completion.chunk` event",
         "`traceloop.entity.input` / `output`, `gen_ai.input/output.messages`",
         env={"TRACELOOP_TELEMETRY": "false", "TRACELOOP_TRACE_CONTENT": "true"}),
    Spec("openai-v2", "openai-v2", "opentelemetry-instrumentation-openai-v2 2.4b0", None,
         "app span, `gen_ai.operation.name=invoke_workflow`", "app span", "chat gpt-4o-mini", "",
         "`gen_ai.input/output.messages`", streaming_seen=False, own_genai_metrics=True,
         gaps="a streamed call carries nothing that says so: `streaming=\"False\"`, `default` latency; "
              "in-process the `gen_ai.client.*` metrics are openai-v2's own (embeddings labelled `gen_ai.system`, "
              "errors `<class '...'>`), not recorded again by flowtel",
         # The producer records content (so the canary is sent); flowtel's own switch stays off.
         env={"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
              "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_AND_EVENT",
              "FLOWTEL_CAPTURE_CONTENT": "false"}),
    Spec("promptflow", "promptflow-tracing (flex flow)", "promptflow-tracing 1.18", None, "outermost `@trace`",
         "`@trace`", "openai_chat", "`flowtel.first_chunk` event (in-process)",
         "`inputs` / `output`, `llm.generated_message`, payload events", first_chunk_hosts=("inprocess",),
         gaps="prompt flow sends no first-chunk signal: through the collector, `lastbyte` only"),
)


def producer_python(spec: Spec) -> str | None:
    """The interpreter of the producer's venv; the test environment's own for producers it already has."""
    import sys

    if spec.venv is None:
        return sys.executable
    python = ROOT / ".cache" / "producers" / spec.venv / "bin" / "python"
    return str(python) if python.exists() else None


Labels = tuple[tuple[str, str], ...]


def expected_values(spec: Spec, host: str) -> dict[tuple[str, dict[str, str]], float]:  # type: ignore[type-arg]
    """(metric, labels) -> value the host must show for this producer's workload."""
    streamed = "True" if spec.streaming_seen else "False"
    first = 1 if spec.first_chunk and host in spec.first_chunk_hosts and spec.streaming_seen else 0
    chat, embed = {"llm_engine": "gpt-4o-mini"}, {"llm_engine": "text-embedding-3-small"}
    genai_chat = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
                  "gen_ai_request_model": "gpt-4o-mini"}
    genai_embed = {"gen_ai_operation_name": "embeddings", "gen_ai_provider_name": spec.embedding_provider,
                   "gen_ai_request_model": "text-embedding-3-small"}
    rows: list[tuple[str, dict[str, str], float]] = [
        ("flow_request_total", {"flow": "qa_flow", "response_code": "200", "exception": "", "streaming": "False"}, 2),
        ("flow_request_total", {"flow": "stream_flow", "response_code": "200", "streaming": streamed}, 1),
        ("flow_request_total", {"flow": "fail_flow", "response_code": "500", "streaming": "False"}, 1),
        ("flow_latency_count", {"flow": "qa_flow", "response_type": "default"}, 2),
        ("flow_latency_count", {"flow": "stream_flow", "response_type": "lastbyte" if spec.streaming_seen
                                else "default"}, 1),
        ("node_request_total", {"flow": "qa_flow", "node": "retrieve", "run_status": "Completed"}, 2),
        ("node_request_total", {"flow": "qa_flow", "node": "answer", "run_status": "Completed"}, 2),
        ("node_request_total", {"flow": "stream_flow", "node": "answer_stream", "run_status": "Completed"}, 1),
        ("node_request_total", {"flow": "fail_flow", "node": "answer", "run_status": "Failed",
                                "exception": "InternalServerError"}, 1),
        ("token_consumption_total", {"flow": "qa_flow", "node": "answer", **chat, "token_type": "prompt_tokens"},
         2 * CHAT_IN),
        ("token_consumption_total", {"flow": "qa_flow", "node": "answer", **chat,
                                     "token_type": "completion_tokens"}, 2 * CHAT_OUT),
        ("token_consumption_total", {"flow": "qa_flow", "node": "retrieve", **embed, "token_type": "prompt_tokens"},
         2 * EMBED_IN),
        ("token_consumption_total", {"flow": "stream_flow", "node": "answer_stream", **chat,
                                     "token_type": "prompt_tokens"}, CHAT_IN),
        ("token_consumption_total", {"flow": "stream_flow", "node": "answer_stream", **chat,
                                     "token_type": "completion_tokens"}, CHAT_OUT),
        ("gen_ai_client_operation_duration_seconds_count", {**genai_chat, "error_type": ""}, 3),
        ("gen_ai_client_operation_duration_seconds_count", {**genai_embed, "error_type": ""}, 2),
        ("gen_ai_client_operation_duration_seconds_count", {
            "gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": "fail-500",
            "error_type": "InternalServerError"}, 1),
        ("gen_ai_client_token_usage_sum", {**genai_chat, "gen_ai_token_type": "input"}, 3 * CHAT_IN),
        ("gen_ai_client_token_usage_sum", {**genai_chat, "gen_ai_token_type": "output"}, 3 * CHAT_OUT),
        ("gen_ai_client_token_usage_sum", {**genai_embed, "gen_ai_token_type": "input"}, 2 * EMBED_IN),
        ("rpc_request_total", {"flow": "qa_flow", "node": "answer", "api_call": spec.chat_call, "exception": ""}, 2),
        ("flow_request_total", {"flow": "fail_flow", "exception": spec.flow_exception}, 1),
        ("flow_latency_count", {"flow": "stream_flow", "response_type": "firstbyte"}, first),
        ("flow_streaming_response_duration_count", {"flow": "stream_flow"}, first),
    ]
    for flow, node in spec.extra_flows:
        rows.append(("flow_request_total", {"flow": flow, "response_code": "200", "streaming": "False"}, 1))
        rows.append(("node_request_total", {"flow": flow, "node": node, "run_status": "Completed"}, 1))
    if host == "inprocess" and spec.own_genai_metrics:
        rows = [row for row in rows if not row[0].startswith("gen_ai_")]
        rows.append(("gen_ai_client_operation_duration_seconds_count", {}, 3 + 2 + 1))  # each call once
    return {(name, _frozen(labels)): value for name, labels, value in rows}  # type: ignore[misc]


class _frozen(dict):  # type: ignore[type-arg]
    """A label dict usable as a key part (the checks pass it on as **labels)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def render_table() -> str:
    head = ("| producer (pinned) | flow | node | chat call (`api_call`) | `firstbyte` from | content removed "
            "(canary checked) | not right, and why |\n|---|---|---|---|---|---|---|\n")
    rows = [f"| {s.title} ({s.package}) | {s.flow_marker} | {s.node_marker} | `{s.chat_call}` | "
            f"{s.first_chunk or 'none sent: `lastbyte` only'} | {s.content} | {s.gaps or '-'} |\n"
            for s in PRODUCERS]
    return head + "".join(rows)


def write_readme_table(readme: Path = ROOT / "README.md") -> None:
    """Replace the conformance table in the README with ``render_table()`` (run this file to do it)."""
    lines = readme.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("| producer (pinned) |"))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = [render_table()]
    readme.write_text("".join(lines))


if __name__ == "__main__":
    write_readme_table()
