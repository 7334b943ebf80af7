"""``otlp`` and ``otlphttp`` exporters: forward enriched spans, metrics and logs to another OTLP backend.

Both send the serialized request the pipeline built (one ``SendingQueue`` per signal:
bounded, retried, optionally on disk, counted in the signal's own self-metrics). Retryable answers follow the
OTLP specification: gRPC UNAVAILABLE, RESOURCE_EXHAUSTED (with RetryInfo), ABORTED,
CANCELLED, DEADLINE_EXCEEDED, OUT_OF_RANGE, DATA_LOSS; HTTP 429, 502, 503, 504 (with
Retry-After); connection failures. Partial success is counted, not retried, as the
specification says.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from typing import Literal

import grpc
import requests
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from pydantic import Field, field_validator, model_validator

from flowtel.selfmetrics import SelfMetrics
from flowtel.settings import ClientTLS, Model, PositiveDuration
from flowtel.signals import BY_NAME, TRACES, ExportResponse, Signal

from .sending_queue import QueueSettings, RetrySettings, SendingQueue, SendResult

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
    """``otlphttp``: OTLP/HTTP protobuf; ``endpoint`` + ``/v1/traces`` (``/v1/metrics``, ``/v1/logs``), or
    ``traces_endpoint`` (``metrics_endpoint``, ``logs_endpoint``) as is."""

    endpoint: str | None = None
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None

    @model_validator(mode="after")
    def _one_endpoint(self) -> OTLPHTTPExporterConfig:
        if not (self.endpoint or self.traces_endpoint or self.metrics_endpoint or self.logs_endpoint):
            raise ValueError("endpoint or traces_endpoint / metrics_endpoint / logs_endpoint, e.g. "
                             "http://backend:4318")
        for url in (self.endpoint, self.traces_endpoint, self.metrics_endpoint, self.logs_endpoint):
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"an http:// or https:// URL, got {url!r}")
        return self

    def signal_url(self, signal: str) -> str | None:
        """Where ``signal`` goes: its own ``<signal>_endpoint``, else ``endpoint`` + its path; none if neither."""
        own = getattr(self, f"{signal}_endpoint")
        if own:
            return str(own)
        return f"{self.endpoint.rstrip('/')}{BY_NAME[signal].http_path}" if self.endpoint else None

    @property
    def url(self) -> str:
        return self.signal_url("traces") or ""

    def check_signals(self, signals: list[str]) -> str | None:
        """What is missing for the signals of the pipelines listing this exporter (config validation)."""
        missing = [s for s in signals if self.signal_url(s) is None]
        if not missing:
            return None
        return (f"endpoint, or {' and '.join(f'{s}_endpoint' for s in missing)}: a pipeline of "
                f"{' and '.join(missing)} uses this exporter")


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _retry_delay(error: grpc.RpcError) -> float | None:
    for metadatum in error.trailing_metadata() or ():
        if metadatum.key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(metadatum.value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class GRPCSender:
    def __init__(self, config: OTLPExporterConfig, signal: Signal = TRACES) -> None:
        self._rejected_field = signal.rejected_field
        target = config.endpoint
        insecure = config.tls.insecure or target.startswith("http://")
        target = target.split("://", 1)[-1]
        if insecure:
            self._channel = grpc.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(
                _read(config.tls.ca_file), _read(config.tls.key_file), _read(config.tls.cert_file))
            self._channel = grpc.secure_channel(target, credentials)
        # Payloads are already serialized: bytes go out as they are.
        self._export: grpc.UnaryUnaryMultiCallable[bytes, ExportResponse] = self._channel.unary_unary(
            signal.export_method, request_serializer=None, response_deserializer=signal.response.FromString)
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression

    def __call__(self, payload: bytes, timeout_s: float) -> SendResult:
        try:
            response = self._export(payload, timeout=timeout_s, metadata=self._metadata,
                                    compression=self._compression)
        except grpc.RpcError as error:
            code = error.code()
            reason = f"gRPC {code.name}: {error.details()}"
            return SendResult(False, retryable=code in _RETRYABLE_GRPC, reason=reason,
                              retry_after_s=_retry_delay(error))
        partial = response.partial_success
        return SendResult.success(getattr(partial, self._rejected_field), partial.error_message)

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
    def __init__(self, config: OTLPHTTPExporterConfig, signal: Signal = TRACES) -> None:
        url = config.signal_url(signal.name)
        if url is None:
            raise ValueError(f"no endpoint for {signal.name}: set endpoint or {signal.name}_endpoint")
        self._url = url
        self._response = signal.response
        self._rejected_field = signal.rejected_field
        self._session = requests.Session()
        self._session.headers.update(config.headers)
        self._session.headers["Content-Type"] = "application/x-protobuf"
        self._gzip = config.compression == "gzip"
        if self._gzip:
            self._session.headers["Content-Encoding"] = "gzip"
        self._verify: bool | str = config.tls.ca_file or not config.tls.insecure
        cert, key = config.tls.cert_file, config.tls.key_file
        # Without a key file, requests reads the key from the certificate's file.
        self._cert: str | tuple[str, str] | None = (cert, key) if cert and key else cert or None

    def __call__(self, payload: bytes, timeout_s: float) -> SendResult:
        body = gzip.compress(payload, compresslevel=5) if self._gzip else payload
        try:
            response = self._session.post(self._url, data=body, timeout=timeout_s, verify=self._verify,
                                          cert=self._cert)
        except requests.RequestException as error:
            return SendResult(False, retryable=True, reason=f"{type(error).__name__}: {error}")
        if 200 <= response.status_code < 300:
            try:
                partial = self._response.FromString(response.content).partial_success
            except Exception:
                return SendResult.success()
            return SendResult.success(getattr(partial, self._rejected_field), partial.error_message)
        retry_after = response.headers.get("Retry-After")
        delay = float(retry_after) if retry_after and retry_after.isdigit() else None
        return SendResult(False, retryable=response.status_code in _RETRYABLE_HTTP,
                          reason=f"HTTP {response.status_code}: {_error_message(response)}", retry_after_s=delay)

    def close(self) -> None:
        self._session.close()


Sender = GRPCSender | HTTPSender


class ForwardingExporter:
    """An exporter for every signal it is used for: ``export`` (spans), ``export_metrics`` and ``export_logs``
    queue a batch; ``shutdown`` drains within the deadline. Each signal has its own queue and sender (and, when
    persistent, its own directory: ``<dir>`` for spans as before, ``<dir>@metrics``, ``<dir>@logs``)."""

    def __init__(self, exporter_id: str, make_sender: Callable[[Signal], Sender], config: _ForwardConfig,
                 self_metrics: SelfMetrics, storage_dir: str | None = None,
                 signals: Iterable[str] = ("traces",)) -> None:
        self.id = exporter_id
        self._senders: list[Sender] = []
        self._queues: dict[str, SendingQueue] = {}
        for name in signals:
            signal = BY_NAME[name]
            sender = make_sender(signal)
            self._senders.append(sender)
            directory = None if storage_dir is None else storage_dir if name == "traces" else f"{storage_dir}@{name}"
            self._queues[name] = SendingQueue(exporter_id, sender, config.sending_queue, config.retry_on_failure,
                                              self_metrics, config.timeout, directory, signal=name)
        first = self._senders[0] if self._senders else None
        self.target = getattr(first, "_url", None) or getattr(config, "endpoint", "")

    @property
    def queue(self) -> SendingQueue:
        """The spans' queue (tests read its size)."""
        return self._queues["traces"]

    def start(self) -> None:
        for queue in self._queues.values():
            queue.start()

    def export(self, payload: bytes, spans: int) -> None:
        self._queues["traces"].put(payload, spans)

    def export_metrics(self, request: Message, payload: bytes, points: int) -> None:
        self._queues["metrics"].put(payload, points)

    def export_logs(self, request: Message, payload: bytes, records: int) -> None:
        self._queues["logs"].put(payload, records)

    @property
    def holding(self) -> int:
        """Batches queued or being sent, every signal's (the memory limiter asks what the collector holds)."""
        return sum(queue.holding for queue in self._queues.values())

    def shutdown(self, deadline: float) -> None:
        for queue in self._queues.values():
            queue.shutdown(deadline)
        for sender in self._senders:
            sender.close()
