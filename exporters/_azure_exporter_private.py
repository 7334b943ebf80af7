"""Every private API of ``azure-monitor-opentelemetry-exporter`` flowtel uses, in one place.

The exporter's ``export()`` answers SUCCESS or FAILURE both for "stored on disk for a retry" and for "dropped", so
flowtel's loss accounting (``azure_monitor.LossAccounting``) watches what happens inside it, and the span exporter
presents flow roots as Request rows by post-processing the exporter's envelope. None of that is public API:

- ``BaseExporter._transmit`` (one batch's transmission and its ``ExportResult``), ``exporter.client.track`` (the
  ingestion call and its ``TrackResponse``), ``exporter.storage.put`` (the offline storage write and its
  ``StorageExportResult``): wrapped in place to see each outcome;
- ``AzureMonitorTraceExporter._span_to_envelope``: wrapped to set a promoted flow root's response code;
- the result enum member names, the status code sets the exporter retries or drops as quota
  (``_constants._RETRYABLE_STATUS_CODES`` / ``_THROTTLE_STATUS_CODES``), the "telemetry sampled out." message text,
  the ``_OTELRESOURCE_`` metric row and the generated models' field names (mappings since 1.0.0b46, msrest models
  in 1.0.0b45).

``tests/test_azure_exporter_shape.py`` checks, for the installed exporter, that each of these still has the shape
used here and fails naming what moved; ``pyproject.toml`` bounds the exporter to the versions that were checked.
At run time a missing hook turns the accounting off with one warning (the exporter itself keeps working).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

#: Tested versions (the upper bound in pyproject.toml follows them).
TESTED_VERSIONS = ("1.0.0b45", "1.0.0b58")

#: ``_constants._RETRYABLE_STATUS_CODES``: the batch (or a 206's item) goes to offline storage.
RETRYABLE_STATUS_CODES = frozenset({401, 403, 408, 429, 500, 502, 503, 504})
#: ``_constants._THROTTLE_STATUS_CODES``: over quota, dropped, not retried.
THROTTLE_STATUS_CODES = frozenset({402, 439})
#: The message of a 206 item ingestion sampled out (the exporter compares it lower-cased, as here).
SAMPLED_OUT_MESSAGE = "telemetry sampled out."
#: The metric row the trace exporter sends for the resource (neither a span nor a metric point of the user's).
RESOURCE_METRIC_NAME = "_OTELRESOURCE_"
#: ``ExportResult`` member names ``_transmit`` answers with.
EXPORT_RESULTS = ("SUCCESS", "FAILED_RETRYABLE", "FAILED_NOT_RETRYABLE")
#: ``StorageExportResult`` member names ``storage.put`` answers with, to flowtel's loss reason (None: stored).
STORAGE_RESULTS: dict[str, str | None] = {"LOCAL_FILE_BLOB_SUCCESS": None,
                                          "CLIENT_PERSISTENCE_CAPACITY_REACHED": "storage_full",
                                          "CLIENT_STORAGE_DISABLED": "storage_disabled",
                                          "CLIENT_READONLY": "storage_error"}
_SPAN_TYPES = frozenset({"RequestData", "RemoteDependencyData"})

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def accounting_hooks_missing(exporter: Any) -> list[str]:
    """The hooks the loss accounting needs that this exporter lacks (empty when all are there)."""
    missing = [] if callable(getattr(exporter, "_transmit", None)) else ["_transmit"]
    if not callable(getattr(getattr(exporter, "client", None), "track", None)):
        missing.append("client.track")
    return missing


def offline_storage(exporter: Any) -> Any:
    """The exporter's ``LocalFileStorage``, or None when offline storage is disabled."""
    return getattr(exporter, "storage", None)


def wrap_transmit(exporter: Any, wrap: Wrapper) -> None:
    """Replace ``exporter._transmit(envelopes, ...) -> ExportResult`` by ``wrap(original)``."""
    exporter._transmit = wrap(exporter._transmit)


def wrap_track(exporter: Any, wrap: Wrapper) -> None:
    """Replace ``exporter.client.track(body, ...) -> TrackResponse`` by ``wrap(original)``. The wrapper keeps the
    operation's attributes: exporter 1.0.0b45's generated client reads ``self.track.metadata["url"]`` through the
    instance, i.e. from the wrapper."""
    client = exporter.client
    track = client.track
    client.track = functools.wraps(track)(wrap(track))


def wrap_storage_put(storage: Any, wrap: Wrapper) -> None:
    """Replace ``storage.put(data, ...) -> StorageExportResult`` by ``wrap(original)``."""
    storage.put = wrap(storage.put)


def wrap_span_to_envelope(exporter: Any, wrap: Wrapper) -> bool:
    """Replace the trace exporter's ``_span_to_envelope(span) -> TelemetryItem`` by ``wrap(original)``; False when
    this exporter has none (then spans keep the exporter's own row types)."""
    to_envelope = getattr(exporter, "_span_to_envelope", None)
    if not callable(to_envelope):
        return False
    exporter._span_to_envelope = wrap(to_envelope)
    return True


def mark_request_answered(envelope: Any, ok: bool) -> None:
    """A Request row made from a span without HTTP attributes has response code "0"; give it 200 or 500."""
    base = envelope.data.base_data
    if getattr(base, "response_code", None) == "0":
        base.response_code = "200" if ok else "500"


def result_name(result: Any) -> str:
    """The ``ExportResult`` / ``StorageExportResult`` member name (``str(result)`` for anything else)."""
    return str(getattr(result, "name", result))


def storage_loss_reason(result: Any) -> str | None:
    """None when ``storage.put`` stored the batch, else the loss reason."""
    return STORAGE_RESULTS.get(result_name(result), "storage_error")


def track_answer(response: Any) -> Any:
    """The ``TrackResponse`` of a ``client.track`` call (a tuple when the exporter asked for the raw response)."""
    return response[0] if isinstance(response, tuple) else response


def partial_errors(answer: Any) -> list[tuple[int | None, int | None, str]]:
    """``(index, status code, lower-cased message)`` of each item a 206 answer did not accept; [] for others."""
    return [(getattr(error, "index", None), getattr(error, "status_code", None),
             (getattr(error, "message", "") or "").lower()) for error in getattr(answer, "errors", None) or ()]


def _field(value: Any, key: str, attribute: str) -> Any:
    """``value[key]``: the generated models are mappings since 1.0.0b46; 1.0.0b45 (the one prompt flow's SDK range
    resolves to) has msrest models, read by attribute, which it stores as dicts keyed by attribute."""
    for name in (key, attribute):
        try:
            return value[name]
        except (KeyError, IndexError, TypeError):
            continue
    return getattr(value, attribute, None)


def item_kind(item: Any) -> str:
    """"span", "metric", or "other" (span events, the ``_OTELRESOURCE_`` row) for a TelemetryItem or its dict."""
    data = _field(item, "data", "data")
    base_type = _field(data, "baseType", "base_type")
    if base_type in _SPAN_TYPES:
        return "span"
    if base_type == "MetricData":
        metrics = _field(_field(data, "baseData", "base_data"), "metrics", "metrics")
        try:
            name = _field(metrics[0], "name", "name")
        except (IndexError, TypeError):
            return "other"
        if name != RESOURCE_METRIC_NAME:
            return "metric"
    return "other"
