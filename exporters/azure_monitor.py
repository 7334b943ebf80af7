"""Application Insights through ``azure-monitor-opentelemetry-exporter``, with every final loss counted.

Host-neutral pieces, used by ``flowtel.configure()`` in-process and by the collector's
``azuremonitor`` exporter:

- ``AzureMonitorSettings``: one settings model for both hosts, keyed as the collector's config file
  (``from_env()`` reads ``APPLICATIONINSIGHTS_CONNECTION_STRING`` and the ``FLOWTEL_AZURE_*``
  variables into it; the collector's ``AzureMonitorExporterConfig`` adds the keys only it has);
- ``build_trace_exporter()`` / ``build_metric_exporter()``: the Azure exporters built from them,
  with loss accounting attached; the trace exporter is wrapped in ``AzureMonitorSpanExporter``,
  which also presents a local-root flow span as a Request row;
- ``account()``: attach loss accounting to an Azure exporter built elsewhere.

What the Azure exporter does with a batch (1.0.0b58, ``export/_base.py``) and how it is counted:

======================================  =====================================  ============================
ingestion answers                       exporter                               flowtel counts
======================================  =====================================  ============================
200                                     done; then drains up to 10 stored      ``sent``
                                        blobs whose lease has expired
206 with per-item errors                retryable items (408/429/500/502/      ``sent`` for accepted items;
                                        503/504, 401/403) to disk, others      the others as lost
                                        dropped; result FAILED_NOT_RETRYABLE   (``rejected``/``sampled_out``)
429/500/502/503/504/408/401/403,        (500/503/504 and Retry-After are       nothing while on disk; a
connection refused, read timeout        first retried in the HTTP pipeline)    failed disk write is lost
                                        batch to disk; FAILED_RETRYABLE        (``storage_full``, ...)
400/404/other, 402/439, exceptions      dropped; FAILED_NOT_RETRYABLE          lost (``rejected``,
                                                                               ``quota``, ``error``)
======================================  =====================================  ============================

``export()`` itself returns only SUCCESS or FAILURE, both for "stored on disk" and for
"dropped", so the accounting watches the exporter's ``_transmit`` result, the response of each
``track`` call and each write to its local storage (private API, all of it reached through
``_azure_exporter_private``). A lost span is counted in
``flowtel_spans_dropped_total{reason="azuremonitor_<reason>"}`` and
``otelcol_exporter_send_failed_spans_total{exporter,reason}``; a lost metric point in
``otelcol_exporter_send_failed_metric_points_total{exporter,reason}``; each reason is logged once.
Delivered items are counted in ``otelcol_exporter_sent_spans_total`` /
``otelcol_exporter_sent_metric_points_total``. Blobs the exporter's storage deletes after
``storage_retention_period`` (48 h) are not seen by the accounting.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlparse

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from pydantic import Field, ValidationInfo, field_validator

from flowtel._fork import reinit_after_fork
from flowtel._log import logger, warn_once
from flowtel.selfmetrics import SelfMetrics
from flowtel.settings import ConfigError, EnvVar, Model, PositiveDuration, env_bool, env_duration, from_env

from . import _azure_exporter_private as private

EXPORTER_ID = "azuremonitor"
#: The variables the Azure exporter reads itself (process-wide) to switch off the telemetry it sends about itself.
SELF_TELEMETRY_SWITCHES = ("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "APPLICATIONINSIGHTS_SDKSTATS_DISABLED")
#: The name the Azure exporter registers for ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``.
ENTRY_POINT_NAME = "azure_monitor_opentelemetry_exporter"
#: The values of ``credential`` (a credential object is ``token_credential``, in code only).
CREDENTIALS = ("none", "managed_identity", "default")
#: Loss reasons, as ``reason`` label values.
LOSS_REASONS = ("rejected", "quota", "sampled_out", "storage_full", "storage_disabled", "storage_error", "error")

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def parse_connection_string(value: str, source: str = "AzureMonitorSettings",
                            key: str = "connection_string") -> dict[str, str]:
    """``Key=value;...`` as a lower-cased dict, checked the way the exporter checks it, plus the endpoint URLs."""
    expected = "InstrumentationKey=<uuid>[;IngestionEndpoint=https://...][;...]"
    try:
        pairs = dict(part.split("=", 1) for part in value.strip().strip(";").split(";") if part.strip())
    except ValueError:
        raise ConfigError(source, key, expected, value) from None
    parsed = {k.strip().lower(): v.strip() for k, v in pairs.items()}
    if not _UUID.match(parsed.get("instrumentationkey", "")):
        raise ConfigError(source, key, "InstrumentationKey=<a lowercase uuid>", value)
    if parsed.get("authorization", "ikey").lower() != "ikey":
        raise ConfigError(source, key, "Authorization=ikey or no Authorization (use a credential for AAD)", value)
    for name in ("ingestionendpoint", "liveendpoint"):
        if name in parsed:
            url = urlparse(parsed[name])
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ConfigError(source, key, f"{name} as an http(s) URL", parsed[name])
    return parsed


def _connection_string(text: str) -> str:
    """APPLICATIONINSIGHTS_CONNECTION_STRING, checked as it is read so its error says what was expected verbatim."""
    try:
        parse_connection_string(text)
    except ConfigError as error:
        raise ValueError(error.expected) from None
    return text


_NEEDS_CONNECTION = ("a connection string, InstrumentationKey=<uuid>;IngestionEndpoint=https://... "
                     "(or APPLICATIONINSIGHTS_CONNECTION_STRING in the environment)")
_NO_TOKEN_OVER_HTTP = "an https IngestionEndpoint (AAD tokens are never sent over http)"

#: Names from before the model was shared, accepted in code: old name -> key.
_CODE_NAMES = {"credential_kind": "credential", "storage_retention_s": "storage_retention",
           "storage_retry_interval_s": "storage_retry_interval", "timeout_s": "timeout",
           "read_timeout_s": "read_timeout", "retry_backoff_s": "retry_backoff",
           "metric_export_interval_s": "metric_export_interval"}


class AzureMonitorSettings(Model):
    """Where and how to send to Application Insights: in-process (``flowtel.configure(azure_monitor=...)``,
    ``from_env()``) and, with the keys only a collector has, the collector's ``azuremonitor`` exporter
    (``AzureMonitorExporterConfig``). Keys are the config file's; durations as there (``30s``) or seconds.

    Names from before the two hosts shared it (``credential_kind``, ``storage_retry_interval_s``,
    ``timeout_s``, ``credential=<a token credential>``, ...) are still accepted in code and still readable.
    """

    ENV: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("APPLICATIONINSIGHTS_CONNECTION_STRING", "connection_string", _connection_string),
        EnvVar("FLOWTEL_AZURE_CREDENTIAL", "credential", str.lower),
        EnvVar("AZURE_CLIENT_ID", "client_id"),
        EnvVar("FLOWTEL_AZURE_STORAGE_DIRECTORY", "storage_directory"),
        EnvVar("FLOWTEL_AZURE_DISABLE_OFFLINE_STORAGE", "disable_offline_storage", env_bool),
        EnvVar("FLOWTEL_AZURE_STORAGE_MAX_SIZE", "storage_max_size"),
        EnvVar("FLOWTEL_AZURE_STORAGE_RETRY_INTERVAL", "storage_retry_interval", env_duration),
        EnvVar("FLOWTEL_AZURE_TIMEOUT", "timeout", env_duration),
        EnvVar("FLOWTEL_AZURE_READ_TIMEOUT", "read_timeout", env_duration),
        EnvVar("FLOWTEL_AZURE_MAX_ENVELOPES_PER_SECOND", "max_envelopes_per_second"),
        EnvVar("FLOWTEL_AZURE_ROOT_FLOWS_AS_REQUESTS", "root_flows_as_requests", env_bool),
        # The exporter's own switches: either one "true" turns its self-telemetry off (from_env skips other values).
        *(EnvVar(var, "self_telemetry", lambda text: False) for var in SELF_TELEMETRY_SWITCHES),
    )
    IN_PROCESS_ONLY: ClassVar[Mapping[str, str]] = {
        "token_credential": "a credential object is made in code; in a config file use credential: "
                            "managed_identity or default",
        "storage_directory": "the collector keeps offline storage in the file_storage extension named by storage",
    }
    CODE_NAMES: ClassVar[Mapping[str, str]] = _CODE_NAMES

    #: ``InstrumentationKey=...;IngestionEndpoint=...``; none: APPLICATIONINSIGHTS_CONNECTION_STRING (in-process
    #: through ``from_env()``; the collector reads it when the config file has none).
    connection_string: str | None = Field(None, validate_default=True)
    #: AAD / Entra ID: "managed_identity" (with ``client_id`` for a user-assigned identity) or "default"
    #: (azure-identity's DefaultAzureCredential); "none": no token, or the exporter's own
    #: APPLICATIONINSIGHTS_AUTHENTICATION_STRING. Never with an http IngestionEndpoint.
    credential: Literal["none", "managed_identity", "default"] = "none"
    #: Client id of a user-assigned managed identity (AZURE_CLIENT_ID).
    client_id: str | None = None
    #: Send spans / derived metrics.
    traces: bool = True
    metrics: bool = True
    disable_offline_storage: bool = False
    storage_max_size: int = Field(50 * 1024 * 1024, ge=1)
    #: How long a stored batch waits before it is sent again (its lease).
    storage_retry_interval: PositiveDuration = 60.0
    #: How long a stored batch is kept; older ones are deleted by the exporter, uncounted.
    storage_retention: PositiveDuration = 48 * 3600.0
    #: How often metrics are sent. In-process, when not set, OTEL_METRIC_EXPORT_INTERVAL (default 60 s) decides.
    metric_export_interval: PositiveDuration = 60.0
    #: Connect and read timeouts of one request.
    timeout: PositiveDuration = 10.0
    read_timeout: PositiveDuration = 30.0
    #: Retries inside the HTTP pipeline (azure-core: 500/503/504 and any answer with Retry-After) before
    #: the batch goes to disk; none keeps azure-core's (10 in all, 3 per status, backoff 0.8 s doubling).
    #: Keep them short when restarts must not catch a batch mid-retry.
    retry_total: int | None = Field(None, ge=0)
    retry_backoff: PositiveDuration | None = None
    #: Client-side cap on envelopes per second (overflow goes to disk); 0 turns it off.
    max_envelopes_per_second: int = Field(10_000, ge=0)
    #: Present a flow span that is its trace's local root (no parent, or a remote one) as a Request row.
    root_flows_as_requests: bool = True
    #: The exporter's statsbeat and SDK stats; False sets the exporter's process-wide switches
    #: (SELF_TELEMETRY_SWITCHES) when an exporter is built.
    self_telemetry: bool = True
    #: In-process: a token credential (``azure.identity``) for AAD / Entra ID, passed through to the exporter.
    token_credential: Any = Field(None, repr=False, exclude=True)
    #: In-process: where failed batches wait for a retry; ``traces/`` and ``metrics/`` below it. None: the
    #: exporter's default under the temp directory. The collector sets it from its ``storage`` extension.
    storage_directory: str | None = None

    @classmethod
    def renamed(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The old names' values as the keys take them: ``credential`` held the credential object,
        ``credential_kind`` "" meant none, ``metric_export_interval_s`` None meant "the SDK's variable"."""
        if "credential" in data and (data["credential"] is None or hasattr(data["credential"], "get_token")):
            credential = data.pop("credential")
            if credential is not None:
                data["token_credential"] = credential
        if data.get("credential_kind") == "":
            data["credential_kind"] = "none"
        if "metric_export_interval_s" in data and data["metric_export_interval_s"] is None:
            del data["metric_export_interval_s"]
        return super().renamed(data)

    @field_validator("connection_string")
    @classmethod
    def _connection(cls, value: str | None) -> str:
        if value is None:
            raise ValueError(_NEEDS_CONNECTION)
        try:
            parse_connection_string(value)
        except ConfigError as error:
            raise ValueError(f"a connection string with {error.expected}") from None
        return value

    @field_validator("credential")
    @classmethod
    def _token_needs_https(cls, value: str, info: ValidationInfo) -> str:
        if value != "none" and _plain_http(info.data.get("connection_string")):
            raise ValueError(_NO_TOKEN_OVER_HTTP)
        return value

    @field_validator("token_credential")
    @classmethod
    def _token_credential(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            if not hasattr(value, "get_token"):
                raise ValueError("a token credential (with get_token)")
            if _plain_http(info.data.get("connection_string")):
                raise ValueError(_NO_TOKEN_OVER_HTTP)
        return value

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """The settings from ``ENV``'s variables, then ``overrides`` (keys, or the old names) on top."""
        env = os.environ if environ is None else environ
        # A self-telemetry switch counts only when "true", as the exporter reads it; "false" leaves the other one be.
        env = {k: v for k, v in env.items() if k not in SELF_TELEMETRY_SWITCHES or v.strip().lower() == "true"}
        return from_env(cls, env, overrides)

    @property
    def instrumentation_key(self) -> str:
        return self._parsed()["instrumentationkey"]

    @property
    def ingestion_endpoint(self) -> str:
        return self._parsed().get("ingestionendpoint", "https://dc.services.visualstudio.com")

    def _parsed(self) -> dict[str, str]:
        return parse_connection_string(self.connection_string or "")

    # Read-only views under the names from before the model was shared.
    @property
    def credential_kind(self) -> str:
        return "" if self.credential == "none" else self.credential

    @property
    def storage_retention_s(self) -> float:
        return self.storage_retention

    @property
    def storage_retry_interval_s(self) -> float:
        return self.storage_retry_interval

    @property
    def timeout_s(self) -> float:
        return self.timeout

    @property
    def read_timeout_s(self) -> float:
        return self.read_timeout

    @property
    def retry_backoff_s(self) -> float | None:
        return self.retry_backoff

    @property
    def metric_export_interval_s(self) -> float | None:
        """None when not set: in-process the SDK's reader then reads OTEL_METRIC_EXPORT_INTERVAL."""
        return self.metric_export_interval if "metric_export_interval" in self.model_fields_set else None

    @staticmethod
    def configured(environ: Mapping[str, str] | None = None) -> bool:
        env = os.environ if environ is None else environ
        return bool((env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or "").strip())

    def exporter_kwargs(self, signal: str) -> dict[str, Any]:
        """Keyword arguments for ``AzureMonitorTraceExporter`` / ``AzureMonitorMetricExporter``."""
        kwargs: dict[str, Any] = {
            "connection_string": self.connection_string,
            "disable_offline_storage": self.disable_offline_storage,
            "storage_max_size": self.storage_max_size,
            "storage_retention_period": self.storage_retention,
            "storage_min_retry_interval": self.storage_retry_interval,
            "timeout": self.timeout,
            "read_timeout": self.read_timeout,
            "max_envelopes_per_second": self.max_envelopes_per_second,
        }
        if self.storage_directory is not None:
            kwargs["storage_directory"] = os.path.join(self.storage_directory, signal)
        if self.retry_total is not None:
            kwargs["retry_total"] = self.retry_total
        if self.retry_backoff is not None:
            kwargs["retry_backoff_factor"] = self.retry_backoff
        credential = self.build_credential()
        if credential is not None:
            kwargs["credential"] = credential
        return kwargs

    def build_credential(self) -> Any:
        if self.token_credential is not None:
            return self.token_credential
        if self.credential == "managed_identity":
            from azure.identity import ManagedIdentityCredential

            return ManagedIdentityCredential(client_id=self.client_id) if self.client_id \
                else ManagedIdentityCredential()
        if self.credential == "default":
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential(managed_identity_client_id=self.client_id) if self.client_id \
                else DefaultAzureCredential()
        return None  # the exporter still honours APPLICATIONINSIGHTS_AUTHENTICATION_STRING itself

    def apply_self_telemetry_switch(self) -> None:
        if not self.self_telemetry:
            for var in SELF_TELEMETRY_SWITCHES:
                os.environ[var] = "true"


S = TypeVar("S", bound=AzureMonitorSettings)


def _plain_http(connection_string: Any) -> bool:
    """The connection string's IngestionEndpoint is http: (none given: Azure's https default)."""
    if not isinstance(connection_string, str):
        return False
    try:
        return parse_connection_string(connection_string).get("ingestionendpoint", "").startswith("http:")
    except ConfigError:
        return False


# -- loss accounting ------------------------------------------------------------------------------------------


@dataclass
class _Call:
    depth: int = 0
    track: tuple[list[Any], Any] | None = None  # (envelopes sent, TrackResponse or the exception raised)
    transmits: int = 0


class LossAccounting:
    """Counts what one Azure exporter delivers and what it finally loses; see the module docstring."""

    def __init__(self, exporter: Any, self_metrics: SelfMetrics | None, exporter_id: str = EXPORTER_ID,
                 logs: bool = False) -> None:
        """``logs``: a log exporter's, whose every item is a log record (its rows look like span events')."""
        self.exporter = exporter
        self.self_metrics = self_metrics
        self.exporter_id = exporter_id
        self.logs = logs
        self._local = threading.local()
        self.attached = False
        missing = private.accounting_hooks_missing(exporter)
        if missing:
            warn_once("azuremonitor:accounting", "this azure-monitor-opentelemetry-exporter version has no "
                      "%s; flowtel cannot count what it loses", "/".join(missing))
            return
        private.wrap_transmit(exporter, self._watch_transmit)
        private.wrap_track(exporter, self._watch_track)
        storage = private.offline_storage(exporter)
        if storage is not None:
            private.wrap_storage_put(storage, self._watch_storage_put)
        if self_metrics is not None:  # the series exist before the first loss
            for reason in LOSS_REASONS:
                self_metrics.add("otelcol.exporter.send_failed.spans", 0, exporter_id, reason)
                self_metrics.add("otelcol.exporter.send_failed.metric_points", 0, exporter_id, reason)
            self_metrics.add("otelcol.exporter.sent.spans", 0, exporter_id)
            self_metrics.add("otelcol.exporter.sent.metric_points", 0, exporter_id)
            if logs:
                for reason in LOSS_REASONS:
                    self_metrics.add("otelcol.exporter.send_failed.log_records", 0, exporter_id, reason)
                self_metrics.add("otelcol.exporter.sent.log_records", 0, exporter_id)
        self.attached = True

    def _call(self) -> _Call:
        call = getattr(self._local, "call", None)
        if call is None:
            call = self._local.call = _Call()
        return call

    def _watch_transmit(self, transmit: Callable[..., Any]) -> Callable[..., Any]:
        def _transmit(envelopes: list[Any], *args: Any, **kwargs: Any) -> Any:
            call = self._call()
            outermost = call.depth == 0
            if outermost:
                call.track = None
                call.transmits += 1
            before = list(envelopes) if outermost else []
            call.depth += 1
            try:
                result = transmit(envelopes, *args, **kwargs)
            finally:
                call.depth -= 1
            if outermost:
                try:
                    self._settle(before, envelopes, result, call.track)
                except Exception:  # accounting must never break an export
                    logger.exception("flowtel: Azure Monitor loss accounting failed")
            return result

        return _transmit

    def _watch_track(self, track: Callable[..., Any]) -> Callable[..., Any]:
        def _track(body: list[Any], *args: Any, **kwargs: Any) -> Any:
            call = self._call()
            try:
                response = track(body, *args, **kwargs)
            except Exception as error:
                call.track = (list(body), error)
                raise
            call.track = (list(body), private.track_answer(response))
            return response

        return _track

    def _watch_storage_put(self, put: Callable[..., Any]) -> Callable[..., Any]:
        def _put(data: list[Any], *args: Any, **kwargs: Any) -> Any:
            result = put(data, *args, **kwargs)
            reason = private.storage_loss_reason(result)
            if reason is not None:
                self._lost(data, reason,
                           f"the exporter could not store a failed batch ({private.result_name(result)})")
            return result

        return _put

    def _settle(self, before: list[Any], sent: list[Any], result: Any, track: tuple[list[Any], Any] | None) -> None:
        from azure.core.exceptions import HttpResponseError

        outcome = private.result_name(result)
        storage = private.offline_storage(self.exporter)
        deferred = before[len(sent):]  # the rate limiter kept these back (and stored them, when it could)
        if deferred and storage is None:
            self._lost(deferred, "storage_disabled", "rate-limited envelopes with offline storage disabled")
        if outcome == "SUCCESS":
            if track is not None:
                self._sent(track[0])
            return
        if outcome == "FAILED_RETRYABLE":
            if storage is None:
                self._lost(sent, "storage_disabled", "a retryable failure with offline storage disabled")
            return  # the exporter stores the batch (a failed write is counted by _put) or re-leases its blob
        body, answer = track if track is not None else (sent, None)
        errors = private.partial_errors(answer)
        if errors:  # 206: accepted items, dropped items, retryable items on disk
            failed = set()
            for index, status, message in errors:
                if index is None or not 0 <= index < len(body):
                    continue
                failed.add(index)
                if message == private.SAMPLED_OUT_MESSAGE:
                    self._lost([body[index]], "sampled_out", "ingestion sampled items out")
                elif status in private.RETRYABLE_STATUS_CODES:
                    if storage is None:
                        self._lost([body[index]], "storage_disabled", "partial success with offline storage off")
                else:
                    self._lost([body[index]], "rejected", f"ingestion rejected items ({status}: {message[:200]})")
            self._sent([item for i, item in enumerate(body) if i not in failed])
        elif isinstance(answer, HttpResponseError):
            status = answer.status_code
            reason = ("quota" if status in private.THROTTLE_STATUS_CODES else "error" if status in (307, 308)
                      else "rejected")
            self._lost(body, reason, f"ingestion answered {status}")
        else:
            self._lost(body, "error", f"the exporter failed ({type(answer).__name__ if answer else 'no request'})")

    def export_failed_before_transmit(self, items: int, what: str) -> None:
        """The exporter failed a batch before sending it (e.g. could not convert a span)."""
        if self.self_metrics is not None and items and what == "span":
            self.self_metrics.dropped(f"{EXPORTER_ID}_error", items)
            self.self_metrics.add("otelcol.exporter.send_failed.spans", items, self.exporter_id, "error")
        warn_once(f"{self.exporter_id}:error:convert", "flowtel: the Azure Monitor exporter failed %d %ss before "
                  "sending them; counted as lost (reason: error)", items, what)

    @property
    def transmits(self) -> int:
        return self._call().transmits

    def _sent(self, items: Iterable[Any]) -> None:
        if self.self_metrics is None:
            return
        if self.logs:
            self.self_metrics.add("otelcol.exporter.sent.log_records", len(list(items)), self.exporter_id)
            return
        spans = metrics = 0
        for item in items:
            kind = private.item_kind(item)
            spans += kind == "span"
            metrics += kind == "metric"
        if spans:
            self.self_metrics.add("otelcol.exporter.sent.spans", spans, self.exporter_id)
        if metrics:
            self.self_metrics.add("otelcol.exporter.sent.metric_points", metrics, self.exporter_id)

    def _lost(self, items: Sequence[Any], reason: str, why: str) -> None:
        spans = metrics = 0
        for item in items:
            kind = private.item_kind(item)
            spans += kind == "span"
            metrics += kind == "metric"
        warn_once(f"{self.exporter_id}:lost:{reason}", "flowtel: Azure Monitor exporter %r lost telemetry (reason: "
                  "%s): %s; counted in otelcol_exporter_send_failed_*_total", self.exporter_id, reason, why)
        if self.self_metrics is None:
            return
        if self.logs:
            self.self_metrics.add("otelcol.exporter.send_failed.log_records", len(items), self.exporter_id, reason)
            self.self_metrics.dropped(f"{EXPORTER_ID}_{reason}", len(items), "log_records")
            return
        if spans:
            self.self_metrics.dropped(f"{EXPORTER_ID}_{reason}", spans)
            self.self_metrics.add("otelcol.exporter.send_failed.spans", spans, self.exporter_id, reason)
        if metrics:
            self.self_metrics.add("otelcol.exporter.send_failed.metric_points", metrics, self.exporter_id, reason)


def account(exporter: Any, self_metrics: SelfMetrics | None, exporter_id: str = EXPORTER_ID,
            logs: bool = False) -> LossAccounting:
    """Attach loss accounting to an ``AzureMonitorTraceExporter`` / ``AzureMonitorMetricExporter`` /
    ``AzureMonitorLogExporter`` (``logs=True``)."""
    accounting = LossAccounting(exporter, self_metrics, exporter_id, logs)
    exporter._flowtel_accounting = accounting
    return accounting


# -- the span exporter ----------------------------------------------------------------------------------------


def _is_root_flow(span: ReadableSpan) -> bool:
    return (span.kind is SpanKind.INTERNAL and (span.parent is None or span.parent.is_remote)
            and (span.attributes or {}).get("gen_ai.operation.name") == "invoke_workflow")


def _as_request(span: ReadableSpan) -> ReadableSpan:
    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=span.attributes, events=span.events, links=span.links, kind=SpanKind.SERVER, status=span.status,
        start_time=span.start_time, end_time=span.end_time, instrumentation_scope=span.instrumentation_scope,
    )


class AzureMonitorSpanExporter(SpanExporter):
    """Thin wrapper of ``AzureMonitorTraceExporter``: loss accounting and flow roots as Request rows.

    A flow span (``gen_ai.operation.name=invoke_workflow``) that is its trace's local root is the
    operation itself, so it is sent as a Request (SERVER) with response code 200, or 500 when it
    failed, as the ``flow_request`` metric counts it; a flow under an HTTP server span stays a
    dependency of that request. LLM and tool spans are dependencies (``GenAI | <gen_ai.system>``).

    The exporter resends stored batches only after a successful export; with ``drain_interval_s``
    an idle process (or one restarted on a storage directory with a backlog) also sends them:
    every interval an empty export runs, which sends nothing itself and then drains storage.
    """

    def __init__(self, exporter: Any, self_metrics: SelfMetrics | None = None, *, exporter_id: str = EXPORTER_ID,
                 root_flows_as_requests: bool = True, drain_interval_s: float | None = None) -> None:
        self.exporter = exporter
        self._lock = threading.Lock()  # one export (or drain) at a time
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        self.accounting = account(exporter, self_metrics, exporter_id)
        if self_metrics is not None:
            for reason in LOSS_REASONS:
                self_metrics.add("flowtel.spans.dropped", 0, f"{EXPORTER_ID}_{reason}")
        self._root_flows_as_requests = root_flows_as_requests
        self._promoted = threading.local()
        if root_flows_as_requests:
            private.wrap_span_to_envelope(exporter, self._answer_promoted)
        self._drain_interval_s = drain_interval_s if private.offline_storage(exporter) is not None else None
        self._exporter_id = exporter_id
        self._start_drainer()
        reinit_after_fork(self, "_lock", "_stop", restart=AzureMonitorSpanExporter._start_drainer)

    def _answer_promoted(self, to_envelope: Callable[..., Any]) -> Callable[..., Any]:
        def _span_to_envelope(span: ReadableSpan) -> Any:
            envelope = to_envelope(span)
            if span.context.span_id in getattr(self._promoted, "ids", ()):
                private.mark_request_answered(envelope, span.status.is_ok)
            return envelope

        return _span_to_envelope

    def _start_drainer(self) -> None:
        if self._drain_interval_s and not self._stop.is_set():
            self._drainer = threading.Thread(target=self._drain, args=(self._drain_interval_s,), daemon=True,
                                             name=f"flowtel-{self._exporter_id}-drain")
            self._drainer.start()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._root_flows_as_requests:
            promoted = {s.context.span_id for s in spans if _is_root_flow(s)}
            self._promoted.ids = promoted
            if promoted:
                spans = [_as_request(s) if s.context.span_id in promoted else s for s in spans]
        with self._lock:
            transmits = self.accounting.transmits
            result: SpanExportResult = self.exporter.export(spans)
            if result is not SpanExportResult.SUCCESS and spans and self.accounting.transmits == transmits:
                self.accounting.export_failed_before_transmit(len(spans), "span")
        return result

    def _drain(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    self.exporter.export([])
            except Exception:  # never let the drainer die
                logger.exception("flowtel: draining the Azure Monitor exporter's storage failed")

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join(timeout=30)
        self.exporter.shutdown()


# -- builders -------------------------------------------------------------------------------------------------


def build_trace_exporter(settings: AzureMonitorSettings, self_metrics: SelfMetrics | None = None, *,
                         exporter_id: str = EXPORTER_ID, **exporter_kwargs: Any) -> AzureMonitorSpanExporter:
    """``AzureMonitorTraceExporter`` from ``settings``, wrapped; ``exporter_kwargs`` go to the exporter
    (e.g. ``tracer_provider=`` so its ``_OTELRESOURCE_`` row carries the right resource)."""
    from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter

    settings.apply_self_telemetry_switch()
    exporter = AzureMonitorTraceExporter(**settings.exporter_kwargs("traces"), **exporter_kwargs)
    return AzureMonitorSpanExporter(exporter, self_metrics, exporter_id=exporter_id,
                                    root_flows_as_requests=settings.root_flows_as_requests,
                                    drain_interval_s=None if settings.disable_offline_storage
                                    else settings.storage_retry_interval_s)


def build_metric_exporter(settings: AzureMonitorSettings, self_metrics: SelfMetrics | None = None, *,
                          exporter_id: str = EXPORTER_ID, signal: str = "metrics", **exporter_kwargs: Any) -> Any:
    """``AzureMonitorMetricExporter`` from ``settings`` with loss accounting (DELTA for counters and histograms);
    ``signal`` names its offline storage's subdirectory.

    Wrap it in ``DerivedMetricsExporter`` so it also gets flowtel's derived metrics.
    """
    from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter

    settings.apply_self_telemetry_switch()
    exporter = AzureMonitorMetricExporter(**settings.exporter_kwargs(signal), **exporter_kwargs)
    account(exporter, self_metrics, exporter_id)
    return exporter


def build_log_exporter(settings: AzureMonitorSettings, self_metrics: SelfMetrics | None = None, *,
                       exporter_id: str = EXPORTER_ID, signal: str = "logs", **exporter_kwargs: Any) -> Any:
    """``AzureMonitorLogExporter`` from ``settings`` with loss accounting counted in log records."""
    from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter

    settings.apply_self_telemetry_switch()
    exporter = AzureMonitorLogExporter(**settings.exporter_kwargs(signal), **exporter_kwargs)
    account(exporter, self_metrics, exporter_id, logs=True)
    return exporter
