"""``flowtel.configure()``: one call that sets up tracing and metrics with flowtel in the path.

It follows the OpenTelemetry SDK's own environment conventions (``OTEL_TRACES_EXPORTER``,
``OTEL_METRICS_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``), with two defaults chosen for an offline first run: traces go to
OTLP only when an OTLP endpoint is set, and metrics go to the Prometheus endpoint (plus
OTLP when an endpoint is set).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from opentelemetry import metrics, trace
from opentelemetry.sdk._configuration import (
    _get_exporter_names,
    _get_id_generator,
    _get_sampler,
    _import_exporters,
    _import_id_generator,
    _import_sampler,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from flowtel._log import logger
from flowtel.config import FlowtelConfig
from flowtel.exporters.derived import DerivedMetricsExporter
from flowtel.exporters.prometheus import PrometheusEndpoint, PrometheusMetricReader, PrometheusSettings
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.processors.span_processor import FlowtelSpanProcessor
from flowtel.selfmetrics import SelfMetrics

#: Instrumentations that record gen_ai.client.* metrics themselves into the global meter provider;
#: flowtel does not derive those metrics again from their spans.
SELF_METERING_SCOPES = frozenset({"opentelemetry.instrumentation.openai_v2", "opentelemetry.util.genai.handler"})


@dataclass
class Flowtel:
    """What ``configure()`` built; ``shutdown()`` flushes and stops all of it."""

    config: FlowtelConfig
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    span_processor: FlowtelSpanProcessor
    prometheus: PrometheusEndpoint | None = None
    span_exporters: list[SpanExporter] = field(default_factory=list)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        if self.prometheus is not None:
            self.prometheus.shutdown()


def _otlp_endpoint_set(env: Mapping[str, str], signal: str) -> bool:
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


def _exporter_names(env: Mapping[str, str], signal: str, default: list[str]) -> list[str]:
    if env.get(f"OTEL_{signal}_EXPORTER") is None:
        return default
    return _get_exporter_names(signal.lower())  # type: ignore[arg-type]


def configure(
    *,
    config: FlowtelConfig | None = None,
    span_exporters: Sequence[SpanExporter] | None = None,
    metric_exporters: Sequence[MetricExporter] | None = None,
    prometheus: PrometheusSettings | bool | None = None,
    resource: Resource | None = None,
    set_global: bool = True,
    instrument_promptflow_streaming: bool = True,
) -> Flowtel:
    """Set up tracing and metrics with flowtel enriching spans and deriving metrics.

    ``span_exporters`` / ``metric_exporters`` replace what the environment would choose (each
    metric exporter is wrapped so it also receives the derived metrics);
    ``prometheus`` is on unless ``OTEL_METRICS_EXPORTER`` leaves it out (``False`` turns it
    off, a ``PrometheusSettings`` overrides host, port, token and TLS).
    """
    env = os.environ
    config = config or FlowtelConfig.from_env()
    if not config.genai_metrics_skip_scopes:
        config = replace(config, genai_metrics_skip_scopes=SELF_METERING_SCOPES)
    resource = resource or Resource.create()

    trace_names = _exporter_names(env, "TRACES", ["otlp"] if _otlp_endpoint_set(env, "TRACES") else [])
    metric_default = ["prometheus"] + (["otlp"] if _otlp_endpoint_set(env, "METRICS") else [])
    metric_names = _exporter_names(env, "METRICS", metric_default)
    want_prometheus = "prometheus" in metric_names if prometheus is None else prometheus is not False
    metric_names = [n for n in metric_names if n != "prometheus"]
    trace_classes, metric_classes, _ = _import_exporters(
        trace_names if span_exporters is None else [], metric_names if metric_exporters is None else [], [])
    exporters = list(span_exporters) if span_exporters is not None else [cls() for cls in trace_classes.values()]

    self_metrics = SelfMetrics()
    flowtel_metrics = FlowtelMetrics(config, self_metrics)
    readers: list[MetricReader] = []
    for exporter in metric_exporters if metric_exporters is not None else []:
        readers.append(PeriodicExportingMetricReader(DerivedMetricsExporter(exporter, flowtel_metrics, resource)))
    for name, cls in (metric_classes.items() if metric_exporters is None else ()):
        if issubclass(cls, MetricReader):
            logger.warning("metric reader %r gets the app's metrics but not flowtel's derived ones", name)
            readers.append(cls())
        else:
            readers.append(PeriodicExportingMetricReader(DerivedMetricsExporter(cls(), flowtel_metrics, resource)))
    prometheus_reader = PrometheusMetricReader() if want_prometheus else None
    if prometheus_reader is not None:
        prometheus_reader.add_producer(flowtel_metrics)
        readers.append(prometheus_reader)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    self_metrics.bind(meter_provider)
    processor = FlowtelSpanProcessor([BatchSpanProcessor(e) for e in exporters], metrics=flowtel_metrics,
                                     self_metrics=self_metrics, config=config)
    tracer_provider = TracerProvider(resource=resource, sampler=_import_sampler(_get_sampler()),
                                     id_generator=_import_id_generator(_get_id_generator()))
    tracer_provider.add_span_processor(processor)
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)

    endpoint = None
    if prometheus_reader is not None:
        settings = prometheus if isinstance(prometheus, PrometheusSettings) else PrometheusSettings.from_env()
        endpoint = PrometheusEndpoint(prometheus_reader, settings).start()
        logger.info("flowtel Prometheus endpoint listening on %s", endpoint.url)
    if instrument_promptflow_streaming:
        _instrument_promptflow()
    return Flowtel(config, tracer_provider, meter_provider, processor, endpoint, exporters)


def _instrument_promptflow() -> None:
    try:
        import promptflow.tracing  # noqa: F401
    except ImportError:
        return
    from flowtel.instrumentation import PromptflowStreamingInstrumentor

    PromptflowStreamingInstrumentor().instrument()
