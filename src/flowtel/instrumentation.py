"""Mark the first chunk of prompt flow's streamed outputs with a ``flowtel.first_chunk`` event.

promptflow-tracing records when a streamed output ends but not when its first chunk
left, and the ``firstbyte`` flow latency needs that moment. This instrumentor adds one
span event per stream (a flag check per chunk after that). ``opentelemetry-instrument``
loads it through the ``opentelemetry_instrumentor`` entry point; ``flowtel.configure()``
turns it on when promptflow-tracing is installed.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

# The module starts with a file-wide `# type: ignore`, so mypy sees none of its names (py.typed notwithstanding).
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

FIRST_CHUNK_EVENT = "flowtel.first_chunk"


def _mark(proxy: Any) -> None:
    if not getattr(proxy, "_flowtel_first_chunk", False):
        proxy._flowtel_first_chunk = True
        span = getattr(proxy, "_span", None)
        if span is not None:
            span.add_event(FIRST_CHUNK_EVENT)


class PromptflowStreamingInstrumentor(BaseInstrumentor):
    def instrumentation_dependencies(self) -> Collection[str]:
        return ("promptflow-tracing >= 1.0",)

    def _instrument(self, **kwargs: Any) -> None:
        from promptflow.tracing import _trace

        sync_next = _trace.TracedIterator.__next__
        async_next = _trace.TracedAsyncIterator.__anext__

        @functools.wraps(sync_next)
        def __next__(self: Any) -> Any:
            item = sync_next(self)
            _mark(self)
            return item

        @functools.wraps(async_next)
        async def __anext__(self: Any) -> Any:
            item = await async_next(self)
            _mark(self)
            return item

        self._originals = (sync_next, async_next)
        _trace.TracedIterator.__next__ = __next__
        _trace.TracedAsyncIterator.__anext__ = __anext__

    def _uninstrument(self, **kwargs: Any) -> None:
        from promptflow.tracing import _trace

        _trace.TracedIterator.__next__, _trace.TracedAsyncIterator.__anext__ = self._originals
