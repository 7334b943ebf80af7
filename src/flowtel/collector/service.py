"""``Collector``: builds the components a config names, starts them in order and drains them on stop.

Start order is extensions, exporters, pipelines, receivers, then readiness; stop runs
it backwards within ``service.shutdown_timeout``: readiness off, receivers stop taking
data, pipelines process what they queued and release every held trace, exporters flush
(a persistent queue keeps what is left on disk), extensions stop.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from flowtel._log import logger
from flowtel.exporters.debug import DebugExporter, DebugExporterConfig
from flowtel.exporters.otlp_forward import (
    ForwardingExporter,
    GRPCSender,
    HTTPSender,
    OTLPExporterConfig,
    OTLPHTTPExporterConfig,
)
from flowtel.exporters.prometheus import PrometheusExporter, PrometheusSettings
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics

from .batch import BatchConfig
from .config import CollectorConfig, PrometheusExporterConfig, component_type
from .extensions import BearerTokenAuthConfig, FileStorageConfig, HealthCheck, HealthCheckConfig, ServiceStatus
from .feedback_receiver import FeedbackReceiver, FeedbackReceiverConfig
from .flowtel_processor import FlowtelProcessorConfig
from .memory_limiter import MemoryLimiter, MemoryLimiterConfig
from .otlp_grpc import GRPCTransport
from .otlp_http import HTTPTransport
from .otlp_receiver import BearerToken, Intake, OTLPReceiverConfig
from .pipeline import TracesExporter, TracesPipeline
from .settings import split_endpoint


@dataclass
class Listening:
    """Where each server listens (tests and the start-up log read it)."""

    grpc: dict[str, str] = field(default_factory=dict)
    http: dict[str, str] = field(default_factory=dict)
    prometheus: dict[str, str] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)
    feedback: dict[str, str] = field(default_factory=dict)


class Collector:
    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.status = ServiceStatus()
        self.self_metrics = SelfMetrics()
        self.listening = Listening()
        self._stopped = threading.Event()
        service = config.service
        self._tokens: dict[str, BearerToken] = {}
        self._storage: dict[str, str] = {}
        self._health: dict[str, HealthCheck] = {}
        for ext_id in service.extensions:
            ext = config.extensions[ext_id]
            if isinstance(ext, BearerTokenAuthConfig):
                self._tokens[ext_id] = BearerToken(ext.read_token())
            elif isinstance(ext, FileStorageConfig):
                if ext.create_directory:
                    os.makedirs(ext.directory, mode=0o700, exist_ok=True)
                self._storage[ext_id] = ext.directory
            elif isinstance(ext, HealthCheckConfig):
                self._health[ext_id] = HealthCheck(ext, self.status)

        used_exporters = dict.fromkeys(e for p in service.pipelines.values() for e in p.exporters)
        self.exporters: dict[str, Any] = {eid: self._exporter(eid, config.exporters[eid]) for eid in used_exporters}
        # Exporters that take metrics bring a reader: Prometheus a pull reader, Azure Monitor a periodic one.
        readers = [e.reader for e in self.exporters.values() if getattr(e, "reader", None) is not None]
        self.meter_provider = MeterProvider(resource=Resource.create({"service.name": "flowtel-collector"}),
                                            metric_readers=readers)
        self.self_metrics.bind(self.meter_provider)

        self._limiters: dict[str, MemoryLimiter] = {}
        self.pipelines: dict[str, TracesPipeline] = {}
        for pipeline_id, pipeline in service.pipelines.items():
            self.pipelines[pipeline_id] = self._pipeline(pipeline_id, pipeline.processors, pipeline.exporters)

        self._receivers: list[Any] = []
        used_receivers = dict.fromkeys(r for p in service.pipelines.values() for r in p.receivers)
        for rid in used_receivers:
            targets = [self.pipelines[pid] for pid, p in service.pipelines.items() if rid in p.receivers]
            self._receivers.extend(self._receiver(rid, config.receivers[rid], targets))

    def _token(self, auth: Any) -> BearerToken | None:
        return self._tokens[auth.authenticator] if auth is not None else None

    def _exporter(self, eid: str, cfg: Any) -> Any:
        return EXPORTER_FACTORIES[component_type(eid)](self, eid, cfg)

    def storage_directory(self, storage: str | None, eid: str) -> str | None:
        """A per-exporter directory inside a ``file_storage`` extension's, for exporters that keep data on disk."""
        if storage is None:
            return None
        return os.path.join(self._storage[storage], re.sub(r"[^A-Za-z0-9_.-]", "_", eid))

    def read_token(self, authenticator: str) -> str:
        return self.config.extensions[authenticator].read_token()  # type: ignore[no-any-return]

    def _pipeline(self, pipeline_id: str, processors: list[str], exporters: list[str]) -> TracesPipeline:
        limiters: list[MemoryLimiter] = []
        batch = BatchConfig()
        flowtel_cfg: FlowtelProcessorConfig | None = None
        for pid in processors:
            cfg = self.config.processors[pid]
            if isinstance(cfg, MemoryLimiterConfig):
                if pid not in self._limiters:
                    self._limiters[pid] = MemoryLimiter(pid, cfg)
                limiters.append(self._limiters[pid])
            elif isinstance(cfg, BatchConfig):
                batch = cfg
            elif isinstance(cfg, FlowtelProcessorConfig):
                flowtel_cfg = cfg
        flowtel = None
        if flowtel_cfg is not None:
            fconfig = flowtel_cfg.flowtel_config(batch.timeout)
            metrics = FlowtelMetrics(fconfig, self.self_metrics)
            for eid in exporters:
                exporter = self.exporters[eid]
                if hasattr(exporter, "add_producer"):
                    exporter.add_producer(metrics)
            flowtel = (fconfig, metrics)
        traces_exporters: list[TracesExporter] = [self.exporters[e] for e in exporters]
        return TracesPipeline(pipeline_id, traces_exporters, self.self_metrics, flowtel=flowtel,
                              memory_limiters=limiters, batch=batch)

    def _receiver(self, rid: str, cfg: OTLPReceiverConfig | FeedbackReceiverConfig,
                  pipelines: list[TracesPipeline]) -> list[Any]:
        intake = Intake(rid, pipelines, self.self_metrics)
        if isinstance(cfg, FeedbackReceiverConfig):
            token = self.read_token(cfg.auth.authenticator) if cfg.auth is not None else None
            feedback = FeedbackReceiver(rid, cfg, intake, token)
            self.listening.feedback[rid] = feedback.url + "/feedback"
            return [feedback]
        out: list[Any] = []
        if cfg.protocols.grpc is not None:
            grpc_transport = GRPCTransport(cfg.protocols.grpc, intake, self._token(cfg.protocols.grpc.auth))
            self.listening.grpc[rid] = grpc_transport.url
            out.append(grpc_transport)
        if cfg.protocols.http is not None:
            http_transport = HTTPTransport(cfg.protocols.http, intake, self._token(cfg.protocols.http.auth))
            self.listening.http[rid] = http_transport.url
            out.append(http_transport)
        return out

    def start(self) -> Collector:
        for ext_id, health in self._health.items():
            health.start()
            self.listening.health[ext_id] = health.url
        for exporter in self.exporters.values():
            exporter.start()
            if isinstance(exporter, PrometheusExporter):
                self.listening.prometheus[exporter.id] = exporter.url
        for limiter in self._limiters.values():
            limiter.start()
        for pipeline in self.pipelines.values():
            pipeline.start()
        for receiver in self._receivers:
            receiver.start()
        self._log_listening()
        self.status.set("ready")
        return self

    def _log_listening(self) -> None:
        for rid, url in self.listening.grpc.items():
            logger.info("receiver %s: OTLP/gRPC listening on %s", rid, url)
        for rid, url in self.listening.http.items():
            logger.info("receiver %s: OTLP/HTTP listening on %s/v1/traces", rid, url)
        for rid, url in self.listening.feedback.items():
            logger.info("receiver %s: POST /feedback listening on %s", rid, url)
        for eid, url in self.listening.prometheus.items():
            logger.info("exporter %s: Prometheus metrics on %s", eid, url)
        for ext_id, url in self.listening.health.items():
            logger.info("extension %s: health and readiness on %s", ext_id, url)
        for eid, exporter in self.exporters.items():
            if hasattr(exporter, "target"):
                logger.info("exporter %s: sending to %s", eid, exporter.target)
        logger.info("flowtel collector ready (config: %s)", self.config.file)

    def shutdown(self, timeout_s: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        timeout = self.config.service.shutdown_timeout if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        self.status.set("draining")
        logger.info("flowtel collector draining (bound %.0fs)", timeout)
        grace = min(5.0, timeout / 4)
        events = []
        for receiver in self._receivers:
            if isinstance(receiver, GRPCTransport):
                events.append(receiver.shutdown(grace))
            else:
                receiver.shutdown()
        for event in events:
            event.wait(grace)
        for pipeline in self.pipelines.values():
            pipeline.shutdown()
        for exporter in self.exporters.values():
            exporter.shutdown(deadline)
        for limiter in self._limiters.values():
            limiter.shutdown()
        self.meter_provider.shutdown()
        for health in self._health.values():
            health.shutdown()
        logger.info("flowtel collector stopped in %.1fs", time.monotonic() - started)


def _prometheus(collector: Collector, eid: str, cfg: PrometheusExporterConfig) -> PrometheusExporter:
    host, port = split_endpoint(cfg.endpoint)
    token = collector.read_token(cfg.auth.authenticator) if cfg.auth is not None else None
    return PrometheusExporter(eid, PrometheusSettings(host, port, token, cfg.tls.settings() if cfg.tls else None))


def _otlp(collector: Collector, eid: str, cfg: OTLPExporterConfig | OTLPHTTPExporterConfig) -> ForwardingExporter:
    sender = GRPCSender(cfg) if isinstance(cfg, OTLPExporterConfig) else HTTPSender(cfg)
    return ForwardingExporter(eid, sender, cfg, collector.self_metrics,
                              collector.storage_directory(cfg.sending_queue.storage, eid))


def _debug(collector: Collector, eid: str, cfg: DebugExporterConfig) -> DebugExporter:
    return DebugExporter(eid, cfg, collector.self_metrics)


def _azuremonitor(collector: Collector, eid: str, cfg: Any) -> Any:
    from flowtel.exporters.azuremonitor_collector import AzureMonitorCollectorExporter

    return AzureMonitorCollectorExporter(eid, cfg, collector.self_metrics,
                                         collector.storage_directory(cfg.storage, eid))


#: Exporter type -> factory(collector, id, validated config). A new exporter (its config model goes in
#: ``config.COMPONENTS``) plugs in here; one that also takes derived metrics implements ``add_producer``.
EXPORTER_FACTORIES: dict[str, Callable[[Collector, str, Any], TracesExporter]] = {
    "prometheus": _prometheus,
    "otlp": _otlp,
    "otlphttp": _otlp,
    "debug": _debug,
    "azuremonitor": _azuremonitor,
}


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, {"warn": "WARNING"}.get(level, level.upper())),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":  # azure-core logs every request at INFO
        logging.getLogger("azure").setLevel(logging.WARNING)


__all__ = ["Collector", "component_type", "configure_logging"]
