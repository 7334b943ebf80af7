"""``flowtel.configure()``: one call that sets up tracing and metrics with flowtel in the path.

It follows the OpenTelemetry SDK's own environment conventions (``OTEL_TRACES_EXPORTER``,
``OTEL_METRICS_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``), with two defaults chosen for an offline first run: traces go to
OTLP only when an OTLP endpoint is set, and metrics go to the Prometheus endpoint (plus
OTLP when an endpoint is set). Logs follow the SDK's configurator: with an OTLP endpoint
set (or ``OTEL_LOGS_EXPORTER``), records emitted through the OpenTelemetry logs API (and
Python ``logging`` when ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true``) are
exported, so one ``OTEL_EXPORTER_OTLP_ENDPOINT`` sends all three signals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import DropAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from flowtel import _otel_sdk
from flowtel._listen import PortInUse, in_use
from flowtel._log import logger, warn_once
from flowtel.config import ConfigError, FlowtelConfig
from flowtel.exporters import azure_monitor as azmon
from flowtel.exporters.azure_monitor import AzureMonitorSettings
from flowtel.exporters.derived import DerivedMetricsExporter
from flowtel.exporters.prometheus import PrometheusEndpoint, PrometheusMetricReader, PrometheusSettings
from flowtel.feedback import FEEDBACK_PATH, FeedbackApp, FeedbackASGIApp, FeedbackLimits
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.processors.span_processor import FlowtelSpanProcessor
from flowtel.selfmetrics import SelfMetrics

#: Instrumentations that record gen_ai.client.* metrics themselves into the global meter provider;
#: flowtel does not derive those metrics again from their spans.
SELF_METERING_SCOPES = frozenset({"opentelemetry.instrumentation.openai_v2", "opentelemetry.util.genai.handler"})
#: The meter of prompt flow serving's own standard metrics (``promptflow.core._serving.monitor.metrics``).
PROMPTFLOW_SERVING_METER = "Promptflow Standard Metrics"


@dataclass
class Flowtel:
    """What ``configure()`` built; ``shutdown()`` flushes and stops all of it."""

    config: FlowtelConfig
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    span_processor: FlowtelSpanProcessor
    prometheus: PrometheusEndpoint | None = None
    span_exporters: list[SpanExporter] = field(default_factory=list)
    #: Push metric exporters as built or passed (each wrapped in a DerivedMetricsExporter in its reader).
    metric_exporters: list[MetricExporter] = field(default_factory=list)
    self_metrics: SelfMetrics | None = None
    #: The Application Insights settings in use, when that fan-out is on.
    azure_monitor: AzureMonitorSettings | None = None

    def feedback_app(self, *, token: str | None = None, limits: FeedbackLimits | None = None,
                     path: str | None = FEEDBACK_PATH) -> FeedbackApp:
        """WSGI app for prompt flow's ``POST /feedback``, recording into this tracer provider (README, "User
        feedback"); ``token`` requires ``Authorization: Bearer <token>``; ``path=None`` to mount it anywhere."""
        return FeedbackApp(self.tracer_provider, token=token, limits=limits, path=path,
                           on_refused=self._count_refused_feedback)

    def feedback_asgi_app(self, *, token: str | None = None, limits: FeedbackLimits | None = None,
                          path: str | None = FEEDBACK_PATH) -> FeedbackASGIApp:
        """The same for ASGI servers (FastAPI / Starlette ``app.mount("/feedback", ...)`` with ``path=None``)."""
        return FeedbackASGIApp(self.tracer_provider, token=token, limits=limits, path=path,
                               on_refused=self._count_refused_feedback)

    def _count_refused_feedback(self, reason: str, detail: str) -> None:
        if self.self_metrics is not None:
            self.self_metrics.add("flowtel.receiver.refused.requests", 1, "feedback", "http", reason)
        warn_once(f"feedback:refused:{reason}", "feedback endpoint refused a request (%s): %s; counted in "
                  "flowtel_receiver_refused_requests_total", reason, detail)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        if self.prometheus is not None:
            self.prometheus.shutdown()


def _otlp_endpoint_set(env: Mapping[str, str], signal: str) -> bool:
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


_SDK_SIGNALS: dict[str, _otel_sdk.Signal] = {"TRACES": "traces", "METRICS": "metrics", "LOGS": "logs"}


def _exporter_names(env: Mapping[str, str], signal: str, default: list[str]) -> list[str]:
    """The exporter entry points for a signal; flowtel's default ``otlp`` follows the OTLP protocol variables
    exactly as a named one does (``http/protobuf`` is the HTTP exporter, not the gRPC one)."""
    sdk_signal = _SDK_SIGNALS[signal]
    if env.get(f"OTEL_{signal}_EXPORTER") is None:
        return [_otel_sdk.exporter_entry_point(name, sdk_signal) for name in default]
    return _otel_sdk.exporter_names_from_env(sdk_signal)


def configure(
    *,
    config: FlowtelConfig | None = None,
    span_exporters: Sequence[SpanExporter] | None = None,
    metric_exporters: Sequence[MetricExporter] | None = None,
    prometheus: PrometheusSettings | bool | None = None,
    resource: Resource | None = None,
    set_global: bool = True,
    instrument_promptflow_streaming: bool = True,
    azure_monitor: AzureMonitorSettings | bool | None = None,
) -> Flowtel:
    """Set up tracing and metrics with flowtel enriching spans and deriving metrics.

    ``span_exporters`` / ``metric_exporters`` replace what the environment would choose (each
    metric exporter is wrapped so it also receives the derived metrics);
    ``prometheus`` is on unless ``OTEL_METRICS_EXPORTER`` leaves it out (``False`` turns it
    off, a ``PrometheusSettings`` overrides host, port, token and TLS).

    Application Insights: with ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set, the Azure Monitor
    trace exporter is added behind flowtel (it gets the enriched spans) and the metric exporter
    next to Prometheus (DELTA there, CUMULATIVE on Prometheus), for each signal whose exporters
    come from the environment. ``azure_monitor`` = an ``AzureMonitorSettings`` (or ``True``: from
    the environment) adds them regardless of ``span_exporters`` / ``metric_exporters``; ``False``
    never adds them.
    """
    env = os.environ
    config = config or FlowtelConfig.from_env()
    if not config.genai_metrics_skip_scopes:
        config = config.model_copy(update={"genai_metrics_skip_scopes": SELF_METERING_SCOPES})
    resource = resource or Resource.create()

    trace_names = _exporter_names(env, "TRACES", ["otlp"] if _otlp_endpoint_set(env, "TRACES") else [])
    metric_default = ["prometheus"] + (["otlp"] if _otlp_endpoint_set(env, "METRICS") else [])
    metric_names = _exporter_names(env, "METRICS", metric_default)
    want_prometheus = "prometheus" in metric_names if prometheus is None else prometheus is not False
    metric_names = [n for n in metric_names if n != "prometheus"]
    azure, azure_traces, azure_metrics = _azure_monitor(env, azure_monitor, trace_names, metric_names,
                                                        span_exporters is None, metric_exporters is None)
    trace_names = [n for n in trace_names if n != azmon.ENTRY_POINT_NAME]
    metric_names = [n for n in metric_names if n != azmon.ENTRY_POINT_NAME]
    trace_classes, metric_classes, _ = _otel_sdk.import_exporters(
        trace_names if span_exporters is None else [], metric_names if metric_exporters is None else [], [])
    exporters = list(span_exporters) if span_exporters is not None else [cls() for cls in trace_classes.values()]

    self_metrics = SelfMetrics()
    flowtel_metrics = FlowtelMetrics(config, self_metrics)
    tracer_provider = FlowtelTracerProvider(resource=resource, sampler=_otel_sdk.sampler_from_env(),
                                            id_generator=_otel_sdk.id_generator_from_env())
    readers: list[MetricReader] = []
    pushed: list[MetricExporter] = list(metric_exporters) if metric_exporters is not None else []
    for name, cls in (metric_classes.items() if metric_exporters is None else ()):
        if issubclass(cls, MetricReader):
            logger.warning("metric reader %r gets the app's metrics but not flowtel's derived ones", name)
            readers.append(cls())
        else:
            pushed.append(cls())
    for exporter in pushed:
        readers.append(PeriodicExportingMetricReader(DerivedMetricsExporter(exporter, flowtel_metrics, resource)))
    span_processors = [_CountingBatchSpanProcessor(e, self_metrics, type(e).__name__) for e in exporters]
    if azure is not None and azure_metrics:
        azure_exporter = azmon.build_metric_exporter(azure, self_metrics)
        pushed.append(azure_exporter)
        interval = azure.metric_export_interval_s
        readers.append(PeriodicExportingMetricReader(
            DerivedMetricsExporter(azure_exporter, flowtel_metrics, resource),
            export_interval_millis=interval * 1000 if interval is not None else None))
    if azure is not None and azure_traces:
        azure_span_exporter = azmon.build_trace_exporter(azure, self_metrics, tracer_provider=tracer_provider)
        exporters.append(azure_span_exporter)
        span_processors.append(_CountingBatchSpanProcessor(azure_span_exporter, self_metrics,
                                                           azmon.EXPORTER_ID))
    if azure is not None:
        logger.info("flowtel sends %s to Application Insights at %s",
                    " and ".join(s for s, on in (("traces", azure_traces), ("metrics", azure_metrics)) if on),
                    azure.ingestion_endpoint)
    prometheus_reader = PrometheusMetricReader() if want_prometheus else None
    # Bound before any provider is made global or any worker starts, so a taken port leaves nothing behind.
    endpoint = _prometheus_endpoint(prometheus_reader, prometheus) if prometheus_reader is not None else None
    if prometheus_reader is not None:
        prometheus_reader.add_producer(flowtel_metrics)
        readers.append(prometheus_reader)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=[
        # prompt flow serving records its own eight standard metrics into the global meter provider when one is
        # set (flowtel's, in-process): flowtel derives the same metrics from spans, so one series per name is kept.
        View(meter_name=PROMPTFLOW_SERVING_METER, aggregation=DropAggregation())])
    self_metrics.bind(meter_provider)
    processor = FlowtelSpanProcessor(span_processors, metrics=flowtel_metrics, self_metrics=self_metrics,
                                     config=config)
    tracer_provider.add_span_processor(processor)
    tracer_provider.flowtel = processor
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)

    if endpoint is not None:
        endpoint.start()
        logger.info("flowtel Prometheus endpoint listening on %s", endpoint.url)
    if set_global:
        _configure_logs(env, resource, config.capture_content, self_metrics)
    if instrument_promptflow_streaming:
        _instrument_promptflow()
    return Flowtel(config, tracer_provider, meter_provider, processor, endpoint, exporters, pushed, self_metrics,
                   azure)


def _configure_logs(env: Mapping[str, str], resource: Resource, capture_content: bool,
                    self_metrics: SelfMetrics) -> None:
    """The SDK configurator's logs set-up (flowtel has nothing to add to logs): a global ``LoggerProvider`` with a
    batch processor per exporter named by ``OTEL_LOGS_EXPORTER`` (default: OTLP when an endpoint is set)."""
    import logging

    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    names = _exporter_names(env, "LOGS", ["otlp"] if _otlp_endpoint_set(env, "LOGS") else [])
    if not names:
        return
    _, _, log_classes = _otel_sdk.import_exporters([], [], names)
    provider = LoggerProvider(resource=resource)
    batches = [BatchLogRecordProcessor(cls()) for cls in log_classes.values()]
    if capture_content:
        for batch in batches:
            provider.add_log_record_processor(batch)
    else:  # GenAI instrumentations log messages as events: content leaves only when capture is on
        from flowtel.log_processor import ContentFreeLogProcessor

        provider.add_log_record_processor(ContentFreeLogProcessor(batches, self_metrics))
    set_logger_provider(provider)
    if env.get("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "").strip().lower() == "true":
        logging.getLogger().addHandler(LoggingHandler(logger_provider=provider))


def _azure_monitor(env: Mapping[str, str], requested: AzureMonitorSettings | bool | None, trace_names: list[str],
                   metric_names: list[str], traces_from_env: bool, metrics_from_env: bool,
                   ) -> tuple[AzureMonitorSettings | None, bool, bool]:
    """Which Application Insights signals to send, and with which settings."""
    if requested is False:
        return None, False, False
    if isinstance(requested, AzureMonitorSettings):
        return requested, requested.traces, requested.metrics
    named_traces = azmon.ENTRY_POINT_NAME in trace_names
    named_metrics = azmon.ENTRY_POINT_NAME in metric_names
    if requested is None and not AzureMonitorSettings.configured(env):
        if named_traces or named_metrics:
            raise ConfigError("environment", "APPLICATIONINSIGHTS_CONNECTION_STRING",
                              f"set when OTEL_*_EXPORTER names {azmon.ENTRY_POINT_NAME}", None)
        return None, False, False
    settings = AzureMonitorSettings.from_env(env)
    if requested is True:
        return settings, settings.traces, settings.metrics
    return (settings, settings.traces and (traces_from_env or named_traces),
            settings.metrics and (metrics_from_env or named_metrics))


class FlowtelTracerProvider(TracerProvider):
    """The tracer provider ``configure()`` builds. Span processors the app adds to it afterwards go behind flowtel,
    like the exporters ``configure()`` made: they receive enriched spans, with content removed unless capture is on.

    Prompt flow serving adds a ``BatchSpanProcessor`` with its own OTLP exporter to whichever provider is global;
    in front of flowtel that exporter would send every span unenriched, prompts included.
    """

    flowtel: FlowtelSpanProcessor | None = None

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        if self.flowtel is None:
            super().add_span_processor(span_processor)
            return
        logger.info("flowtel: span processor %s added after configure() goes behind flowtel (enriched spans)",
                    type(span_processor).__name__)
        self.flowtel.add_downstream(span_processor)


class _CountingBatchSpanProcessor(BatchSpanProcessor):
    """``BatchSpanProcessor`` that counts the spans its full queue pushes out (the SDK only logs them).

    Like the SDK's own check, the count can be off by a span or two when the export thread takes a
    batch at the very moment the queue is full; while the exporter is stuck it is exact.
    """

    def __init__(self, exporter: SpanExporter, self_metrics: SelfMetrics, exporter_id: str) -> None:
        super().__init__(exporter)
        self._self_metrics = self_metrics
        self._exporter_id = exporter_id

    def on_end(self, span: ReadableSpan) -> None:
        if (span.context is not None and span.context.trace_flags.sampled
                and _otel_sdk.batch_queue_full(self)):
            self._self_metrics.dropped("export_queue_full")
            self._self_metrics.add("otelcol.exporter.enqueue_failed.spans", 1, self._exporter_id)
        super().on_end(span)


def _instrument_promptflow() -> None:
    try:
        import promptflow.tracing  # noqa: F401
    except ImportError:
        return
    from flowtel.instrumentation import PromptflowStreamingInstrumentor

    PromptflowStreamingInstrumentor().instrument()


def _prometheus_endpoint(reader: PrometheusMetricReader,
                         requested: PrometheusSettings | bool | None) -> PrometheusEndpoint:
    settings = requested if isinstance(requested, PrometheusSettings) else PrometheusSettings.from_env()
    try:
        return PrometheusEndpoint(reader, settings)
    except OSError as error:
        if not in_use(error):
            raise
        move = ("set OTEL_EXPORTER_PROMETHEUS_PORT to another port (0 picks a free one), or leave prometheus out of "
                "OTEL_METRICS_EXPORTER" if settings is not requested else "pass PrometheusSettings with another port")
        raise PortInUse(settings.endpoint, "flowtel's Prometheus endpoint", move) from None
