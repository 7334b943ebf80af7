"""Add OpenTelemetry GenAI semantic-convention attributes to spans from any vocabulary.

``enrich`` only ever adds keys the span does not have (an instrumentation's value always
wins), marks an evidently failed span whose status was left UNSET as ERROR (Azure Monitor
counts UNSET as success), and, unless content capture is on, removes prompt and
completion text; when capture is on, it writes prompt flow's content as the GenAI content attributes
(``messages.py``). It returns an ``Enrichment`` that the host applies to its native span.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from flowtel import semconv as sc
from flowtel.spans import STATUS_UNSET, Enrichment, SpanData

from .analysis import ROLE_FLOW, SpanRole
from .messages import genai_messages
from .vocabulary import (
    exception_type,
    genai_operation,
    provider,
    request_model,
    request_parameters,
    response_details,
    response_model,
    token_usage,
)

#: Content keys by a span's key signature (its attribute keys in order): spans of one kind carry the same keys,
#: so classifying a span is one tuple and one lookup instead of a set operation per span; bounded against
#: senders whose key sets never repeat.
_CONTENT_BY_SIGNATURE: dict[tuple[str, ...], frozenset[str]] = {}
_MAX_SIGNATURES = 4096


def _content_keys(attrs: Mapping[str, Any]) -> frozenset[str]:
    signature = tuple(attrs)
    content = _CONTENT_BY_SIGNATURE.get(signature)
    if content is None:
        content = frozenset(k for k in signature
                            if k in sc.CONTENT_ATTRIBUTES or k.startswith(sc.CONTENT_ATTRIBUTE_PREFIXES))
        if len(_CONTENT_BY_SIGNATURE) >= _MAX_SIGNATURES:
            _CONTENT_BY_SIGNATURE.clear()
        _CONTENT_BY_SIGNATURE[signature] = content
    return content


def content_event_names(names: list[str]) -> frozenset[str]:
    """Which of these event names carry content: the known ones and the numbered ones (MLflow's chunks)."""
    found = sc.CONTENT_EVENTS.intersection(names)
    numbered = [n for n in names if n.startswith(sc.CONTENT_EVENT_PREFIXES)]
    return found.union(numbered) if numbered else found


def enrich(role: SpanRole, capture_content: bool) -> Enrichment | None:
    """What to change on the role's span; None when nothing."""
    span = role.span
    attrs = span.attributes
    added: dict[str, Any] = {}
    usage = token_usage(span)
    if role.role == ROLE_FLOW:
        if sc.OPERATION_NAME not in attrs:
            added[sc.OPERATION_NAME] = sc.OP_INVOKE_WORKFLOW
        if sc.WORKFLOW_NAME not in attrs:
            added[sc.WORKFLOW_NAME] = role.flow
        operation = None
    else:
        operation = genai_operation(span)
        if operation is not None and sc.OPERATION_NAME not in attrs:
            added[sc.OPERATION_NAME] = operation
    # Model attributes only for spans that are GenAI operations or report usage: plain functions,
    # most of a trace, skip every lookup below.
    if operation is not None or usage is not None:
        _add_model_attributes(span, usage, attrs, added)

    set_error: str | None = None
    if span.events or sc.ERROR_TYPE in attrs:
        error = exception_type(span)
        if error is not None:
            if sc.ERROR_TYPE not in attrs:
                added[sc.ERROR_TYPE] = error
            if span.status == STATUS_UNSET:
                set_error = error

    if capture_content:
        for key, value in genai_messages(span, role.role == ROLE_FLOW).items():
            if key not in attrs:
                added[key] = value

    removed_attrs: frozenset[str] = frozenset()
    removed_events: frozenset[str] = frozenset()
    if not capture_content:  # as ``_content`` decides, inline: every span passes here
        removed_attrs = _content_keys(attrs)
        if span.events:
            removed_events = content_event_names([e.name for e in span.events])
    if added or removed_events or set_error is not None:
        return Enrichment(added, removed_attrs, removed_events, set_error)
    return _removal_only(removed_attrs) if removed_attrs else None


def _content(span: SpanData) -> tuple[frozenset[str], frozenset[str]]:
    """The span's content attribute keys and content event names: what leaves only when capture is on
    (``enrich`` decides the same, inline)."""
    events = content_event_names([e.name for e in span.events]) if span.events else frozenset()
    return _content_keys(span.attributes), events


def content_removal(span: SpanData) -> Enrichment | None:
    """Only the removal of content, read from the span alone (no analysis): what the pipeline applies when the
    rest of flowtel's logic failed on the span, so content never leaves because flowtel failed (fail closed)."""
    keys, events = _content(span)
    if events:
        return Enrichment(removed_attributes=keys, removed_events=events)
    return _removal_only(keys) if keys else None


@functools.lru_cache(maxsize=1024)
def _removal_only(keys: frozenset[str]) -> Enrichment:
    """Most spans only lose their content keys, and those sets recur: one shared (never mutated) object each."""
    return Enrichment(removed_attributes=keys)


def _add_model_attributes(span: SpanData, usage: tuple[int | None, int | None] | None, attrs: Mapping[str, Any],
                          added: dict[str, Any]) -> None:
    system = provider(span)
    response_id, reasons = response_details(span)
    # Both provider names: new readers look at provider.name, the Azure exporter only at gen_ai.system.
    candidates: list[tuple[str, Any]] = [
        (sc.PROVIDER_NAME, system), (sc.SYSTEM, system),
        (sc.REQUEST_MODEL, request_model(span)), (sc.RESPONSE_MODEL, response_model(span)),
        (sc.RESPONSE_ID, response_id), (sc.RESPONSE_FINISH_REASONS, reasons or None)]
    if usage is not None:
        candidates += ((sc.USAGE_INPUT_TOKENS, usage[0]), (sc.USAGE_OUTPUT_TOKENS, usage[1]))
    candidates += request_parameters(span).items()
    for key, value in candidates:
        if value is not None and key not in attrs and key not in added:
            added[key] = value
