"""``otlp`` receiver: OTLP/gRPC (grpcio) and OTLP/HTTP (protobuf and JSON) for traces, metrics and logs.

Defaults and answers follow the upstream receiver: ``localhost:4317`` / ``localhost:4318``,
4 MiB gRPC messages and 20 MiB HTTP bodies, 400 / INVALID_ARGUMENT for malformed data,
415 for other content types, 413 / RESOURCE_EXHAUSTED past the size limits, 401 /
UNAUTHENTICATED without the configured bearer token, 503 / UNAVAILABLE with a retry delay
when the collector is over its memory or queue limits. Spans with invalid ids are
rejected one by one and reported through OTLP partial success; the rest are accepted.
Metrics and logs get the same limits, auth, TLS and answers; a signal no pipeline takes
from this receiver answers 404 / UNIMPLEMENTED, as upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from pydantic import Field, model_validator

from flowtel._log import warn_once
from flowtel.otlp import adapt
from flowtel.selfmetrics import SelfMetrics
from flowtel.signals import TRACES, Signal

from ..pipeline import TracesPipeline
from ..refusal import Refused
from ..request_pipeline import RequestPipeline
from ..settings import Auth, EmptyIsDefault, Endpoint, HTTPServerBounds, Model, ServerTLS

MIB = 1 << 20


class GRPCServerConfig(Model):
    endpoint: Endpoint = "localhost:4317"
    max_recv_msg_size_mib: float = Field(4, gt=0)
    tls: ServerTLS | None = None
    auth: Auth | None = None


class HTTPServerConfig(HTTPServerBounds):
    endpoint: Endpoint = "localhost:4318"
    max_request_body_size: int = Field(20 * MIB, gt=0)
    traces_url_path: str = Field("/v1/traces", pattern=r"^/")
    metrics_url_path: str = Field("/v1/metrics", pattern=r"^/")
    logs_url_path: str = Field("/v1/logs", pattern=r"^/")
    tls: ServerTLS | None = None
    auth: Auth | None = None

    @model_validator(mode="after")
    def _budget_fits_a_request(self) -> HTTPServerConfig:
        if self.max_buffered_bytes < self.max_request_body_size:
            raise ValueError("max_buffered_bytes at least max_request_body_size (else a largest request never fits)")
        return self


class Protocols(EmptyIsDefault):
    grpc: GRPCServerConfig | None = None
    http: HTTPServerConfig | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Protocols:
        if self.grpc is None and self.http is None:
            raise ValueError("at least one of grpc, http")
        return self


class OTLPReceiverConfig(Model):
    protocols: Protocols


class _Admits(Protocol):
    def admit(self, n: int) -> None: ...


class _IntakeBase:
    signal: Signal = TRACES

    def __init__(self, receiver_id: str, self_metrics: SelfMetrics, pipelines: Sequence[_Admits]) -> None:
        self.receiver_id = receiver_id
        self._self = self_metrics
        self._admits = tuple(pipelines)

    def admit_early(self, transport: str) -> None:
        """Before a body is read: refuse (``Refused``, counted) while any pipeline would refuse it anyway."""
        try:
            for pipeline in self._admits:
                pipeline.admit(0)
        except Refused as refused:
            self.refuse_request(transport, refused.reason, refused.message)
            raise

    def refuse_request(self, transport: str, reason: str, detail: str) -> None:
        self._self.add("flowtel.receiver.refused.requests", 1, self.receiver_id, transport, reason)
        warn_once(f"refused:{self.receiver_id}:{transport}:{reason}",
                  "receiver %s (%s) refused a request (%s): %s; counted in flowtel_receiver_refused_requests_total",
                  self.receiver_id, transport, reason, detail)


class Intake(_IntakeBase):
    """What both transports do with a decoded traces request: adapt, fan out to pipelines, count, answer."""

    def __init__(self, receiver_id: str, pipelines: Sequence[TracesPipeline], self_metrics: SelfMetrics) -> None:
        super().__init__(receiver_id, self_metrics, pipelines)
        self._pipelines = tuple(pipelines)

    def accept(self, request: Message, transport: str, raw: bytes | None = None) -> ExportTraceServiceResponse:
        """``request`` (an ``ExportTraceServiceRequest``) as parsed (and so validated) by upb; ``raw`` its bytes
        when the transport has them. Spans are read from the bytes, so the request is only counted and
        serialized here, as every signal's is."""
        try:
            incoming = self.signal.count(request)
            for pipeline in self._pipelines:
                pipeline.admit(incoming)
        except Refused as refused:
            self._self.add("otelcol.receiver.refused.spans", incoming, self.receiver_id, transport, refused.reason)
            self.refuse_request(transport, refused.reason, refused.message)
            raise
        # Spans are read from the request's bytes and never edited in place, so pipelines share them; each
        # pipeline owns its list (it empties the list as it works through it).
        first = adapt(raw if raw is not None else request.SerializeToString())
        count = len(first.spans)
        shared = len(self._pipelines) > 1
        try:
            for pipeline in self._pipelines:
                pipeline.consume(list(first.spans) if shared else first.spans)
        except Refused as refused:
            self._self.add("otelcol.receiver.refused.spans", count + first.rejected, self.receiver_id, transport,
                           refused.reason)
            self.refuse_request(transport, refused.reason, refused.message)
            raise
        self._self.add("otelcol.receiver.accepted.spans", count, self.receiver_id, transport)
        response = ExportTraceServiceResponse()
        if first.rejected:
            self._self.add("otelcol.receiver.refused.spans", first.rejected, self.receiver_id, transport,
                           "invalid_span")
            warn_once(f"invalid:{self.receiver_id}", "receiver %s: %s (reported to the client as partial success)",
                      self.receiver_id, first.error_message)
            response.partial_success.rejected_spans = first.rejected
            response.partial_success.error_message = first.error_message
        return response


class RequestIntake(_IntakeBase):
    """A metrics or logs request: count its items, check every pipeline's limits, hand its bytes to each."""

    def __init__(self, receiver_id: str, signal: Signal, pipelines: Sequence[RequestPipeline],
                 self_metrics: SelfMetrics) -> None:
        super().__init__(receiver_id, self_metrics, pipelines)
        self.signal = signal
        self._pipelines = tuple(pipelines)
        self._accepted = f"otelcol.receiver.accepted.{signal.unit}"
        self._refused = f"otelcol.receiver.refused.{signal.unit}"

    def accept(self, request: Message, transport: str, raw: bytes | None = None) -> Message:
        n = self.signal.count(request)
        # Bytes are immutable, so every pipeline shares one payload; JSON arrives parsed and is serialized once.
        payload = raw if raw is not None else request.SerializeToString()
        try:
            for pipeline in self._pipelines:
                pipeline.admit(n)
            for pipeline in self._pipelines:
                pipeline.consume(payload, n)
        except Refused as refused:
            self._self.add(self._refused, n, self.receiver_id, transport, refused.reason)
            self.refuse_request(transport, refused.reason, refused.message)
            raise
        self._self.add(self._accepted, n, self.receiver_id, transport)
        return self.signal.response()


AnyIntake = Intake | RequestIntake
