"""The queue and retry loop in front of a network exporter, as the upstream collector's exporterhelper.

``export`` only enqueues; ``num_consumers`` threads send, retrying retryable failures
with exponential backoff (honouring a server's requested delay) for up to
``max_elapsed_time``. With ``storage`` set, each batch is a file in a directory until it
is delivered or finally refused, so a restart loses nothing already accepted: the next
start picks up the files left behind. Every batch given up on is counted by reason in
``otelcol_exporter_send_failed_spans`` and ``flowtel_spans_dropped_total`` and logged once.

A stored batch is never trusted blindly: its header (format version, signal, item count,
payload length) and its payload are covered by a CRC-32, and the count can be no larger
than the payload. An entry that fails a check (empty, truncated, bit-flipped, a directory,
another signal's) is moved to ``corrupt/`` for a human to look at, counted in
``flowtel_exporter_queue_damaged_files_total`` and, when its header could still be read,
its items as dropped; ``.tmp`` files a crash or a full disk left half-written are removed at
start (they were never acknowledged by the queue).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field, field_validator

from flowtel._log import logger, warn_once
from flowtel.selfmetrics import SelfMetrics
from flowtel.settings import Duration, Model, PositiveDuration


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
#: A stored batch: magic and format version, signal (ASCII, NUL-padded), items, payload bytes, then a CRC-32
#: of all that and the payload; the payload follows.
_MAGIC = b"FTQ\x01"
_HEADER = struct.Struct(">4s8sQQ")
_CRC = struct.Struct(">I")
_PREFIX = _HEADER.size + _CRC.size
CORRUPT_DIR = "corrupt"


class DamagedBatch(Exception):
    """A stored batch that cannot be trusted; ``items`` is what its header claims when that is plausible."""

    def __init__(self, reason: str, detail: str, items: int = 0) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.items = reason, detail, items


def encode_batch(payload: bytes, items: int, signal: str) -> bytes:
    head = _HEADER.pack(_MAGIC, signal.encode("ascii"), items, len(payload))
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def read_batch(path: str, signal: str, *, header_only: bool = False) -> tuple[int, bytes]:
    """(items, payload) of a stored batch after every check; raises ``DamagedBatch`` (``OSError`` when unreadable).
    ``header_only`` reads just the header (the count, for tests and tools: not verified against the payload)."""
    if os.path.isdir(path):
        raise DamagedBatch("not_a_file", "a directory where a batch file should be")
    with open(path, "rb") as f:
        head = f.read(_PREFIX)
        if len(head) < _PREFIX:
            raise DamagedBatch("truncated", f"{len(head)} bytes, shorter than a batch header")
        magic, stored_signal, items, length = _HEADER.unpack_from(head)
        if magic != _MAGIC:
            if signal == "traces" and not header_only:
                return _legacy_batch(head + f.read())
            raise DamagedBatch("unknown_format", f"unknown header {magic!r}")
        if items > length:  # every item takes at least a byte: a count above the payload is made up
            raise DamagedBatch("bad_header", f"header claims {items} items in {length} bytes")
        stored_signal = stored_signal.rstrip(b"\0").decode("ascii", errors="replace")
        if stored_signal != signal:
            raise DamagedBatch("wrong_signal", f"a {stored_signal} batch ({items} items) in a {signal} queue")
        if header_only:
            return items, b""
        size = os.fstat(f.fileno()).st_size - _PREFIX  # never read what the header claims before checking it
        if size != length:  # a count is only believed (and counted as lost) if the bytes there could hold it
            raise DamagedBatch("truncated" if size < length else "bad_header",
                               f"payload of {size} bytes, the header says {length}",
                               items if size < length and items <= size else 0)
        payload = f.read(length)
    if len(payload) != length:  # shrunk while being read
        raise DamagedBatch("truncated", f"payload of {len(payload)} bytes, the header says {length}", items)
    if zlib.crc32(payload, zlib.crc32(head[:_HEADER.size])) != _CRC.unpack_from(head, _HEADER.size)[0]:
        raise DamagedBatch("checksum", "checksum mismatch", items)
    return items, payload


def _legacy_batch(data: bytes) -> tuple[int, bytes]:
    """A batch stored before the checked format (a span count, then the request): kept across an upgrade
    only when the request parses and holds exactly the spans its count claims."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    (claimed,) = struct.unpack_from(">Q", data)
    payload = data[8:]
    try:
        request = ExportTraceServiceRequest.FromString(payload)
    except Exception:  # protobuf's DecodeError, or whatever a damaged buffer makes the parser raise
        raise DamagedBatch("unknown_format", "neither this format nor a parsable older one") from None
    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if spans != claimed or not spans:
        raise DamagedBatch("unknown_format", f"an older-format header claims {claimed} spans, the request holds "
                           f"{spans}")
    return spans, payload


@dataclass(slots=True, eq=False)
class _Item:
    spans: int
    payload: bytes | None  # None: still on disk only
    path: str | None = None
    attempt_ends: float = 0.0  # monotonic time by which the attempt under way has its answer (its timeout)


#: What one item of each signal is, as the collector's own metrics name it (``otelcol_exporter_sent_<unit>``).
UNITS = {"traces": "spans", "metrics": "metric_points", "logs": "log_records"}


class SendingQueue:
    def __init__(self, exporter_id: str, send: Send, queue: QueueSettings, retry: RetrySettings,
                 self_metrics: SelfMetrics, timeout_s: float, storage_dir: str | None = None, *,
                 counts_delivery: bool = True, signal: str = "traces") -> None:
        """``counts_delivery=False``: the sender counts what it delivered itself (Azure Monitor's accounting).
        ``signal`` is written in each stored batch, so a queue never sends another signal's files; it names what a
        batch's count counts (spans, metric points, log records) and so the counters."""
        self._id = exporter_id
        self._signal = signal
        unit = self._unit = UNITS[signal]
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
        names = sorted(os.listdir(self._dir))
        unfinished = [n for n in names if n.endswith(".batch.tmp")]
        for name in unfinished:  # a crash or a full disk mid-write: never acknowledged, never complete
            self._damaged(os.path.join(self._dir, name), DamagedBatch("unfinished", "half-written"), remove=True)
        for name in names:
            if not (name.endswith(".batch") and name.split(".")[0].isdigit()):
                continue
            path = os.path.join(self._dir, name)
            self._seq = max(self._seq, int(name.split(".")[0]) + 1)  # damaged ones too: names stay unique in corrupt/
            try:
                spans, _ = read_batch(path, self._signal)
            except DamagedBatch as damaged:
                self._damaged(path, damaged)
                continue
            except OSError as error:
                self._damaged(path, DamagedBatch("unreadable", error.strerror or str(error)))
                continue
            self._items.append(_Item(spans, None, path))
        if self._items:
            logger.info("exporter %s: %d stored batch(es) (%d %s) recovered from %s", self._id, len(self._items),
                        sum(i.spans for i in self._items), self._unit.replace("_", " "), self._dir)

    def _damaged(self, path: str, damaged: DamagedBatch, *, remove: bool = False) -> None:
        """Count a stored batch that cannot be trusted; move it to ``corrupt/`` (or remove an unfinished one)."""
        assert self._dir is not None
        self._self.add("flowtel.exporter.queue.damaged_files", 1, self._id, damaged.reason)
        if damaged.items:
            self._self.add(self._send_failed, damaged.items, self._id, "damaged_file")
            self._self.dropped("queue_file_damaged", damaged.items, self._unit)
        try:
            if remove:
                os.remove(path)
            else:
                aside = os.path.join(self._dir, CORRUPT_DIR)
                os.makedirs(aside, mode=0o700, exist_ok=True)
                os.replace(path, os.path.join(aside, os.path.basename(path)))
            where = "removed" if remove else f"moved to {CORRUPT_DIR}/"
        except OSError as error:
            where = f"left in place ({error.strerror})"
        logger.warning("exporter %s: stored batch %s cannot be trusted (%s: %s; %d item(s) lost); %s", self._id,
                       path, damaged.reason, damaged.detail, damaged.items, where)

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
        try:
            with open(tmp, "wb") as f:
                f.write(encode_batch(payload, spans, self._signal))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):  # a full disk leaves no half-written file behind
                os.remove(tmp)
            raise
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
                _, payload = read_batch(item.path, self._signal)
            except DamagedBatch as damaged:  # changed on disk since it was recovered
                self._give_up(item, f"stored batch {damaged.reason}: {damaged.detail}", "damaged_file")
                return
            except OSError as error:
                self._give_up(item, f"storage_read: {error.strerror}", "storage_error")
                return
        assert payload is not None
        started = time.monotonic()
        interval = self._retry.initial_interval
        while True:
            item.attempt_ends = time.monotonic() + self._timeout_s
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

    @property
    def holding(self) -> int:
        """Batches this queue holds in memory or on disk: queued, being sent or waiting to be retried."""
        return len(self._items) + len(self._in_flight)

    def shutdown(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline``; then stop. Stored batches stay on disk, others are counted.

        A persistent queue keeps what is left for the next start, so it stops at once: a batch being sent
        finishes its attempt, one waiting to be retried goes back to its file. An in-memory queue keeps
        sending and retrying until it is empty or the deadline; then it starts nothing more, but an attempt
        already under way is waited for (at most the exporter's ``timeout``, which bounds one attempt), so
        a batch that arrives is counted as sent, not as lost. What is still queued then is counted as
        dropped and logged.
        """
        with self._cond:
            if self._dir is None:
                while (self._in_flight or self._items) and time.monotonic() < deadline:
                    self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._stopping.set()
            self._cond.notify_all()
            if self._dir is None:
                while self._in_flight:  # a batch waiting to be retried leaves at once, back to the queue
                    remaining = max(i.attempt_ends for i in self._in_flight) + 0.5 - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(min(0.1, remaining))
        end = max(deadline, time.monotonic()) + 0.5  # a consumer interrupted at the deadline needs a moment
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        with self._cond:
            # Batches still in flight belong to consumers stuck in an attempt past its own timeout.
            in_flight, queued = list(self._in_flight), list(self._items)
            self._in_flight.clear()
            self._items.clear()
        if self._dir is not None:
            if in_flight or queued:
                logger.info("exporter %s: %d batch(es) left in %s for the next start", self._id,
                            len(in_flight) + len(queued), self._dir)
            return
        for items, what in ((queued, "still queued"), (in_flight, "in flight with no answer")):
            if items:
                count = sum(i.spans for i in items)
                self._self.add(self._send_failed, count, self._id, "shutdown")
                self._self.dropped("shutdown_timeout", count, self._unit)
                logger.warning("exporter %s: %d %s(s) %s at the shutdown deadline were dropped", self._id, count,
                               self._unit.replace("_", " ").removesuffix("s"), what)


def _jitter(interval: float, factor: float) -> float:
    return interval * (1 + factor * (2 * random.random() - 1))
