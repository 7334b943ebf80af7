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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from flowtel.spans import SpanData

Released = tuple[str, list[SpanData]]


@dataclass(slots=True)
class _Pending:
    first_seen_ns: int
    spans: list[SpanData] = field(default_factory=list)  # arrival order, including spans already taken
    by_parent: dict[int, list[SpanData]] | None = None  # held spans by parent, once a root asked
    taken: set[int] = field(default_factory=set)  # id() of spans in ``spans`` released by a root

    def held(self) -> list[SpanData]:
        if self.taken:
            self.spans = [s for s in self.spans if id(s) not in self.taken]
            self.taken = set()
        return self.spans


class TraceAssembler:
    def __init__(self, timeout_ns: int, max_spans: int, remember_released_spans: int = 100_000) -> None:
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

    def add_root(self, span: SpanData) -> Released:
        """A local root completes its trace: it is released with every held descendant."""
        trace_id = span.trace_id
        spans = [span]
        pending = self._pending.get(trace_id)
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

    def _take_descendants(self, trace_id: int, pending: _Pending, root_id: int) -> list[SpanData]:
        """The root's held descendants, found through the parent index: cost is what is taken (and, for the
        trace's first root, building the index)."""
        children = pending.by_parent
        if children is None:
            children = pending.by_parent = {}
            for s in pending.spans:  # no span is taken before the index exists
                siblings = children.get(s.parent_span_id)
                if siblings is None:
                    children[s.parent_span_id] = [s]
                else:
                    siblings.append(s)
        taken: list[SpanData] = []
        frontier = [root_id]
        while frontier:
            for child in children.pop(frontier.pop(), ()):
                taken.append(child)
                frontier.append(child.span_id)
        if not taken:
            return taken
        self._held -= len(taken)
        if not children:
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
