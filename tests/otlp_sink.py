"""A downstream OTLP/gRPC backend for the collector's exporters to deliver to, which records what it got.

``fail_with`` makes it answer a gRPC status instead (UNAVAILABLE for an outage, ...).
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: OTLPSink) -> None:
        self.sink = sink

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        if self.sink.fail_with is not None:
            context.abort(self.sink.fail_with, "sink told to fail")
        with self.sink.lock:
            self.sink.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink: OTLPSink) -> None:
        self.sink = sink

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        if self.sink.fail_with is not None:
            context.abort(self.sink.fail_with, "sink told to fail")
        with self.sink.lock:
            self.sink.metric_requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, sink: OTLPSink) -> None:
        self.sink = sink

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        if self.sink.fail_with is not None:
            context.abort(self.sink.fail_with, "sink told to fail")
        with self.sink.lock:
            self.sink.log_requests.append(request)
        return logs_service_pb2.ExportLogsServiceResponse()


class OTLPSink:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.log_requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.lock = threading.Lock()
        self.fail_with: grpc.StatusCode | None = None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(self), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsService(self), self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> OTLPSink:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0).wait()

    def spans(self) -> list[tuple[Span, dict]]:
        """Every received span with its resource attributes (as a plain dict)."""
        out = []
        with self.lock:
            requests = list(self.requests)
        for request in requests:
            for rs in request.resource_spans:
                resource = {kv.key: kv.value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((span, resource) for span in ss.spans)
        return out

    def metrics(self) -> dict[str, list]:
        """Every received metric point by metric name (points as protos, in arrival order)."""
        out: dict[str, list] = {}
        with self.lock:
            requests = list(self.metric_requests)
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        out.setdefault(metric.name, []).extend(getattr(metric, kind).data_points if kind else ())
        return out

    def log_records(self) -> list[tuple]:
        """Every received log record with its resource attributes (as a plain dict)."""
        out = []
        with self.lock:
            requests = list(self.log_requests)
        for request in requests:
            for rl in request.resource_logs:
                resource = {kv.key: kv.value for kv in rl.resource.attributes}
                for sl in rl.scope_logs:
                    out.extend((record, resource) for record in sl.log_records)
        return out

    def __enter__(self) -> OTLPSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
