"""The queue and retry loop in front of a network exporter, as the upstream collector's exporterhelper.

``export`` only enqueues; ``num_consumers`` threads send, retrying retryable failures
with exponential backoff (honouring a server's requested delay) for up to
``max_elapsed_time``. With ``storage`` set, each batch is a file in a directory until it
is delivered or finally refused, so a restart loses nothing already accepted: the next
start picks up the files left behind. Every batch given up on is counted by reason in
``otelcol_exporter_send_failed_spans`` and ``flowtel_spans_dropped_total`` and logged once.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field, field_validator

from flowtel._log import logger, warn_once
from flowtel.collector.settings import Duration, Model, PositiveDuration
from flowtel.selfmetrics import SelfMetrics


class QueueSettings(Model):
    #: Accepted for upstream configs; flowtel's network exporters always queue (the pipeline never waits on them).
    enabled: bool = True

    @field_validator("enabled")
    @classmethod
    def _always(cls, value: bool) -> bool:
        if not value:
            raise ValueError("true: flowtel's network exporters always queue, so the pipeline never waits on them")
        return value
    #: Threads sending batches in parallel.
    num_consumers: int = Field(2, ge=1)
    #: Batches held before new ones are refused (``otelcol_exporter_enqueue_failed_spans``).
    queue_size: int = Field(1000, ge=1)
    #: A ``file_storage`` extension id: keep the queue on disk so it survives restarts.
    storage: str | None = None


class RetrySettings(Model):
    enabled: bool = True
    initial_interval: PositiveDuration = 5.0
    max_interval: PositiveDuration = 30.0
    #: Give a batch up after this long; 0 retries for ever.
    max_elapsed_time: Duration = 300.0
    multiplier: float = Field(1.5, ge=1)
    randomization_factor: float = Field(0.5, ge=0, le=1)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one attempt did: delivered, or failed (retryable or not, with a delay the server asked for)."""

    ok: bool
    retryable: bool = False
    reason: str = ""
    retry_after_s: float | None = None
    rejected: int = 0  # spans the backend refused inside an accepted request (partial success)

    @classmethod
    def success(cls, rejected: int = 0, reason: str = "") -> SendResult:
        return cls(True, rejected=rejected, reason=reason)


Send = Callable[[bytes, float], SendResult]
_HEADER = struct.Struct(">Q")  # span count, ahead of the payload in a stored batch


@dataclass(slots=True, eq=False)
class _Item:
    spans: int
    payload: bytes | None  # None: still on disk only
    path: str | None = None


class SendingQueue:
    def __init__(self, exporter_id: str, send: Send, queue: QueueSettings, retry: RetrySettings,
                 self_metrics: SelfMetrics, timeout_s: float, storage_dir: str | None = None, *,
                 counts_delivery: bool = True, unit: str = "spans") -> None:
        """``counts_delivery=False``: the sender counts what it delivered itself (Azure Monitor's accounting).
        ``unit``: what a batch's count counts (spans, metric_points, log_records), naming its counters."""
        self._id = exporter_id
        self._unit = unit
        self._sent = f"otelcol.exporter.sent.{unit}"
        self._send_failed = f"otelcol.exporter.send_failed.{unit}"
        self._enqueue_failed = f"otelcol.exporter.enqueue_failed.{unit}"
        self._counts_delivery = counts_delivery
        self._send = send
        self._queue_settings = queue
        self._retry = retry
        self._self = self_metrics
        self._timeout_s = timeout_s
        self._dir = storage_dir
        self._items: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._in_flight: list[_Item] = []  # taken by a consumer: being sent or waiting to be retried
        self._seq = 0
        if self._dir is not None:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            self._recover()
        # One queue per signal of an exporter; metrics' and logs' carry the upstream data_type label.
        labels = {"exporter": exporter_id} if unit == "spans" else {
            "exporter": exporter_id, "data_type": "metrics" if unit == "metric_points" else "logs"}
        self_metrics.register_gauge("exporter_queue", lambda: len(self._items), labels)
        self_metrics.register_gauge("exporter_queue_capacity", lambda: queue.queue_size, labels)

    def _recover(self) -> None:
        assert self._dir is not None
        names = sorted(n for n in os.listdir(self._dir) if n.endswith(".batch") and n.split(".")[0].isdigit())
        for name in names:
            path = os.path.join(self._dir, name)
            try:
                with open(path, "rb") as f:
                    (spans,) = _HEADER.unpack(f.read(_HEADER.size))
            except (OSError, struct.error):
                logger.warning("exporter %s: unreadable stored batch %s skipped", self._id, path)
                continue
            self._items.append(_Item(spans, None, path))
            self._seq = max(self._seq, int(name.split(".")[0]) + 1)
        if names:
            logger.info("exporter %s: %d stored batch(es) (%d %s) recovered from %s", self._id, len(self._items),
                        sum(i.spans for i in self._items), self._unit.replace("_", " "), self._dir)

    def start(self) -> None:
        for n in range(max(1, self._queue_settings.num_consumers)):
            thread = threading.Thread(target=self._consume, name=f"flowtel-export-{self._id}-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def put(self, payload: bytes, spans: int) -> bool:
        with self._cond:
            if len(self._items) >= self._queue_settings.queue_size or self._stopping.is_set():
                self._self.add(self._enqueue_failed, spans, self._id)
                self._self.dropped("exporter_queue_full", spans, self._unit)
                warn_once(f"enqueue:{self._id}", "exporter %s: queue full (%d batches); %s dropped and counted",
                          self._id, self._queue_settings.queue_size, self._unit)
                return False
            item = _Item(spans, payload)
            if self._dir is not None:
                try:
                    item.path = self._store(payload, spans)
                except OSError as error:  # disk full, directory gone: refuse this batch, keep running
                    self._self.add(self._enqueue_failed, spans, self._id)
                    self._self.dropped("storage_error", spans, self._unit)
                    warn_once(f"store:{self._id}", "exporter %s: cannot store a batch (%s); spans dropped and "
                              "counted", self._id, error)
                    return False
            self._items.append(item)
            self._cond.notify()
        return True

    def _store(self, payload: bytes, spans: int) -> str:
        assert self._dir is not None
        path = os.path.join(self._dir, f"{self._seq:020d}.batch")
        self._seq += 1
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(spans))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def _take(self) -> _Item | None:
        with self._cond:
            while True:
                if self._stopping.is_set():  # what is left stays queued for ``shutdown`` to keep or count
                    return None
                if self._items:
                    item = self._items.popleft()
                    self._in_flight.append(item)
                    return item
                self._cond.wait(0.5)

    def _consume(self) -> None:
        while True:
            item = self._take()
            if item is None:
                return
            try:
                self._deliver(item)
            except Exception:  # a bug must cost this batch, counted, not the consumer thread
                logger.exception("exporter %s: failed delivering a batch of %d spans", self._id, item.spans)
                self._self.add(self._send_failed, item.spans, self._id, "internal_error")
                self._self.dropped("internal_error", item.spans, self._unit)
                self._forget(item)
            finally:
                with self._cond:
                    if item in self._in_flight:
                        self._in_flight.remove(item)
                    self._cond.notify_all()

    def _deliver(self, item: _Item) -> None:
        payload = item.payload
        if payload is None and item.path is not None:
            try:
                with open(item.path, "rb") as f:
                    payload = f.read()[_HEADER.size:]
            except OSError as error:
                self._give_up(item, f"storage_read: {error.strerror}", "storage_error")
                return
        assert payload is not None
        started = time.monotonic()
        interval = self._retry.initial_interval
        while True:
            result = self._attempt(payload)
            if result.ok:
                if self._counts_delivery:
                    self._self.add(self._sent, item.spans - result.rejected, self._id)
                if result.rejected:
                    self._self.add(self._send_failed, result.rejected, self._id,
                                   "rejected_by_backend")
                    self._self.dropped("rejected_by_backend", result.rejected, self._unit)
                    warn_once(f"partial:{self._id}", "exporter %s: backend rejected %d span(s): %s", self._id,
                              result.rejected, result.reason)
                self._forget(item)
                return
            if not (result.retryable and self._retry.enabled):
                self._give_up(item, result.reason, "permanent_error")
                return
            delay = result.retry_after_s if result.retry_after_s is not None else _jitter(
                interval, self._retry.randomization_factor)
            interval = min(interval * self._retry.multiplier, self._retry.max_interval)
            elapsed = time.monotonic() - started
            limit = self._retry.max_elapsed_time
            if limit and elapsed + delay > limit:
                self._give_up(item, f"{result.reason} (retried for {elapsed:.0f}s)", "retries_exhausted")
                return
            logger.debug("exporter %s: %s; retrying in %.1fs", self._id, result.reason, delay)
            if self._stopping.wait(delay):
                # Stopping: back to the queue, for ``shutdown`` to leave on disk (persistent) or count as dropped.
                with self._cond:
                    if item in self._in_flight:
                        self._in_flight.remove(item)
                        self._items.appendleft(item)
                return

    def _attempt(self, payload: bytes) -> SendResult:
        try:
            return self._send(payload, self._timeout_s)
        except Exception as error:  # a bug or an unexpected client error must not kill the consumer
            return SendResult(False, retryable=True, reason=f"{type(error).__name__}: {error}")

    def _give_up(self, item: _Item, reason: str, kind: str) -> None:
        self._self.add(self._send_failed, item.spans, self._id, kind)
        self._self.dropped(f"export_{kind}", item.spans, self._unit)
        warn_once(f"giveup:{self._id}:{kind}", "exporter %s: dropped %d span(s) (%s): %s", self._id, item.spans,
                  kind, reason)
        self._forget(item)

    def _forget(self, item: _Item) -> None:
        if item.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(item.path)

    @property
    def size(self) -> int:
        return len(self._items)

    def shutdown(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline``; then stop. Stored batches stay on disk, others are counted.

        A persistent queue keeps what is left for the next start, so it stops at once: a batch being sent
        finishes its attempt, one waiting to be retried goes back to its file. An in-memory queue keeps
        sending and retrying until it is empty or the deadline; what is still queued or in flight then
        is counted as dropped and logged.
        """
        with self._cond:
            if self._dir is None:
                while (self._in_flight or self._items) and time.monotonic() < deadline:
                    self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._stopping.set()
            self._cond.notify_all()
        end = max(deadline, time.monotonic()) + 0.5  # a consumer interrupted at the deadline needs a moment
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        with self._cond:
            # Batches still in flight belong to consumers stuck in an attempt past the deadline.
            left = [*self._in_flight, *self._items]
            self._in_flight.clear()
            self._items.clear()
        if left and self._dir is None:
            spans = sum(i.spans for i in left)
            self._self.add(self._send_failed, spans, self._id, "shutdown")
            self._self.dropped("shutdown_timeout", spans, self._unit)
            logger.warning("exporter %s: %d span(s) still queued at the shutdown deadline were dropped", self._id,
                           spans)
        elif left:
            logger.info("exporter %s: %d batch(es) left in %s for the next start", self._id, len(left), self._dir)


def _jitter(interval: float, factor: float) -> float:
    return interval * (1 + factor * (2 * random.random() - 1))
