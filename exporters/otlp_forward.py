"""``otlp`` and ``otlphttp`` exporters: forward enriched spans to another OTLP backend.

Both send the serialized ``ExportTraceServiceRequest`` the pipeline built, through a
``SendingQueue`` (bounded, retried, optionally on disk). Retryable answers follow the
OTLP specification: gRPC UNAVAILABLE, RESOURCE_EXHAUSTED (with RetryInfo), ABORTED,
CANCELLED, DEADLINE_EXCEEDED, OUT_OF_RANGE, DATA_LOSS; HTTP 429, 502, 503, 504 (with
Retry-After); connection failures. Partial success is counted, not retried, as the
specification says.
"""

from __future__ import annotations

import gzip
from typing import Literal

import grpc
import requests
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import Field, field_validator, model_validator

from flowtel.collector.settings import ClientTLS, Model, PositiveDuration
from flowtel.selfmetrics import SelfMetrics

from .sending_queue import QueueSettings, RetrySettings, SendingQueue, SendResult

_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                   grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OUT_OF_RANGE,
                   grpc.StatusCode.DATA_LOSS}
_RETRYABLE_HTTP = {429, 502, 503, 504}


class _ForwardConfig(Model):
    tls: ClientTLS = ClientTLS()
    headers: dict[str, str] = Field(default_factory=dict)
    compression: Literal["gzip", "none"] = "gzip"
    timeout: PositiveDuration = 5.0
    sending_queue: QueueSettings = QueueSettings()
    retry_on_failure: RetrySettings = RetrySettings()


class OTLPExporterConfig(_ForwardConfig):
    """``otlp``: OTLP/gRPC. ``endpoint`` is ``host:port``; ``http://`` in front means plaintext."""

    endpoint: str

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        target = value.split("://", 1)[1] if value.startswith(("http://", "https://")) else value
        host, sep, port = target.rstrip("/").rpartition(":")
        if not sep or not host or not port.isdigit() or "/" in target.rstrip("/"):
            raise ValueError("host:port (optionally after http:// or https://), e.g. backend:4317")
        return value


class OTLPHTTPExporterConfig(_ForwardConfig):
    """``otlphttp``: OTLP/HTTP protobuf; ``endpoint`` + ``/v1/traces``, or ``traces_endpoint`` as is."""

    endpoint: str | None = None
    traces_endpoint: str | None = None

    @model_validator(mode="after")
    def _one_endpoint(self) -> OTLPHTTPExporterConfig:
        if not (self.endpoint or self.traces_endpoint):
            raise ValueError("endpoint or traces_endpoint, e.g. http://backend:4318")
        for url in (self.endpoint, self.traces_endpoint):
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"an http:// or https:// URL, got {url!r}")
        return self

    @property
    def url(self) -> str:
        return self.traces_endpoint or f"{(self.endpoint or '').rstrip('/')}/v1/traces"


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _retry_delay(error: grpc.RpcError) -> float | None:
    for key, value in (error.trailing_metadata() or ()):  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class GRPCSender:
    def __init__(self, config: OTLPExporterConfig) -> None:
        target = config.endpoint
        insecure = config.tls.insecure or target.startswith("http://")
        target = target.split("://", 1)[-1]
        if insecure:
            self._channel = grpc.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(
                _read(config.tls.ca_file), _read(config.tls.key_file), _read(config.tls.cert_file))
            self._channel = grpc.secure_channel(target, credentials)
        self._export = self._channel.unary_unary(_EXPORT_METHOD, request_serializer=None,
                                                 response_deserializer=ExportTraceServiceResponse.FromString)
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression

    def __call__(self, payload: bytes, timeout_s: float) -> SendResult:
        try:
            response = self._export(payload, timeout=timeout_s, metadata=self._metadata,
                                    compression=self._compression)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            reason = f"gRPC {code.name}: {error.details()}"  # type: ignore[attr-defined]
            return SendResult(False, retryable=code in _RETRYABLE_GRPC, reason=reason,
                              retry_after_s=_retry_delay(error))
        partial = response.partial_success
        return SendResult.success(partial.rejected_spans, partial.error_message)

    def close(self) -> None:
        self._channel.close()


def _error_message(response: requests.Response) -> str:
    """The message of the ``google.rpc.Status`` an OTLP/HTTP server answers a failure with, else the body's text."""
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    message = ""
    try:
        if content_type == "application/x-protobuf":
            message = status_pb2.Status.FromString(response.content).message
        elif content_type == "application/json":
            message = json_format.Parse(response.content, status_pb2.Status(), ignore_unknown_fields=True).message
    except Exception:  # not a Status after all: show the text
        pass
    return (message or response.text)[:200]


class HTTPSender:
    def __init__(self, config: OTLPHTTPExporterConfig) -> None:
        self._url = config.url
        self._session = requests.Session()
        self._session.headers.update(config.headers)
        self._session.headers["Content-Type"] = "application/x-protobuf"
        self._gzip = config.compression == "gzip"
        if self._gzip:
            self._session.headers["Content-Encoding"] = "gzip"
        self._verify: bool | str = config.tls.ca_file or not config.tls.insecure
        self._cert = (config.tls.cert_file, config.tls.key_file) if config.tls.cert_file else None

    def __call__(self, payload: bytes, timeout_s: float) -> SendResult:
        body = gzip.compress(payload, compresslevel=5) if self._gzip else payload
        try:
            response = self._session.post(self._url, data=body, timeout=timeout_s, verify=self._verify,
                                          cert=self._cert)
        except requests.RequestException as error:
            return SendResult(False, retryable=True, reason=f"{type(error).__name__}: {error}")
        if 200 <= response.status_code < 300:
            try:
                partial = ExportTraceServiceResponse.FromString(response.content).partial_success
            except Exception:
                return SendResult.success()
            return SendResult.success(partial.rejected_spans, partial.error_message)
        retry_after = response.headers.get("Retry-After")
        delay = float(retry_after) if retry_after and retry_after.isdigit() else None
        return SendResult(False, retryable=response.status_code in _RETRYABLE_HTTP,
                          reason=f"HTTP {response.status_code}: {_error_message(response)}", retry_after_s=delay)

    def close(self) -> None:
        self._session.close()


class ForwardingExporter:
    """A traces exporter: ``export`` queues a batch; ``shutdown`` drains within the deadline."""

    def __init__(self, exporter_id: str, sender: GRPCSender | HTTPSender, config: _ForwardConfig,
                 self_metrics: SelfMetrics, storage_dir: str | None = None) -> None:
        self.id = exporter_id
        self._sender = sender
        self.queue = SendingQueue(exporter_id, sender, config.sending_queue, config.retry_on_failure, self_metrics,
                                  config.timeout, storage_dir)
        self.target = getattr(sender, "_url", None) or getattr(config, "endpoint", "")

    def start(self) -> None:
        self.queue.start()

    def export(self, payload: bytes, spans: int) -> None:
        self.queue.put(payload, spans)

    @property
    def holding(self) -> int:
        """Batches queued or being sent (the memory limiter asks what the collector holds)."""
        return self.queue.holding

    def shutdown(self, deadline: float) -> None:
        self.queue.shutdown(deadline)
        self._sender.close()
