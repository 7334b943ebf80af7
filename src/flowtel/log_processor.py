"""``ContentFreeLogProcessor``: the in-process logs path keeps no prompt or completion content it was not asked to.

``flowtel.configure()`` sets up log export as the SDK's configurator does; GenAI instrumentations
(openai-v2, OpenLIT, ...) emit their messages as log events there. With content capture off, this
processor sits in front of the exporters' processors and takes content out of each record before
they see it, by the one rule both hosts use (``flowtel.processors.log_content``): a content
event's body, content attributes, a prompt flow node's printed text. It fails closed: a record it
cannot clean is not passed on (counted in ``flowtel_log_records_dropped_total{reason=
"content_removal_failed"}``, logged once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk._logs import LogRecordProcessor

from flowtel._log import warn_once
from flowtel.processors.log_content import is_content_key, names_content_event, redacted_node_output
from flowtel.selfmetrics import SelfMetrics


def remove_content(record: Any) -> None:
    """Take content out of an SDK log record in place (``ReadWriteLogRecord``, or ``LogData`` on older SDKs)."""
    api = record.log_record  # the API LogRecord both shapes carry
    attributes = api.attributes or {}
    if any(is_content_key(key) for key in attributes):
        api.attributes = {key: value for key, value in attributes.items() if not is_content_key(key)}
    if names_content_event(getattr(api, "event_name", None), attributes.get("event.name")):
        api.body = None
    elif isinstance(api.body, str):
        redacted = redacted_node_output(api.body)
        if redacted is not None:
            api.body = redacted


class ContentFreeLogProcessor(LogRecordProcessor):
    """Cleans each record, then hands it to ``downstream`` (typically a ``BatchLogRecordProcessor`` per exporter)."""

    def __init__(self, downstream: Sequence[LogRecordProcessor], self_metrics: SelfMetrics | None = None) -> None:
        self._downstream = tuple(downstream)
        self._self = self_metrics

    def on_emit(self, log_record: Any) -> None:
        try:
            remove_content(log_record)
        except Exception as error:  # fail closed: a record whose content may still be in it does not leave
            warn_once("logs:content_removal_failed", "flowtel could not remove content from a log record (%s); "
                      "it was dropped, counted in flowtel_log_records_dropped_total", error)
            if self._self is not None:
                self._self.dropped("content_removal_failed", 1, "log_records")
            return
        for processor in self._downstream:
            processor.on_emit(log_record)

    def emit(self, log_record: Any) -> None:  # the name older SDKs call
        self.on_emit(log_record)

    def shutdown(self) -> None:
        for processor in self._downstream:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(processor.force_flush(timeout_millis) for processor in self._downstream)
