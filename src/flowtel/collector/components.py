"""Every collector component, registered in one place: its type, typed config, signals and create function.

As the upstream collector's ``NewFactory(type, createDefaultConfig, create...)``: the
config file is validated against ``config`` (defaults documented on each model and in
collector-config/README.md), a pipeline may only name a receiver, processor or exporter
that supports its signal, and the service builds each component with ``create``. A new
receiver or exporter is its own module plus its factory here: a create function (a few lines
adapting the component to the ``Host``) and one entry in ``FACTORIES``. Exporters know nothing of
the collector; this is where they meet it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowtel.config import FlowtelConfig
from flowtel.exporters.azuremonitor_collector import AzureMonitorExporterConfig
from flowtel.exporters.debug import DebugExporter, DebugExporterConfig
from flowtel.exporters.otlp_forward import (
    ForwardingExporter,
    GRPCSender,
    HTTPSender,
    OTLPExporterConfig,
    OTLPHTTPExporterConfig,
)
from flowtel.exporters.prometheus import PrometheusExporter
from flowtel.exporters.prometheus_config import PrometheusExporterConfig
from flowtel.selfmetrics import SelfMetrics
from flowtel.settings import BearerToken
from flowtel.signals import SIGNALS

from .extensions import (
    BearerTokenAuthConfig,
    FileStorage,
    FileStorageConfig,
    HealthCheck,
    HealthCheckConfig,
    ServiceStatus,
)
from .processors.batch import BatchConfig
from .processors.memory_limiter import MemoryLimiter, MemoryLimiterConfig
from .receivers.feedback import FeedbackReceiver, FeedbackReceiverConfig
from .receivers.otlp import AnyIntake, Intake, OTLPReceiverConfig
from .settings import Auth, Model


class Host(Protocol):
    """What a component's create function may ask of the collector that builds it."""

    self_metrics: SelfMetrics
    status: ServiceStatus

    def storage_directory(self, storage: str | None, component_id: str) -> str | None: ...
    def read_token(self, authenticator: str) -> str: ...
    def token(self, auth: Auth | None) -> BearerToken | None: ...
    def memory_limiter(self, processor_id: str, config: MemoryLimiterConfig) -> MemoryLimiter: ...


@dataclass
class PipelineParts:
    """What a pipeline's processors make of it: each processor's create function sets its part, in order."""

    memory_limiters: list[MemoryLimiter] = field(default_factory=list)
    batch: BatchConfig = field(default_factory=BatchConfig)
    flowtel: FlowtelConfig | None = None


@dataclass(frozen=True)
class Factory:
    type_name: str  # the component type, as in config ids (`otlp`, `otlp/backend` -> otlp)
    config: type[Model]
    #: Exporters: (host, id, config, signals used) -> exporter. Receivers: (host, id, config, intakes by
    #: signal) -> servers to start. Extensions: (host, id, config) -> the running extension (start, shutdown).
    #: Processors: (host, id, config, PipelineParts of the pipeline listing it) -> None, setting their part.
    create: Callable[..., Any]
    #: Signals a pipeline of which may list this component (none for extensions).
    signals: frozenset[str] = frozenset()


ALL = frozenset(SIGNALS)


# --- receivers ----------------------------------------------------------------------------------------------
def _otlp_receiver(host: Host, rid: str, cfg: OTLPReceiverConfig, intakes: dict[str, AnyIntake]) -> list[Any]:
    from .receivers.otlp_grpc import GRPCTransport
    from .receivers.otlp_http import HTTPTransport

    out: list[Any] = []
    if cfg.protocols.grpc is not None:
        out.append(GRPCTransport(cfg.protocols.grpc, intakes, host.token(cfg.protocols.grpc.auth)))
    if cfg.protocols.http is not None:
        out.append(HTTPTransport(cfg.protocols.http, intakes, host.token(cfg.protocols.http.auth)))
    return out


def _feedback_receiver(host: Host, rid: str, cfg: FeedbackReceiverConfig,
                       intakes: dict[str, AnyIntake]) -> list[Any]:
    token = host.read_token(cfg.auth.authenticator) if cfg.auth is not None else None
    intake = intakes["traces"]
    assert isinstance(intake, Intake)
    return [FeedbackReceiver(rid, cfg, intake, token)]


# --- processors: each sets its part of the pipeline that lists it ----------------------------------------------
def _flowtel(host: Host, pid: str, cfg: FlowtelConfig, parts: PipelineParts) -> None:
    parts.flowtel = cfg


def _memory_limiter(host: Host, pid: str, cfg: MemoryLimiterConfig, parts: PipelineParts) -> None:
    parts.memory_limiters.append(host.memory_limiter(pid, cfg))  # one per id, shared by its pipelines


def _batch(host: Host, pid: str, cfg: BatchConfig, parts: PipelineParts) -> None:
    parts.batch = cfg


# --- exporters ----------------------------------------------------------------------------------------------
def _prometheus(host: Host, eid: str, cfg: PrometheusExporterConfig, signals: frozenset[str]) -> PrometheusExporter:
    return PrometheusExporter(eid, cfg, host.token(cfg.auth), self_metrics=host.self_metrics)


def _otlp(host: Host, eid: str, cfg: OTLPExporterConfig | OTLPHTTPExporterConfig,
          signals: frozenset[str]) -> ForwardingExporter:
    def sender(signal: Any) -> GRPCSender | HTTPSender:
        return GRPCSender(cfg, signal) if isinstance(cfg, OTLPExporterConfig) else HTTPSender(cfg, signal)

    # Traces first, so the exporter's target (the start-up log) is the traces endpoint as before.
    used = sorted(signals, key=SIGNALS.index)
    return ForwardingExporter(eid, sender, cfg, host.self_metrics,
                              host.storage_directory(cfg.sending_queue.storage, eid), used)


def _debug(host: Host, eid: str, cfg: DebugExporterConfig, signals: frozenset[str]) -> DebugExporter:
    return DebugExporter(eid, cfg, host.self_metrics)


def _azuremonitor(host: Host, eid: str, cfg: AzureMonitorExporterConfig, signals: frozenset[str]) -> Any:
    from flowtel.exporters.azuremonitor_collector import AzureMonitorCollectorExporter

    return AzureMonitorCollectorExporter(eid, cfg, host.self_metrics, host.storage_directory(cfg.storage, eid))


FACTORIES: dict[str, dict[str, Factory]] = {
    "receivers": {f.type_name: f for f in (
        Factory("otlp", OTLPReceiverConfig, _otlp_receiver, ALL),
        Factory("feedback", FeedbackReceiverConfig, _feedback_receiver, frozenset({"traces"})),
    )},
    "processors": {f.type_name: f for f in (
        Factory("flowtel", FlowtelConfig, _flowtel, frozenset({"traces"})),
        Factory("memory_limiter", MemoryLimiterConfig, _memory_limiter, ALL),
        Factory("batch", BatchConfig, _batch, ALL),
    )},
    "exporters": {f.type_name: f for f in (
        # Traces pipelines: the flowtel processor's derived metrics; metrics pipelines: what it receives.
        Factory("prometheus", PrometheusExporterConfig, _prometheus, frozenset({"traces", "metrics"})),
        Factory("otlp", OTLPExporterConfig, _otlp, ALL),
        Factory("otlphttp", OTLPHTTPExporterConfig, _otlp, ALL),
        Factory("debug", DebugExporterConfig, _debug, ALL),
        Factory("azuremonitor", AzureMonitorExporterConfig, _azuremonitor, ALL),
    )},
    "extensions": {f.type_name: f for f in (
        Factory("health_check", HealthCheckConfig, lambda host, xid, cfg: HealthCheck(cfg, host.status)),
        Factory("bearertokenauth", BearerTokenAuthConfig, lambda host, xid, cfg: BearerToken(cfg.read_token())),
        Factory("file_storage", FileStorageConfig, lambda host, xid, cfg: FileStorage(cfg)),
    )},
}
