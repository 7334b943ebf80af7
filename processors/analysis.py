"""Decide, for one complete local trace, which spans are flows, nodes and remote calls.

This is the rule set the README documents under "How flowtel reads a trace":

* A **flow** is a prompt flow ``Flow`` span (DAG flows), otherwise the outermost prompt
  flow ``Function`` span (flex flows: plain ``@trace`` functions), otherwise the outermost
  GenAI workflow / agent span (``invoke_workflow`` / ``invoke_agent``, OpenLLMetry
  ``workflow``, OpenInference ``AGENT`` / ``CHAIN``, MLflow ``AGENT`` / ``CHAIN`` / ``UNKNOWN``,
  OpenLIT ``@openlit.trace``). LLM, embedding and retrieval calls are never flows.
* A **node** is a direct child of a flow, named by its ``node_name`` attribute (DAG flows),
  OpenLLMetry's ``traceloop.entity.name``, or its span name.
* A **remote call** is any span below a node; its ``api_call`` name is the path of span
  names from just below the node, joined by ``_`` (prompt flow's naming), bounded: at most
  ``API_CALL_MAX_DEPTH`` names (deeper calls share the name of their ancestor at that depth
  followed by ``_...``) and ``API_CALL_MAX_CHARS`` characters, so a deeply nested trace costs
  linear, not quadratic, memory. A GenAI client call outside any flow is a remote call with
  empty flow and node.
* An **LLM call** is a span carrying token usage, or a failed inference operation (which has
  no usage to report), with no such span below it, so a call wrapped by two instrumentations
  (prompt flow's ``openai_chat`` around openai-v2's ``chat`` span) is counted once, at the
  innermost span.
* A SERVER local root with a GenAI inference call below it and no flow in its trace (a plain
  OpenTelemetry app: an HTTP server calling a model) is the flow itself, so there is one
  request per SERVER span; its remote calls stay remote calls (node ``""``) and its other
  direct children are nodes.
* The **request** a flow answers is the local root when that is a SERVER span (its HTTP
  status is the response code); otherwise the flow span itself.
* A prompt flow DAG flow **handed the server a stream** when its ``output`` JSON has an empty list
  for a value (prompt flow records the generator it returns as the items read so far: none) and
  no child of it that wraps the stream (``output_type=iterated``) has ended yet: that child ends
  when the server has read the stream to its end, after the flow and the request spans. Trace
  assembly holds such a trace until that child arrives (``awaited_stream`` / ``ends_stream``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flowtel import semconv as sc
from flowtel.spans import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, SpanData

from .vocabulary import genai_operation, pf_output, plain, token_usage

ROLE_NONE, ROLE_FLOW, ROLE_NODE, ROLE_RPC = "", "flow", "node", "rpc"
#: Bounds of a nested call's ``api_call`` path (README "How flowtel reads a trace").
API_CALL_MAX_DEPTH = 8
API_CALL_MAX_CHARS = 256
_DEEPER = "_..."

_NEVER_FLOW_PF_TYPES = frozenset({"LLM", "Embedding", "Retrieval"})
_WORKFLOW_KINDS = {
    sc.TL_SPAN_KIND: frozenset({"workflow", "agent"}),
    sc.OI_SPAN_KIND: frozenset({"AGENT", "CHAIN"}),
}
#: MLflow's span types (JSON-encoded on the wire) that can start a flow: UNKNOWN is what `@mlflow.trace`
#: gives a function without a span_type, i.e. most apps' entry points.
_ML_WORKFLOW_TYPES = frozenset({"AGENT", "CHAIN", "UNKNOWN"})


@dataclass(slots=True)
class SpanRole:
    span: SpanData
    role: str = ROLE_NONE
    flow: str = ""
    node: str = ""
    api_call: str = ""
    flow_span: SpanData | None = None
    request_span: SpanData | None = None  # for flows: the span whose timing is the request's
    is_llm_call: bool = False
    depth: int = 0  # remote calls: how many span names make up ``api_call``
    children: list[SpanRole] | tuple[()] = ()  # a list once a child is attached; most spans are leaves


def is_pf_span(span: SpanData) -> bool:
    return span.attributes.get(sc.PF_FRAMEWORK) == "promptflow"


def is_workflow_span(span: SpanData) -> bool:
    attrs = span.attributes
    if attrs.get(sc.OPERATION_NAME) in sc.WORKFLOW_OPERATIONS:
        return True
    if any(attrs.get(key) in kinds for key, kinds in _WORKFLOW_KINDS.items()):
        return True
    ml_type = attrs.get(sc.ML_SPAN_TYPE)
    if ml_type is not None:
        return plain(ml_type) in _ML_WORKFLOW_TYPES
    # OpenLIT's @openlit.trace marks its spans with no kind, only by their instrumentation scope.
    return span.scope_name == sc.OL_TRACE_SCOPE and genai_operation(span) is None


def flow_name(span: SpanData) -> str:
    attrs = span.attributes
    for key in (sc.WORKFLOW_NAME, sc.TL_WORKFLOW_NAME, sc.AGENT_NAME):
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return span.name


def _flow_kind(span: SpanData, inside_flow: bool) -> bool:
    """Whether this span starts a flow, given whether an enclosing flow already exists."""
    attrs = span.attributes
    if is_pf_span(span):
        span_type = attrs.get(sc.PF_SPAN_TYPE)
        if span_type == "Flow":
            return not inside_flow
        return not inside_flow and span_type not in _NEVER_FLOW_PF_TYPES
    return not inside_flow and is_workflow_span(span)


def awaited_stream(spans: Sequence[SpanData]) -> int:
    """The span id of a prompt flow Flow span of this local trace whose streamed output is still being read by
    the server (see the module doc), or 0. Linear in the spans; only Flow spans' ``output`` is parsed."""
    flows = [s for s in spans if s.attributes.get(sc.PF_SPAN_TYPE) == "Flow" and is_pf_span(s)]
    for flow in flows:
        raw = flow.attributes.get(sc.PF_OUTPUT)
        if not isinstance(raw, str) or "[]" not in raw:  # most flows: no JSON parse at all
            continue
        output = pf_output(flow)
        if not isinstance(output, dict) or not any(value == [] for value in output.values()):
            continue
        if not any(ends_stream(s, flow.span_id) for s in spans):
            return flow.span_id
    return 0


def ends_stream(span: SpanData, flow_span_id: int) -> bool:
    """Whether this span is the child of the flow that wrapped its stream (it ends when the stream is read)."""
    return span.parent_span_id == flow_span_id and span.attributes.get(sc.PF_OUTPUT_TYPE) == "iterated"


def is_failed(span: SpanData) -> bool:
    return span.status == STATUS_ERROR or sc.ERROR_TYPE in span.attributes


def analyze(spans: Sequence[SpanData]) -> list[SpanRole]:
    """Roles for every span of a local trace, in the order given."""
    roles = [SpanRole(s) for s in spans]
    by_id = {r.span.span_id: r for r in roles}
    roots: list[SpanRole] = []
    for r in roles:
        parent = by_id.get(r.span.parent_span_id) if r.span.parent_span_id else None
        if parent is None or parent is r:
            roots.append(r)
        else:
            if not parent.children:
                parent.children = []
            parent.children.append(r)
    for root in roots:
        request = root.span if root.span.kind == KIND_SERVER else None
        if not _walk(root, None, request) and request is not None and _calls_a_model(root):
            _server_flow(root)
    _mark_llm_calls(roles, by_id)
    return roles


def _walk(r: SpanRole, parent: SpanRole | None, request: SpanData | None) -> bool:
    """Assign roles below ``r``; whether any span became a flow."""
    # Iterative depth-first walk: agent traces can nest deeper than Python's recursion limit.
    stack: list[tuple[SpanRole, SpanRole | None]] = [(r, parent)]
    found_flow = False
    while stack:
        cur, par = stack.pop()
        _assign(cur, par, request)
        found_flow = found_flow or cur.role == ROLE_FLOW
        if cur.children:  # most spans are leaves
            stack.extend([(child, cur) for child in reversed(cur.children)])
    return found_flow


def _calls_a_model(root: SpanRole) -> bool:
    stack = [root]
    while stack:
        cur = stack.pop()
        if cur.role == ROLE_RPC and genai_operation(cur.span) in sc.INFERENCE_OPERATIONS:
            return True
        stack.extend(cur.children)
    return False


def _server_flow(root: SpanRole) -> None:
    """Make a SERVER root with model calls and no flow the flow (one request per SERVER span). Its calls stay
    remote calls, with node "" (as below a node of that name); its other direct children are nodes."""
    span = root.span
    root.role, root.flow, root.flow_span, root.request_span = ROLE_FLOW, flow_name(span), span, span
    no_node = SpanRole(span, ROLE_NODE, root.flow, flow_span=span)
    for child in root.children:
        _walk(child, no_node if _is_remote_call(child.span) else root, span)


def _is_remote_call(span: SpanData) -> bool:
    return span.kind == KIND_CLIENT or genai_operation(span) in sc.INFERENCE_OPERATIONS


def _assign(r: SpanRole, parent: SpanRole | None, request: SpanData | None) -> None:
    span = r.span
    inside_flow = parent is not None and parent.flow_span is not None
    if _flow_kind(span, inside_flow):
        r.role, r.flow, r.flow_span = ROLE_FLOW, flow_name(span), span
        r.request_span = request if request is not None else span
        return
    if parent is None or parent.flow_span is None:
        if _is_remote_call(span):
            r.role, r.api_call = ROLE_RPC, span.name
        return
    r.flow, r.flow_span = parent.flow, parent.flow_span
    if parent.role == ROLE_FLOW:
        # prompt flow stamps node_name on every span inside a node, so it names the node but does not make one.
        node_name = span.attributes.get(sc.PF_NODE_NAME) or span.attributes.get(sc.TL_ENTITY_NAME)
        r.role, r.node = ROLE_NODE, node_name if isinstance(node_name, str) and node_name else span.name
        return
    r.role, r.node = ROLE_RPC, parent.node
    if parent.role != ROLE_RPC:
        r.api_call, r.depth = span.name, 1
    elif parent.depth < API_CALL_MAX_DEPTH:
        r.api_call, r.depth = f"{parent.api_call}_{span.name}"[:API_CALL_MAX_CHARS], parent.depth + 1
    elif parent.depth == API_CALL_MAX_DEPTH:  # one name for every call below the deepest one kept
        r.api_call, r.depth = parent.api_call + _DEEPER, parent.depth + 1
    else:
        r.api_call, r.depth = parent.api_call, parent.depth


def _is_model_call(span: SpanData) -> bool:
    """A model call: it reports token usage, or it is an inference operation that failed (no usage to report,
    but its duration and error.type belong in gen_ai.client.operation.duration)."""
    if token_usage(span) is not None:
        return True
    return is_failed(span) and genai_operation(span) in sc.INFERENCE_OPERATIONS


def _mark_llm_calls(roles: list[SpanRole], by_id: dict[int, SpanRole]) -> None:
    """Mark model calls that have no model call below them: climb from each model call, marking its
    ancestors (a trace has few model calls and shallow ancestry; the marks stop a malformed cycle)."""
    calls = [r for r in roles if _is_model_call(r.span)]
    if not calls:
        return
    above_a_call: set[int] = set()
    for r in calls:
        parent = by_id.get(r.span.parent_span_id)
        while parent is not None and parent is not r and parent.span.span_id not in above_a_call:
            above_a_call.add(parent.span.span_id)
            parent = by_id.get(parent.span.parent_span_id)
    for r in calls:
        r.is_llm_call = r.span.span_id not in above_a_call
