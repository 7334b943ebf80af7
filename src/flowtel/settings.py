"""Settings building blocks for both hosts: one pydantic model per component, read from YAML or the environment.

A component's settings are one ``Settings`` model. The collector validates its config file into it
(``flowtel.collector.config``, errors with file, line and key); in-process, ``Model.from_env()``
reads the variables listed in the model's ``ENV`` table into the same model (errors name the
variable). Both use ``expected()`` to say what a bad value should have been, so a key reads the
same wherever it is set.

Durations are written the collector's way (``200ms``, ``5s``, ``1m30s``); a plain number is seconds.
Endpoints are ``host:port`` (``[::1]:4317`` for IPv6), parsed by ``split_endpoint`` only.
"""

from __future__ import annotations

import hmac
import math
import os
import re
import ssl
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A setting is wrong; ``str()`` says where, which key, and what was expected."""

    def __init__(self, source: str, key: str, expected: str, got: object) -> None:
        self.source, self.key, self.expected, self.got = source, key, expected, got
        super().__init__(f"{source}: {key}: expected {expected}, got {got!r}")


# -- value types ---------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_EXPECTED = "a duration such as 5s, 200ms or 1m30s"
_PLAIN_NUMBER = re.compile(r"\d+\.?\d*|\.\d+")


def parse_duration(value: Any) -> Any:
    """Go-style durations as the upstream collector writes them (``200ms``, ``5s``, ``1m30s``); numbers are seconds.
    Text that is only a number is refused, as Go's ``time.ParseDuration`` does (``env_duration`` takes it)."""
    if isinstance(value, bool):
        raise ValueError(_DURATION_EXPECTED)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":  # as Go's time.ParseDuration: the one duration that needs no unit
            return 0.0
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT_S[u] for n, u in parts)
    raise ValueError(_DURATION_EXPECTED)


def env_duration(text: str) -> Any:
    """An environment variable's duration: a plain number is seconds (``FLOWTEL_TRACE_TIMEOUT=300``, as the
    variables have always been read); ``5m`` and the like as in a config file."""
    return float(text) if _PLAIN_NUMBER.fullmatch(text) else text


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def env_bool(text: str) -> bool:
    """A boolean variable: true/1/yes/on or false/0/no/off, any case (the OTel SDK reads ``true``)."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("true or false")


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("a finite duration")
    return value


_ENDPOINT_EXPECTED = "host:port (no scheme), port 0 to 65535, e.g. localhost:4317 or 0.0.0.0:4317"


def split_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:4317`` for IPv6) to its parts; a scheme, path or stray space is an error."""
    host, sep, port = value.rpartition(":")
    if (not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535
            or any(c.isspace() or c in "/@?#" for c in host)):
        raise ValueError(_ENDPOINT_EXPECTED)
    return host.strip("[]"), int(port)


def join_endpoint(host: str, port: int) -> str:
    """The inverse of ``split_endpoint``: IPv6 hosts get their brackets back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_endpoint(value: str) -> str:
    host, _ = split_endpoint(value)
    if not host:
        raise ValueError(_ENDPOINT_EXPECTED)
    return value


def check_readable(path: str | None) -> str | None:
    if path is None:
        return path
    if not path:
        raise ValueError("a readable file (the path is empty)")
    if not os.path.exists(path):
        raise ValueError("a readable file (it does not exist)")
    if not os.path.isfile(path):
        raise ValueError("a readable file (it is not a regular file)")
    if not os.access(path, os.R_OK):
        raise ValueError("a readable file (permission denied)")
    return path


Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_finite), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_finite), Field(gt=0)]
Endpoint = Annotated[str, AfterValidator(check_endpoint)]
ReadableFile = Annotated[str, AfterValidator(check_readable)]


# -- models --------------------------------------------------------------------------------------------------

M = TypeVar("M", bound="Model")


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One environment variable of a settings model: which key it sets, and how its text becomes a value."""

    name: str
    #: The model key it sets, dotted for nested models (``feedback.wait``).
    key: str
    #: Text to a value the model validates; raise ``ValueError("what was expected")``. None: the text as is.
    convert: Callable[[str], Any] | None = None


class Model(BaseModel):
    """A settings model: unknown keys are errors that name the key, values are immutable.

    ``ENV`` lists the environment variables the in-process host reads into it (later entries win;
    two mappings for one key are merged). ``IN_PROCESS_ONLY`` names keys that mean nothing in the
    collector, which refuses them in a config file with ``IN_PROCESS_ONLY[key]`` as the reason;
    ``CODE_NAMES`` are older spellings accepted in code only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ENV: ClassVar[tuple[EnvVar, ...]] = ()
    IN_PROCESS_ONLY: ClassVar[Mapping[str, str]] = {}
    #: Names accepted when the model is built in code (from before both hosts shared it): name -> the key.
    #: A config file must use the key; the collector refuses these names there and says which key to use.
    CODE_NAMES: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_env(cls: type[M], environ: Mapping[str, str] | None = None, **overrides: Any) -> M:
        """The model from ``ENV``'s variables (blank ones are unset), then ``overrides`` (keys, or code names)
        on top."""
        return from_env(cls, os.environ if environ is None else environ, overrides)

    @model_validator(mode="before")
    @classmethod
    def _code_names(cls, data: Any) -> Any:
        return cls.renamed(dict(data)) if isinstance(data, dict) else data

    @classmethod
    def renamed(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (a copy the caller owns) with each ``CODE_NAMES`` name moved to its key; a mapping given for
        a section is merged into it. A model whose old names held other values converts them here first."""
        for old, key in cls.CODE_NAMES.items():
            if old not in data:
                continue
            value = data.pop(old)
            *sections, name = key.split(".")
            target = data
            for section in sections:
                target[section] = target = dict(target.get(section) or {})
            old_value = target.get(name)
            target[name] = {**old_value, **value} if isinstance(old_value, dict) and isinstance(value, dict) \
                else value
        return data


class EmptyIsDefault(Model):
    """``grpc:`` with nothing under it means "on, with defaults", as upstream reads it."""

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: ({} if v is None and k in cls.model_fields and k not in _SCALAR_NULLABLE else v)
                    for k, v in data.items()}
        return data


_SCALAR_NULLABLE = {"client_ca_file", "storage", "ca_file", "cert_file", "key_file", "traces_endpoint", "filename"}


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # when set, clients must present a certificate signed by it

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class ServerTLS(Model):
    """``tls:`` on a server endpoint: serve TLS; with ``client_ca_file``, require client certificates."""

    cert_file: ReadableFile
    key_file: ReadableFile
    client_ca_file: ReadableFile | None = None

    def settings(self) -> TLSSettings:
        return TLSSettings(self.cert_file, self.key_file, self.client_ca_file)


class ClientTLS(Model):
    """``tls:`` on an exporter: verify the server (``ca_file``), present a client certificate, or ``insecure``."""

    insecure: bool = False
    ca_file: ReadableFile | None = None
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None

    @model_validator(mode="after")
    def _pairs(self) -> ClientTLS:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file both set or neither")
        return self


class Auth(Model):
    """``auth: {authenticator: bearertokenauth}``: the id of an authenticator extension."""

    authenticator: str


class BearerToken:
    """Constant-time check of ``Authorization: Bearer <token>``: every endpoint of both hosts that takes a token
    (OTLP receivers, feedback, Prometheus) checks it with this; in the collector it is the running
    ``bearertokenauth`` extension."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def check(self, header: str | None) -> bool:
        return hmac.compare_digest((header or "").encode(), self._expected)

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


# -- reading the environment ---------------------------------------------------------------------------------

def from_env(model: type[M], environ: Mapping[str, str], overrides: Mapping[str, Any]) -> M:
    data: dict[str, Any] = {}
    sources: dict[tuple[str, ...], EnvVar] = {}
    raw_text: dict[tuple[str, ...], str] = {}
    for var in model.ENV:
        raw = environ.get(var.name)
        if raw is None or raw.strip() == "":
            continue
        text = raw.strip()
        try:
            value = var.convert(text) if var.convert is not None else text
        except ValueError as error:
            raise ConfigError("environment", var.name, str(error), text) from None
        path = tuple(var.key.split("."))
        _put(data, path, value)
        sources[path], raw_text[path] = var, text
    for key, value in overrides.items():
        data[key] = value
        for path in [p for p in sources if p[0] == key]:
            del sources[path]
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        loc = tuple(str(part) for part in first["loc"])
        for path, var in sources.items():
            if loc[:len(path)] == path:
                expected, _ = expected_of(model, first)
                raise ConfigError("environment", var.name, expected, raw_text[path]) from None
        raise config_error(model, error, model.__name__) from None


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    old = data.get(path[-1])
    data[path[-1]] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value


def config_error(model: type[BaseModel], error: ValidationError, source: str) -> ConfigError:
    first = error.errors(include_url=False)[0]
    expected, got = expected_of(model, first)
    return ConfigError(source, ".".join(str(p) for p in first["loc"]) or model.__name__, expected, got)


# -- what a bad value should have been -----------------------------------------------------------------------

_EXPECTED = {
    "missing": "a value (this key is required)",
    "greater_than": "{noun} > {gt}",
    "greater_than_equal": "{noun} >= {ge}",
    "less_than": "{noun} < {lt}",
    "less_than_equal": "{noun} <= {le}",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "literal_error": "one of {expected}",
    "dict_type": "a mapping of keys to values",
    "model_type": "a mapping of settings",
    "model_attributes_type": "a mapping of settings",
    "list_type": "a list",
    "too_short": "at least {min_length} item(s)",
}


def expected_of(model: type[BaseModel], err: Mapping[str, Any]) -> tuple[str, Any]:
    """(what was expected, the value given) for one pydantic error at ``err["loc"]`` of ``model``."""
    loc = tuple(err["loc"])
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        parent = model_at(model, loc[:-1])
        return f"one of the keys {', '.join(parent.model_fields) if parent else ''}", loc[-1] if loc else got
    if kind in _EXPECTED:
        ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in err.get("ctx", {}).items()}
        expected = _EXPECTED[kind].format(noun=_noun(model, loc), **ctx)
    else:
        message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
        expected = message[:1].lower() + message[1:]
    # A check on a whole section (input: its mapping) names what it wants; echoing the mapping adds noise.
    if kind == "missing" or isinstance(got, Mapping):
        got = None
    return expected, got


def model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
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
        current = unwrap(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def unwrap(annotation: Any) -> Any:
    """The type a key holds, under ``Optional``, ``Annotated`` and containers."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return unwrap(args[0]) if len(args) == 1 else annotation
    if origin is dict:
        return unwrap(typing.get_args(annotation)[1])
    if origin in (list, frozenset, set, tuple):
        return unwrap(typing.get_args(annotation)[0])
    if origin is typing.Annotated:
        return unwrap(typing.get_args(annotation)[0])
    return annotation


def _noun(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """What kind of number the key at ``loc`` takes, for range messages."""
    parent = model_at(model, loc[:-1]) if loc else None
    info = parent.model_fields.get(str(loc[-1])) if parent is not None else None
    if info is None:
        return "a number"
    if any(getattr(m, "func", None) is parse_duration for m in info.metadata):
        return "a duration"
    return "an integer" if unwrap(info.annotation) is int else "a number"
