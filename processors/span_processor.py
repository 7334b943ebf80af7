"""``FlowtelSpanProcessor``: the in-process host of the shared pipeline.

The request thread only appends the ended span to a bounded queue (no parsing, no
copying, no locks beyond the deque's). One worker thread drains the queue, runs the
pipeline, and hands the enriched spans to the span processors behind it, typically a
``BatchSpanProcessor`` per exporter, so exporters receive enriched spans and keep their
own batching, retry and isolation.

    provider.add_span_processor(FlowtelSpanProcessor(
        [BatchSpanProcessor(OTLPSpanExporter())], metrics=flowtel_metrics))
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from flowtel._fork import reinit_after_fork
from flowtel._gc import gc_paused
from flowtel._log import logger
from flowtel._otel_sdk import from_readable_span, readable_span_fields
from flowtel.config import FlowtelConfig
from flowtel.selfmetrics import SelfMetrics
from flowtel.spans import Enrichment, SpanData

from .metrics import FlowtelMetrics
from .pipeline import TracePipeline


def apply_to_readable_span(data: SpanData, enrichment: Enrichment) -> ReadableSpan:
    """A new SDK span carrying the enrichment; ended spans are immutable, so we copy the shell, not the values.
    Unchanged events and links are the old span's own bounded lists, which keeps their dropped counts."""
    span: ReadableSpan = data.native
    # The adapter copied the attributes into a dict for this span alone and nothing reads them after apply:
    # edit in place (a mapping from elsewhere is copied first).
    attributes = data.attributes if isinstance(data.attributes, dict) else dict(data.attributes)
    for key in enrichment.removed_attributes:
        attributes.pop(key, None)
    attributes.update(enrichment.added)
    name, context, parent, resource, kind, status, start, end, scope, events, links = readable_span_fields(
        span, data.events)
    if enrichment.removed_events or enrichment.added_events:
        events = data.events
        if enrichment.removed_events:
            events = tuple(e for e in events if e.name not in enrichment.removed_events)
        if enrichment.added_events:
            events = (*events, *(Event(e.name, dict(e.attributes), e.timestamp) for e in enrichment.added_events))
    if enrichment.set_error_status is not None:
        status = Status(StatusCode.ERROR, enrichment.set_error_status)
    return ReadableSpan(name, context, parent, resource, attributes, events, links, kind, None, status, start, end,
                        scope)


def _adapted(queue: collections.deque[ReadableSpan], n: int, self_metrics: SelfMetrics) -> Iterator[SpanData]:
    """The first ``n`` queued spans, adapted one by one as the pipeline takes them (more may be queued meanwhile).
    A span flowtel cannot even read is dropped and counted (fail closed: its content could not be removed),
    and the rest of the batch goes on."""
    for _ in range(n):
        span = queue.popleft()
        try:
            data = from_readable_span(span)
        except Exception:
            logger.debug("flowtel cannot read span %r", span, exc_info=True)
            self_metrics.dropped("unreadable_span")
            continue
        yield data


#: ``on_start`` implementations that do nothing: a processor with one of these needs no call when a span starts.
_NO_OP_STARTS = frozenset({SpanProcessor.on_start, SimpleSpanProcessor.on_start, BatchSpanProcessor.on_start})


def _starters(processors: Sequence[SpanProcessor]) -> tuple[SpanProcessor, ...]:
    return tuple(p for p in processors if getattr(type(p), "on_start", None) not in _NO_OP_STARTS)


class FlowtelSpanProcessor(SpanProcessor):
    def __init__(self, span_processors: Sequence[SpanProcessor], *, metrics: FlowtelMetrics,
                 self_metrics: SelfMetrics, config: FlowtelConfig | None = None) -> None:
        self._config = config or FlowtelConfig.from_env()
        self._downstream = tuple(span_processors)
        self._starters = _starters(self._downstream)
        self._self = self_metrics
        self._pipeline = TracePipeline(self._config, metrics, self_metrics, apply_to_readable_span)
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._max_queue = self._config.max_queue_size
        self._wake_at = min(512, self._max_queue)
        self._wake = threading.Event()
        self._shutdown = False
        self._lock = threading.Lock()  # serialises pipeline runs between the worker and force_flush
        self._gc_pause = gc_paused if self._config.pause_gc else contextlib.nullcontext
        self_metrics.register_gauge("queue", lambda: len(self._queue))
        self._start_worker()
        reinit_after_fork(self, "_lock", "_wake", restart=FlowtelSpanProcessor._after_fork)

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name="flowtel-worker", daemon=True)
        self._worker.start()

    def _after_fork(self) -> None:
        """In a forked child: the parent's queued and held spans are the parent's to export (as the SDK's
        BatchSpanProcessor clears its queue); the child starts empty with a worker of its own."""
        self._queue.clear()
        self._pipeline.forget_held()
        if not self._shutdown:
            self._start_worker()

    # The request thread: keep this path to a length check and an append.
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        # Processors behind flowtel that act when a span starts (OpenLLMetry's sets its workflow and entity names
        # then) still see the live span; exporters' processors do nothing there and are skipped.
        for processor in self._starters:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if len(self._queue) >= self._max_queue:
            self._self.dropped("queue_full")
            return
        self._queue.append(span)
        if len(self._queue) >= self._wake_at:
            self._wake.set()

    # The worker thread.
    def _run(self) -> None:
        delay = self._config.schedule_delay
        while not self._shutdown:
            self._wake.wait(delay)
            self._wake.clear()
            self._drain_once()

    def _drain_once(self) -> None:
        # Spans are adapted as the pipeline takes them and freed, with the spans they wrap, as soon as their
        # trace is done: while still in the CPU's cache, and while collection is still paused (the
        # young-generation count is allocations minus deallocations, so the enriched copies then about
        # balance the originals and resuming does not start a walk over the whole batch).
        with self._lock, self._gc_pause():
            n = len(self._queue)
            try:
                ready = self._pipeline.process(_adapted(self._queue, n, self._self), time.monotonic_ns())
            except Exception:  # the pipeline already guards per trace; this guards the worker itself
                logger.exception("flowtel worker failed on a batch of %d spans", n)
                self._self.dropped("internal_error", n)
                return
            self._forward(ready)

    def _forward(self, ready: Sequence[ReadableSpan]) -> None:
        for processor in self._downstream:
            for span in ready:
                processor.on_end(span)

    def add_downstream(self, processor: SpanProcessor) -> None:
        """Put one more span processor behind flowtel: it receives the enriched spans from now on."""
        with self._lock:
            self._downstream = (*self._downstream, processor)
            self._starters = _starters(self._downstream)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Process everything queued now; traces whose root is still running stay held."""
        self._drain_once()
        deadline = time.monotonic() + timeout_millis / 1000
        ok = True
        for processor in self._downstream:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            ok = processor.force_flush(remaining) and ok
        return ok

    def shutdown(self) -> None:
        """Process the queue, release every held trace as it is, then shut the exporters down."""
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        self._worker.join(timeout=5)
        self._drain_once()
        with self._lock:
            self._forward(self._pipeline.drain())
        for processor in self._downstream:
            processor.shutdown()
