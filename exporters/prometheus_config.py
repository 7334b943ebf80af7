"""The Prometheus endpoint's settings, one pydantic model for both hosts.

In-process, ``PrometheusSettings.from_env()`` reads the variables in ``PrometheusSettings.ENV``
(``flowtel.configure(prometheus=PrometheusSettings(...))`` builds it in code); the collector reads a
``prometheus`` exporter's keys into ``PrometheusExporterConfig``, the same model with the collector's
default endpoint, ``auth`` (the token comes from a ``bearertokenauth`` extension) and the keys about
received OTLP metrics (``ReceivedMetricsConfig``, read by ``exporters/received_metrics``).

Names from before the hosts shared this model (``host``, ``port``, ``tls=TLSSettings(...)``) are still
accepted in code and ``host`` / ``port`` still readable; a config file writes ``endpoint: host:port``.

Host-free (only ``flowtel.settings``), so the collector's config and the exporter both import it without
importing each other.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field

from flowtel.settings import (
    Auth,
    ConfigError,
    Endpoint,
    EnvVar,
    Model,
    PositiveDuration,
    ServerTLS,
    TLSSettings,
    join_endpoint,
    split_endpoint,
)
from flowtel.settings import from_env as read_env

__all__ = ["PrometheusExporterConfig", "PrometheusSettings", "ReceivedMetricsConfig",
           "ResourceToTelemetryConversion"]

_HOST_VAR, _PORT_VAR = "OTEL_EXPORTER_PROMETHEUS_HOST", "OTEL_EXPORTER_PROMETHEUS_PORT"
_TLS_VARS = ("FLOWTEL_PROMETHEUS_TLS_CERT_FILE", "FLOWTEL_PROMETHEUS_TLS_KEY_FILE")
_CA_VAR = "FLOWTEL_PROMETHEUS_TLS_CLIENT_CA_FILE"
_HOST_EXPECTED = "a host name or IP address (no scheme, port or path), e.g. 0.0.0.0 or ::1"


def _host(text: str) -> str:
    """``OTEL_EXPORTER_PROMETHEUS_HOST``: a host only (IPv6 with or without brackets), checked by the endpoint
    parser as the endpoint it becomes, so a bad host is this variable's error, not the endpoint's."""
    try:
        host, _ = split_endpoint(join_endpoint(text.strip("[]"), 0))
    except ValueError:
        raise ValueError(_HOST_EXPECTED) from None
    if not host or ("[" in host or "]" in host):
        raise ValueError(_HOST_EXPECTED)
    if ":" in host:  # only an IPv6 address has colons (a port belongs in OTEL_EXPORTER_PROMETHEUS_PORT)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(_HOST_EXPECTED) from None
    return host


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError("a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError("a port number 0-65535")
    return port


P = TypeVar("P", bound="PrometheusSettings")
#: The old dataclass's fields in order, for positional arguments.
_POSITIONAL = ("host", "port", "bearer_token", "tls")


class PrometheusSettings(Model):
    """The in-process Prometheus endpoint (``flowtel.configure``): where it listens, TLS, a bearer token."""

    ENV: ClassVar[tuple[EnvVar, ...]] = (
        # The endpoint's two parts, as the OpenTelemetry SDK's variables have them; ``_legacy_names`` joins them.
        EnvVar(_HOST_VAR, "host", _host),
        EnvVar(_PORT_VAR, "port", _port),
        EnvVar("FLOWTEL_PROMETHEUS_BEARER_TOKEN", "bearer_token"),
        EnvVar(_TLS_VARS[0], "tls.cert_file"),
        EnvVar(_TLS_VARS[1], "tls.key_file"),
        EnvVar(_CA_VAR, "tls.client_ca_file"),
    )
    IN_PROCESS_ONLY: ClassVar[Mapping[str, str]] = {
        "bearer_token": "the collector takes the token from a bearertokenauth extension named in auth",
    }
    #: The old dataclass's fields, the endpoint's parts (and the keys its two variables set).
    CODE_NAMES: ClassVar[Mapping[str, str]] = {"host": "endpoint", "port": "endpoint"}

    #: Address of the ``/metrics`` endpoint; port 0 picks a free one.
    endpoint: Endpoint = "127.0.0.1:9464"
    #: Serve TLS; none: plaintext.
    tls: ServerTLS | None = None
    #: Require ``Authorization: Bearer <token>``; none: no token needed.
    bearer_token: str | None = None

    def __init__(self, *args: Any, **data: Any) -> None:
        """Keys as keywords; positional arguments are the old dataclass's, in its order: host, port, bearer_token,
        tls (``PrometheusSettings("0.0.0.0", 9100)`` as before)."""
        if len(args) > len(_POSITIONAL):
            raise TypeError(f"PrometheusSettings takes at most {len(_POSITIONAL)} positional arguments "
                            f"({', '.join(_POSITIONAL)}), {len(args)} given")
        for name, value in zip(_POSITIONAL, args, strict=False):  # fewer arguments than names
            if name in data:
                raise TypeError(f"PrometheusSettings got {name} both by position and by keyword")
            data[name] = value
        super().__init__(**data)

    @classmethod
    def from_env(cls: type[P], environ: Mapping[str, str] | None = None, **overrides: Any) -> P:
        """The model from ``ENV``'s variables (blank ones are unset), then ``overrides`` (keys) on top.

        TLS needs both the certificate and its key: one without the other is an error naming them, as is a client
        CA without them. An ``endpoint`` (``tls``) override replaces the host and port (TLS) variables."""
        env = dict(os.environ if environ is None else environ)
        if "endpoint" in overrides:
            env.pop(_HOST_VAR, None)
            env.pop(_PORT_VAR, None)
        cert, key, ca = ((env.get(name) or "").strip() for name in (*_TLS_VARS, _CA_VAR))
        if "tls" in overrides:
            cert = key = ca = ""
        if bool(cert) != bool(key):
            raise ConfigError("environment", f"{_TLS_VARS[0]}/_KEY_FILE", "both set or neither",
                              {"cert": cert or None, "key": key or None})
        if ca and not cert:
            raise ConfigError("environment", _CA_VAR, f"set with {_TLS_VARS[0]} and _KEY_FILE (it requires client "
                              "certificates on the TLS they turn on)", ca)
        return read_env(cls, env, overrides)

    @classmethod
    def renamed(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``host`` / ``port`` (the dataclass's fields, and the variables' keys) into ``endpoint``; a ``TLSSettings``
        into ``tls``'s keys. A host or port given replaces that part of ``endpoint`` (or of its default)."""
        tls = data.get("tls")
        if isinstance(tls, TLSSettings):
            data["tls"] = {"cert_file": tls.cert_file, "key_file": tls.key_file, "client_ca_file": tls.client_ca_file}
        if "host" in data or "port" in data:
            base = data.get("endpoint", cls.model_fields["endpoint"].default)
            try:
                host, port = split_endpoint(base)
            except (TypeError, ValueError, AttributeError):
                data.pop("host", None)
                data.pop("port", None)
                return data  # the endpoint's own error says what is wrong with it
            host = data.pop("host", host)
            port = data.pop("port", port)
            if isinstance(port, str) and port.isascii() and port.isdigit():
                port = int(port)
            if not isinstance(host, str):
                raise ValueError(f"host: a string, got {host!r}")
            if isinstance(port, bool) or not isinstance(port, int):
                raise ValueError(f"port: an integer, got {port!r}")
            data["endpoint"] = join_endpoint(_host(host), port)
        return data  # both code names are done: two of them make one key, which the generic move cannot

    # Read-only views under the names from before the model was shared.
    @property
    def host(self) -> str:
        return split_endpoint(self.endpoint)[0]

    @property
    def port(self) -> int:
        return split_endpoint(self.endpoint)[1]


class ResourceToTelemetryConversion(Model):
    #: Copy every resource attribute onto every series of its metrics (upstream key).
    enabled: bool = False


class ReceivedMetricsConfig(Model):
    """The ``prometheus`` exporter's keys about received metrics (upstream names where upstream has them)."""

    #: Series not updated for this long stop being exposed (upstream default 5m).
    metric_expiration: PositiveDuration = 300.0
    resource_to_telemetry_conversion: ResourceToTelemetryConversion = ResourceToTelemetryConversion()
    #: Resource attributes copied onto every series (the Prometheus server's OTLP receiver has this key).
    promote_resource_attributes: list[str] = Field(default_factory=list)
    #: A received metric that flowtel also derives from spans: ``drop`` it (counted), or keep it as
    #: ``duplicate_prefix`` + its name.
    duplicate_derived_metrics: Literal["drop", "prefix"] = "drop"
    duplicate_prefix: str = Field("received_", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: Label sets per received metric before new ones fold into the overflow series.
    cardinality_limit: int = Field(2000, ge=1)
    #: Distinct received metric families; metrics past it are dropped (counted).
    max_metrics: int = Field(1000, ge=1)
    #: Label values longer than this (UTF-8 bytes) are cut to it (the derived metrics' limit and default).
    label_value_max_bytes: int = Field(256, ge=16)
    #: Attributes of one point (after the resource's and scope's labels) kept as labels; the rest are dropped,
    #: and the point counted as cut. With ``label_value_max_bytes`` (which also cuts attribute names) this bounds
    #: one stored series in bytes, as the OpenTelemetry SDK's attribute count limit (128) bounds a data point.
    label_count_limit: int = Field(128, ge=1)


class _CollectorEndpoint(PrometheusSettings):
    """The collector's endpoint keys: its default address (as it always was), and the token from ``auth``."""

    endpoint: Endpoint = "localhost:9464"
    #: ``{authenticator: <bearertokenauth id>}``: require its token; none: no token needed.
    auth: Auth | None = None


class PrometheusExporterConfig(ReceivedMetricsConfig, _CollectorEndpoint):
    """The collector's ``prometheus`` exporter: where the endpoint listens (its keys come first), then the keys
    about received metrics."""
