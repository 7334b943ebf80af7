"""The collector's config: the upstream OpenTelemetry Collector's shape, validated all at once.

``load_config`` returns typed component configs or raises ``ConfigFileError`` listing
every problem found (unknown keys and types, bad values, pipelines naming components
that do not exist, two components on one port), each with file, line, key and what was
expected, so one ``flowtel validate`` run shows everything to fix.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from flowtel.settings import (
    Auth,
    Model,
    PositiveDuration,
    check_endpoint,
    check_readable,
    expected_of,
    model_at,
    parse_duration,
    split_endpoint,
    unwrap,
)
from flowtel.signals import SIGNALS

from .components import FACTORIES
from .confmap import ConfigFileError, Document, Path, Problem, dotted, load, parse


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


#: Section -> component type -> config model, from the one registry (``components.FACTORIES``).
COMPONENTS: dict[str, dict[str, type[Model]]] = {
    section: {ctype: factory.config for ctype, factory in factories.items()}
    for section, factories in FACTORIES.items()}
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


def _problems(doc: Document, base: Path, model: type[BaseModel], error: ValidationError) -> list[Problem]:
    out = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = model_at(model, loc[:-1])
            keys = [k for k in parent.model_fields if k not in getattr(parent, "IN_PROCESS_ONLY", {})] \
                if parent else []
            known = ", ".join(keys)
            hint = _did_you_mean(str(loc[-1]), keys)
            out.append(doc.problem((*base, *loc), f"no such key{hint}; known keys: {known}"))
            continue
        expected, got = expected_of(model, err)
        out.append(doc.problem((*base, *loc), expected, got))
    return out


def _replaced(data: Any, loc: tuple[Any, ...], value: Any) -> Any:
    """``data`` with the value at ``loc`` replaced, copying only the containers on the way."""
    if not loc:
        return value
    head, rest = loc[0], loc[1:]
    if isinstance(data, dict) and head in data:
        return {**data, head: _replaced(data[head], rest, value)}
    if isinstance(data, list) and isinstance(head, int) and 0 <= head < len(data):
        return [*data[:head], _replaced(data[head], rest, value), *data[head + 1:]]
    return data


def _validate(doc: Document, base: Path, model: type[Model], data: Any, problems: list[Problem]) -> Any:
    data = {} if data is None else data
    restored: set[tuple[Any, ...]] = set()
    while True:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            # A whole ``${env:VAR}`` became a number, boolean or null; where that does not fit (a string
            # setting such as a token), use the text as written, as the upstream collector does. Each
            # value is restored at most once, so this ends.
            retyped = [loc for loc in dict.fromkeys(tuple(e["loc"]) for e in error.errors())
                       if (*base, *loc) in doc.originals and loc not in restored]
            if not retyped:
                problems.extend(_problems(doc, base, model, error))
                return None
            for loc in retyped:
                restored.add(loc)
                full_path = (*base, *loc)
                data = _replaced(data, loc, doc.originals[full_path])


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


_TYPE = re.compile(r"[A-Za-z][0-9A-Za-z_]{0,62}")
_NAME = re.compile(r"[^\s/]+(?:/[^\s/]+)*")


def _bad_id(component_id: str) -> str | None:
    """What is wrong with a ``type`` or ``type/name`` id, if anything."""
    ctype, sep, name = component_id.partition("/")
    if not _TYPE.fullmatch(ctype):
        return "an id type or type/name, the type a letter then letters, digits or _"
    if sep and not _NAME.fullmatch(name):
        return f"an id {ctype}/name with a non-empty name without spaces"
    return None


def build(doc: Document) -> CollectorConfig:
    problems: list[Problem] = list(doc.problems)
    data = doc.data
    for key in data:
        if key not in _TOP_LEVEL:
            problems.append(doc.problem((key,), f"one of the sections {', '.join(_TOP_LEVEL)}"
                                                f"{_did_you_mean(str(key), _TOP_LEVEL)}"))
    components: dict[str, dict[str, Any]] = {}
    for section, known in COMPONENTS.items():
        components[section] = {}
        raw = data.get(section)
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            problems.append(doc.problem((section,), "a mapping of component ids to settings", raw))
            continue
        for component_id, settings in raw.items():
            # A component that is wrong is still "defined", so pipelines naming it add no second problem.
            components[section][component_id] = None
            model = known.get(component_type(component_id))
            if model is None:
                kind = section[:-1]
                problems.append(doc.problem((section, component_id),
                                            f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} type among "
                                            f"{', '.join(known)} (as type or type/name)"
                                            f"{_did_you_mean(component_type(component_id), known)}"))
            elif (bad := _bad_id(component_id)) is not None:
                problems.append(doc.problem((section, component_id), bad))
            else:
                refused = _code_only_keys(doc, (section, component_id), model, settings, problems)
                components[section][component_id] = _validate(
                    doc, (section, component_id), model,
                    {k: v for k, v in settings.items() if k not in refused}
                    if isinstance(settings, Mapping) else settings, problems)
    if "service" in data:
        service = _validate(doc, ("service",), ServiceConfig, data["service"], problems)
        if service is not None:
            problems.extend(_check_references(doc, service, components))
    else:
        problems.append(doc.problem(("service",), "a service section with at least one pipeline"))
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise ConfigFileError(problems)
    return CollectorConfig(doc.file, service, **components)


def _code_only_keys(doc: Document, path: Path, model: type[Model], settings: Any, problems: list[Problem]) -> set[str]:
    """Keys of the shared settings models that a config file may not use: in-process-only ones, and the older
    names accepted only in code. Each is a problem saying why (and which key to use); they are not validated."""
    refused: set[str] = set()
    for key in settings if isinstance(settings, Mapping) else ():
        if key in model.IN_PROCESS_ONLY:
            problems.append(doc.problem((*path, key), f"a collector key; {key} is in-process only: "
                                                      f"{model.IN_PROCESS_ONLY[key]}"))
        elif key in model.CODE_NAMES:
            problems.append(doc.problem((*path, key), f"the config file's key {model.CODE_NAMES[key]} ({key} is "
                                                      "its name in Python code only)"))
        else:
            continue
        refused.add(key)
    return refused


def _twice(doc: Document, path: Path, ids: list[str], what: str) -> list[Problem]:
    return [doc.problem((*path, i), f"each {what} once", ref) for i, ref in enumerate(ids) if ref in ids[:i]]


def _check_references(doc: Document, service: ServiceConfig, components: dict[str, dict[str, Any]]) -> list[Problem]:
    problems: list[Problem] = []
    enabled = set(service.extensions)
    for i, ext in enumerate(service.extensions):
        if ext not in components["extensions"]:
            problems.append(doc.problem(("service", "extensions", i), "an extension defined under extensions", ext))
    problems.extend(_twice(doc, ("service", "extensions"), service.extensions, "extension"))
    for pipeline_id, pipeline in service.pipelines.items():
        path: Path = ("service", "pipelines", pipeline_id)
        signal = component_type(pipeline_id)
        if signal not in SIGNALS:
            problems.append(doc.problem(path, "a pipeline of one of the signals traces, metrics, logs (as signal or "
                                              f"signal/name){_did_you_mean(signal, SIGNALS)}", pipeline_id))
        elif (bad := _bad_id(pipeline_id)) is not None:
            problems.append(doc.problem(path, bad, pipeline_id))
        for section in ("receivers", "processors", "exporters"):
            refs = getattr(pipeline, section)
            for i, ref in enumerate(refs):
                if ref not in components[section]:
                    problems.append(doc.problem((*path, section, i), f"a component defined under {section}", ref))
                elif (signal in SIGNALS and (factory := FACTORIES[section].get(component_type(ref))) is not None
                      and signal not in factory.signals):
                    takes = ", ".join(s for s in SIGNALS if s in factory.signals)
                    problems.append(doc.problem((*path, section, i), f"a {section[:-1]} that supports {signal} "
                                                f"({component_type(ref)} takes {takes} only)", ref))
            problems.extend(_twice(doc, (*path, section), refs, f"{section[:-1]} in a pipeline"))
        types_ = [component_type(p) for p in dict.fromkeys(pipeline.processors)]
        for ptype in ("flowtel", "batch"):
            if types_.count(ptype) > 1:
                problems.append(doc.problem((*path, "processors"), f"at most one {ptype} processor",
                                            pipeline.processors))
        if "memory_limiter" in types_ and types_[0] != "memory_limiter":
            problems.append(doc.problem((*path, "processors"), "memory_limiter first, so it refuses data before any "
                                                               "work is done", pipeline.processors))
    used_exporters = list(dict.fromkeys(e for p in service.pipelines.values() for e in p.exporters))
    used_receivers = list(dict.fromkeys(r for p in service.pipelines.values() for r in p.receivers))
    for section, used in (("receivers", used_receivers), ("exporters", used_exporters)):
        for cid in used:
            cfg = components[section].get(cid)
            if cfg is not None:
                problems.extend(_check_component_refs(doc, (section, cid), cfg, enabled))
    # A component may need settings for some signals only (otlphttp: an endpoint for each signal it sends).
    signals_of: dict[str, list[str]] = {}
    for pipeline_id, pipeline in service.pipelines.items():
        for eid in pipeline.exporters:
            signals_of.setdefault(eid, []).append(component_type(pipeline_id))
    for eid, signals in signals_of.items():
        check = getattr(components["exporters"].get(eid), "check_signals", None)
        expected = check(sorted(set(signals), key=signals.index)) if check is not None else None
        if expected:
            problems.append(doc.problem(("exporters", eid), expected))
    problems.extend(_check_ports(doc, service, components, used_receivers, used_exporters))
    return problems


def _settings(cfg: BaseModel, path: Path = ()) -> Iterator[tuple[Path, Any, Any]]:
    """Every setting of a component, nested ones included: (path, value, field info). Checks that apply to a kind
    of setting wherever a component has it (authenticators, listening endpoints) walk this, not each type."""
    for name, info in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        yield (*path, name), value, info
        if isinstance(value, BaseModel):
            yield from _settings(value, (*path, name))


def _listens(info: Any) -> bool:
    """A ``host:port`` a server listens on (``Endpoint``), not a URL or target it sends to."""
    metadata = [*info.metadata, *(typing.get_args(info.annotation)[1:]
                                  if typing.get_origin(info.annotation) is typing.Annotated else ())]
    return any(getattr(m, "func", None) is check_endpoint for m in metadata)


def _check_component_refs(doc: Document, path: Path, cfg: Any, enabled: set[str]) -> list[Problem]:
    out: list[Problem] = []
    for where, value, _ in _settings(cfg):
        if isinstance(value, Auth) and (component_type(value.authenticator) != "bearertokenauth"
                                        or value.authenticator not in enabled):
            out.append(doc.problem((*path, *where, "authenticator"),
                                   "a bearertokenauth extension listed in service.extensions", value.authenticator))
    queue_storage = getattr(getattr(cfg, "sending_queue", None), "storage", None)
    for key, storage in ((("sending_queue", "storage"), queue_storage), (("storage",), getattr(cfg, "storage", None))):
        if storage is not None and (component_type(storage) != "file_storage" or storage not in enabled):
            out.append(doc.problem((*path, *key), "a file_storage extension listed in service.extensions", storage))
    return out


_ANY_HOST = {"", "0.0.0.0", "::"}
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _same_interface(a: str, b: str) -> bool:
    if a in _ANY_HOST or b in _ANY_HOST:
        return True
    a, b = a.lower(), b.lower()
    return a == b or (a in _LOOPBACK and b in _LOOPBACK)


def _check_ports(doc: Document, service: ServiceConfig, components: dict[str, dict[str, Any]],
                 receivers: list[str], exporters: list[str]) -> list[Problem]:
    """Two listeners on one port (and overlapping addresses) would fail at start; say so now, at the later one."""
    listeners: list[tuple[Path, str]] = []
    used = [("receivers", cid) for cid in receivers] + [("exporters", cid) for cid in exporters] + [
        ("extensions", cid) for cid in dict.fromkeys(service.extensions)]
    for section, cid in used:
        cfg = components[section].get(cid)
        if cfg is not None:
            listeners.extend(((section, cid, *where), value) for where, value, info in _settings(cfg)
                             if isinstance(value, str) and _listens(info))
    listeners.sort(key=lambda item: doc.line(item[0]) or 0)
    seen: list[tuple[str, int, Path]] = []
    out: list[Problem] = []
    for path, endpoint in listeners:
        host, port = split_endpoint(endpoint)
        if port == 0:
            continue
        clash = next((other for h, p, other in seen if p == port and _same_interface(h, host)), None)
        if clash is not None:
            out.append(doc.problem(path, f"a port not already used by {dotted(clash)}", endpoint))
        else:
            seen.append((host, port, path))
    return out


def _format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= size and round(seconds / size, 6).is_integer():
            return f"{round(seconds / size)}{unit}"
    return "0s" if seconds == 0 else f"{seconds}s"


def _type_name(annotation: Any, metadata: list[Any]) -> str:
    funcs = {getattr(m, "func", None) for m in metadata}
    for meta in typing.get_args(annotation)[1:] if typing.get_origin(annotation) is typing.Annotated else ():
        funcs.add(getattr(meta, "func", None))
    if parse_duration in funcs:
        name = "duration"
    elif check_endpoint in funcs:
        name = "host:port"
    elif check_readable in funcs:
        name = "file path"
    else:
        inner = unwrap(annotation)
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin in (typing.Union, types.UnionType) and len(args) == 1:
            return _type_name(args[0], metadata)
        if origin is dict:
            name = "map of strings" if inner is str else "map of id to mapping"
        elif origin in (list, frozenset):
            name = "list of strings"
        elif origin is typing.Literal:
            name = "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            name = "mapping"
        else:
            name = {int: "integer", float: "number", bool: "bool", str: "string"}.get(inner, str(inner))
    for meta in metadata:
        for attr, sign in (("gt", ">"), ("ge", ">=")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                name += f" {sign} {bound}"
    return name


def reference(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, type, default)`` for every key of a component, nested keys dotted: collector-config/README.md."""
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        if name in getattr(model, "IN_PROCESS_ONLY", {}):
            continue
        key = f"{prefix}{name}"
        kind = _type_name(info.annotation, list(info.metadata))
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            if value is None:
                default = "none"
            elif isinstance(value, BaseModel):
                default = "(below)"
            elif isinstance(value, bool):
                default = str(value).lower()
            elif kind.startswith("duration"):
                default = _format_duration(value)
            elif isinstance(value, (dict, list, frozenset)):
                default = "{}" if isinstance(value, dict) else "[" + ", ".join(map(str, sorted(value) if isinstance(
                    value, frozenset) else value)) + "]"
            else:
                default = str(value)
        rows.append((key, kind, default))
        nested = unwrap(info.annotation)
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            sub = f"{key}.<id>." if typing.get_origin(info.annotation) is dict else f"{key}."
            rows.extend(reference(nested, sub))
    return rows


def load_config(path: str | None = None, *, text: str | None = None, env: Mapping[str, str] | None = None,
                name: str = "<config>") -> CollectorConfig:
    doc = load(path, env) if path is not None else parse(text or "", name, env)
    return build(doc)


__all__ = ["COMPONENTS", "CollectorConfig", "ConfigFileError", "load_config", "reference"]
