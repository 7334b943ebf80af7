"""The collector's config: the upstream OpenTelemetry Collector's shape, validated all at once.

``load_config`` returns typed component configs or raises ``ConfigFileError`` listing
every problem found (unknown keys and types, bad values, pipelines naming components
that do not exist, two components on one port), each with file, line, key and what was
expected, so one ``flowtel validate`` run shows everything to fix.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from flowtel.exporters.debug import DebugExporterConfig
from flowtel.exporters.otlp_forward import OTLPExporterConfig, OTLPHTTPExporterConfig

from .batch import BatchConfig
from .confmap import ConfigFileError, Document, Path, Problem, load, parse
from .extensions import BearerTokenAuthConfig, FileStorageConfig, HealthCheckConfig
from .flowtel_processor import FlowtelProcessorConfig
from .memory_limiter import MemoryLimiterConfig
from .otlp_receiver import OTLPReceiverConfig
from .settings import Auth, Endpoint, Model, PositiveDuration, ServerTLS, split_endpoint


class PrometheusExporterConfig(Model):
    endpoint: Endpoint = "localhost:9464"
    tls: ServerTLS | None = None
    auth: Auth | None = None


class PipelineConfig(Model):
    receivers: list[str] = Field(min_length=1)
    processors: list[str] = Field(default_factory=list)
    exporters: list[str] = Field(min_length=1)


class LogsConfig(Model):
    level: Literal["debug", "info", "warn", "error"] = "info"


class TelemetryConfig(Model):
    logs: LogsConfig = LogsConfig()


class ServiceConfig(Model):
    extensions: list[str] = Field(default_factory=list)
    pipelines: dict[str, PipelineConfig] = Field(min_length=1)
    telemetry: TelemetryConfig = TelemetryConfig()
    #: Bound on SIGTERM: stop receiving, process and release held traces, flush exporters.
    shutdown_timeout: PositiveDuration = 30.0


COMPONENTS: dict[str, dict[str, type[Model]]] = {
    "receivers": {"otlp": OTLPReceiverConfig},
    "processors": {"flowtel": FlowtelProcessorConfig, "memory_limiter": MemoryLimiterConfig, "batch": BatchConfig},
    "exporters": {"prometheus": PrometheusExporterConfig, "otlp": OTLPExporterConfig,
                  "otlphttp": OTLPHTTPExporterConfig, "debug": DebugExporterConfig},
    "extensions": {"health_check": HealthCheckConfig, "bearertokenauth": BearerTokenAuthConfig,
                   "file_storage": FileStorageConfig},
}
_TOP_LEVEL = (*COMPONENTS, "service")


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


@dataclass
class CollectorConfig:
    file: str
    service: ServiceConfig
    receivers: dict[str, Any] = field(default_factory=dict)
    processors: dict[str, Any] = field(default_factory=dict)
    exporters: dict[str, Any] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that ``loc`` points into, to list the keys it knows."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        if isinstance(part, int):
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = _unwrap(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin is dict:
        return _unwrap(typing.get_args(annotation)[1])
    if origin is list:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _problems(doc: Document, base: Path, model: type[BaseModel], error: ValidationError) -> list[Problem]:
    out = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = ", ".join(parent.model_fields) if parent else ""
            out.append(doc.problem((*base, *loc), f"no key {loc[-1]!r} here; known keys: {known}"))
        elif kind == "missing":
            out.append(doc.problem((*base, *loc), "a value (this key is required)"))
        else:
            message = err["msg"].removeprefix("Value error, ")
            out.append(doc.problem((*base, *loc), message[0].lower() + message[1:], err.get("input")))
    return out


def _validate(doc: Document, base: Path, model: type[Model], data: Any, problems: list[Problem]) -> Any:
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as error:
        problems.extend(_problems(doc, base, model, error))
        return None


def build(doc: Document) -> CollectorConfig:
    problems: list[Problem] = []
    data = doc.data
    for key in data:
        if key not in _TOP_LEVEL:
            problems.append(doc.problem((key,), f"one of the sections {', '.join(_TOP_LEVEL)}"))
    components: dict[str, dict[str, Any]] = {}
    for section, known in COMPONENTS.items():
        components[section] = {}
        raw = data.get(section) or {}
        if not isinstance(raw, Mapping):
            problems.append(doc.problem((section,), "a mapping of component ids to settings", raw))
            continue
        for component_id, settings in raw.items():
            ctype = component_type(str(component_id))
            model = known.get(ctype)
            if model is None:
                problems.append(doc.problem((section, component_id),
                                            f"a {section[:-1]} type among {', '.join(known)} (as type or type/name)"))
                continue
            components[section][component_id] = _validate(doc, (section, component_id), model, settings, problems)
    service = _validate(doc, ("service",), ServiceConfig, data.get("service"), problems)
    if "service" not in data:
        problems.append(doc.problem(("service",), "a service section with at least one traces pipeline"))
    if service is not None:
        problems.extend(_check_references(doc, service, components))
    if problems:
        raise ConfigFileError(problems)
    return CollectorConfig(doc.file, service, **components)


def _check_references(doc: Document, service: ServiceConfig, components: dict[str, dict[str, Any]]) -> list[Problem]:
    problems: list[Problem] = []
    enabled = set(service.extensions)
    for i, ext in enumerate(service.extensions):
        if ext not in components["extensions"]:
            problems.append(doc.problem(("service", "extensions", i), "an extension defined under extensions", ext))
    for pipeline_id, pipeline in service.pipelines.items():
        path: Path = ("service", "pipelines", pipeline_id)
        if component_type(pipeline_id) != "traces":
            problems.append(doc.problem(path, "a traces pipeline (traces or traces/name): flowtel's collector "
                                              "takes traces and derives metrics from them", pipeline_id))
        for section in ("receivers", "processors", "exporters"):
            for i, ref in enumerate(getattr(pipeline, section)):
                if ref not in components[section]:
                    problems.append(doc.problem((*path, section, i), f"a component defined under {section}", ref))
        types_ = [component_type(p) for p in pipeline.processors]
        for ptype in ("flowtel", "batch"):
            if types_.count(ptype) > 1:
                problems.append(doc.problem((*path, "processors"), f"at most one {ptype} processor",
                                            pipeline.processors))
        if "memory_limiter" in types_ and types_[0] != "memory_limiter":
            problems.append(doc.problem((*path, "processors"), "memory_limiter first, so it refuses data before any "
                                                               "work is done", pipeline.processors))
    used_exporters = {e for p in service.pipelines.values() for e in p.exporters}
    used_receivers = {r for p in service.pipelines.values() for r in p.receivers}
    for section, used in (("receivers", used_receivers), ("exporters", used_exporters)):
        for cid, cfg in components[section].items():
            if cid in used and cfg is not None:
                problems.extend(_check_component_refs(doc, (section, cid), cfg, components, enabled))
    problems.extend(_check_ports(doc, service, components, used_receivers, used_exporters))
    return problems


def _check_component_refs(doc: Document, path: Path, cfg: Any, components: dict[str, dict[str, Any]],
                          enabled: set[str]) -> list[Problem]:
    out: list[Problem] = []
    auths: list[tuple[Path, Auth]] = []
    if isinstance(cfg, OTLPReceiverConfig):
        for proto in ("grpc", "http"):
            server = getattr(cfg.protocols, proto)
            if server is not None and server.auth is not None:
                auths.append(((*path, "protocols", proto, "auth", "authenticator"), server.auth))
    elif isinstance(cfg, PrometheusExporterConfig) and cfg.auth is not None:
        auths.append(((*path, "auth", "authenticator"), cfg.auth))
    for where, auth in auths:
        if component_type(auth.authenticator) != "bearertokenauth" or auth.authenticator not in enabled:
            out.append(doc.problem(where, "a bearertokenauth extension listed in service.extensions",
                                   auth.authenticator))
    storage = getattr(getattr(cfg, "sending_queue", None), "storage", None)
    if storage is not None and (component_type(storage) != "file_storage" or storage not in enabled):
        out.append(doc.problem((*path, "sending_queue", "storage"),
                               "a file_storage extension listed in service.extensions", storage))
    return out


def _check_ports(doc: Document, service: ServiceConfig, components: dict[str, dict[str, Any]],
                 receivers: set[str], exporters: set[str]) -> list[Problem]:
    seen: dict[int, str] = {}
    out: list[Problem] = []
    listeners: list[tuple[Path, str]] = []
    for rid in receivers:
        cfg = components["receivers"].get(rid)
        if isinstance(cfg, OTLPReceiverConfig):
            for proto in ("grpc", "http"):
                server = getattr(cfg.protocols, proto)
                if server is not None:
                    listeners.append((("receivers", rid, "protocols", proto, "endpoint"), server.endpoint))
    for eid in exporters:
        cfg = components["exporters"].get(eid)
        if isinstance(cfg, PrometheusExporterConfig):
            listeners.append((("exporters", eid, "endpoint"), cfg.endpoint))
    for xid in service.extensions:
        cfg = components["extensions"].get(xid)
        if isinstance(cfg, HealthCheckConfig):
            listeners.append((("extensions", xid, "endpoint"), cfg.endpoint))
    for path, endpoint in listeners:
        port = split_endpoint(endpoint)[1]
        if port == 0:
            continue
        if port in seen:
            out.append(doc.problem(path, f"a port not already used by {seen[port]}", endpoint))
        else:
            seen[port] = ".".join(str(p) for p in path)
    return out


def load_config(path: str | None = None, *, text: str | None = None, env: Mapping[str, str] | None = None,
                name: str = "<config>") -> CollectorConfig:
    doc = load(path, env) if path is not None else parse(text or "", name, env)
    return build(doc)


__all__ = ["COMPONENTS", "CollectorConfig", "ConfigFileError", "load_config"]
