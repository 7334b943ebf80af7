"""A ``metrics`` or ``logs`` pipeline: intake, batching, and the exporters. flowtel's logic is for traces only.

Receivers hand over each request's serialized bytes (already validated by upb) with its
item count; the worker joins queued requests into one per send (concatenated OTLP
requests are one request: their resource lists append), parses it once and gives it to
every exporter, each of which queues on its own. Batches are cut at request boundaries only, so
``send_batch_max_size`` is met unless one request alone is larger.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Protocol

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from flowtel._log import logger
from flowtel.selfmetrics import SelfMetrics
from flowtel.signals import Signal

from .log_content import strip_content
from .processors.batch import BatchConfig
from .processors.memory_limiter import MemoryLimiter
from .queued import QueuedPipeline

#: Items (metric points or log records) queued per pipeline before receivers answer 503 / UNAVAILABLE.
DEFAULT_MAX_QUEUE_ITEMS = 100_000


class SignalExporter(Protocol):
    id: str


#: ``export_metrics(request, payload, points)`` / ``export_logs(request, payload, records)``: the batch parsed once
#: for every exporter that reads it, and its bytes for those that forward them as they are.
Export = Callable[[Message, bytes, int], None]


class RequestPipeline(QueuedPipeline):
    def __init__(self, pipeline_id: str, signal: Signal, exporters: Sequence[SignalExporter],
                 self_metrics: SelfMetrics, *, memory_limiters: Sequence[MemoryLimiter] = (),
                 batch: BatchConfig | None = None, max_queue: int = DEFAULT_MAX_QUEUE_ITEMS,
                 capture_content: bool = False) -> None:
        super().__init__(pipeline_id, self_metrics, memory_limiters, batch, max_queue, signal.unit)
        self.signal = signal
        # Logs may carry GenAI messages; without content capture they leave flowtel without them (log_content).
        self._strip_content = signal.name == "logs" and not capture_content
        # Each exporter's entry point for this signal (export_metrics / export_logs), looked up once.
        self._exports: tuple[tuple[str, Export], ...] = tuple(
            (e.id, getattr(e, f"export_{signal.name}")) for e in exporters)
        self._intake: collections.deque[tuple[bytes, int]] = collections.deque()

    def consume(self, payload: bytes, n: int) -> None:
        self._enqueue((payload, n), n)

    # The worker.
    def _drain_once(self) -> None:
        with self._run_lock:
            with self._intake_lock:
                requests, self._intake = self._intake, collections.deque()
                self._queued = 0
            limit = self._batch.send_batch_max_size
            parts: list[bytes] = []
            count = 0
            for payload, n in requests:
                if parts and limit and count + n > limit:
                    self._emit(b"".join(parts), count)
                    parts, count = [], 0
                parts.append(payload)
                count += n
            if parts:
                self._emit(b"".join(parts), count)

    def _emit(self, payload: bytes, n: int) -> None:
        try:
            request = self.signal.request.FromString(payload)
        except Exception:  # each part was parsed on receipt; joined they parse too, unless flowtel has a bug
            logger.exception("pipeline %s could not join a batch of %d %s", self.id, n, self.signal.unit)
            self._self.dropped("internal_error", n, self.signal.unit)
            return
        if self._strip_content:
            try:
                if not isinstance(request, ExportLogsServiceRequest):  # only logs pipelines strip: fail closed
                    raise TypeError(f"no content removal for {type(request).__name__}")
                if strip_content(request):
                    payload = request.SerializeToString()
            except Exception:  # fail closed: content that could not be removed is not sent
                logger.exception("pipeline %s could not remove content from %d log records", self.id, n)
                self._self.dropped("internal_error", n, self.signal.unit)
                return
        for exporter_id, export in self._exports:
            try:
                export(request, payload, n)
            except Exception:
                logger.exception("exporter %s failed to take a batch of %d %s", exporter_id, n, self.signal.unit)
                self._self.dropped("internal_error", n, self.signal.unit)

    def shutdown(self) -> None:
        """Stop taking data and hand what is queued to the exporters."""
        self._stop_intake()
