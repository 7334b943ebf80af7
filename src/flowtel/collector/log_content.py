"""Prompt and completion content out of received log records, as flowtel takes it out of spans.

GenAI instrumentations emit messages as log events (``gen_ai.user.message``, ``gen_ai.choice``,
``gen_ai.client.inference.operation.details``...) when the app captures content. With content
capture off (the default), a logs pipeline clears the body of every record that is such an event
(by ``event_name`` or the older ``event.name`` attribute) and removes the content attributes
(``gen_ai.input.messages``, ``gen_ai.prompt.*``...) of every record: the same names
``flowtel.semconv`` lists for spans. The record itself stays (its time, severity, trace context
and other attributes), so nothing is lost that is not content.
"""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from flowtel import semconv as sc


def _content_key(key: str) -> bool:
    return key in sc.CONTENT_ATTRIBUTES or key.startswith(sc.CONTENT_ATTRIBUTE_PREFIXES)


def strip_content(request: ExportLogsServiceRequest) -> int:
    """Remove content from ``request`` in place; the number of records changed (0: the request is as it was)."""
    changed = 0
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = record.attributes
                event = record.event_name or next(
                    (kv.value.string_value for kv in attributes if kv.key == "event.name"), "")
                keep = [kv for kv in attributes if not _content_key(kv.key)]
                content_body = event in sc.CONTENT_EVENTS and record.HasField("body")
                if len(keep) == len(attributes) and not content_body:
                    continue
                if len(keep) != len(attributes):
                    kept = [type(kv)(key=kv.key, value=kv.value) for kv in keep]
                    del attributes[:]
                    attributes.extend(kept)
                if content_body:
                    record.ClearField("body")
                changed += 1
    return changed
