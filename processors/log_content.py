"""What of a log record is prompt or completion content: one rule for both hosts' log paths.

GenAI instrumentations emit messages as log events (``gen_ai.user.message``, ``gen_ai.choice``,
``gen_ai.client.inference.operation.details``...) when the app captures content; such an event's
body is content, and so are the content attributes (``gen_ai.input.messages``,
``gen_ai.prompt.*``...) of any record: the same names ``flowtel.semconv`` lists for spans.

Prompt flow also logs what a node's code prints: ``[<node> in line <n> ...] stdout> <text>`` (and
``stderr>``), written by its executor's stdout/stderr capture to the loggers serving exports. A
node printing its inputs puts the prompt there, so without capture the text after ``stdout> ``
/ ``stderr> `` is replaced by ``NODE_OUTPUT_REMOVED``: which node printed, and when, stays.
"""

from __future__ import annotations

import re

from flowtel import semconv as sc

#: Prompt flow's node output line (``promptflow/_core/log_manager.py``): the prefix up to ``stdout> ``/``stderr> ``.
_NODE_OUTPUT = re.compile(r"\[[^\]\n]*\] std(?:out|err)> ")
NODE_OUTPUT_REMOVED = "<removed: content capture is off>"


def is_content_key(key: str) -> bool:
    return key in sc.CONTENT_ATTRIBUTES or key.startswith(sc.CONTENT_ATTRIBUTE_PREFIXES)


def is_content_event(event_name: str | None) -> bool:
    """A log event whose body is content (the record's ``event_name`` or older ``event.name`` attribute)."""
    return bool(event_name) and event_name in sc.CONTENT_EVENTS


def names_content_event(*names: object) -> bool:
    """Whether any of a record's event names (its ``event_name``, each ``event.name`` attribute) is a content event.

    Any, not the first: a record naming two events is read by some backends by one, by others by the other
    (repeated attribute keys: the last wins downstream), so its body is content if either says so (fail closed)."""
    return any(isinstance(name, str) and is_content_event(name) for name in names)


def redacted_node_output(body: str) -> str | None:
    """The body with a prompt flow node's printed text removed; None when the body is no such line."""
    match = _NODE_OUTPUT.match(body)
    return None if match is None else match.group() + NODE_OUTPUT_REMOVED
