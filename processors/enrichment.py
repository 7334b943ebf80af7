"""Add OpenTelemetry GenAI semantic-convention attributes to spans from any vocabulary.

``enrich`` only ever adds keys the span does not have (an instrumentation's value always
wins), marks an evidently failed span whose status was left UNSET as ERROR (Azure Monitor
counts UNSET as success), and, unless content capture is on, removes prompt and
completion text. It returns an ``Enrichment`` that the host applies to its native span.
"""

from __future__ import annotations

from typing import Any

from flowtel import semconv as sc
from flowtel.spans import STATUS_UNSET, Enrichment

from .analysis import ROLE_FLOW, SpanRole
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

#: Attribute key -> is it prompt / completion content. Keys are names, few and recurring, so one
#: classification per name replaces a prefix scan per span; bounded against hostile senders.
_CONTENT_KEYS: dict[str, bool] = {}


def _classify(key: str) -> bool:
    content = key in sc.CONTENT_ATTRIBUTES or key.startswith(sc.CONTENT_ATTRIBUTE_PREFIXES)
    if len(_CONTENT_KEYS) < 100_000:
        _CONTENT_KEYS[key] = content
    return content


def enrich(role: SpanRole, capture_content: bool) -> Enrichment:
    span = role.span
    attrs = span.attributes
    added: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if value is not None and value != () and key not in attrs:
            added[key] = value

    usage = token_usage(span)
    if role.role == ROLE_FLOW:
        put(sc.OPERATION_NAME, sc.OP_INVOKE_WORKFLOW)
        put(sc.WORKFLOW_NAME, role.flow)
        operation = None
    else:
        operation = genai_operation(span)
        put(sc.OPERATION_NAME, operation)
    # Model attributes only for spans that are GenAI operations or report usage: plain functions,
    # most of a trace, skip every lookup below.
    if operation is not None or usage is not None:
        system = provider(span)
        if system is not None:
            # Both names: new readers look at provider.name, the Azure exporter only at gen_ai.system.
            put(sc.PROVIDER_NAME, system)
            put(sc.SYSTEM, system)
        put(sc.REQUEST_MODEL, request_model(span))
        put(sc.RESPONSE_MODEL, response_model(span))
        if usage is not None:
            put(sc.USAGE_INPUT_TOKENS, usage[0])
            put(sc.USAGE_OUTPUT_TOKENS, usage[1])
        for key, value in request_parameters(span).items():
            put(key, value)
        response_id, reasons = response_details(span)
        put(sc.RESPONSE_ID, response_id)
        put(sc.RESPONSE_FINISH_REASONS, reasons)

    error = exception_type(span)
    set_error: str | None = None
    if error is not None:
        put(sc.ERROR_TYPE, error)
        if span.status == STATUS_UNSET:
            set_error = error

    removed_attrs: frozenset[str] = frozenset()
    removed_events: frozenset[str] = frozenset()
    if not capture_content:
        known = _CONTENT_KEYS
        content = [k for k in attrs if known.get(k) or (k not in known and _classify(k))]
        if content:
            removed_attrs = frozenset(content)
        removed_events = sc.CONTENT_EVENTS.intersection(e.name for e in span.events)
    return Enrichment(added, removed_attrs, removed_events, set_error)
