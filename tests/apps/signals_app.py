"""An app that uses all three OpenTelemetry APIs and nothing else: run under ``opentelemetry-instrument``.

It records known values (a counter, a histogram inside a sampled span so it carries an
exemplar, an up-down counter, a gauge) and emits one log record, then exits; the SDK's
exit handlers flush every signal to whatever ``OTEL_EXPORTER_OTLP_ENDPOINT`` names.
With ``DELTA_ROUNDS`` set it exports that many rounds of the counter and histogram, one
export each (run with ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta``).
"""

import os

from opentelemetry import _logs, metrics, trace

tracer = trace.get_tracer("signals-app")
meter = metrics.get_meter("signals-app")
requests = meter.create_counter("app.requests", unit="{request}", description="Requests handled")
latency = meter.create_histogram("app.latency", unit="ms", description="Request latency",
                                 explicit_bucket_boundaries_advisory=[10.0, 100.0, 1000.0])
inflight = meter.create_up_down_counter("app.inflight", unit="{request}", description="Requests in flight")
temperature = meter.create_gauge("app.temperature", unit="Cel", description="Room temperature")

rounds = int(os.environ.get("DELTA_ROUNDS", "0"))
if rounds:
    provider = metrics.get_meter_provider()
    for _ in range(rounds):
        with tracer.start_as_current_span("round"):
            requests.add(2, {"route": "/a"})
            latency.record(50.0, {"route": "/a"})
        provider.force_flush()  # type: ignore[attr-defined]
else:
    with tracer.start_as_current_span("work") as span:
        requests.add(3, {"route": "/a"})
        requests.add(4, {"route": "/b"})
        for value in (5.0, 50.0, 500.0, 5000.0):
            latency.record(value, {"route": "/a"})
        inflight.add(5)
        inflight.add(-2)
        temperature.set(21.5, {"room": "lab"})
        print("trace_id", format(span.get_span_context().trace_id, "032x"), flush=True)

    _logs.get_logger("signals-app").emit(_logs.LogRecord(
        body="hello from the app", severity_number=_logs.SeverityNumber.WARN, severity_text="WARN",
        attributes={"app.step": "done"}))
