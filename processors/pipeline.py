"""The host-neutral pipeline: assemble local traces, analyse, derive metrics, enrich.

Hosts feed it ``SpanData`` and get back their native spans, enriched by ``apply`` (the
in-process host builds a new SDK span, the collector edits the OTLP span in place). A
failure in flowtel's own logic never loses a span: the trace goes out unenriched and the
failure is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flowtel.config import FlowtelConfig
from flowtel.selfmetrics import SelfMetrics
from flowtel.spans import Enrichment, SpanData

from .analysis import analyze
from .assembly import Released, TraceAssembler
from .derivation import Deriver
from .enrichment import enrich
from .metrics import FlowtelMetrics

Apply = Callable[[SpanData, Enrichment], Any]
logger = logging.getLogger("flowtel")


class TracePipeline:
    def __init__(self, config: FlowtelConfig, metrics: FlowtelMetrics, self_metrics: SelfMetrics,
                 apply: Apply, gauge_labels: dict[str, str] | None = None) -> None:
        self._config = config
        self._assembler = TraceAssembler(int(config.trace_timeout_s * 1e9), config.max_held_spans)
        self._deriver = Deriver(metrics, config.genai_metrics_skip_scopes)
        self._self = self_metrics
        self._apply = apply
        self_metrics.register_gauge("held_spans", lambda: self._assembler.held_spans, gauge_labels)
        self_metrics.register_gauge("held_traces", lambda: self._assembler.held_traces, gauge_labels)

    def process(self, spans: Iterable[SpanData], now_ns: int) -> list[Any]:
        out: list[Any] = []
        # Roots last: a batch may carry a root ahead of its children (senders and relays reorder),
        # and a root that arrives first would release its trace before the children are there.
        roots: list[SpanData] = []
        for span in spans:
            if span.is_local_root:
                roots.append(span)
                continue
            for released in self._assembler.add(span, now_ns):
                self._finish(released, out)
        for span in roots:
            for released in self._assembler.add(span, now_ns):
                self._finish(released, out)
        for released in self._assembler.expire(now_ns):
            self._finish(released, out)
        return out

    def drain(self) -> list[Any]:
        out: list[Any] = []
        for released in self._assembler.drain():
            self._finish(released, out)
        return out

    def _finish(self, released: Released, out: list[Any]) -> None:
        reason, spans = released
        self._self.released(reason)
        done: list[Any] = []
        try:
            roles = analyze(spans)
            self._deriver.derive(roles)
            capture = self._config.capture_content
            for r in roles:
                enrichment = enrich(r, capture)
                done.append(self._apply(r.span, enrichment) if enrichment else r.span.native)
        except Exception:
            logger.exception("flowtel failed to process a trace of %d spans; forwarding them unenriched", len(spans))
            self._self.processing_error("pipeline", len(spans))
            done = [s.native for s in spans]
        out.extend(done)
        self._self.processed(len(spans))
