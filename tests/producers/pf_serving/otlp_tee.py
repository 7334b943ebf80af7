"""The one OTLP/gRPC endpoint prompt flow serving is given (``OTEL_EXPORTER_OTLP_ENDPOINT``).

Serving sends traces, metrics and logs to that single endpoint and ignores the per-signal variables once it is
set. The tee forwards each trace request unchanged to the flowtel collector under test and keeps serving's own
metrics (its ``MetricsRecorder``), which are the reference figures flowtel's are compared with.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class OTLPTee:
    def __init__(self, traces_to: str) -> None:
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.log_records = 0
        self.log_bytes: list[bytes] = []
        self.lock = threading.Lock()
        self._channel = grpc.insecure_channel(traces_to)
        self._traces = trace_service_pb2_grpc.TraceServiceStub(self._channel)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        tee = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                with tee.lock:
                    tee.trace_requests.append(request)
                return tee._traces.Export(request, timeout=10)

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                with tee.lock:
                    tee.metric_requests.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                with tee.lock:
                    tee.log_records += sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
                    tee.log_bytes.append(request.SerializeToString())
                return logs_service_pb2.ExportLogsServiceResponse()

        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0).wait()
        self._channel.close()

    def spans(self) -> list[Any]:
        """Every span serving sent, as received."""
        with self.lock:
            requests = list(self.trace_requests)
        return [span for request in requests for rs in request.resource_spans for ss in rs.scope_spans
                for span in ss.spans]

    def metric_points(self) -> dict[str, list[tuple[dict[str, str], Any]]]:
        """Serving's last reported data points per metric name: (attributes, point). Its export is cumulative, so
        the last request holds the totals."""
        with self.lock:
            requests = list(self.metric_requests)
        points: dict[str, list[tuple[dict[str, str], Any]]] = {}
        for request in requests[-1:]:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        data = metric.sum.data_points or metric.histogram.data_points
                        points[metric.name] = [({kv.key: kv.value.string_value for kv in p.attributes}, p)
                                               for p in data]
        return points
