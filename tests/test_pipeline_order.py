"""A batch that carries a root ahead of its children still releases the trace whole."""

from __future__ import annotations

from flowtel.config import FlowtelConfig
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.processors.pipeline import TracePipeline
from flowtel.selfmetrics import SelfMetrics
from flowtel.spans import KIND_INTERNAL, STATUS_UNSET, SpanData


def _span(span_id: int, parent: int, name: str, attributes: dict) -> SpanData:
    return SpanData(trace_id=7, span_id=span_id, parent_span_id=parent, parent_is_remote=False, name=name,
                    kind=KIND_INTERNAL, start_ns=0, end_ns=5_000_000, status=STATUS_UNSET, status_message="",
                    attributes=attributes, events=(), native=name)


def test_root_first_in_a_batch_is_not_released_alone() -> None:
    self_metrics = SelfMetrics()
    config = FlowtelConfig()
    pipeline = TracePipeline(config, FlowtelMetrics(config, self_metrics), self_metrics, lambda s, e: s.native)
    flow = {"framework": "promptflow", "span_type": "Flow"}
    node = {"framework": "promptflow", "span_type": "Function", "node_name": "answer"}
    out = pipeline.process([_span(1, 0, "flow", flow), _span(2, 1, "answer", node), _span(3, 2, "inner", node)], 0)
    assert sorted(out) == ["answer", "flow", "inner"]
    assert self_metrics.count("flowtel.traces.released", reason="complete") == 1
    assert self_metrics.count("flowtel.traces.released", reason="late") == 0
