"""Crafted OTLP requests that once cost the collector far more than their size (issue "hardened under attack").

Shared by the attack tests (``tests/test_bounds.py``) and ``bench/bench_attacks.py``, which prints the
before / after figures. Each builder returns serialized ``ExportTraceServiceRequest`` bytes shaped as prompt
flow writes its spans (``framework=promptflow``, ``span_type``), the shape flowtel derives metrics from.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

_ids = itertools.count(1)
_HAS_IS_REMOTE = 0x100  # the SDK's flags: says whether the parent is remote (here: never)


def new_trace_id() -> bytes:
    return (0xA77AC << 80 | next(_ids)).to_bytes(16, "big")


def new_span_id() -> bytes:
    return (0x5A << 56 | next(_ids)).to_bytes(8, "big")


def _kv(key: str, value: Any) -> KeyValue:
    kv = KeyValue(key=key)
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = str(value)
    return kv


def pf_span(trace_id: bytes, span_id: bytes, parent: bytes, name: str, span_type: str, start_ns: int = 1_000_000,
            end_ns: int = 2_000_000, **attributes: Any) -> Span:
    span = Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name, kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=start_ns, end_time_unix_nano=end_ns, flags=_HAS_IS_REMOTE)
    span.attributes.extend([_kv("framework", "promptflow"), _kv("span_type", span_type)])
    span.attributes.extend(_kv(k, v) for k, v in attributes.items())
    return span


def request(spans: list[Span], service: str = "attacks") -> bytes:
    message = ExportTraceServiceRequest()
    rs = message.resource_spans.add()
    rs.resource.attributes.append(_kv("service.name", service))
    rs.scope_spans.add().spans.extend(spans)
    return message.SerializeToString()


def flow_trace(flow: str, node: str = "answer", model: str = "gpt-4o-mini", prompt_tokens: Any = 7,
               inputs: str | None = None, canary: str = "") -> list[Span]:
    """A DAG flow: the flow span, one node, the node's LLM call (children first, as they end)."""
    trace_id = new_trace_id()
    flow_id, node_id, llm_id = new_span_id(), new_span_id(), new_span_id()
    llm_inputs = inputs if inputs is not None else json.dumps(
        {"model": model, "messages": [{"role": "user", "content": canary or "hello"}]})
    llm = pf_span(trace_id, llm_id, node_id, "openai_chat", "LLM", 1_200_000, 1_800_000, node_name=node,
                  function="openai.resources.chat.completions.Completions.create", inputs=llm_inputs,
                  output=json.dumps({"id": "c1", "choices": [{"finish_reason": "stop",
                                                              "message": {"content": canary or "hi"}}]}),
                  **{"llm.usage.prompt_tokens": prompt_tokens, "llm.usage.completion_tokens": 3,
                     "llm.response.model": model})
    node_span = pf_span(trace_id, node_id, flow_id, node, "Function", 1_100_000, 1_900_000, node_name=node,
                        inputs=json.dumps({"question": canary or "q"}))
    flow_span = pf_span(trace_id, flow_id, b"", flow, "Flow", 1_000_000, 2_000_000,
                        inputs=json.dumps({"question": canary or "q"}), output=json.dumps({"answer": canary or "a"}))
    return [llm, node_span, flow_span]


def long_flow_names(flows: int, name_bytes: int, first: int = 0) -> bytes:
    """Item 5: flows ``first`` to ``first + flows - 1``, each named with ``name_bytes`` bytes (distinct in the
    first few); each name becomes a label value on every flow, node and call metric."""
    spans: list[Span] = []
    for i in range(first, first + flows):
        spans += flow_trace(f"{i:06d}-" + "f" * (name_bytes - 7))
    return request(spans)


def nested_calls(depth: int, name_bytes: int = 8) -> bytes:
    """Items 5 and 6: a flow, a node, and ``depth`` calls each nested in the previous one (``api_call`` paths)."""
    trace_id = new_trace_id()
    flow_id, node_id = new_span_id(), new_span_id()
    spans = [pf_span(trace_id, flow_id, b"", "nested", "Flow"), pf_span(trace_id, node_id, flow_id, "tool", "Function",
                                                                      node_name="tool")]
    parent = node_id
    for i in range(depth):
        span_id = new_span_id()
        spans.append(pf_span(trace_id, span_id, parent, f"c{i:0{name_bytes - 1}d}", "Function"))
        parent = span_id
    spans.reverse()  # children end first
    return request(spans)


def many_roots(held: int, roots: int) -> list[bytes]:
    """Item 7: ``held`` spans waiting in one trace for parents that never come, then ``roots`` local roots of
    that trace, each of which used to scan every held span. Two requests: the held spans, then the roots."""
    trace_id = new_trace_id()
    orphans = [pf_span(trace_id, new_span_id(), new_span_id(), "orphan", "Function") for _ in range(held)]
    root_spans = [pf_span(trace_id, new_span_id(), b"", "root", "Function") for _ in range(roots)]
    return [request(orphans), request(root_spans)]


def deep_json(levels: int) -> str:
    """Item 8: valid JSON nested ``levels`` deep: deeper than the interpreter's recursion limit."""
    return "[" * levels + "]" * levels
