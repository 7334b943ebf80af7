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
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from flowtel._log import logger
from flowtel.exporters.prometheus import PrometheusExporter
from flowtel.processors.metrics import FlowtelMetrics
from flowtel.selfmetrics import SelfMetrics
from flowtel.settings import BearerToken
from flowtel.signals import BY_NAME

from .components import FACTORIES, PipelineParts
from .config import CollectorConfig, component_type
from .extensions import ServiceStatus
from .pipeline import TracesExporter, TracesPipeline
from .processors.memory_limiter import MemoryLimiter, MemoryLimiterConfig
from .receivers.otlp import AnyIntake, Intake, RequestIntake
from .receivers.otlp_grpc import GRPCTransport
from .request_pipeline import RequestPipeline
from .settings import Auth

Pipeline = TracesPipeline | RequestPipeline


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
        self.extensions: dict[str, Any] = {
            xid: FACTORIES["extensions"][component_type(xid)].create(self, xid, config.extensions[xid])
            for xid in service.extensions}

        # Each exporter is built once, for every signal of the pipelines that list it.
        exporter_signals: dict[str, set[str]] = {}
        for pipeline_id, pipeline in service.pipelines.items():
            for eid in pipeline.exporters:
                exporter_signals.setdefault(eid, set()).add(component_type(pipeline_id))
        self.exporters: dict[str, Any] = {
            eid: FACTORIES["exporters"][component_type(eid)].create(self, eid, config.exporters[eid],
                                                                    frozenset(signals))
            for eid, signals in exporter_signals.items()}
        # Exporters that take metrics bring a reader: Prometheus a pull reader, Azure Monitor a periodic one.
        readers = [e.reader for e in self.exporters.values() if getattr(e, "reader", None) is not None]
        self.meter_provider = MeterProvider(resource=Resource.create({"service.name": "flowtel-collector"}),
                                            metric_readers=readers)
        self.self_metrics.bind(self.meter_provider)

        self._limiters: dict[str, MemoryLimiter] = {}
        self.pipelines: dict[str, Pipeline] = {}
        for pipeline_id, pipeline in service.pipelines.items():
            self.pipelines[pipeline_id] = self._pipeline(pipeline_id, pipeline.processors, pipeline.exporters)

        self._receivers: list[Any] = []
        used_receivers = dict.fromkeys(r for p in service.pipelines.values() for r in p.receivers)
        for rid in used_receivers:
            signals: dict[str, None] = {}  # in the config's order: the first intake counts unrouted refusals
            traces_targets: list[TracesPipeline] = []
            request_targets: dict[str, list[RequestPipeline]] = {}
            for pid, p in service.pipelines.items():
                if rid in p.receivers:
                    signals[component_type(pid)] = None
                    target = self.pipelines[pid]
                    if isinstance(target, TracesPipeline):
                        traces_targets.append(target)
                    else:
                        request_targets.setdefault(component_type(pid), []).append(target)
            intakes: dict[str, AnyIntake] = {
                signal: Intake(rid, traces_targets, self.self_metrics) if signal == "traces"
                else RequestIntake(rid, BY_NAME[signal], request_targets[signal], self.self_metrics)
                for signal in signals}
            for server in FACTORIES["receivers"][component_type(rid)].create(
                    self, rid, config.receivers[rid], intakes):
                # The feedback receiver serves one path; OTLP transports serve one path per signal.
                getattr(self.listening, server.kind)[rid] = server.url + getattr(server, "path", "")
                self._receivers.append(server)

    def token(self, auth: Auth | None) -> BearerToken | None:
        return self.extensions[auth.authenticator] if auth is not None else None

    def storage_directory(self, storage: str | None, eid: str) -> str | None:
        """A per-exporter directory inside a ``file_storage`` extension's, for exporters that keep data on disk."""
        if storage is None:
            return None
        return os.path.join(self.extensions[storage].directory, re.sub(r"[^A-Za-z0-9_.-]", "_", eid))

    def read_token(self, authenticator: str) -> str:
        return self.config.extensions[authenticator].read_token()

    def _holding(self) -> float:
        """Data the collector holds: queued for a pipeline, held for its trace, in an exporter's queue or being
        sent (the queue-size gauge counts only what waits)."""
        return self.self_metrics.gauge_total("queue", "held_spans") + sum(
            getattr(e, "holding", 0) for e in self.exporters.values())

    def memory_limiter(self, processor_id: str, config: MemoryLimiterConfig) -> MemoryLimiter:
        if processor_id not in self._limiters:
            self._limiters[processor_id] = MemoryLimiter(processor_id, config, self._holding)
        return self._limiters[processor_id]

    def _pipeline(self, pipeline_id: str, processors: list[str], exporters: list[str]) -> Pipeline:
        parts = PipelineParts()
        for pid in processors:
            FACTORIES["processors"][component_type(pid)].create(
                self, pid, self.config.processors[pid], parts)
        limiters, batch, flowtel_cfg = parts.memory_limiters, parts.batch, parts.flowtel
        signal = component_type(pipeline_id)
        if signal != "traces":
            # Logs keep GenAI message content only where the config's flowtel processors capture it.
            used = {pid for p in self.config.service.pipelines.values() for pid in p.processors}
            capture = any(component_type(pid) == "flowtel" and self.config.processors[pid].capture_content
                          for pid in used)
            return RequestPipeline(pipeline_id, BY_NAME[signal], [self.exporters[e] for e in exporters],
                                   self.self_metrics, memory_limiters=limiters, batch=batch,
                                   capture_content=capture)
        flowtel = None
        if flowtel_cfg is not None:
            fconfig = flowtel_cfg.model_copy(update={"schedule_delay": batch.timeout})
            metrics = FlowtelMetrics(fconfig, self.self_metrics)
            for eid in exporters:
                exporter = self.exporters[eid]
                if hasattr(exporter, "add_producer"):
                    exporter.add_producer(metrics)
            flowtel = (fconfig, metrics)
        traces_exporters: list[TracesExporter] = [self.exporters[e] for e in exporters]
        return TracesPipeline(pipeline_id, traces_exporters, self.self_metrics, flowtel=flowtel,
                              memory_limiters=limiters, batch=batch)

    def start(self) -> Collector:
        for ext_id, extension in self.extensions.items():
            extension.start()
            if getattr(extension, "kind", None):  # an extension that serves (health_check)
                getattr(self.listening, extension.kind)[ext_id] = extension.url
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
            logger.info("receiver %s: OTLP/HTTP listening on %s/v1/traces", rid, url)  # and /v1/metrics, /v1/logs
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
        for extension in self.extensions.values():
            extension.shutdown()
        logger.info("flowtel collector stopped in %.1fs", time.monotonic() - started)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, {"warn": "WARNING"}.get(level, level.upper())),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":  # azure-core logs every request at INFO
        logging.getLogger("azure").setLevel(logging.WARNING)


__all__ = ["Collector", "component_type", "configure_logging"]
