"""Attribute names flowtel reads and writes, grouped by the vocabulary they come from.

Only names live here; the logic that maps between vocabularies is in
``flowtel.processors.enrichment``.
"""

from __future__ import annotations

# OpenTelemetry GenAI semantic conventions (Development status).
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # pre-1.37 name; the Azure Monitor exporter reads only this one
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_PROMPT_TOKENS_OLD = "gen_ai.usage.prompt_tokens"
USAGE_COMPLETION_TOKENS_OLD = "gen_ai.usage.completion_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TOP_P = "gen_ai.request.top_p"
WORKFLOW_NAME = "gen_ai.workflow.name"
AGENT_NAME = "gen_ai.agent.name"
TOKEN_TYPE = "gen_ai.token.type"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"

OP_CHAT = "chat"
OP_TEXT_COMPLETION = "text_completion"
OP_EMBEDDINGS = "embeddings"
OP_RETRIEVAL = "retrieval"
OP_EXECUTE_TOOL = "execute_tool"
OP_INVOKE_AGENT = "invoke_agent"
OP_INVOKE_WORKFLOW = "invoke_workflow"
INFERENCE_OPERATIONS = frozenset({OP_CHAT, OP_TEXT_COMPLETION, OP_EMBEDDINGS, "generate_content"})
WORKFLOW_OPERATIONS = frozenset({OP_INVOKE_WORKFLOW, OP_INVOKE_AGENT})

# prompt flow (promptflow-tracing).
PF_FRAMEWORK = "framework"
PF_SPAN_TYPE = "span_type"
PF_FUNCTION = "function"
PF_NODE_NAME = "node_name"
PF_INPUTS = "inputs"
PF_OUTPUT = "output"
PF_OUTPUT_TYPE = "output_type"
PF_RESPONSE_MODEL = "llm.response.model"
PF_GENERATED_MESSAGE = "llm.generated_message"
PF_USAGE_PROMPT = "llm.usage.prompt_tokens"
PF_USAGE_COMPLETION = "llm.usage.completion_tokens"

# OpenInference (Arize Phoenix).
OI_SPAN_KIND = "openinference.span.kind"
OI_MODEL_NAME = "llm.model_name"
OI_PROVIDER = "llm.provider"
OI_TOKENS_PROMPT = "llm.token_count.prompt"
OI_TOKENS_COMPLETION = "llm.token_count.completion"
OI_INVOCATION_PARAMETERS = "llm.invocation_parameters"
OI_SYSTEM = "llm.system"  # the provider, as OpenInference names it without its GenAI flag
OI_EMBEDDING_MODEL_NAME = "embedding.model_name"
OI_EMBEDDING_INVOCATION_PARAMETERS = "embedding.invocation_parameters"

# OpenLLMetry (traceloop).
TL_SPAN_KIND = "traceloop.span.kind"
TL_WORKFLOW_NAME = "traceloop.workflow.name"
TL_ENTITY_NAME = "traceloop.entity.name"
TL_REQUEST_TYPE = "llm.request.type"
TL_IS_STREAMING = "llm.is_streaming"
TL_IS_STREAMING_GENAI = "gen_ai.is_streaming"

# OpenLIT.
OL_TRACE_SCOPE = "openlit"  # scope of @openlit.trace spans (its LLM spans: openlit.instrumentation.*)
OL_FUNCTION_ARGS = "function.args"  # on @openlit.trace spans that returned (not on failed ones)
OL_FUNCTION_KWARGS = "function.kwargs"
OL_REQUEST_STREAM = "gen_ai.request.stream"
OL_TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"  # seconds from the call's start

# MLflow 3.
ML_SPAN_TYPE = "mlflow.spanType"
ML_TOKEN_USAGE = "mlflow.chat.tokenUsage"
ML_MODEL = "mlflow.llm.model"
ML_PROVIDER = "mlflow.llm.provider"
ML_MESSAGE_FORMAT = "mlflow.message.format"  # the client library the autolog wrapped: "openai", ...
ML_SPAN_INPUTS = "mlflow.spanInputs"
ML_SPAN_OUTPUTS = "mlflow.spanOutputs"
ML_STREAM = "stream"  # the call's own `stream` argument, which MLflow's autolog copies onto the span
ML_MODEL_SPAN_TYPES = frozenset({"CHAT_MODEL", "LLM", "EMBEDDING"})
ML_CHUNK_EVENT_PREFIX = "mlflow.chunk.item."
ML_FIRST_CHUNK_EVENT = "mlflow.chunk.item.0"

# HTTP server spans (request root of a served flow).
HTTP_STATUS_CODE = "http.response.status_code"
HTTP_STATUS_CODE_OLD = "http.status_code"

# Metric attributes flowtel writes.
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"

# Prompt and completion content, removed from exported spans unless content capture is on.
CONTENT_ATTRIBUTES = frozenset({
    PF_INPUTS, PF_OUTPUT, PF_GENERATED_MESSAGE, "prompt.template", "prompt.variables", "embedding.embeddings",
    INPUT_MESSAGES, OUTPUT_MESSAGES, SYSTEM_INSTRUCTIONS,
    "input.value", "output.value", "traceloop.entity.input", "traceloop.entity.output",
    "mlflow.spanInputs", "mlflow.spanOutputs", OL_FUNCTION_ARGS, OL_FUNCTION_KWARGS,
})
CONTENT_ATTRIBUTE_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.",
                              "embedding.embeddings.")  # OpenInference: embedding input text and vectors
CONTENT_EVENTS = frozenset({
    "promptflow.function.inputs", "promptflow.function.output", "promptflow.llm.generated_message",
    "promptflow.embedding.embeddings", "promptflow.prompt.template",
    "gen_ai.content.prompt", "gen_ai.content.completion", "gen_ai.client.inference.operation.details",
    "gen_ai.user.message", "gen_ai.system.message", "gen_ai.assistant.message", "gen_ai.tool.message",
    "gen_ai.choice",
})
#: Events named with a running number: MLflow's streamed chunks (``mlflow.chunk.item.N``) carry the answer text.
CONTENT_EVENT_PREFIXES = (ML_CHUNK_EVENT_PREFIX,)

# Events that mark the first streamed chunk (first byte of a streamed answer).
FIRST_CHUNK_EVENTS = frozenset({"flowtel.first_chunk", "First Token Stream Event", "llm.content.completion.chunk",
                                "gen_ai.content.completion.chunk", ML_FIRST_CHUNK_EVENT})

# Evaluations and user feedback (GenAI semantic conventions; prompt flow's /feedback span).
EVALUATION_RESULT_EVENT = "gen_ai.evaluation.result"
EVALUATION_NAME = "gen_ai.evaluation.name"
EVALUATION_SCORE_VALUE = "gen_ai.evaluation.score.value"
EVALUATION_SCORE_LABEL = "gen_ai.evaluation.score.label"
EVALUATION_EXPLANATION = "gen_ai.evaluation.explanation"
FEEDBACK_SPAN_NAME = "promptflow-feedback"  # prompt flow serving's name, kept so its own feedback spans match
FEEDBACK_ATTRIBUTE = "feedback"  # the raw body, when not flattened
# What flowtel adds to a feedback span: whether it found the request judged, and that request's facts.
FEEDBACK_CORRELATED = "flowtel.feedback.correlated"
FEEDBACK_UNCORRELATED_REASON = "flowtel.feedback.uncorrelated_reason"
FEEDBACK_BAGGAGE_DROPPED = "flowtel.feedback.baggage_dropped"
REQUEST_PREFIX = "flowtel.request."
