"""Bounded resources in-process: what does not fit is counted, what waits too long is released, nothing vanishes."""

from __future__ import annotations

import time

from opentelemetry import trace


def test_queue_overflow_is_counted_exactly(make_harness) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness(max_queue_size=50, schedule_delay_s=5.0)
    tracer = trace.get_tracer("load")
    produced = 400
    for i in range(produced):
        with tracer.start_as_current_span(f"root-{i}"):
            pass
    m = harness.scrape()
    exported = len(harness.spans())
    dropped = m.value("flowtel_spans_dropped_total", reason="queue_full")
    assert dropped > 0
    assert exported + dropped == produced
    assert m.value("flowtel_spans_processed_total") == exported
    assert m.value("flowtel_spans_dropped_total", reason="internal_error") == 0  # the zero series exists


def test_trace_whose_root_never_ends_is_released_after_timeout(make_harness) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness(trace_timeout_s=0.3, schedule_delay_s=0.05)
    tracer = trace.get_tracer("stuck")
    root = tracer.start_span("stuck_root", attributes={"framework": "promptflow", "span_type": "Function"})
    with trace.use_span(root, end_on_exit=False), tracer.start_as_current_span("child"):
        pass
    harness.flush()
    assert harness.exporter.get_finished_spans() == ()  # held: its local root is still running
    assert harness.scrape().value("flowtel_spans_held") == 1
    deadline = time.monotonic() + 10
    while not harness.exporter.get_finished_spans() and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = harness.exporter.get_finished_spans()
    assert child.name == "child"
    m = harness.scrape()
    assert m.value("flowtel_traces_released_total", reason="timeout") == 1
    assert m.value("flowtel_spans_held") == 0
    root.end()  # the root arrives late: processed on arrival, not held again
    harness.flush()
    assert [s.name for s in harness.exporter.get_finished_spans()] == ["child", "stuck_root"]
    assert harness.scrape().value("flowtel_traces_released_total", reason="complete") == 1
