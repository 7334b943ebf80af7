"""``FlowtelConfig``: the settings of flowtel's span logic, one pydantic model for both hosts.

The collector reads it from a ``flowtel`` processor's keys in its config file; in-process,
``FlowtelConfig.from_env()`` reads the variables in ``FlowtelConfig.ENV`` into the same model.
A key has one name in both (``trace_timeout``, ``feedback.wait``); durations are written the
collector's way (``5m``) or, in a variable, as seconds.

Names from before the two hosts shared this model (``trace_timeout_s``, ``feedback_window_s``,
``feedback_scoring``, ...) are still accepted when building it in code and still readable, so code
written against them keeps working; a config file must use the keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from flowtel.processors.scoring import DEFAULT_LABELS, FeedbackScoring, normalize_word
from flowtel.settings import ConfigError, Duration, EnvVar, Model, PositiveDuration, env_bool, env_duration

__all__ = ["ConfigError", "FeedbackConfig", "FeedbackLabel", "FlowtelConfig", "env_bool"]

_SCORING = FeedbackScoring()


#: opentelemetry-util-genai's values for OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT (openai-v2 reads them).
_CAPTURE_MODES = {"no_content": False, "span_only": True, "event_only": True, "span_and_event": True}


def _capture_mode(text: str) -> bool:
    mode = _CAPTURE_MODES.get(text.lower())
    if mode is not None:
        return mode
    try:
        return env_bool(text)
    except ValueError:
        raise ValueError("true, false, NO_CONTENT, SPAN_ONLY, EVENT_ONLY or SPAN_AND_EVENT") from None


def _json_str_map(text: str) -> dict[str, str]:
    expected = 'a JSON object of strings, e.g. {"deployment": "blue"}'
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(expected) from None
    if not isinstance(parsed, dict) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in parsed.values()):
        raise ValueError(expected)
    return {str(k): str(v) for k, v in parsed.items()}


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError("comma-separated dimension=resource.attribute pairs")
        out[name.strip()] = value.strip()
    return out


class FeedbackLabel(Model):
    score: float
    label: str = Field(min_length=1)


class FeedbackConfig(Model):
    """Joining user feedback to its request and scoring it (README "Feedback")."""

    #: How long a request stays joinable to feedback about it.
    request_window: PositiveDuration = 3600.0
    #: Most requests kept for joining (about 0.5 KiB each).
    max_requests: int = Field(50_000, ge=1)
    #: Longest feedback waits for its request's spans (apps export in batches); 0 never waits.
    wait: Duration = 30.0
    #: Most feedback spans waiting; past it the oldest go out uncorrelated.
    max_waiting: int = Field(10_000, ge=1)
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
        labels.update({normalize_word(word): (v.score, v.label) for word, v in self.labels.items()})
        return FeedbackScoring(self.evaluation_name, labels, tuple(self.rating_fields), self.positive_threshold)


#: Names from before the model was shared, accepted in code: old name -> key (dotted: nested).
_CODE_NAMES = {"trace_timeout_s": "trace_timeout", "schedule_delay_s": "schedule_delay",
           "feedback_window_s": "feedback.request_window", "feedback_max_requests": "feedback.max_requests",
           "feedback_wait_s": "feedback.wait", "feedback_max_waiting": "feedback.max_waiting"}


class FlowtelConfig(Model):
    """Settings of flowtel's span logic: the collector's ``flowtel`` processor and the in-process processor.

    Defaults are chosen for a single app process; see README "Configuration" and collector-config/README.md.
    """

    ENV: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("PF_SERVING_METRICS_COMMON_DIMENSIONS", "common_dimensions", _json_str_map),
        EnvVar("FLOWTEL_METRICS_COMMON_DIMENSIONS", "common_dimensions", _json_str_map),
        EnvVar("FLOWTEL_METRICS_RESOURCE_DIMENSIONS", "resource_dimensions", _pairs),
        EnvVar("FLOWTEL_METRICS_CARDINALITY_LIMIT", "cardinality_limit"),
        EnvVar("FLOWTEL_METRICS_LABEL_VALUE_MAX_BYTES", "label_value_max_bytes"),
        EnvVar("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "capture_content", _capture_mode),
        EnvVar("FLOWTEL_CAPTURE_CONTENT", "capture_content", env_bool),
        EnvVar("FLOWTEL_TRACE_TIMEOUT", "trace_timeout", env_duration),
        EnvVar("FLOWTEL_MAX_HELD_SPANS", "max_held_spans"),
        EnvVar("FLOWTEL_MAX_QUEUE_SIZE", "max_queue_size"),
        EnvVar("FLOWTEL_FEEDBACK_WINDOW", "feedback.request_window", env_duration),
        EnvVar("FLOWTEL_FEEDBACK_MAX_REQUESTS", "feedback.max_requests"),
        EnvVar("FLOWTEL_FEEDBACK_WAIT", "feedback.wait", env_duration),
        EnvVar("FLOWTEL_FEEDBACK_MAX_WAITING", "feedback.max_waiting"),
        EnvVar("FLOWTEL_FEEDBACK_POSITIVE_THRESHOLD", "feedback.positive_threshold"),
        EnvVar("FLOWTEL_PAUSE_GC", "pause_gc", env_bool),
    )
    IN_PROCESS_ONLY: ClassVar[Mapping[str, str]] = {
        "schedule_delay": "the collector's worker wakes every batch.timeout",
        "pause_gc": "the collector owns its process and always tunes its GC (flowtel collector start-up)",
    }
    CODE_NAMES: ClassVar[Mapping[str, str]] = {**_CODE_NAMES, "feedback_scoring": "feedback"}

    #: Extra dimensions on every derived data point, e.g. ``{deployment: blue, variant: b}``.
    common_dimensions: dict[str, str] = Field(default_factory=dict)
    #: ``{dimension: resource attribute}`` copied from each span's resource onto its data points.
    resource_dimensions: dict[str, str] = Field(default_factory=dict)
    #: Distinct label sets per metric before new ones fold into the ``otel_metric_overflow`` series.
    cardinality_limit: int = Field(2000, ge=1)
    #: Longest metric label value in UTF-8 bytes; longer ones are cut (flowtel_metric_labels_cut_total).
    label_value_max_bytes: int = Field(256, ge=1)
    #: Keep prompt / completion text in exported spans.
    capture_content: bool = False
    #: Longest a trace's spans wait for its local root.
    trace_timeout: PositiveDuration = 300.0
    #: Most spans held across all unfinished traces; past it the oldest trace is released as it is.
    max_held_spans: int = Field(100_000, ge=1)
    #: Spans accepted but not yet processed; past it they are dropped in-process (counted) and refused with
    #: 503 / UNAVAILABLE by the collector's receivers.
    max_queue_size: int = Field(20_000, ge=1)
    #: Instrumentation scopes whose own gen_ai.client.* metrics make flowtel's derived ones duplicates.
    genai_metrics_skip_scopes: frozenset[str] = frozenset()
    feedback: FeedbackConfig = FeedbackConfig()
    #: In-process: how often the worker wakes when the queue is not full.
    schedule_delay: PositiveDuration = 0.2
    #: In-process: pause the cyclic GC while the worker drains a batch (``flowtel._gc``). Off by default: it
    #: switches collection off for the whole app process, not only for flowtel's thread.
    pause_gc: bool = False

    @classmethod
    def renamed(cls, data: dict[str, Any]) -> dict[str, Any]:
        scoring = data.get("feedback_scoring")
        if isinstance(scoring, FeedbackScoring):  # the old field held the scoring object: its parts are keys now
            data["feedback_scoring"] = {
                "evaluation_name": scoring.evaluation_name, "positive_threshold": scoring.positive_threshold,
                "rating_fields": list(scoring.rating_fields),
                "labels": {w: {"score": v, "label": label} for w, (v, label) in scoring.labels.items()}}
        elif scoring is not None:
            raise ValueError("feedback_scoring: a FeedbackScoring")
        return super().renamed(data)

    # Read-only views under the names from before the model was shared.
    @property
    def trace_timeout_s(self) -> float:
        return self.trace_timeout

    @property
    def schedule_delay_s(self) -> float:
        return self.schedule_delay

    @property
    def feedback_window_s(self) -> float:
        return self.feedback.request_window

    @property
    def feedback_max_requests(self) -> int:
        return self.feedback.max_requests

    @property
    def feedback_wait_s(self) -> float:
        return self.feedback.wait

    @property
    def feedback_max_waiting(self) -> int:
        return self.feedback.max_waiting

    @property
    def feedback_scoring(self) -> FeedbackScoring:
        return self.feedback.scoring()
