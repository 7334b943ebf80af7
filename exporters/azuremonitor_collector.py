"""The collector's ``azuremonitor`` exporter: enriched spans and derived metrics to Application Insights.

It reuses the in-process pieces (``AzureMonitorSettings``, the wrapped Azure exporters and
their loss accounting). Spans arrive as the pipeline's OTLP payload, become SDK
``ReadableSpan``s (``flowtel.otlp.readable_spans``) and go to the Azure trace exporter on a
thread of their own behind a bounded queue; the Azure exporter retries and keeps failed
batches on disk itself (``storage`` names a ``file_storage`` extension so that survives
restarts), so this exporter does not retry again. Derived metrics (and the collector's own)
go through a periodic reader in the exporter's DELTA temporality.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from types import SimpleNamespace
from typing import Literal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from pydantic import Field, model_validator

from flowtel._log import logger, warn_once
from flowtel.collector.settings import Model, PositiveDuration
from flowtel.config import ConfigError
from flowtel.otlp import readable_spans
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics

from .azure_monitor import AzureMonitorSettings, build_metric_exporter, build_trace_exporter
from .derived import DerivedMetricsExporter


class AzureMonitorExporterConfig(Model):
    #: ``InstrumentationKey=...;IngestionEndpoint=...``; none: APPLICATIONINSIGHTS_CONNECTION_STRING.
    connection_string: str | None = None
    #: AAD / Entra ID: "managed_identity" (with ``client_id`` for a user-assigned identity) or "default".
    credential: Literal["none", "managed_identity", "default"] = "none"
    client_id: str | None = None
    traces: bool = True
    metrics: bool = True
    #: A ``file_storage`` extension id: the Azure exporter's offline storage lives there (survives restarts).
    storage: str | None = None
    disable_offline_storage: bool = False
    storage_max_size: int = Field(50 * 1024 * 1024, ge=1)
    #: How long a stored batch waits before it is sent again.
    storage_retry_interval: PositiveDuration = 60.0
    metric_export_interval: PositiveDuration = 60.0
    #: Retries inside one export before the batch goes to offline storage; none: azure-core's (up to 10,
    #: backing off from 0.8 s). Keep them short when restarts must not catch a batch mid-retry.
    retry_total: int | None = Field(None, ge=0)
    retry_backoff: PositiveDuration | None = None
    #: Batches (one per pipeline send) waiting for the Azure exporter; past it new ones are counted and dropped.
    queue_size: int = Field(1000, ge=1)
    root_flows_as_requests: bool = True
    #: The Azure exporter's statsbeat / SDK stats about itself.
    self_telemetry: bool = True

    @model_validator(mode="after")
    def _connection(self) -> AzureMonitorExporterConfig:
        self.settings(None)  # a bad connection string or credential combination fails validation, not start
        return self

    def settings(self, storage_directory: str | None) -> AzureMonitorSettings:
        connection = self.connection_string or os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "")
        if not connection:
            raise ValueError("connection_string, or APPLICATIONINSIGHTS_CONNECTION_STRING in the environment")
        try:
            return AzureMonitorSettings(
                connection_string=connection, client_id=self.client_id,
                credential_kind="" if self.credential == "none" else self.credential,
                traces=self.traces, metrics=self.metrics, storage_directory=storage_directory,
                disable_offline_storage=self.disable_offline_storage, storage_max_size=self.storage_max_size,
                storage_retry_interval_s=self.storage_retry_interval,
                metric_export_interval_s=self.metric_export_interval, retry_total=self.retry_total,
                retry_backoff_s=self.retry_backoff,
                root_flows_as_requests=self.root_flows_as_requests, self_telemetry=self.self_telemetry)
        except ConfigError as error:
            raise ValueError(f"{error.key}: {error.expected}") from None


class AzureMonitorCollectorExporter:
    def __init__(self, exporter_id: str, config: AzureMonitorExporterConfig, self_metrics: SelfMetrics,
                 storage_directory: str | None = None) -> None:
        self.id = exporter_id
        self._config = config
        self._self = self_metrics
        settings = config.settings(storage_directory)
        resource = Resource.create({"service.name": "flowtel-collector"})
        self._spans = None
        if config.traces:
            # tracer_provider: the exporter reads it for its resource row instead of the global provider.
            self._spans = build_trace_exporter(settings, self_metrics, exporter_id=exporter_id,
                                               tracer_provider=SimpleNamespace(resource=resource))
        self.reader: PeriodicExportingMetricReader | None = None
        self._derived: DerivedMetricsExporter | None = None
        if config.metrics:
            self._derived = DerivedMetricsExporter(build_metric_exporter(settings, self_metrics,
                                                                         exporter_id=exporter_id), None, resource)
            self.reader = PeriodicExportingMetricReader(
                self._derived, export_interval_millis=config.metric_export_interval * 1000)
        self._queue: collections.deque[bytes] = collections.deque()
        self._counts: collections.deque[int] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=f"flowtel-{exporter_id}", daemon=True)
        self.target = settings.ingestion_endpoint
        self_metrics.register_gauge("exporter_queue", lambda: len(self._queue), {"exporter": exporter_id})
        self_metrics.register_gauge("exporter_queue_capacity", lambda: config.queue_size, {"exporter": exporter_id})

    def add_producer(self, metrics: FlowtelMetrics) -> None:
        if self._derived is not None:
            self._derived.add_producer(metrics)

    def start(self) -> None:
        if self._spans is not None:
            self._thread.start()

    def export(self, payload: bytes, spans: int) -> None:
        if self._spans is None:
            return
        with self._cond:
            if len(self._queue) >= self._config.queue_size or self._stopping:
                self._self.add("otelcol.exporter.enqueue_failed.spans", spans, self.id)
                self._self.dropped("exporter_queue_full", spans)
                warn_once(f"enqueue:{self.id}", "exporter %s: queue full (%d batches); spans dropped and counted",
                          self.id, self._config.queue_size)
                return
            self._queue.append(payload)
            self._counts.append(spans)
            self._cond.notify()

    def _run(self) -> None:
        assert self._spans is not None
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(0.5)
                if not self._queue:
                    return
                payload = self._queue.popleft()
                count = self._counts.popleft()
                self._busy = True
            try:
                # Results are counted by the exporter's loss accounting (sent, stored, finally lost).
                self._spans.export(readable_spans(ExportTraceServiceRequest.FromString(payload)))
            except Exception:
                logger.exception("exporter %s: failed on a batch of %d spans", self.id, count)
                self._self.add("otelcol.exporter.send_failed.spans", count, self.id, "internal_error")
                self._self.dropped("internal_error", count)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def shutdown(self, deadline: float) -> None:
        """Hand what is queued to the Azure exporter until ``deadline`` (it stores what it cannot send)."""
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._stopping = True
            left = sum(self._counts)
            self._queue.clear()
            self._counts.clear()
            self._cond.notify_all()
        if left:
            self._self.add("otelcol.exporter.send_failed.spans", left, self.id, "shutdown")
            self._self.dropped("shutdown_timeout", left)
            logger.warning("exporter %s: %d span(s) still queued at the shutdown deadline were dropped", self.id,
                           left)
        if self._thread.is_alive():
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        if self._spans is not None:
            self._spans.shutdown()
