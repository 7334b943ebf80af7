"""TraceAssembler: hold a local trace's spans until its root ends, bounded by timeout, capacity and shutdown."""

from __future__ import annotations

from flowtel.processors.assembly import Released, TraceAssembler
from flowtel.spans import KIND_INTERNAL, STATUS_UNSET, SpanData

SECOND = 1_000_000_000
TIMEOUT = 10 * SECOND


def span(trace_id: int, span_id: int, parent: int = 0, *, remote: bool = False) -> SpanData:
    return SpanData(trace_id=trace_id, span_id=span_id, parent_span_id=parent, parent_is_remote=remote,
                    name=f"span-{span_id:x}", kind=KIND_INTERNAL, start_ns=0, end_ns=1, status=STATUS_UNSET,
                    status_message="", attributes={}, events=[])


def ids(released: list[Released]) -> list[tuple[str, list[int]]]:
    return [(reason, [s.span_id for s in spans]) for reason, spans in released]


def add(assembler: TraceAssembler, s: SpanData, now: int = 0) -> list[tuple[str, list[int]]]:
    released = [assembler.add_root(s)] if s.is_local_root else assembler.add_child(s, now)
    return ids(list(released))


def new(max_spans: int = 100) -> TraceAssembler:
    return TraceAssembler(timeout_ns=TIMEOUT, max_spans=max_spans)


def test_children_before_root_released_with_root_as_complete() -> None:
    a = new()
    # root 0x1 -> child 0x2 -> grandchild 0x3; child 0x4 of root. Children end first.
    assert add(a, span(1, 0x3, parent=0x2)) == []
    assert add(a, span(1, 0x2, parent=0x1)) == []
    assert add(a, span(1, 0x4, parent=0x1)) == []
    assert (a.held_spans, a.held_traces) == (3, 1)
    released = add(a, span(1, 0x1))
    assert len(released) == 1
    reason, span_ids = released[0]
    assert reason == "complete"
    assert span_ids[0] == 0x1  # the root comes first
    assert sorted(span_ids) == [0x1, 0x2, 0x3, 0x4]
    assert (a.held_spans, a.held_traces) == (0, 0)


def test_root_with_remote_parent_is_a_local_root() -> None:
    a = new()
    assert add(a, span(1, 0x2, parent=0x1)) == []
    released = add(a, span(1, 0x1, parent=0xABC, remote=True))
    assert [(r, sorted(i)) for r, i in released] == [("complete", [0x1, 0x2])]
    assert a.held_spans == 0


def test_root_without_held_children_released_alone() -> None:
    a = new()
    assert add(a, span(7, 0x70)) == [("complete", [0x70])]
    assert (a.held_spans, a.held_traces) == (0, 0)


def test_other_traces_stay_held_when_a_root_completes() -> None:
    a = new()
    add(a, span(1, 0x12, parent=0x11))
    add(a, span(2, 0x22, parent=0x21))
    assert add(a, span(1, 0x11)) == [("complete", [0x11, 0x12])]
    assert (a.held_spans, a.held_traces) == (1, 1)
    assert ids(list(a.drain())) == [("shutdown", [0x22])]


def test_timeout_release_only_after_timeout_ns() -> None:
    a = new()
    start = 1_000 * SECOND
    add(a, span(1, 0x2, parent=0x1), now=start)
    add(a, span(1, 0x3, parent=0x1), now=start + 5 * SECOND)  # does not restart the clock
    assert ids(list(a.expire(start))) == []
    assert ids(list(a.expire(start + TIMEOUT - 1))) == []
    assert a.held_spans == 2
    assert ids(list(a.expire(start + TIMEOUT))) == [("timeout", [0x2, 0x3])]
    assert (a.held_spans, a.held_traces) == (0, 0)
    assert ids(list(a.expire(start + 10 * TIMEOUT))) == []


def test_timeout_releases_only_traces_that_are_old_enough_oldest_first() -> None:
    a = new()
    add(a, span(1, 0x12, parent=0x11), now=0)
    add(a, span(2, 0x22, parent=0x21), now=3 * SECOND)
    add(a, span(3, 0x32, parent=0x31), now=20 * SECOND)
    released = ids(list(a.expire(3 * SECOND + TIMEOUT)))
    assert released == [("timeout", [0x12]), ("timeout", [0x22])]
    assert (a.held_spans, a.held_traces) == (1, 1)


def test_after_a_timeout_siblings_wait_for_the_root_and_its_late_children_go_at_once() -> None:
    a = new()
    add(a, span(1, 0x2, parent=0x1), now=0)
    assert ids(list(a.expire(TIMEOUT))) == [("timeout", [0x2])]
    # 0x3's parent has not been released: it waits for the root like any other child
    assert add(a, span(1, 0x3, parent=0x1), now=TIMEOUT + 1) == []
    assert add(a, span(1, 0x1), now=TIMEOUT + 2) == [("complete", [0x1, 0x3])]
    # a child of an already released span cannot be completed by anything else: released at once
    assert add(a, span(1, 0x4, parent=0x2), now=TIMEOUT + 3) == [("late", [0x4])]
    assert a.held_spans == 0


def test_capacity_releases_oldest_trace() -> None:
    a = new(max_spans=3)
    assert add(a, span(1, 0x12, parent=0x11), now=1) == []
    assert add(a, span(1, 0x13, parent=0x11), now=2) == []
    assert add(a, span(2, 0x22, parent=0x21), now=3) == []
    assert a.held_spans == 3
    released = add(a, span(3, 0x32, parent=0x31), now=4)
    assert released == [("capacity", [0x12, 0x13])]
    assert (a.held_spans, a.held_traces) == (2, 2)
    # Trace 2 is now the oldest; another span past the cap releases it and only it.
    assert add(a, span(3, 0x33, parent=0x31), now=5) == []
    assert a.held_spans == 3
    assert add(a, span(4, 0x42, parent=0x41), now=6) == [("capacity", [0x22])]
    assert (a.held_spans, a.held_traces) == (3, 2)
    assert ids(list(a.drain())) == [("shutdown", [0x32, 0x33]), ("shutdown", [0x42])]


def test_capacity_never_exceeded() -> None:
    a = new(max_spans=3)
    released: list[int] = []
    for i in range(20):
        for reason, spans in a.add_child(span(100 + i // 2, 0x1000 + i, parent=0x1), now_ns=i):
            assert reason == "capacity"
            released.extend(s.span_id for s in spans)
        assert a.held_spans <= 3
    # Two spans per trace, each trace released whole, oldest first; the newest trace (2 spans) stays held.
    assert released == [0x1000 + i for i in range(18)]
    assert (a.held_spans, a.held_traces) == (2, 1)


def test_capacity_released_trace_children_then_come_back_late() -> None:
    a = new(max_spans=1)
    add(a, span(1, 0x12, parent=0x11))
    assert add(a, span(2, 0x22, parent=0x21)) == [("capacity", [0x12])]
    # 0x13's parent 0x11 was never released: it is held again (pushing trace 2 out), not late
    assert add(a, span(1, 0x13, parent=0x11)) == [("capacity", [0x22])]
    assert (a.held_spans, a.held_traces) == (1, 1)
    assert add(a, span(1, 0x11)) == [("complete", [0x11, 0x13])]
    # children of spans released by capacity (0x12) or with their root (0x13) come back late
    assert add(a, span(1, 0x14, parent=0x12)) == [("late", [0x14])]
    assert add(a, span(1, 0x15, parent=0x13)) == [("late", [0x15])]
    assert (a.held_spans, a.held_traces) == (0, 0)


def test_child_after_release_is_late_and_not_held() -> None:
    a = new()
    add(a, span(1, 0x2, parent=0x1))
    assert add(a, span(1, 0x1)) == [("complete", [0x1, 0x2])]
    assert add(a, span(1, 0x9, parent=0x1)) == [("late", [0x9])]
    assert add(a, span(1, 0xA, parent=0x9)) == [("late", [0xA])]
    assert (a.held_spans, a.held_traces) == (0, 0)


def test_released_trace_memory_is_bounded() -> None:
    a = TraceAssembler(timeout_ns=TIMEOUT, max_spans=100, remember_released_spans=3)
    for trace_id in (1, 2, 3):
        assert add(a, span(trace_id, 0x1)) == [("complete", [0x1])]
    # A fourth released span id is over the budget of 3: the oldest trace (1) is forgotten.
    assert add(a, span(4, 0x1)) == [("complete", [0x1])]
    # Trace 1's late child is held again; trace 2 is still remembered, so its child is late.
    assert add(a, span(1, 0x2, parent=0x1)) == []
    assert add(a, span(2, 0x2, parent=0x1)) == [("late", [0x2])]
    # The budget counts span ids, not traces: trace 2 now remembers 2 ids, so the oldest (3) is forgotten.
    assert add(a, span(3, 0x2, parent=0x1)) == []
    assert add(a, span(4, 0x2, parent=0x1)) == [("late", [0x2])]
    # ... and trace 4's second id pushes trace 2 out.
    assert add(a, span(2, 0x3, parent=0x2)) == []
    assert a.held_spans == 3
    # The most recent trace is kept even alone over the budget; everything older is forgotten.
    for child in (0x2, 0x3, 0x4):
        assert add(a, span(5, child, parent=0x1)) == []
    assert add(a, span(5, 0x1)) == [("complete", [0x1, 0x2, 0x3, 0x4])]
    assert add(a, span(5, 0x5, parent=0x4)) == [("late", [0x5])]
    assert add(a, span(4, 0x3, parent=0x2)) == []
    assert a.held_spans == 4


def test_two_local_roots_second_roots_child_stays_held() -> None:
    """Two requests in one trace: children of both arrive before either root."""
    a = new()
    assert add(a, span(1, 0xA2, parent=0xA1, remote=False)) == []
    assert add(a, span(1, 0xB2, parent=0xB1)) == []
    assert add(a, span(1, 0xB3, parent=0xB2)) == []
    released = add(a, span(1, 0xA1, parent=0xF0, remote=True))
    assert released == [("complete", [0xA1, 0xA2])]
    assert (a.held_spans, a.held_traces) == (2, 1)
    # The second root's children are still held, not released as late or by expire before the timeout.
    assert add(a, span(1, 0xB4, parent=0xB1)) == []
    assert ids(list(a.expire(TIMEOUT - 1))) == []
    assert a.held_spans == 3
    released = add(a, span(1, 0xB1, parent=0xF0, remote=True))
    assert [(r, i[0], sorted(i)) for r, i in released] == [("complete", 0xB1, [0xB1, 0xB2, 0xB3, 0xB4])]
    assert (a.held_spans, a.held_traces) == (0, 0)


def test_two_local_roots_second_root_child_after_first_root_released() -> None:
    """Two sequential requests in one trace: the first completes before the second's children end."""
    a = new()
    assert add(a, span(1, 0xA1, parent=0xF0, remote=True)) == [("complete", [0xA1])]
    assert add(a, span(1, 0xB2, parent=0xB1)) == []
    assert a.held_spans == 1
    released = add(a, span(1, 0xB1, parent=0xF0, remote=True))
    assert [(r, sorted(i)) for r, i in released] == [("complete", [0xB1, 0xB2])]


def test_drain_releases_everything_as_shutdown_in_arrival_order() -> None:
    a = new()
    add(a, span(1, 0x12, parent=0x11))
    add(a, span(2, 0x22, parent=0x21))
    add(a, span(1, 0x13, parent=0x12))
    add(a, span(3, 0x32, parent=0x31))
    released = ids(list(a.drain()))
    assert released == [("shutdown", [0x12, 0x13]), ("shutdown", [0x22]), ("shutdown", [0x32])]
    assert (a.held_spans, a.held_traces) == (0, 0)
    assert ids(list(a.drain())) == []
    # Drained spans count as released: their later children are late.
    assert add(a, span(2, 0x24, parent=0x22)) == [("late", [0x24])]
    assert add(a, span(1, 0x14, parent=0x13)) == [("late", [0x14])]
    # A sibling whose parent (0x21) never arrived is held again, not late.
    assert add(a, span(2, 0x23, parent=0x21)) == []
    assert (a.held_spans, a.held_traces) == (1, 1)
