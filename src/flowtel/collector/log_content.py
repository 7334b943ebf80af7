"""Prompt and completion content out of received log records, as flowtel takes it out of spans.

GenAI instrumentations emit messages as log events (``gen_ai.user.message``, ``gen_ai.choice``,
``gen_ai.client.inference.operation.details``...) when the app captures content. With content
capture off (the default), a logs pipeline clears the body of every record that is such an event
(by ``event_name`` or the older ``event.name`` attribute) and removes the content attributes
(``gen_ai.input.messages``, ``gen_ai.prompt.*``...) of every record: the same names
``flowtel.semconv`` lists for spans. The record itself stays (its time, severity, trace context
and other attributes), so nothing is lost that is not content.

Prompt flow also logs what a node's code prints: ``[<node> in line <n> ...] stdout> <text>`` (and
``stderr>``), written by its executor's stdout/stderr capture to the loggers serving exports. A
node printing its inputs puts the prompt there, so without capture the text after ``stdout> ``
/ ``stderr> `` is replaced by ``NODE_OUTPUT_REMOVED``: which node printed, and when, stays.
"""

from __future__ import annotations

import re

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from flowtel import semconv as sc

#: Prompt flow's node output line (``promptflow/_core/log_manager.py``): the prefix up to ``stdout> ``/``stderr> ``.
_NODE_OUTPUT = re.compile(r"\[[^\]\n]*\] std(?:out|err)> ")
NODE_OUTPUT_REMOVED = "<removed: content capture is off>"


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
                node_output = None if content_body else _NODE_OUTPUT.match(record.body.string_value)
                if len(keep) == len(attributes) and not content_body and node_output is None:
                    continue
                if len(keep) != len(attributes):
                    kept = [type(kv)(key=kv.key, value=kv.value) for kv in keep]
                    del attributes[:]
                    attributes.extend(kept)
                if content_body:
                    record.ClearField("body")
                elif node_output is not None:
                    record.body.string_value = node_output.group() + NODE_OUTPUT_REMOVED
                changed += 1
    return changed
