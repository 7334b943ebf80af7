"""The host-neutral pipeline: assemble local traces, analyse, derive metrics, enrich.

Hosts feed it ``SpanData`` and get back their native spans, enriched by ``apply`` (the
in-process host builds a new SDK span, the collector cuts and appends wire bytes). A
failure in flowtel's own logic never loses a span and never leaks content: the spans it
failed on go out unenriched but, unless content capture is on, with their content removed
(a removal that reads the span alone, not the analysis that failed); a span whose content
cannot be removed either is dropped. Failures are counted (``flowtel_processing_errors_total``
by stage, drops in ``flowtel_spans_dropped_total``) and logged once per stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flowtel.config import FlowtelConfig
from flowtel.selfmetrics import SelfMetrics
from flowtel.spans import Enrichment, SpanData

from .analysis import analyze, awaited_stream, ends_stream
from .assembly import Released, TraceAssembler
from .correlation import FeedbackCorrelator
from .derivation import Deriver
from .enrichment import content_removal, enrich
from .metrics import FlowtelMetrics

Apply = Callable[[SpanData, Enrichment], Any]
_NOTHING = Enrichment()
logger = logging.getLogger("flowtel")


class TracePipeline:
    def __init__(self, config: FlowtelConfig, metrics: FlowtelMetrics, self_metrics: SelfMetrics,
                 apply: Apply, gauge_labels: dict[str, str] | None = None) -> None:
        self._config = config
        self._deriver = Deriver(metrics, config.genai_metrics_skip_scopes, self_metrics)
        self._self = self_metrics
        self._apply = apply
        self._released: dict[str, int] = {}
        self._processed = 0
        self._logged_failures: set[str] = set()
        self.forget_held()
        self_metrics.register_gauge("held_spans", lambda: self._assembler.held_spans, gauge_labels)
        self_metrics.register_gauge("held_traces", lambda: self._assembler.held_traces, gauge_labels)
        self_metrics.register_gauge("feedback_waiting", lambda: self._feedback.waiting, gauge_labels)
        self_metrics.register_gauge("feedback_index", lambda: len(self._feedback.index), gauge_labels)

    def forget_held(self) -> None:
        """Start with no held traces and no waiting feedback (at construction, and in a forked child, whose
        parent still holds those spans and will export them)."""
        config = self._config
        self._assembler = TraceAssembler(int(config.trace_timeout * 1e9), config.max_held_spans,
                                         streams=(awaited_stream, ends_stream))
        self._feedback = FeedbackCorrelator(
            config.feedback.scoring(), config.feedback.max_requests, int(config.feedback.request_window * 1e9),
            int(config.feedback.wait * 1e9), config.feedback.max_waiting,
            config.resource_dimensions)

    def process(self, spans: Iterable[SpanData], now_ns: int) -> list[Any]:
        try:
            return self._process(spans, now_ns)
        finally:
            self._count()

    def _count(self) -> None:
        """Self-metric counts of a batch, added once (a lock per trace showed in profiles)."""
        for reason, n in self._released.items():
            self._self.released(reason, n)
        self._released.clear()
        if self._processed:
            self._self.processed(self._processed)
            self._processed = 0

    def _process(self, spans: Iterable[SpanData], now_ns: int) -> list[Any]:
        out: list[Any] = []
        # Roots last: a batch may carry a root ahead of its children (senders and relays reorder),
        # and a root that arrives first would release its trace before the children are there.
        roots: list[SpanData] = []
        feedback: list[SpanData] = []
        is_feedback = self._feedback.is_feedback
        add_child, add_root, finish = self._assembler.add_child, self._assembler.add_root, self._finish
        for span in spans:
            if span.is_local_root:
                (feedback if is_feedback(span) else roots).append(span)
                continue
            for released in add_child(span, now_ns):
                finish(released, out, now_ns)
        roots.reverse()
        while roots:  # popped, not iterated: a trace is freed once finished, not when the batch is
            done = add_root(roots.pop(), now_ns)
            if done is not None:  # None: held until the stream its flow handed to the server is read
                finish(done, out, now_ns)
        for released in self._assembler.expire(now_ns):
            self._finish(released, out, now_ns)
        # Feedback after the requests of this batch are indexed, so both may come in one batch.
        for span in feedback:
            for ready in self._feedback.add_feedback(span, now_ns):
                self._finish_feedback(ready, out)
        for ready in self._feedback.ready(now_ns):
            self._finish_feedback(ready, out)
        return out

    def drain(self) -> list[Any]:
        out: list[Any] = []
        now_ns = time.monotonic_ns()
        try:
            for released in self._assembler.drain():
                self._finish(released, out, now_ns)
            for ready in self._feedback.ready(now_ns, everything=True):
                self._finish_feedback(ready, out)
        finally:
            self._count()
        return out

    def _finish_feedback(self, span: SpanData, out: list[Any]) -> None:
        try:
            outcome = self._feedback.outcome(span)
            self._deriver.feedback(outcome.flow, outcome.score_label, outcome.correlated, outcome.resource)
            if not outcome.correlated:
                self._self.add("flowtel.feedback.uncorrelated", 1, outcome.uncorrelated_reason)
            out.append(self._apply(span, outcome.enrichment))
        except Exception:
            self._failed("feedback", [span], out)
        self._processed += 1

    def _finish(self, released: Released, out: list[Any], now_ns: int) -> None:
        reason, spans = released
        self._released[reason] = self._released.get(reason, 0) + 1
        self._processed += len(spans)
        try:
            roles = analyze(spans)
        except Exception:
            self._failed("analysis", spans, out)
            return
        try:
            self._feedback.add_requests(self._deriver.derive(roles), now_ns)
        except Exception:  # metrics are lost for this trace; its spans are still enriched below
            self._log_failure("derivation", len(spans))
        capture, apply, append = self._config.capture_content, self._apply, out.append
        for r in roles:
            try:
                enrichment = enrich(r, capture)
                append(r.span.native if enrichment is None else apply(r.span, enrichment))
            except Exception:
                self._failed("enrichment", [r.span], out)

    def _failed(self, stage: str, spans: list[SpanData], out: list[Any]) -> None:
        """Forward spans flowtel's logic failed on as they came, minus their content unless capture is on."""
        self._log_failure(stage, len(spans))
        for span in spans:
            if self._config.capture_content:
                out.append(span.native)
                continue
            try:  # built from the span as flowtel read it, never the native as it came: a failed apply may
                # already have taken content out of the adapted attributes, so only the rebuilt span is known clean
                out.append(self._apply(span, content_removal(span) or _NOTHING))
            except Exception:  # fail closed: a span whose content cannot be removed does not leave
                self._log_failure("content_removal", 1)
                self._self.dropped("content_removal_failed")
                self._processed -= 1

    def _log_failure(self, stage: str, n: int) -> None:
        self._self.processing_error(stage, n)
        if stage not in self._logged_failures:  # once per stage: a crafted input must not flood the log
            self._logged_failures.add(stage)
            logger.exception("flowtel's %s stage failed on %d span(s); what it would have added is missing, and "
                             "content is still removed unless capture is on (counted in "
                             "flowtel_processing_errors_total{stage}, logged once per stage)", stage, n)
