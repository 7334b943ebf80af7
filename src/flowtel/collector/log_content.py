"""Prompt and completion content out of received log records, as flowtel takes it out of spans.

With content capture off (the default), a logs pipeline clears the body of every record that is a
GenAI content event (by ``event_name`` or the older ``event.name`` attribute), removes the content
attributes of every record, and cuts a prompt flow node's printed text out of its log line
(``flowtel.processors.log_content`` says what is content, for both hosts). The record itself stays
(its time, severity, trace context and other attributes), so nothing is lost that is not content.
"""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from flowtel.processors.log_content import (
    NODE_OUTPUT_REMOVED,
    is_content_key,
    names_content_event,
    redacted_node_output,
)

__all__ = ["NODE_OUTPUT_REMOVED", "strip_content"]


def strip_content(request: ExportLogsServiceRequest) -> int:
    """Remove content from ``request`` in place; the number of records changed (0: the request is as it was)."""
    changed = 0
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = record.attributes
                keep = [kv for kv in attributes if not is_content_key(kv.key)]
                content_body = record.HasField("body") and names_content_event(
                    record.event_name, *(kv.value.string_value for kv in attributes if kv.key == "event.name"))
                node_output = None if content_body else redacted_node_output(record.body.string_value)
                if len(keep) == len(attributes) and not content_body and node_output is None:
                    continue
                if len(keep) != len(attributes):
                    kept = [type(kv)(key=kv.key, value=kv.value) for kv in keep]
                    del attributes[:]
                    attributes.extend(kept)
                if content_body:
                    record.ClearField("body")
                elif node_output is not None:
                    record.body.string_value = node_output
                changed += 1
    return changed
