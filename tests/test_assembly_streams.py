"""A streamed response outlives its root (prompt flow serving): the trace stays held, root included, until the span
wrapping the stream arrives, under the assembler's usual timeout and capacity bounds."""

from __future__ import annotations

from typing import Any

from flowtel.processors.analysis import awaited_stream, ends_stream
from flowtel.processors.assembly import TraceAssembler
from flowtel.spans import KIND_INTERNAL, KIND_SERVER, STATUS_UNSET, SpanData

SECOND = 1_000_000_000
TIMEOUT = 10 * SECOND
SERVER, FLOW, PREPARE, CHAT, LLM = 0x1, 0x2, 0x3, 0x4, 0x5
PF = {"framework": "promptflow"}


def span(span_id: int, parent: int, attributes: dict[str, Any], kind: int = KIND_INTERNAL,
         trace_id: int = 7) -> SpanData:
    return SpanData(trace_id=trace_id, span_id=span_id, parent_span_id=parent, parent_is_remote=parent == 0x99,
                    name=f"span-{span_id:x}", kind=kind, start_ns=0, end_ns=1, status=STATUS_UNSET,
                    status_message="", attributes=attributes, events=[])


def server() -> SpanData:
    return span(SERVER, 0x99, {}, KIND_SERVER)


def flow(output: str = '{"answer": []}') -> SpanData:
    return span(FLOW, SERVER, {**PF, "span_type": "Flow", "output": output})


def chat(iterated: bool = True) -> SpanData:
    return span(CHAT, FLOW, {**PF, "span_type": "Function", **({"output_type": "iterated"} if iterated else {})})


def new(max_spans: int = 100) -> TraceAssembler:
    return TraceAssembler(TIMEOUT, max_spans, streams=(awaited_stream, ends_stream))


def ids(released: Any) -> list[tuple[str, list[int]]]:
    return [(reason, sorted(s.span_id for s in spans)) for reason, spans in released]


def test_streamed_trace_is_held_until_the_stream_wrapping_span_ends() -> None:
    a = new()
    assert a.add_child(span(PREPARE, FLOW, {**PF, "span_type": "Function"}), 0) == ()
    assert a.add_child(flow(), 0) == ()
    assert a.add_root(server(), 0) is None  # the server answered; the body is still streaming
    assert (a.held_spans, a.held_traces) == (3, 1)
    assert a.add_child(span(LLM, CHAT, {**PF, "span_type": "LLM", "output_type": "iterated"}), 1) == ()
    assert ids(a.add_child(chat(), 2)) == [("complete", [SERVER, FLOW, PREPARE, CHAT, LLM])]
    assert (a.held_spans, a.held_traces) == (0, 0)


def test_stream_that_never_ends_is_released_at_the_timeout_with_its_root() -> None:
    a = new()
    a.add_child(flow(), 0)
    assert a.add_root(server(), 0) is None
    assert list(a.expire(TIMEOUT - 1)) == []
    assert ids(a.expire(TIMEOUT)) == [("timeout", [SERVER, FLOW])]
    assert a.held_spans == 0


def test_held_streams_count_towards_capacity() -> None:
    a = new(max_spans=2)
    a.add_child(flow(), 0)
    assert a.add_root(server(), 0) is None
    released = ids(a.add_child(span(0x9, 0x8, {}, trace_id=8), 0))  # another trace's span: over capacity, oldest goes
    assert released == [("capacity", [SERVER, FLOW])]


def test_not_held_when_the_stream_already_ended_or_the_output_is_no_stream() -> None:
    a = new()
    a.add_child(flow(), 0)
    a.add_child(chat(), 0)  # e.g. one batch carrying every span, roots last
    assert ids([a.add_root(server(), 0)]) == [("complete", [SERVER, FLOW, CHAT])]
    for output in ('{"answer": "Hello"}', '{"answer": ["a"]}', "not json"):
        b = new()
        b.add_child(flow(output), 0)
        assert ids([b.add_root(server(), 0)]) == [("complete", [SERVER, FLOW])], output


def test_a_child_that_is_not_the_stream_does_not_release() -> None:
    a = new()
    a.add_child(flow(), 0)
    assert a.add_root(server(), 0) is None
    assert a.add_child(chat(iterated=False), 1) == ()  # a node that returned a value, not a stream
    assert a.held_spans == 3
