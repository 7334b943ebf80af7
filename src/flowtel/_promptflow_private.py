"""Every private API of ``promptflow-tracing`` flowtel uses, in one place (imported only where it is installed).

- ``promptflow.tracing._trace.TracedIterator.__next__`` / ``TracedAsyncIterator.__anext__``: the proxies
  promptflow-tracing wraps a streamed output in. ``flowtel.instrumentation`` patches them to mark the first chunk
  (promptflow-tracing records only when a stream ends), and reads the proxy's span from its ``_span`` attribute.
- For the tests' real producers, which reproduce what promptflow-core's executor does around a DAG flow with
  promptflow-tracing's own functions: ``_trace.start_as_current_span`` / ``enrich_span_with_input`` /
  ``enrich_span_with_output``, ``_tracer.Tracer.start_tracing`` / ``end_tracing`` and
  ``_integrations._openai_injector.inject_openai_api`` / ``recover_openai_api``.

``tests/test_promptflow_shape.py`` checks, for the installed promptflow-tracing, that each still has the shape used
here and fails naming what moved (the first-chunk mark would otherwise silently vanish, and with it the
``firstbyte`` latency).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from promptflow.tracing import _trace
from promptflow.tracing._integrations._openai_injector import inject_openai_api, recover_openai_api
from promptflow.tracing._trace import enrich_span_with_input, enrich_span_with_output, start_as_current_span
from promptflow.tracing._tracer import Tracer

__all__ = ["Tracer", "enrich_span_with_input", "enrich_span_with_output", "inject_openai_api", "patch_stream_steps",
           "recover_openai_api", "restore_stream_steps", "start_as_current_span", "stream_span"]

#: ``(sync __next__, async __anext__)`` of the stream proxies, as promptflow-tracing defines them.
StreamSteps = tuple[Callable[..., Any], Callable[..., Any]]


def stream_steps() -> StreamSteps:
    return _trace.TracedIterator.__next__, _trace.TracedAsyncIterator.__anext__


def patch_stream_steps(wrap_next: Callable[[Callable[..., Any]], Callable[..., Any]],
                       wrap_anext: Callable[[Callable[..., Any]], Callable[..., Any]]) -> StreamSteps:
    """Replace the stream proxies' ``__next__`` / ``__anext__`` by the wrapped ones; answers the originals."""
    originals = stream_steps()
    _trace.TracedIterator.__next__ = wrap_next(originals[0])
    _trace.TracedAsyncIterator.__anext__ = wrap_anext(originals[1])
    return originals


def restore_stream_steps(originals: StreamSteps) -> None:
    _trace.TracedIterator.__next__, _trace.TracedAsyncIterator.__anext__ = originals


def stream_span(proxy: Any) -> Any:
    """The span a stream proxy ends when its stream ends (None if this version keeps it elsewhere)."""
    return getattr(proxy, "_span", None)
