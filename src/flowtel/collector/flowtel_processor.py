"""``flowtel`` processor: the shared pipeline (assembly, analysis, derivation, enrichment) on OTLP spans.

Its keys are ``FlowtelConfig``'s, with durations written the collector's way
(``trace_timeout: 5m``), so the in-process and collector settings read the same.
"""

from __future__ import annotations

from pydantic import Field

from flowtel.config import FlowtelConfig
from flowtel.processors.scoring import DEFAULT_LABELS, FeedbackScoring, normalize_word

from .settings import Duration, Model, PositiveDuration

_DEFAULTS = FlowtelConfig()
_SCORING = FeedbackScoring()


class FeedbackLabel(Model):
    score: float
    label: str = Field(min_length=1)


class FeedbackConfig(Model):
    """Joining user feedback to its request (README "Feedback"); keys mirror ``FlowtelConfig.feedback_*``."""

    #: How long a request stays joinable to feedback about it.
    request_window: PositiveDuration = _DEFAULTS.feedback_window_s
    #: Most requests kept for joining (about 0.5 KiB each).
    max_requests: int = Field(_DEFAULTS.feedback_max_requests, ge=1)
    #: Longest feedback waits for its request's spans (apps export in batches); 0 never waits.
    wait: Duration = _DEFAULTS.feedback_wait_s
    #: Most feedback spans waiting; past it the oldest go out uncorrelated.
    max_waiting: int = Field(_DEFAULTS.feedback_max_waiting, ge=1)
    #: ``gen_ai.evaluation.name`` of the evaluation event.
    evaluation_name: str = Field(_SCORING.evaluation_name, min_length=1)
    #: Numbers (ratings) at or above this are thumbup.
    positive_threshold: float = _SCORING.positive_threshold
    #: Words to ``{score, label}``, added to (or overriding) the defaults: thumbup, thumbdown, like, ...
    labels: dict[str, FeedbackLabel] = Field(default_factory=dict)
    #: Keys of an object body that hold the rating, first match wins.
    rating_fields: list[str] = Field(list(_SCORING.rating_fields))

    def scoring(self) -> FeedbackScoring:
        labels = dict(DEFAULT_LABELS)
        labels.update({normalize_word(word): (v.score, v.label)
                       for word, v in self.labels.items()})
        return FeedbackScoring(self.evaluation_name, labels, tuple(self.rating_fields), self.positive_threshold)


class FlowtelProcessorConfig(Model):
    #: Extra dimensions on every derived data point, e.g. ``{deployment: blue, variant: b}``.
    common_dimensions: dict[str, str] = Field(default_factory=dict)
    #: ``{dimension: resource attribute}`` copied from each span's resource onto its data points.
    resource_dimensions: dict[str, str] = Field(default_factory=dict)
    cardinality_limit: int = Field(_DEFAULTS.cardinality_limit, ge=1)
    #: Longest metric label value in UTF-8 bytes; longer ones are cut and counted.
    label_value_max_bytes: int = Field(_DEFAULTS.label_value_max_bytes, ge=1)
    #: Keep prompt / completion text in forwarded spans.
    capture_content: bool = _DEFAULTS.capture_content
    #: Longest a trace's spans wait for its local root.
    trace_timeout: PositiveDuration = _DEFAULTS.trace_timeout_s
    max_held_spans: int = Field(_DEFAULTS.max_held_spans, ge=1)
    #: Spans accepted but not yet processed; past it receivers answer 503 / UNAVAILABLE.
    max_queue_size: int = Field(_DEFAULTS.max_queue_size, ge=1)
    genai_metrics_skip_scopes: list[str] = Field(default_factory=list)
    feedback: FeedbackConfig = FeedbackConfig()

    def flowtel_config(self, schedule_delay_s: float) -> FlowtelConfig:
        return FlowtelConfig(
            common_dimensions=dict(self.common_dimensions),
            resource_dimensions=dict(self.resource_dimensions),
            cardinality_limit=self.cardinality_limit,
            label_value_max_bytes=self.label_value_max_bytes,
            capture_content=self.capture_content,
            trace_timeout_s=self.trace_timeout,
            max_held_spans=self.max_held_spans,
            max_queue_size=self.max_queue_size,
            schedule_delay_s=schedule_delay_s,
            genai_metrics_skip_scopes=frozenset(self.genai_metrics_skip_scopes),
            feedback_window_s=self.feedback.request_window,
            feedback_max_requests=self.feedback.max_requests,
            feedback_wait_s=self.feedback.wait,
            feedback_max_waiting=self.feedback.max_waiting,
            feedback_scoring=self.feedback.scoring(),
        )
