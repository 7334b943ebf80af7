"""What every collector pipeline has: a bounded intake queue that receivers append to, and one worker thread.

Receivers call ``admit`` (memory limiters, then the queue bound) before they adapt a request and append
under the intake lock; the worker wakes every ``batch.timeout`` or once ``send_batch_size`` items wait,
and ``_drain_once`` (each pipeline's own) takes everything queued. ``shutdown`` stops intake, lets the
worker finish, and drains what is left.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import Any

from flowtel.selfmetrics import SelfMetrics

from .processors.batch import BatchConfig
from .processors.memory_limiter import MemoryLimiter
from .refusal import Refused


class QueuedPipeline:
    def __init__(self, pipeline_id: str, self_metrics: SelfMetrics, memory_limiters: Sequence[MemoryLimiter],
                 batch: BatchConfig | None, max_queue: int, unit: str) -> None:
        self.id = pipeline_id
        self._self = self_metrics
        self._limiters = tuple(memory_limiters)
        self._batch = batch or BatchConfig()
        self._max_queue = max_queue
        self._unit = unit
        self._intake: collections.deque[Any] = collections.deque()  # what each pipeline's drain takes
        self._queued = 0
        self._intake_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name=f"flowtel-pipeline-{pipeline_id}", daemon=True)
        self_metrics.register_gauge("queue", lambda: self._queued, {"pipeline": pipeline_id})

    def start(self) -> None:
        self._worker.start()

    # Receiver threads.
    def admit(self, n: int) -> None:
        """Refuse early, before the request is adapted: an overloaded collector must not spend its
        CPU on data it will refuse (that turned overload into collapse in the benchmark)."""
        for limiter in self._limiters:
            limiter.check()
        self._check_queue(n)

    def _check_queue(self, n: int) -> None:
        if self._stopping:
            raise Refused("shutting_down", "collector is shutting down; retry against another instance")
        if self._queued + n > self._max_queue and self._queued:
            raise Refused("queue_full", f"collector queue is full ({self._max_queue} {self._unit}); retry later")

    def _enqueue(self, item: Any, n: int) -> None:
        """Queue one request's ``n`` items under the intake lock (the bound re-checked there), waking the worker
        once a batch's worth waits."""
        with self._intake_lock:
            self._check_queue(n)
            self._intake.append(item)
            self._queued += n
        if self._queued >= self._batch.send_batch_size:
            self._wake.set()

    # The worker.
    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._batch.timeout)
            self._wake.clear()
            self._drain_once()

    def _drain_once(self) -> None:
        raise NotImplementedError

    def _stop_intake(self) -> None:
        """Stop taking data, let the worker finish its round, and process what is still queued."""
        with self._intake_lock:
            self._stopping = True
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout=10)
        self._drain_once()
