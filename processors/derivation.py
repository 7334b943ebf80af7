"""Turn an analysed local trace into the eight standard metrics and the GenAI client metrics.

Everything comes from spans: a flow span (or the SERVER span it answers) is one request,
its duration the latency. A request is streamed when its flow or request span says so
(``output_type=iterated``, ``gen_ai.is_streaming``), when a model call inside it streamed (outside
prompt flow), or when a child of the flow that wraps a stream ends after the flow did (prompt flow
serving: the flow hands the stream to the server and ends; the child ends when the server has read
it). Its last byte is the end of the last span of the request; its first byte the flow's own
first-chunk signal, else the earliest one inside it (``vocabulary.first_chunk_ns``), or, where the
spans carry none and the flow handed its stream over (prompt flow serving), the end of the flow span:
the moment the flow handed the stream to the server, which writes the first chunk right after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flowtel import semconv as sc
from flowtel._log import warn_once
from flowtel.selfmetrics import SelfMetrics
from flowtel.spans import KIND_SERVER, SpanData

from . import catalog as c
from .analysis import ROLE_FLOW, ROLE_NODE, ROLE_RPC, SpanRole, is_failed, is_pf_span
from .correlation import RequestRecord
from .metrics import FlowtelMetrics, Measurement
from .vocabulary import (
    exception_type,
    first_chunk_ns,
    genai_operation,
    http_status,
    ignored_token_counts,
    is_streaming,
    pf_failed_flow_status,
    provider,
    request_model,
    response_model,
    short_error_name,
    token_usage,
)


def _exception(span: SpanData) -> str:
    if not is_failed(span):
        return ""
    error = exception_type(span)
    return short_error_name(error) if error else "unknown"


def _stream_facts(flow: SpanRole) -> tuple[bool, int | None]:
    """(whether a model call below the flow streamed, the earliest first chunk below it): outside prompt flow
    nothing marks a flow as streamed, so a flow that relays a streamed call is a streamed request."""
    streamed, first = False, None
    stack = list(flow.children)
    while stack:
        cur = stack.pop()
        span = cur.span
        if span.events or cur.is_llm_call:  # first-chunk signals sit on events or on the model call itself
            at = first_chunk_ns(span)
            if at is not None and (first is None or at < first):
                first = at
        if cur.is_llm_call and not streamed:
            streamed = is_streaming(span)
        stack.extend(cur.children)
    return streamed or first is not None, first


def _handed_over_stream(flow: SpanRole) -> bool:
    """A child of the flow wraps a stream and outlived the flow: the flow returned the stream to its server."""
    end = flow.span.end_ns
    return any(is_streaming(child.span) and child.span.end_ns > end for child in flow.children)


def _last_end_ns(flow: SpanRole) -> int:
    """The end of the last span at or below the flow (linear in the subtree)."""
    last = flow.span.end_ns
    stack = list(flow.children)
    while stack:
        cur = stack.pop()
        last = max(last, cur.span.end_ns)
        stack.extend(cur.children)
    return last


class Deriver:
    def __init__(self, metrics: FlowtelMetrics, genai_skip_scopes: frozenset[str],
                 self_metrics: SelfMetrics | None = None) -> None:
        self._m = metrics
        self._skip = genai_skip_scopes
        self._self = self_metrics

    def derive(self, roles: Iterable[SpanRole]) -> list[RequestRecord]:
        """Record the metrics of a local trace; return what it says about each request (for feedback)."""
        out: list[Measurement] = []
        requests: dict[int, RequestRecord] = {}
        # flow span -> [input, output, model, rank]: the model is the one that wrote the answer, i.e. of the
        # last call to finish that produced output (an embedding call also reports input tokens).
        usage: dict[int, list[Any]] = {}
        ignored = 0
        for r in roles:
            role = r.role
            if role == ROLE_NODE:
                self._node(r, out)
            elif role == ROLE_RPC:
                self._rpc(r, out)
            elif role == ROLE_FLOW:
                requests[id(r.span)] = self._flow(r, out)
            if r.is_llm_call:
                ignored += ignored_token_counts(r.span)
                tokens, engine = self._llm_call(r, out)
                if r.flow_span is not None:
                    total = usage.setdefault(id(r.flow_span), [0, 0, "", (False, 0)])
                    total[0] += tokens[0] or 0
                    total[1] += tokens[1] or 0
                    rank = (bool(tokens[1]), r.span.end_ns)
                    if rank > total[3]:
                        total[2], total[3] = engine, rank
        self._m.record_all(out)
        if ignored and self._self is not None:
            self._self.add("flowtel.token_counts.ignored", ignored)
            warn_once("tokens:ignored", "spans stated token counts that are negative or not integers; they are "
                      "ignored and counted in flowtel_token_counts_ignored_total")
        for key, (tokens_in, tokens_out, engine, _) in usage.items():
            record = requests.get(key)
            if record is not None:
                record.input_tokens, record.output_tokens, record.model = tokens_in, tokens_out, engine
        return list(requests.values())

    def _flow(self, r: SpanRole, out: list[Measurement]) -> RequestRecord:
        flow, request = r.span, r.request_span or r.span
        res = flow.resource
        ex = (flow.trace_id, flow.span_id)
        status = http_status(request) if request.kind == KIND_SERVER else None
        failed = is_failed(flow) or (status is not None and status >= 500)
        if status is None and failed:  # no server span: what the producer's spans say the app answered
            status = pf_failed_flow_status(flow) or 500
        code = str(status) if status is not None else "200"
        exception = _exception(flow) or ("unknown" if failed else "")
        handed_over = _handed_over_stream(r)
        streaming = handed_over or is_streaming(flow) or is_streaming(request)
        below_first: int | None = None
        if streaming or not is_pf_span(flow):  # the walk below is only needed then (most traces are neither)
            below_streamed, below_first = _stream_facts(r)
            streaming = streaming or below_streamed
        flag = "True" if streaming else "False"
        out.append((c.FLOW_REQUEST, 1, (r.flow, code, exception, flag), res, None))
        end_ns = max(_last_end_ns(r) if streaming else flow.end_ns, request.end_ns)
        total_ms = (end_ns - request.start_ns) / 1e6
        record = RequestRecord(flow.trace_id, (flow.span_id, request.span_id, request.parent_span_id), r.flow,
                               code, failed, total_ms, res)
        if not streaming:
            out.append((c.FLOW_LATENCY, total_ms, (r.flow, code, flag, "default"), res, ex))
            return record
        out.append((c.FLOW_LATENCY, total_ms, (r.flow, code, flag, "lastbyte"), res, ex))
        own_first = first_chunk_ns(flow)
        first = own_first if own_first is not None else below_first  # what the flow handed on, else below
        if first is None and handed_over:
            first = flow.end_ns
        if first is None:
            warn_once(f"nofirstchunk:{r.flow}", "streamed flow %s has no first-chunk event; its firstbyte latency "
                      "and streaming duration are not recorded (see README, Streaming)", r.flow)
            return record
        out.append((c.FLOW_LATENCY, (first - request.start_ns) / 1e6, (r.flow, code, flag, "firstbyte"), res, ex))
        out.append((c.FLOW_STREAMING_RESPONSE_DURATION, (end_ns - first) / 1e6, (r.flow,), res, ex))
        return record

    @staticmethod
    def _node(r: SpanRole, out: list[Measurement]) -> None:
        span = r.span
        exception = _exception(span)
        run_status = "Failed" if exception else "Completed"
        out.append((c.NODE_LATENCY, span.duration_ms, (r.flow, r.node, run_status), span.resource,
                    (span.trace_id, span.span_id)))
        out.append((c.NODE_REQUEST, 1, (r.flow, r.node, exception, run_status), span.resource, None))

    @staticmethod
    def _rpc(r: SpanRole, out: list[Measurement]) -> None:
        span = r.span
        out.append((c.RPC_LATENCY, span.duration_ms, (r.flow, r.node, r.api_call), span.resource,
                    (span.trace_id, span.span_id)))
        out.append((c.RPC_REQUEST, 1, (r.flow, r.node, r.api_call, _exception(span)), span.resource, None))

    def _llm_call(self, r: SpanRole, out: list[Measurement]) -> tuple[tuple[int | None, int | None], str]:
        span = r.span
        usage = token_usage(span) or (None, None)
        req_model, resp_model = request_model(span), response_model(span)
        engine = req_model or resp_model or ""
        res = span.resource
        if usage[0]:
            out.append((c.TOKEN_CONSUMPTION, usage[0], (r.flow, r.node, engine, "prompt_tokens"), res, None))
        if usage[1]:
            out.append((c.TOKEN_CONSUMPTION, usage[1], (r.flow, r.node, engine, "completion_tokens"), res, None))
        if span.scope_name in self._skip:
            return usage, engine
        error = _exception(span) or None
        base = (genai_operation(span) or "", provider(span) or "", req_model or "", resp_model or "",
                str(span.attributes.get(sc.SERVER_ADDRESS, "")))
        out.append((c.GENAI_OPERATION_DURATION, span.duration_ms / 1000, (*base, error or ""), res,
                    (span.trace_id, span.span_id)))
        if usage[0] is not None:
            out.append((c.GENAI_TOKEN_USAGE, usage[0], (*base, "input"), res, None))
        if usage[1] is not None:
            out.append((c.GENAI_TOKEN_USAGE, usage[1], (*base, "output"), res, None))
        return usage, engine

    def feedback(self, flow: str, score_label: str, correlated: bool, resource: Mapping[str, Any]) -> None:
        self._m.record(c.FEEDBACK, 1, (flow, score_label, "true" if correlated else "false"), resource)
