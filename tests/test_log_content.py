"""Content out of received log records: prompt flow's node output lines (edge cases; the real serving run is in
``tests/producers/test_promptflow_serving.py``)."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from flowtel.collector.log_content import NODE_OUTPUT_REMOVED, strip_content


def _request(*bodies: str) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for body in bodies:
        records.add().body.string_value = body
    return request


def _bodies(request: ExportLogsServiceRequest) -> list[str]:
    return [r.body.string_value for r in request.resource_logs[0].scope_logs[0].log_records]


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_node_output_loses_its_text_and_keeps_which_node_printed(stream: str) -> None:
    prefix = f"[prepare in line 3 (index starts from 0)] {stream}> "
    request = _request(prefix + "my secret [question] stdout> again\nsecond line")
    assert strip_content(request) == 1
    assert _bodies(request) == [prefix + NODE_OUTPUT_REMOVED]


@pytest.mark.parametrize("body", [
    "Start monitoring new request, request_id: None",
    "Flow run failed with error: {'message': '...'}",
    "[prepare in line 3] printed> not a node output stream",
    "prefix [prepare] stdout> not at the start",
    "[a\nb] stdout> the bracket spans lines",
])
def test_other_records_pass_unchanged(body: str) -> None:
    request = _request(body)
    assert strip_content(request) == 0
    assert _bodies(request) == [body]


def test_a_long_crafted_body_costs_linear_time() -> None:
    """No unclosed bracket makes the match backtrack: a 4 MB body of '[' is read once (would take minutes if
    quadratic)."""
    request = _request("[" * 4_000_000)
    assert strip_content(request) == 0


@pytest.mark.parametrize("event_name, attribute_names", [
    ("x", ["gen_ai.user.message"]),  # found by fuzzing: event_name won over the event.name attribute
    ("", ["x", "gen_ai.choice"]),  # the first event.name attribute won; downstream the last one does
    ("gen_ai.choice", ["x"]),
])
def test_a_record_naming_a_content_event_anywhere_loses_its_body(event_name: str, attribute_names: list[str]) -> None:
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add(event_name=event_name)
    record.body.string_value = "my secret prompt"
    for name in attribute_names:
        record.attributes.add(key="event.name").value.string_value = name
    assert strip_content(request) == 1
    assert not request.resource_logs[0].scope_logs[0].log_records[0].HasField("body")
