"""The three OTLP signals, described once: messages, paths, counting and names (both hosts, host-free).

Receivers, pipelines, exporters and the self-metrics read what differs between traces,
metrics and logs from here instead of each branching on the signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from flowtel.otlp import parse_json_message

SIGNALS = ("traces", "metrics", "logs")
#: What an OTLP server answers an export with; each carries a ``partial_success``.
ExportResponse = ExportTraceServiceResponse | ExportMetricsServiceResponse | ExportLogsServiceResponse
_POINT_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def count_metric_points(request: ExportMetricsServiceRequest) -> int:
    """Data points in a request, as the upstream collector counts them (one per point of any metric type)."""
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def count_log_records(request: ExportLogsServiceRequest) -> int:
    return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


@dataclass(frozen=True)
class Signal:
    name: str  # traces, metrics, logs: the pipeline type in the config
    unit: str  # spans, metric_points, log_records: the upstream self-metric suffix
    request: type[Message]
    response: type[ExportResponse]
    grpc_service: str
    http_path: str
    count: Callable[[Any], int]
    rejected_field: str  # the partial_success field counting what a backend refused

    @property
    def export_method(self) -> str:
        return f"/{self.grpc_service}/Export"

    def parse_json(self, body: bytes) -> Message:
        """An OTLP/JSON request of this signal; ``ValueError`` with the reason if it is not one."""
        return parse_json_message(body, self.request)


TRACES = Signal("traces", "spans", ExportTraceServiceRequest, ExportTraceServiceResponse,
                "opentelemetry.proto.collector.trace.v1.TraceService", "/v1/traces", count_spans, "rejected_spans")
METRICS = Signal("metrics", "metric_points", ExportMetricsServiceRequest, ExportMetricsServiceResponse,
                 "opentelemetry.proto.collector.metrics.v1.MetricsService", "/v1/metrics", count_metric_points,
                 "rejected_data_points")
LOGS = Signal("logs", "log_records", ExportLogsServiceRequest, ExportLogsServiceResponse,
              "opentelemetry.proto.collector.logs.v1.LogsService", "/v1/logs", count_log_records,
              "rejected_log_records")
BY_NAME: dict[str, Signal] = {s.name: s for s in (TRACES, METRICS, LOGS)}

def signal_of(pipeline_id: str) -> str:
    return pipeline_id.split("/", 1)[0]
