"""Mark the first chunk of prompt flow's streamed outputs with a ``flowtel.first_chunk`` event.

promptflow-tracing records when a streamed output ends but not when its first chunk
left, and the ``firstbyte`` flow latency needs that moment. This instrumentor adds one
span event per stream (a flag check per chunk after that). ``opentelemetry-instrument``
loads it through the ``opentelemetry_instrumentor`` entry point; ``flowtel.configure()``
turns it on when promptflow-tracing is installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any

# The module starts with a file-wide `# type: ignore`, so mypy sees none of its names (py.typed notwithstanding).
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

FIRST_CHUNK_EVENT = "flowtel.first_chunk"


def _mark(proxy: Any) -> None:
    # Our own flag on promptflow-tracing's proxy: one event per stream, then one attribute check per chunk.
    if not getattr(proxy, "_flowtel_first_chunk", False):
        proxy._flowtel_first_chunk = True
        from flowtel._promptflow_private import stream_span

        span = stream_span(proxy)
        if span is not None:
            span.add_event(FIRST_CHUNK_EVENT)


def _marking_next(sync_next: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(sync_next)
    def __next__(self: Any) -> Any:
        item = sync_next(self)
        _mark(self)
        return item
    return __next__


def _marking_anext(async_next: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(async_next)
    async def __anext__(self: Any) -> Any:
        item = await async_next(self)
        _mark(self)
        return item
    return __anext__


class PromptflowStreamingInstrumentor(BaseInstrumentor):
    def instrumentation_dependencies(self) -> Collection[str]:
        # The upper bound: the private API patched (flowtel._promptflow_private) is checked on 1.18; on a newer
        # promptflow-tracing, instrument() reports the conflict and leaves it alone rather than patch blindly.
        return ("promptflow-tracing >= 1.0, < 1.19",)

    def _instrument(self, **kwargs: Any) -> None:
        from flowtel._promptflow_private import patch_stream_steps  # promptflow-tracing's private API

        self._originals = patch_stream_steps(_marking_next, _marking_anext)

    def _uninstrument(self, **kwargs: Any) -> None:
        from flowtel._promptflow_private import restore_stream_steps

        restore_stream_steps(self._originals)
