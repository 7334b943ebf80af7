"""A real ``os.fork`` while the in-process worker is mid-drain (holding its lock, and with ``pause_gc`` the
cyclic GC paused), as gunicorn ``--preload`` or multiprocessing's fork start method do it: the child must get a
worker of its own, export its own spans and only those, and have its garbage collector running."""

from __future__ import annotations

import gc
import json
import os
import select
import threading
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flowtel.config import FlowtelConfig
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.processors.span_processor import FlowtelSpanProcessor
from flowtel.selfmetrics import SelfMetrics

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class BlockOnce(SpanProcessor):
    """Blocks the first span it is handed (in the parent's worker, inside the drain) until released."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.used = False
        self.gc_enabled_in_drain: list[bool] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.gc_enabled_in_drain.append(gc.isenabled())
        if not self.used:
            self.used = True
            self.entered.set()
            self.release.wait(30)


def _setup(pause_gc: bool) -> tuple[TracerProvider, FlowtelSpanProcessor, BlockOnce, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    blocker = BlockOnce()
    config = FlowtelConfig(pause_gc=pause_gc, schedule_delay_s=0.05)
    self_metrics = SelfMetrics()
    processor = FlowtelSpanProcessor([blocker, SimpleSpanProcessor(memory)], config=config,
                                     metrics=FlowtelMetrics(config, self_metrics), self_metrics=self_metrics)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider, processor, blocker, memory


def _child(provider: TracerProvider, processor: FlowtelSpanProcessor, memory: InMemorySpanExporter,
           write_fd: int) -> None:
    """Runs in the forked child; reports through the pipe and never returns."""
    result: dict[str, Any] = {}
    try:
        memory.clear()
        tracer = provider.get_tracer("child")
        with tracer.start_as_current_span("child-root"), tracer.start_as_current_span("child-node"):
            pass
        result["flushed"] = processor.force_flush(10_000)
        result["names"] = sorted(s.name for s in memory.get_finished_spans())
        result["gc_enabled"] = gc.isenabled()
        # The child's own worker runs too (not only force_flush in this thread).
        with tracer.start_as_current_span("child-late"):
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "child-late" not in [s.name for s in memory.get_finished_spans()]:
            time.sleep(0.02)
        result["worker"] = "child-late" in [s.name for s in memory.get_finished_spans()]
    except BaseException as error:  # report anything, the parent asserts
        result["error"] = repr(error)
    os.write(write_fd, json.dumps(result).encode())
    os._exit(0)


def _wait_child(pid: int, read_fd: int, timeout_s: float = 30) -> dict[str, Any]:
    """The child's report: read until the child exits (its end of the pipe closes), or kill it at the deadline."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while time.monotonic() < deadline:
        if select.select([read_fd], [], [], 0.1)[0]:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                os.waitpid(pid, 0)
                return json.loads(data or b"{}")  # type: ignore[no-any-return]
            data += chunk
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung (a lock held by the parent's worker at fork time?)")


@pytest.mark.parametrize("pause_gc", [False, True])
def test_fork_mid_drain_child_has_its_own_worker_and_only_its_own_spans(pause_gc: bool) -> None:
    provider, processor, blocker, memory = _setup(pause_gc)
    tracer = provider.get_tracer("parent")
    with tracer.start_as_current_span("parent-root"):
        pass
    assert blocker.entered.wait(10), "the worker never reached the downstream processor"
    # The parent's worker now holds the processor's lock inside a drain; a second trace waits in its queue.
    with tracer.start_as_current_span("parent-queued"):
        pass
    assert gc.isenabled() is not pause_gc
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(provider, processor, memory, write_fd)
    os.close(write_fd)
    try:
        result = _wait_child(pid, read_fd)
    finally:
        os.close(read_fd)
        blocker.release.set()
    assert "error" not in result, result
    assert result["flushed"] is True
    # The parent's queued and held spans are the parent's to export: the child sends its own, once.
    assert result["names"] == ["child-node", "child-root"]
    assert result["gc_enabled"] is True
    assert result["worker"] is True
    processor.shutdown()
    assert sorted(s.name for s in memory.get_finished_spans()) == ["parent-queued", "parent-root"]
    assert gc.isenabled()


def test_worker_leaves_the_apps_garbage_collector_alone_by_default() -> None:
    provider, processor, blocker, _ = _setup(pause_gc=False)
    blocker.used = True  # no blocking here
    with provider.get_tracer("t").start_as_current_span("root"):
        pass
    processor.force_flush()
    assert blocker.gc_enabled_in_drain == [True]
    processor.shutdown()
