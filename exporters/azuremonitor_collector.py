"""The collector's ``azuremonitor`` exporter: enriched spans and derived metrics to Application Insights.

Its config is the in-process ``AzureMonitorSettings`` with the keys only a collector has
(``AzureMonitorExporterConfig``), and it reuses the wrapped Azure exporters and their loss
accounting. Spans arrive as the pipeline's OTLP payload, become SDK ``ReadableSpan``s
(``flowtel.otlp.readable_spans``) and go to the Azure trace exporter on a thread of their own
behind a bounded queue; the Azure exporter retries and keeps failed batches on disk itself
(``storage`` names a ``file_storage`` extension so that survives restarts), so this exporter
does not retry again. Derived metrics (and the collector's own) go through a periodic reader in
the exporter's DELTA temporality.

Received metrics and logs (``export_metrics`` / ``export_logs`` from a metrics or logs
pipeline) wait in a bounded queue each, as spans do, and become SDK data on its thread
(``azure_received``: customMetrics rows, traces-table rows with mapped severity); an Azure
metric exporter and log exporter of their own send them, storing failed batches under the
``received_metrics`` and ``logs`` subdirectories of the storage, with the same loss accounting.
"""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from pydantic import Field, model_validator

from flowtel._log import warn_once
from flowtel.otlp import readable_spans
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics

from .azure_monitor import AzureMonitorSettings, build_log_exporter, build_metric_exporter, build_trace_exporter
from .azure_received import ReceivedToAzure
from .derived import DerivedMetricsExporter
from .sending_queue import QueueSettings, RetrySettings, SendingQueue, SendResult


class AzureMonitorExporterConfig(AzureMonitorSettings):
    """The ``azuremonitor`` exporter's config: ``AzureMonitorSettings`` (the keys both hosts share, checked
    there) and the keys only a collector has. The exporters are built from it as it is."""

    #: A ``file_storage`` extension id: the Azure exporter's offline storage lives there (survives restarts).
    storage: str | None = None
    #: Batches (one per pipeline send) waiting for the Azure exporter; past it new ones are counted and dropped.
    queue_size: int = Field(1000, ge=1)
    #: Send prompt / completion content found in received log records; off: it is removed (fail closed).
    capture_content: bool = False

    @model_validator(mode="before")
    @classmethod
    def _connection_from_environment(cls, data: Any) -> Any:
        """No ``connection_string`` in the file: APPLICATIONINSIGHTS_CONNECTION_STRING, as in-process."""
        if isinstance(data, dict) and not data.get("connection_string"):
            connection = os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
            if connection:
                data = {**data, "connection_string": connection}
        return data


class AzureMonitorCollectorExporter:
    def __init__(self, exporter_id: str, config: AzureMonitorExporterConfig, self_metrics: SelfMetrics,
                 storage_directory: str | None = None) -> None:
        """``storage_directory``: where ``config.storage`` (a ``file_storage`` extension) resolved to."""
        self.id = exporter_id
        settings = config if storage_directory is None else config.model_copy(
            update={"storage_directory": storage_directory})
        resource = Resource.create({"service.name": "flowtel-collector"})
        self._spans = None
        self._queue: SendingQueue | None = None
        if config.traces:
            # tracer_provider: the exporter reads it for its resource row instead of the global provider.
            self._spans = build_trace_exporter(settings, self_metrics, exporter_id=exporter_id,
                                               tracer_provider=SimpleNamespace(resource=resource))
            # One consumer, no retries of ours: the Azure exporter retries and stores, and its loss
            # accounting counts what it delivered or lost.
            self._queue = SendingQueue(exporter_id, self._send, QueueSettings(num_consumers=1,
                                                                               queue_size=config.queue_size),
                                       RetrySettings(enabled=False), self_metrics, timeout_s=0,
                                       counts_delivery=False)
        self.reader: PeriodicExportingMetricReader | None = None
        self._derived: DerivedMetricsExporter | None = None
        if config.metrics:
            self._derived = DerivedMetricsExporter(build_metric_exporter(settings, self_metrics,
                                                                         exporter_id=exporter_id), None, resource)
            self.reader = PeriodicExportingMetricReader(
                self._derived, export_interval_millis=config.metric_export_interval * 1000)
        self.target = settings.ingestion_endpoint
        # Received metrics and logs: converted on their queue's thread, each to an Azure exporter of its own.
        self._config, self._settings, self._self_metrics = config, settings, self_metrics
        self._convert = ReceivedToAzure(capture_content=config.capture_content)
        self._received: dict[str, tuple[Any, SendingQueue]] = {}
        self._received_lock = threading.Lock()
        self._started = False

    def _send(self, payload: bytes, timeout_s: float) -> SendResult:
        assert self._spans is not None
        self._spans.export(readable_spans(ExportTraceServiceRequest.FromString(payload)))
        return SendResult.success()

    def add_producer(self, metrics: FlowtelMetrics) -> None:
        if self._derived is not None:
            self._derived.add_producer(metrics)

    def start(self) -> None:
        if self._queue is not None:
            self._queue.start()
        with self._received_lock:
            self._started = True
            for _, queue in self._received.values():
                queue.start()

    @property
    def holding(self) -> int:
        """Batches queued or being sent, received metrics' and logs' too (the memory limiter asks what the
        collector holds)."""
        spans = self._queue.holding if self._queue is not None else 0
        with self._received_lock:
            return spans + sum(queue.holding for _, queue in self._received.values())

    def export(self, payload: bytes, spans: int) -> None:
        if self._queue is not None:
            self._queue.put(payload, spans)

    def export_metrics(self, request: ExportMetricsServiceRequest, payload: bytes, points: int) -> None:
        """Queue received metrics for customMetrics (``azure_received``); drops are counted per reason."""
        if not self._config.metrics:
            self._drop("metric_points", "metrics_disabled", points)
            return
        self._received_queue("metrics").put(payload, points)

    def export_logs(self, request: ExportLogsServiceRequest, payload: bytes, records: int) -> None:
        """Queue received log records for the traces table (severity mapped); drops are counted per reason."""
        self._received_queue("logs").put(payload, records)

    def _received_queue(self, signal: str) -> SendingQueue:
        """The queue and Azure exporter of received metrics or logs, made on first use (most configs use one)."""
        with self._received_lock:
            made = self._received.get(signal)
            if made is None:
                if signal == "metrics":
                    exporter = build_metric_exporter(self._settings, self._self_metrics, exporter_id=self.id,
                                                     signal="received_metrics")
                    send = self._send_metrics
                else:
                    exporter = build_log_exporter(self._settings, self._self_metrics, exporter_id=self.id)
                    send = self._send_logs
                # As for spans: one consumer (in order, for the delta state), no retries of ours.
                queue = SendingQueue(self.id, send, QueueSettings(num_consumers=1, queue_size=self._config.queue_size),
                                     RetrySettings(enabled=False), self._self_metrics, timeout_s=0,
                                     counts_delivery=False, signal=signal)
                made = self._received[signal] = (exporter, queue)
                if self._started:
                    queue.start()
            return made[1]

    def _send_metrics(self, payload: bytes, timeout_s: float) -> SendResult:
        data, dropped = self._convert.metrics_data(ExportMetricsServiceRequest.FromString(payload))
        for reason, count in dropped.items():
            self._drop("metric_points", reason, count)
        if data.resource_metrics:
            self._received["metrics"][0].export(data)
        return SendResult.success()

    def _send_logs(self, payload: bytes, timeout_s: float) -> SendResult:
        records, dropped = self._convert.log_records(ExportLogsServiceRequest.FromString(payload))
        for reason, count in dropped.items():
            self._drop("log_records", reason, count)
        if records:
            self._received["logs"][0].export(records)
        return SendResult.success()

    def _drop(self, unit: str, reason: str, count: int) -> None:
        """Points or records this exporter cannot send (the Azure exporter's own losses are counted by it)."""
        self._self_metrics.add(f"otelcol.exporter.send_failed.{unit}", count, self.id, reason)
        self._self_metrics.dropped(f"{self.id}_{reason}", count, unit)
        warn_once(f"{self.id}:{unit}:{reason}", "exporter %s dropped %s (reason: %s); counted in "
                  "otelcol_exporter_send_failed_%s_total", self.id, unit.replace("_", " "), reason, unit)

    def shutdown(self, deadline: float) -> None:
        """Hand what is queued to the Azure exporters until ``deadline`` (they store what they cannot send)."""
        if self._queue is not None:
            self._queue.shutdown(deadline)
        with self._received_lock:
            received = list(self._received.values())
        for _, queue in received:
            queue.shutdown(deadline)
        if self._spans is not None:
            self._spans.shutdown()
        for exporter, _ in received:
            exporter.shutdown()
