"""The ``prometheus`` exporter's config; most keys are about received OTLP metrics (``exporters/received_metrics``).

They live in the collector package, not next to the exporter, so that importing the exporter
module first cannot import the collector's config half-way (the config imports this module).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .settings import Auth, Endpoint, Model, PositiveDuration, ServerTLS


class ResourceToTelemetryConversion(Model):
    #: Copy every resource attribute onto every series of its metrics (upstream key).
    enabled: bool = False


class ReceivedMetricsConfig(Model):
    """The ``prometheus`` exporter's keys about received metrics (upstream names where upstream has them)."""

    #: Series not updated for this long stop being exposed (upstream default 5m).
    metric_expiration: PositiveDuration = 300.0
    resource_to_telemetry_conversion: ResourceToTelemetryConversion = ResourceToTelemetryConversion()
    #: Resource attributes copied onto every series (the Prometheus server's OTLP receiver has this key).
    promote_resource_attributes: list[str] = Field(default_factory=list)
    #: A received metric that flowtel also derives from spans: ``drop`` it (counted), or keep it as
    #: ``duplicate_prefix`` + its name.
    duplicate_derived_metrics: Literal["drop", "prefix"] = "drop"
    duplicate_prefix: str = Field("received_", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: Label sets per received metric before new ones fold into the overflow series.
    cardinality_limit: int = Field(2000, ge=1)
    #: Distinct received metric families; metrics past it are dropped (counted).
    max_metrics: int = Field(1000, ge=1)
    #: Label values longer than this (UTF-8 bytes) are cut to it (the derived metrics' limit and default).
    label_value_max_bytes: int = Field(256, ge=16)


class _EndpointConfig(Model):
    endpoint: Endpoint = "localhost:9464"
    tls: ServerTLS | None = None
    auth: Auth | None = None


class PrometheusExporterConfig(ReceivedMetricsConfig, _EndpointConfig):
    """Where the endpoint listens (its keys come first), then the keys about received metrics."""
