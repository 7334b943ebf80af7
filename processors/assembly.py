"""Hold a trace's spans until its local root ends, so derivation sees whole local traces.

Children end before their parents, so a local trace is complete when its local root (a
span with no parent, or a remote parent) has arrived. Holding is bounded three ways, and
every release says why (``complete``, ``timeout``, ``capacity``, ``late``, ``shutdown``):

* a trace whose root has not arrived ``timeout_ns`` after its first span is released as is;
* past ``max_spans`` held, the oldest traces are released as they are;
* a span whose parent was released in the recent past (children outliving their root, such
  as a background task) is released at once rather than held until the timeout. Other spans
  of an already released trace (a second request in the same trace) are held as usual.

A released partial trace is still enriched and exported; derivation does what it can
with it (spans whose flow is unknown are counted with an empty ``flow``).

Linear in the spans held: the first root of a trace that has held spans indexes them by parent
(what finding its descendants costs anyway), and the index is kept up to date from then on, so
later roots of the same trace take their descendants without looking at the trace's other spans
(many roots in one trace with many held spans, a cheap attack, cost roots x held before). Spans
taken early are dropped from the trace's arrival-ordered list lazily, once they are half of it.

A streamed response outlives its root: prompt flow serving's flow span and the server's
span end when the stream is handed to the server, the span wrapping the stream when it has
been read. When ``awaited_stream`` says a completed trace is in that state, its spans stay
held (root included) until ``ends_stream`` sees the wrapping span arrive, and are released
together (``complete``); the same ``timeout`` and ``capacity`` bounds apply to them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from flowtel.spans import SpanData

Released = tuple[str, list[SpanData]]
#: (awaited_stream, ends_stream) of ``analysis``: which flow of a completed trace still streams, and which
#: span ends that stream.
StreamRules = tuple[Callable[[Sequence[SpanData]], int], Callable[[SpanData, int], bool]]


@dataclass(slots=True)
class _Pending:
    first_seen_ns: int
    spans: list[SpanData] = field(default_factory=list)  # arrival order, including spans already taken
    by_parent: dict[int, list[SpanData]] | None = None  # held spans by parent, once a root asked
    taken: set[int] = field(default_factory=set)  # id() of spans in ``spans`` released by a root
    #: a completed root held (in ``spans``, never in ``by_parent``) while its flow's stream is read, and that
    #: flow's span id
    streaming_root: SpanData | None = None
    streaming_flow: int = 0

    def held(self) -> list[SpanData]:
        if self.taken:
            self.spans = [s for s in self.spans if id(s) not in self.taken]
            self.taken = set()
        return self.spans


class TraceAssembler:
    def __init__(self, timeout_ns: int, max_spans: int, remember_released_spans: int = 100_000,
                 streams: StreamRules | None = None) -> None:
        self._streams = streams
        self._timeout_ns = timeout_ns
        self._max_spans = max_spans
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._held = 0
        # span ids released per trace, oldest trace first, bounded by the total number of ids kept
        self._released: OrderedDict[int, set[int]] = OrderedDict()
        self._released_count = 0
        self._remember = remember_released_spans

    @property
    def held_spans(self) -> int:
        return self._held

    @property
    def held_traces(self) -> int:
        return len(self._pending)

    def add_root(self, span: SpanData, now_ns: int = 0) -> Released | None:
        """A local root completes its trace: it is released with every held descendant (None: all stay held
        until the stream the trace's flow handed to the server has been read)."""
        trace_id = span.trace_id
        pending = self._pending.get(trace_id)
        if self._streams is not None and (pending is None or pending.streaming_root is None):
            below = self._descendants(pending, span.span_id) if pending is not None else []
            flow = self._streams[0]([span, *below])
            if flow:
                if pending is None:
                    pending = self._pending[trace_id] = _Pending(now_ns)
                pending.spans.append(span)
                pending.streaming_root, pending.streaming_flow = span, flow
                self._held += 1
                return None
        spans = [span]
        if pending is not None:
            spans.extend(self._take_descendants(trace_id, pending, span.span_id))
        self._mark_released(trace_id, spans)
        return "complete", spans

    def add_child(self, span: SpanData, now_ns: int) -> Sequence[Released]:
        """Hold a span that is not a local root (a plain function, not a generator: it runs for most spans)."""
        trace_id = span.trace_id
        released = self._released.get(trace_id)
        if released is not None and span.parent_span_id in released:
            self._mark_released(trace_id, [span])
            return [("late", [span])]
        pending = self._pending.get(trace_id)
        if pending is None:
            pending = self._pending[trace_id] = _Pending(now_ns)
        pending.spans.append(span)
        if pending.by_parent is not None:  # a second request in one trace: keep the index
            siblings = pending.by_parent.get(span.parent_span_id)
            if siblings is None:
                pending.by_parent[span.parent_span_id] = [span]
            else:
                siblings.append(span)
        self._held += 1
        root = pending.streaming_root
        if root is not None and self._streams is not None and self._streams[1](span, pending.streaming_flow):
            return [("complete", self._release_stream(trace_id, pending, root))]
        if self._held <= self._max_spans:
            return ()
        evicted = []
        while self._held > self._max_spans and self._pending:
            evicted.append(("capacity", self._pop_oldest()))
        return evicted

    def expire(self, now_ns: int) -> Iterator[Released]:
        while self._pending:
            pending = next(iter(self._pending.values()))
            if now_ns - pending.first_seen_ns < self._timeout_ns:
                return
            yield "timeout", self._pop_oldest()

    def drain(self) -> Iterator[Released]:
        while self._pending:
            yield "shutdown", self._pop_oldest()

    def _pop_oldest(self) -> list[SpanData]:
        trace_id, pending = self._pending.popitem(last=False)
        spans = pending.held()
        self._held -= len(spans)
        self._mark_released(trace_id, spans)
        return spans

    def _release_stream(self, trace_id: int, pending: _Pending, root: SpanData) -> list[SpanData]:
        """The stream's wrapping span arrived: the held root goes out with its descendants, now complete."""
        for i, held in enumerate(pending.spans):  # by identity: spans compare by value
            if held is root:
                del pending.spans[i]
                break
        self._held -= 1
        pending.streaming_root, pending.streaming_flow = None, 0
        spans = [root, *self._take_descendants(trace_id, pending, root.span_id)]
        if not pending.by_parent and trace_id in self._pending:
            del self._pending[trace_id]
        self._mark_released(trace_id, spans)
        return spans

    @staticmethod
    def _index(pending: _Pending) -> dict[int, list[SpanData]]:
        children = pending.by_parent
        if children is None:
            children = pending.by_parent = {}
            root = pending.streaming_root
            for s in pending.held():
                if s is root:  # a held streaming root is released by its stream's end, never as a child
                    continue
                siblings = children.get(s.parent_span_id)
                if siblings is None:
                    children[s.parent_span_id] = [s]
                else:
                    siblings.append(s)
        return children

    def _descendants(self, pending: _Pending, root_id: int) -> list[SpanData]:
        """The root's held descendants, left held (cost: what is found, and building the index once)."""
        children = self._index(pending)
        found: list[SpanData] = []
        frontier = [root_id]
        while frontier:
            for child in children.get(frontier.pop(), ()):
                found.append(child)
                frontier.append(child.span_id)
        return found

    def _take_descendants(self, trace_id: int, pending: _Pending, root_id: int) -> list[SpanData]:
        """The root's held descendants, found through the parent index: cost is what is taken (and, for the
        trace's first root, building the index)."""
        children = self._index(pending)
        taken: list[SpanData] = []
        frontier = [root_id]
        while frontier:
            for child in children.pop(frontier.pop(), ()):
                taken.append(child)
                frontier.append(child.span_id)
        if not taken:
            return taken
        self._held -= len(taken)
        if not children and pending.streaming_root is None:
            del self._pending[trace_id]
        else:
            # Another local root of the same trace (a second request in one trace) is still running.
            pending.taken.update([id(s) for s in taken])
            if 2 * len(pending.taken) > len(pending.spans):
                pending.held()  # amortised: each compaction removes at least half of the list
        return taken

    def _mark_released(self, trace_id: int, spans: list[SpanData]) -> None:
        ids = self._released.get(trace_id)
        if ids is None:
            ids = self._released[trace_id] = set()
        else:
            self._released.move_to_end(trace_id)
        before = len(ids)
        ids.update([s.span_id for s in spans])
        self._released_count += len(ids) - before
        while self._released_count > self._remember and len(self._released) > 1:
            _, oldest = self._released.popitem(last=False)
            self._released_count -= len(oldest)
