"""The collector's intake: one receiver feeding several pipelines, each working through (and emptying) its own
queue, so spans are freed as soon as their trace is done."""

from __future__ import annotations

import collections

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flowtel.collector.pipeline import TracesPipeline, _taken
from flowtel.collector.receivers.otlp import Intake
from flowtel.config import FlowtelConfig
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics


class _Recorder:
    def __init__(self, exporter_id: str) -> None:
        self.id = exporter_id
        self.payloads: list[bytes] = []

    def start(self) -> None: ...

    def export(self, payload: bytes, spans: int) -> None:
        self.payloads.append(payload)

    def shutdown(self, deadline: float) -> None: ...

    def span_names(self) -> list[str]:
        return sorted(span.name for payload in self.payloads
                      for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
                      for ss in rs.scope_spans for span in ss.spans)


def _request(traces: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for t in range(1, traces + 1):
        trace_id = t.to_bytes(16, "big")
        child = spans.add(trace_id=trace_id, span_id=(2 * t).to_bytes(8, "big"), name=f"child{t}")
        child.parent_span_id = (2 * t + 1).to_bytes(8, "big")
        spans.add(trace_id=trace_id, span_id=(2 * t + 1).to_bytes(8, "big"), name=f"root{t}")
    return request


def test_taken_hands_out_oldest_first_and_empties_the_queue() -> None:
    chunks = collections.deque([[1, 2, 3], [4], [], [5, 6]])
    first = [chunks[0], chunks[3]]
    assert list(_taken(chunks)) == [1, 2, 3, 4, 5, 6]  # type: ignore[arg-type]
    assert not chunks and first == [[], []]


def test_pipelines_sharing_a_receiver_each_get_every_span() -> None:
    self_metrics = SelfMetrics()
    config = FlowtelConfig()
    pipelines, recorders = [], []
    for name in ("a", "b"):
        recorder = _Recorder(f"rec/{name}")
        pipeline = TracesPipeline(f"traces/{name}", [recorder], self_metrics,
                                  flowtel=(config, FlowtelMetrics(config, self_metrics)))
        pipelines.append(pipeline)
        recorders.append(recorder)
    intake = Intake("otlp", pipelines, self_metrics)
    for _ in range(2):
        request = _request(3)
        intake.accept(request, "grpc", request.SerializeToString())
        pipelines[0]._drain_once()  # empties its queue first: the other pipeline must still see every span
        pipelines[1]._drain_once()
    expected = sorted([f"{kind}{t}" for t in (1, 2, 3) for kind in ("child", "root")] * 2)
    assert [r.span_names() for r in recorders] == [expected, expected]
