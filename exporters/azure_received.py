"""Received OTLP metrics and logs as the OpenTelemetry SDK's export data, for the Azure Monitor exporters.

``ReceivedToAzure`` (one per collector ``azuremonitor`` exporter) turns

- an ``ExportMetricsServiceRequest`` into the SDK's ``MetricsData`` in DELTA temporality, which
  the Azure metric exporter turns into customMetrics rows (one per point: a sum's value; a
  histogram's sum, count, min, max). CUMULATIVE points become the increase since the last
  point of their series (the first point of a series: its whole value since its start time; a
  reset: its new value); gauges pass as they are. The per-series memory is bounded
  (``max_series``); points of new series past it are dropped and counted (``series_limit``).
  Summaries and exponential histograms have no customMetrics form the exporter knows and are
  dropped and counted (``unsupported_type``).
- an ``ExportLogsServiceRequest`` into SDK ``ReadableLogRecord``s, which the Azure log exporter
  sends to the traces table (severity numbers mapped to Application Insights severity levels
  by the exporter: TRACE/DEBUG -> Verbose, INFO -> Information, WARN -> Warning, ERROR -> Error,
  FATAL -> Critical), exceptions (``exception.*`` attributes) to the exceptions table.

Both answer ``(data, dropped per reason)``; the exporter counts what it drops.
"""

from __future__ import annotations

import threading

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.metrics.export import MetricsData

#: Reasons points or records are dropped (the keys of the answers).
DROP_REASONS = ("unsupported_type", "series_limit", "out_of_order", "invalid")


class ReceivedToAzure:
    def __init__(self, max_series: int = 10_000) -> None:
        self.max_series = max_series
        self._lock = threading.Lock()

    def metrics_data(self, request: ExportMetricsServiceRequest) -> tuple[MetricsData, dict[str, int]]:
        """The request's points as DELTA ``MetricsData`` and the points dropped per reason."""
        return MetricsData([]), {}

    def log_records(self, request: ExportLogsServiceRequest) -> tuple[list[ReadableLogRecord], dict[str, int]]:
        """The request's log records as SDK records and the records dropped per reason."""
        return [], {}
