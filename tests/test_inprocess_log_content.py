"""In-process logs (``flowtel.configure()`` sets them up as the SDK's configurator does) carry no prompt or
completion content with capture off: a real app logs a GenAI content event, a prompt flow node's printed line and a
plain line through the real OTLP log exporter to a sink; the canary must be in no byte that arrives."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from conftest import ROOT
from otlp_sink import OTLPSink

APP = str(ROOT / "tests" / "apps" / "log_content_app.py")


def _run(sink: OTLPSink, canary: str, **env: str) -> None:
    run = subprocess.run([sys.executable, APP, canary], capture_output=True, text=True, timeout=120, env={
        **os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink.endpoint}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true", "OTEL_EXPORTER_PROMETHEUS_PORT": "0", **env})
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("capture", [False, True])
def test_in_process_logs_keep_content_only_with_capture(capture: bool) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    with OTLPSink() as sink:
        _run(sink, canary, FLOWTEL_CAPTURE_CONTENT=str(capture).lower())
        records = sink.log_records()
        raw = b"".join(request.SerializeToString() for request in sink.log_requests)
    bodies = sorted(record.body.string_value for record, _ in records if record.body.HasField("string_value"))
    events = [record for record, _ in records if record.event_name == "gen_ai.user.message"]
    assert len(records) == 3 and len(events) == 1
    assert "served one request" in bodies
    if capture:
        assert canary.encode() in raw
        assert events[0].body.WhichOneof("value") == "kvlist_value"
        return
    assert canary.encode() not in raw
    assert events[0].body.WhichOneof("value") is None  # the SDK's encoder writes an empty body for None
    assert {kv.key for kv in events[0].attributes} == {"gen_ai.system"}
    assert "[prepare in line 0 (index starts from 0)] stdout> <removed: content capture is off>" in bodies
