"""flowtel's settings: one typed, validated object for both hosts.

In-process, ``FlowtelConfig.from_env()`` reads the environment; the collector builds the
same object from its config file. Every error names where the value came from, the key
and what was expected.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from flowtel.processors.scoring import FeedbackScoring


class ConfigError(ValueError):
    """A setting is wrong; ``str()`` says where, which key, and what was expected."""

    def __init__(self, source: str, key: str, expected: str, got: object) -> None:
        self.source, self.key, self.expected, self.got = source, key, expected, got
        super().__init__(f"{source}: {key}: expected {expected}, got {got!r}")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


@dataclass(frozen=True, slots=True)
class FlowtelConfig:
    """Settings shared by the in-process processor and the collector.

    Defaults are chosen for a single app process; see README "Configuration".
    """

    #: Extra dimensions on every data point, e.g. ``{"deployment": "blue", "variant": "b"}``.
    common_dimensions: Mapping[str, str] = field(default_factory=dict)
    #: Resource attributes copied onto every data point as dimensions: ``{dimension: resource key}``.
    resource_dimensions: Mapping[str, str] = field(default_factory=dict)
    #: Distinct label sets per metric before new ones fold into the ``otel_metric_overflow`` series.
    cardinality_limit: int = 2000
    #: Longest metric label value in UTF-8 bytes; longer ones are cut (counted in flowtel_metric_labels_cut_total).
    label_value_max_bytes: int = 256
    #: Keep prompt / completion text in exported spans (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT).
    capture_content: bool = False
    #: Longest a trace's spans are held waiting for its local root, in seconds.
    trace_timeout_s: float = 300.0
    #: Most spans held across all unfinished traces; past it the oldest trace is released as it is.
    max_held_spans: int = 100_000
    #: Most spans queued between the request thread and the worker; past it spans are dropped (counted).
    max_queue_size: int = 20_000
    #: How often the worker wakes when the queue is not full, in seconds.
    schedule_delay_s: float = 0.2
    #: Instrumentation scopes whose own gen_ai.client.* metrics make flowtel's derived ones duplicates.
    genai_metrics_skip_scopes: frozenset[str] = frozenset()
    #: How long a request stays joinable to feedback about it, in seconds.
    feedback_window_s: float = 3600.0
    #: Most requests kept for joining feedback (about 0.5 KiB each; see README "Feedback").
    feedback_max_requests: int = 50_000
    #: Longest feedback waits for its request's spans to arrive, in seconds (apps export in batches).
    feedback_wait_s: float = 30.0
    #: Most feedback spans waiting for their request; past it the oldest go out uncorrelated.
    feedback_max_waiting: int = 10_000
    #: How feedback bodies read as scores (``flowtel.processors.scoring``).
    feedback_scoring: FeedbackScoring = field(default_factory=FeedbackScoring)
    #: Pause the cyclic GC while the in-process worker drains a batch (``flowtel._gc``). Off by default: it
    #: switches collection off for the whole app process, not only for flowtel's thread.
    pause_gc: bool = False

    def __post_init__(self) -> None:
        for name, minimum in (("cardinality_limit", 1), ("label_value_max_bytes", 1), ("max_held_spans", 1),
                              ("max_queue_size", 1),
                              ("feedback_max_requests", 1), ("feedback_max_waiting", 1)):
            if getattr(self, name) < minimum:
                raise ConfigError("FlowtelConfig", name, f"an integer >= {minimum}", getattr(self, name))
        for name in ("trace_timeout_s", "schedule_delay_s", "feedback_window_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError("FlowtelConfig", name, "a finite number of seconds > 0", value)
        wait = self.feedback_wait_s
        if not (isinstance(wait, (int, float)) and math.isfinite(wait) and wait >= 0):
            raise ConfigError("FlowtelConfig", "feedback_wait_s", "a finite number of seconds >= 0", wait)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> FlowtelConfig:
        env = os.environ if environ is None else environ
        # Settings of every type, by field name; the dataclass checks each (ConfigError) when built.
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}  # field -> variable it came from, so range errors name the variable
        dims: dict[str, str] = {}
        for var in ("PF_SERVING_METRICS_COMMON_DIMENSIONS", "FLOWTEL_METRICS_COMMON_DIMENSIONS"):
            if env.get(var):
                dims.update(_json_str_map("environment", var, env[var]))
        values["common_dimensions"] = dims
        if env.get("FLOWTEL_METRICS_RESOURCE_DIMENSIONS"):
            values["resource_dimensions"] = _pairs("environment", "FLOWTEL_METRICS_RESOURCE_DIMENSIONS",
                                                   env["FLOWTEL_METRICS_RESOURCE_DIMENSIONS"])
        _maybe(values, sources, env, "FLOWTEL_METRICS_CARDINALITY_LIMIT", "cardinality_limit", _int)
        _maybe(values, sources, env, "FLOWTEL_METRICS_LABEL_VALUE_MAX_BYTES", "label_value_max_bytes", _int)
        _maybe(values, sources, env, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "capture_content",
               _capture_mode)
        _maybe(values, sources, env, "FLOWTEL_CAPTURE_CONTENT", "capture_content", _bool)
        _maybe(values, sources, env, "FLOWTEL_TRACE_TIMEOUT", "trace_timeout_s", _float)
        _maybe(values, sources, env, "FLOWTEL_MAX_HELD_SPANS", "max_held_spans", _int)
        _maybe(values, sources, env, "FLOWTEL_MAX_QUEUE_SIZE", "max_queue_size", _int)
        _maybe(values, sources, env, "FLOWTEL_FEEDBACK_WINDOW", "feedback_window_s", _float)
        _maybe(values, sources, env, "FLOWTEL_FEEDBACK_MAX_REQUESTS", "feedback_max_requests", _int)
        _maybe(values, sources, env, "FLOWTEL_FEEDBACK_WAIT", "feedback_wait_s", _float)
        _maybe(values, sources, env, "FLOWTEL_PAUSE_GC", "pause_gc", _bool)
        threshold = env.get("FLOWTEL_FEEDBACK_POSITIVE_THRESHOLD", "").strip()
        if threshold:
            values["feedback_scoring"] = replace(
                FeedbackScoring(), positive_threshold=_float("environment", "FLOWTEL_FEEDBACK_POSITIVE_THRESHOLD",
                                                             threshold))
        values.update(overrides)
        for key in overrides:
            sources.pop(key, None)
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError("FlowtelConfig", key, f"one of {sorted(known)}", key)
        try:
            return cls(**values)
        except ConfigError as error:
            if error.key in sources:
                raise ConfigError("environment", sources[error.key], error.expected, error.got) from None
            raise


def _maybe(values: dict[str, object], sources: dict[str, str], env: Mapping[str, str], var: str, key: str,
           parse: Callable[[str, str, str], object]) -> None:
    raw = env.get(var)
    if raw is not None and raw.strip() != "":
        values[key] = parse("environment", var, raw.strip())
        sources[key] = var


def _int(source: str, key: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(source, key, "an integer", raw) from None


def _float(source: str, key: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(source, key, "a number", raw) from None


def _bool(source: str, key: str, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(source, key, "true or false", raw)


#: opentelemetry-util-genai's values for OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT (openai-v2 reads them).
_CAPTURE_MODES = {"no_content": False, "span_only": True, "event_only": True, "span_and_event": True}


def _capture_mode(source: str, key: str, raw: str) -> bool:
    mode = _CAPTURE_MODES.get(raw.lower())
    if mode is not None:
        return mode
    try:
        return _bool(source, key, raw)
    except ConfigError:
        raise ConfigError(source, key, "true, false, NO_CONTENT, SPAN_ONLY, EVENT_ONLY or SPAN_AND_EVENT",
                          raw) from None


def _json_str_map(source: str, key: str, raw: str) -> dict[str, str]:
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError(source, key, 'a JSON object of strings, e.g. {"deployment": "blue"}', raw) from None
    if not isinstance(parsed, dict) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in parsed.values()):
        raise ConfigError(source, key, 'a JSON object of strings, e.g. {"deployment": "blue"}', raw)
    return {str(k): str(v) for k, v in parsed.items()}


def _pairs(source: str, key: str, raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(source, key, "comma-separated dimension=resource.attribute pairs", raw)
        out[name.strip()] = value.strip()
    return out
