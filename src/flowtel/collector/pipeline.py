"""One ``traces`` pipeline of the collector: intake, the flowtel worker, and the exporters.

Receivers call ``consume`` on their own threads; it only checks the limits and appends
(the request thread stays cheap, as in-process). One worker thread per pipeline runs
the shared ``TracePipeline`` with ``apply_to_otlp_span``, encodes released spans into
OTLP requests and hands them to every exporter, each of which queues on its own.
"""

from __future__ import annotations

import collections
import operator
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from flowtel._log import logger, warn_once
from flowtel.config import FlowtelConfig
from flowtel.otlp import apply_to_otlp_span, encode_request
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.processors.pipeline import TracePipeline
from flowtel.selfmetrics import SelfMetrics
from flowtel.spans import SpanData

from .processors.batch import BatchConfig
from .processors.memory_limiter import MemoryLimiter
from .queued import QueuedPipeline

DEFAULT_MAX_QUEUE = 20_000
_SPAN_FRAMING = 6  # a ScopeSpans.spans tag and a length varint of at most 5 bytes
_GROUP_FRAMING = 12  # the ResourceSpans and ScopeSpans tags and their length varints


_SPAN_BYTES = operator.itemgetter(0)
_GROUP = operator.itemgetter(1)


def _group_bytes(group: Any) -> int:
    """The bytes ``encode_request`` writes around the spans of one resource and scope."""
    return (len(group.resource_head) + len(group.resource_tail) + len(group.scope_head) + len(group.scope_tail)
            + _GROUP_FRAMING)


def split_batches(ready: list[Any], max_spans: int, max_bytes: int) -> tuple[list[list[Any]], list[int]]:
    """``ready`` (``(span bytes, group, ...)`` items) cut into export batches of at most ``max_spans`` spans
    (0: any number) whose encoded request is at most ``max_bytes`` (0: any size); and the sizes of the spans
    that alone exceed ``max_bytes``, left out. Sizes are upper bounds, so no request can exceed the limit."""
    if not max_bytes or (
            len(ready) * _SPAN_FRAMING + sum(map(len, map(_SPAN_BYTES, ready))) + sum(map(_group_bytes, set(map(
                _GROUP, ready)))) <= max_bytes):  # the usual case, counted at C speed: no request near the limit
        size = max_spans or len(ready)
        return [ready[start:start + size] for start in range(0, len(ready), size)], []
    batches: list[list[Any]] = []
    too_large: list[int] = []
    batch: list[Any] = []
    used = 0
    groups: set[int] = set()
    for item in ready:
        group = item[1]
        span_cost = len(item[0]) + _SPAN_FRAMING
        cost = span_cost if id(group) in groups else span_cost + _group_bytes(group)
        if batch and (used + cost > max_bytes or len(batch) == max_spans):
            batches.append(batch)
            batch, used, groups = [], 0, set()
            cost = span_cost + _group_bytes(group)
        if cost > max_bytes:  # too large even on its own (cost includes its group's framing here)
            too_large.append(len(item[0]))
            continue
        batch.append(item)
        groups.add(id(group))
        used += cost
    if batch:
        batches.append(batch)
    return batches, too_large


def _taken(chunks: collections.deque[list[SpanData]]) -> Iterator[SpanData]:
    """The queued spans, oldest first, each dropped from the queue as it is handed out: the pipeline frees a
    span as soon as it is done with it, while the span is still in the CPU's cache, instead of freeing the
    whole batch at the end (in the profile, that end-of-batch free was 13 % of the collector's CPU)."""
    while chunks:
        chunk = chunks.popleft()
        chunk.reverse()
        while chunk:
            yield chunk.pop()


class TracesExporter(Protocol):
    id: str

    def start(self) -> None: ...
    def export(self, payload: bytes, spans: int) -> None: ...
    def shutdown(self, deadline: float) -> None: ...


class TracesPipeline(QueuedPipeline):
    def __init__(self, pipeline_id: str, exporters: Sequence[TracesExporter], self_metrics: SelfMetrics, *,
                 flowtel: tuple[FlowtelConfig, FlowtelMetrics] | None = None,
                 memory_limiters: Sequence[MemoryLimiter] = (), batch: BatchConfig | None = None) -> None:
        super().__init__(pipeline_id, self_metrics, memory_limiters, batch,
                         flowtel[0].max_queue_size if flowtel else DEFAULT_MAX_QUEUE, "spans")
        self._exporters = tuple(exporters)
        self._trace_pipeline = None
        if flowtel is not None:
            self._trace_pipeline = TracePipeline(flowtel[0], flowtel[1], self_metrics, apply_to_otlp_span,
                                                 {"pipeline": pipeline_id})
        self._intake: collections.deque[list[SpanData]] = collections.deque()

    def consume(self, spans: list[SpanData]) -> None:
        """Queue adapted spans; ``admit`` already checked the limits, this re-checks the queue under its lock."""
        n = len(spans)
        self._enqueue(spans, n)

    # The worker.
    def _drain_once(self) -> None:
        with self._run_lock:
            with self._intake_lock:
                chunks, self._intake = self._intake, collections.deque()
                n, self._queued = self._queued, 0
            try:
                if self._trace_pipeline is not None:
                    ready = self._trace_pipeline.process(_taken(chunks), time.monotonic_ns())
                else:
                    ready = [span.native for span in _taken(chunks)]
                    self._self.processed(len(ready))
                self._emit(ready)
            except Exception:
                logger.exception("pipeline %s failed on a batch of %d spans", self.id, n)
                self._self.dropped("internal_error", n)

    def _emit(self, ready: list[Any]) -> None:
        if not ready:
            return
        limit = self._batch.send_batch_max_bytes
        batches, too_large = split_batches(ready, self._batch.send_batch_max_size, limit)
        if too_large:
            self._self.dropped("too_large", len(too_large))
            warn_once(f"too_large:{self.id}", "pipeline %s: a span of %d bytes exceeds batch.send_batch_max_bytes "
                      "(%d) on its own; dropped and counted (reason too_large)", self.id, max(too_large), limit)
        for chunk in batches:
            payload = encode_request(chunk)
            for exporter in self._exporters:
                try:
                    exporter.export(payload, len(chunk))
                except Exception:
                    logger.exception("exporter %s failed to take a batch of %d spans", exporter.id, len(chunk))
                    self._self.dropped("internal_error", len(chunk))

    def shutdown(self) -> None:
        """Stop taking data, process what is queued and release every held trace to the exporters."""
        self._stop_intake()
        if self._trace_pipeline is not None:
            with self._run_lock:
                self._emit(self._trace_pipeline.drain())
