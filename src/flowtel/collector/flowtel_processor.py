"""``flowtel`` processor: the shared pipeline (assembly, analysis, derivation, enrichment) on OTLP spans.

Its keys are ``FlowtelConfig``'s, with durations written the collector's way
(``trace_timeout: 5m``), so the in-process and collector settings read the same.
"""

from __future__ import annotations

from pydantic import Field

from flowtel.config import FlowtelConfig

from .settings import Model, PositiveDuration

_DEFAULTS = FlowtelConfig()


class FlowtelProcessorConfig(Model):
    #: Extra dimensions on every derived data point, e.g. ``{deployment: blue, variant: b}``.
    common_dimensions: dict[str, str] = Field(default_factory=dict)
    #: ``{dimension: resource attribute}`` copied from each span's resource onto its data points.
    resource_dimensions: dict[str, str] = Field(default_factory=dict)
    cardinality_limit: int = Field(_DEFAULTS.cardinality_limit, ge=1)
    #: Keep prompt / completion text in forwarded spans.
    capture_content: bool = _DEFAULTS.capture_content
    #: Longest a trace's spans wait for its local root.
    trace_timeout: PositiveDuration = _DEFAULTS.trace_timeout_s
    max_held_spans: int = Field(_DEFAULTS.max_held_spans, ge=1)
    #: Spans accepted but not yet processed; past it receivers answer 503 / UNAVAILABLE.
    max_queue_size: int = Field(_DEFAULTS.max_queue_size, ge=1)
    genai_metrics_skip_scopes: list[str] = Field(default_factory=list)

    def flowtel_config(self, schedule_delay_s: float) -> FlowtelConfig:
        return FlowtelConfig(
            common_dimensions=dict(self.common_dimensions),
            resource_dimensions=dict(self.resource_dimensions),
            cardinality_limit=self.cardinality_limit,
            capture_content=self.capture_content,
            trace_timeout_s=self.trace_timeout,
            max_held_spans=self.max_held_spans,
            max_queue_size=self.max_queue_size,
            schedule_delay_s=schedule_delay_s,
            genai_metrics_skip_scopes=frozenset(self.genai_metrics_skip_scopes),
        )
