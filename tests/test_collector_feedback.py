"""The collector's ``feedback`` receiver, end to end: seed 000's client against a real collector process.

A scoring app (promptflow-tracing + openai against the fake model) exports its spans over
OTLP/HTTP with a batching exporter, so the request's spans reach the collector after the
feedback about it, as in production. The collector must still join them, forward the
feedback span through its exporters, and count it in the ``feedback`` metric.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from flowtel.otlp import decode_attributes

from collector_proc import CollectorProcess
from conftest import reset_otel_globals, scrape
from feedback_client import ScoringApp, post, seed_client
from otlp_sink import OTLPSink
from producers import use_promptflow_openai_injection

TOKEN = "feedback-secret"
CONFIG = """
extensions:
  bearertokenauth/feedback: {token: %(token)s}
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
  feedback: {endpoint: "127.0.0.1:0", max_request_body_size: 2048}
  feedback/secure: {endpoint: "127.0.0.1:0", auth: {authenticator: bearertokenauth/feedback}}
processors:
  flowtel:
    common_dimensions: {deployment: blue}
    resource_dimensions: {variant: app.variant}
    feedback: {wait: 4s, max_requests: 1}
  batch: {timeout: 50ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  extensions: [bearertokenauth/feedback]
  pipelines:
    traces:
      receivers: [otlp, feedback, feedback/secure]
      processors: [flowtel, batch]
      exporters: [prometheus, otlp/sink]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, fake_llm):  # type: ignore[no-untyped-def]
    with OTLPSink() as sink:
        collector = CollectorProcess(CONFIG % {"sink": sink.endpoint, "token": TOKEN},
                                     tmp_path_factory.mktemp("feedback")).start()
        reset_otel_globals()
        # The app batches its export (1 s), so its request spans arrive after the feedback, as in production.
        provider = TracerProvider(resource=Resource.create({"service.name": "chat-app", "app.variant": "b"}))
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=collector.http["otlp"] + "/v1/traces"), schedule_delay_millis=1000))
        trace.set_tracer_provider(provider)
        use_promptflow_openai_injection(True)
        try:
            with ScoringApp(fake_llm.base_url) as app:
                yield collector, sink, app, provider
        finally:
            provider.shutdown()
            reset_otel_globals()
            assert collector.stop() == 0


def _feedback_span(sink: OTLPSink, collector: CollectorProcess, trace_id: int | None = None, **attrs: object):  # type: ignore[no-untyped-def]
    def find():  # type: ignore[no-untyped-def]
        for span, _ in sink.spans():
            if span.name != "promptflow-feedback":
                continue
            got = decode_attributes(span.attributes)
            if trace_id is not None and int.from_bytes(span.trace_id, "big") != trace_id:
                continue
            if all(got.get(k) == v for k, v in attrs.items()):
                return span, got
        return None
    return collector.wait_for(find, timeout=30)


def _metrics(collector: CollectorProcess):  # type: ignore[no-untyped-def]
    return scrape(collector.prometheus["prometheus"])


def test_seed_client_feedback_joins_its_request(stack) -> None:  # type: ignore[no-untyped-def]
    collector, sink, app, _ = stack
    exchange = seed_client(app.url, collector.feedback["feedback"], "thumbdown",
                           baggage_entries={"user.tier": "pro", "experiment": "prompt-v2"})
    assert exchange.feedback_status == 200
    assert exchange.feedback_response == {"status": "Feedback received."}
    assert exchange.answer == {"answer": "Hello from the fake model"}
    client = exchange.client_span
    span, attrs = _feedback_span(sink, collector, client.trace_id)

    # In the caller's trace, a child of the span traceparent named, linked to it.
    assert int.from_bytes(span.parent_span_id, "big") == client.span_id
    assert [(int.from_bytes(link.trace_id, "big"), int.from_bytes(link.span_id, "big")) for link in span.links] \
        == [(client.trace_id, client.span_id)]
    assert span.kind == span.SPAN_KIND_INTERNAL
    # prompt flow's attributes: the raw body and every baggage entry.
    assert attrs["feedback"] == '"thumbdown"'
    assert attrs["user.tier"] == "pro" and attrs["experiment"] == "prompt-v2"
    # The evaluation event.
    [event] = [e for e in span.events if e.name == "gen_ai.evaluation.result"]
    assert decode_attributes(event.attributes) == {"gen_ai.evaluation.name": "user_feedback",
                                                   "gen_ai.evaluation.score.value": 0.0,
                                                   "gen_ai.evaluation.score.label": "thumbdown"}

    # The request it judges, found although its spans arrived after the feedback.
    request_spans = {s.name: s for s, _ in sink.spans() if int.from_bytes(s.trace_id, "big") == client.trace_id}
    server, flow = request_spans["POST /score"], request_spans["chat_flow"]
    calls = [decode_attributes(s.attributes) for s, _ in sink.spans()
             if int.from_bytes(s.trace_id, "big") == client.trace_id and s.name.startswith("openai_")]
    assert sorted(c["gen_ai.operation.name"] for c in calls) == ["chat", "embeddings"]
    assert attrs["flowtel.feedback.correlated"] is True
    assert attrs["flowtel.request.flow"] == "chat_flow"
    assert attrs["flowtel.request.span_id"] == flow.span_id.hex()
    assert attrs["flowtel.request.response_code"] == "200"
    assert attrs["flowtel.request.status"] == "ok"
    assert attrs["flowtel.request.model"] == "gpt-4o-mini"
    # The request's tokens: the embedding's and the chat's input (4 words each), the chat's output.
    assert attrs["flowtel.request.input_tokens"] == sum(c["gen_ai.usage.input_tokens"] for c in calls) == 8
    assert attrs["flowtel.request.output_tokens"] == sum(c.get("gen_ai.usage.output_tokens", 0) for c in calls) > 0
    latency = (max(server.end_time_unix_nano, flow.end_time_unix_nano) - server.start_time_unix_nano) / 1e6
    assert attrs["flowtel.request.latency_ms"] == pytest.approx(latency, abs=0.001)
    assert attrs["flowtel.request.variant"] == "b"

    m = _metrics(collector)
    assert m.value("feedback_total", flow="chat_flow", score_label="thumbdown", correlated="true",
                   deployment="blue", variant="b") == 1
    assert m.value("flow_request_total", flow="chat_flow", deployment="blue", variant="b") >= 1


def test_flattened_object_with_a_rating(stack) -> None:  # type: ignore[no-untyped-def]
    collector, sink, app, _ = stack
    body = {"rating": 5, "comment": "spot on", "tags": ["fast", "right"]}
    exchange = seed_client(app.url, collector.feedback["feedback"], body, query="?flatten=true")
    assert exchange.feedback_status == 200
    span, attrs = _feedback_span(sink, collector, exchange.client_span.trace_id)
    assert attrs["rating"] == 5 and attrs["comment"] == "spot on" and list(attrs["tags"]) == ["fast", "right"]
    assert "feedback" not in attrs
    [event] = [e for e in span.events if e.name == "gen_ai.evaluation.result"]
    assert decode_attributes(event.attributes) == {
        "gen_ai.evaluation.name": "user_feedback", "gen_ai.evaluation.score.value": 5.0,
        "gen_ai.evaluation.score.label": "thumbup", "gen_ai.evaluation.explanation": "spot on"}
    assert attrs["flowtel.feedback.correlated"] is True
    collector.wait_for(lambda: _metrics(collector).value(
        "feedback_total", flow="chat_flow", score_label="thumbup", correlated="true") == 1)


def _traceparent(flags: str = "01") -> tuple[int, int, str]:
    trace_id, span_id = uuid.uuid4().int, uuid.uuid4().int >> 64
    return trace_id, span_id, f"00-{trace_id:032x}-{span_id:016x}-{flags}"


def test_feedback_for_a_trace_never_seen_is_kept_and_counted(stack) -> None:  # type: ignore[no-untyped-def]
    collector, sink, _, _ = stack
    before = _metrics(collector).value("flowtel_feedback_uncorrelated_total", reason="not_found")
    # Not sampled by the app either (flags 00): the feedback is still what the user sent, and is recorded.
    trace_id, span_id, traceparent = _traceparent("00")
    status, _, body = post(collector.feedback["feedback"], b'"thumbup"',
                           {"Content-Type": "application/json", "traceparent": traceparent,
                            "baggage": "app.variant=a"})
    assert (status, json.loads(body)) == (200, {"status": "Feedback received."})
    started = time.monotonic()
    span, attrs = _feedback_span(sink, collector, trace_id)
    assert time.monotonic() - started >= 2  # it waited (4 s from arrival) for a request that never came
    assert int.from_bytes(span.parent_span_id, "big") == span_id
    assert attrs["flowtel.feedback.correlated"] is False
    assert attrs["flowtel.feedback.uncorrelated_reason"] == "not_found"
    assert not any(k.startswith("flowtel.request.") for k in attrs)
    m = _metrics(collector)
    assert m.value("flowtel_feedback_uncorrelated_total", reason="not_found") == before + 1
    # Baggage stands in for the resource: the variant the client said it saw.
    assert m.value("feedback_total", flow="", score_label="thumbup", correlated="false", variant="a") == 1


def test_late_feedback_after_its_request_left_the_index(stack) -> None:  # type: ignore[no-untyped-def]
    collector, sink, app, _ = stack
    first = seed_client(app.url, collector.feedback["feedback"], "thumbup")  # correlated: still indexed
    _feedback_span(sink, collector, first.client_span.trace_id, **{"flowtel.feedback.correlated": True})
    second = seed_client(app.url, collector.feedback["feedback"], "thumbup")
    _feedback_span(sink, collector, second.client_span.trace_id, **{"flowtel.feedback.correlated": True})
    # max_requests is 1: the second request pushed the first out, so feedback on it now comes too late.
    status, _, _ = post(collector.feedback["feedback"], b'"thumbdown"', first.headers)
    assert status == 200
    _, attrs = _feedback_span(sink, collector, first.client_span.trace_id, feedback='"thumbdown"')
    assert attrs["flowtel.feedback.uncorrelated_reason"] == "not_found"
    assert _metrics(collector).value("feedback_total", score_label="thumbdown", correlated="false") >= 1


def test_missing_or_malformed_traceparent_starts_a_new_trace(stack) -> None:  # type: ignore[no-untyped-def]
    collector, sink, _, _ = stack
    before = _metrics(collector).value("flowtel_feedback_uncorrelated_total", reason="no_trace_context")
    for headers, marker in (({}, "missing"), ({"traceparent": "00-zz-not-a-trace-01"}, "malformed")):
        body = json.dumps({"rating": 1, "case": marker}).encode()
        status, _, _ = post(collector.feedback["feedback"] + "?flatten=true", body,
                            {"Content-Type": "application/json", **headers})
        assert status == 200
        span, attrs = _feedback_span(sink, collector, case=marker)
        assert span.parent_span_id == b"" and list(span.links) == []
        assert attrs["flowtel.feedback.uncorrelated_reason"] == "no_trace_context"
    assert _metrics(collector).value("flowtel_feedback_uncorrelated_total", reason="no_trace_context") == before + 2


@pytest.mark.parametrize(("request_args", "status", "reason"), [
    ((b"thumbs up, really", {"Content-Type": "application/json"}), 400, "malformed"),
    ((b"", {"Content-Type": "application/json"}), 400, "empty"),
    ((b'"' + b"x" * 4096 + b'"', {"Content-Type": "application/json"}), 413, "too_large"),
    ((b'"thumbup"', {"Content-Type": "text/plain"}), 415, "content_type"),
    ((b'"thumbup"', {"Content-Type": "application/json"}, "GET"), 405, "method"),
])
def test_bad_requests_are_refused_clearly_and_cost_nothing_else(stack, request_args, status, reason) -> None:  # type: ignore[no-untyped-def]
    collector, sink, _, _ = stack
    before = _metrics(collector).value("flowtel_receiver_refused_requests_total", receiver="feedback", reason=reason)
    got, headers, body = post(collector.feedback["feedback"], *request_args)
    assert got == status
    error = json.loads(body)["error"]
    assert error["code"] == reason and error["message"]
    if status == 405:
        assert headers["Allow"] == "POST"
    assert _metrics(collector).value("flowtel_receiver_refused_requests_total", receiver="feedback",
                                     reason=reason) == before + 1
    # The endpoint keeps serving: the next good feedback is recorded.
    marker = uuid.uuid4().hex
    ok, _, _ = post(collector.feedback["feedback"] + "?flatten=true", json.dumps({"vote": "up", "id": marker}).encode(),
                    {"Content-Type": "application/json"})
    assert ok == 200
    _feedback_span(sink, collector, id=marker)


def test_wrong_path_is_404(stack) -> None:  # type: ignore[no-untyped-def]
    collector, _, _, _ = stack
    status, _, body = post(collector.feedback["feedback"].removesuffix("/feedback") + "/score", b'"thumbup"',
                           {"Content-Type": "application/json"})
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_bearer_token_guards_the_feedback_endpoint_only(stack) -> None:  # type: ignore[no-untyped-def]
    collector, sink, app, _ = stack
    url = collector.feedback["feedback/secure"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, got_headers, body = post(url, b'"thumbup"', {"Content-Type": "application/json", **headers})
        assert status == 401 and got_headers["WWW-Authenticate"] == "Bearer"
        assert json.loads(body)["error"]["code"] == "unauthenticated"
    # The seed client sends its key as a bearer token to both calls: with the right key it works unchanged,
    # while the OTLP receiver (no auth configured) keeps taking the app's spans.
    exchange = seed_client(app.url, url, "thumbup", api_key=TOKEN)
    assert exchange.feedback_status == 200
    _, attrs = _feedback_span(sink, collector, exchange.client_span.trace_id)
    assert attrs["flowtel.feedback.correlated"] is True


def test_baggage_beyond_the_limits_is_dropped_and_counted(stack) -> None:  # type: ignore[no-untyped-def]
    collector, sink, _, _ = stack
    marker = uuid.uuid4().hex
    entries = [f"k{i}=v{i}" for i in range(100)] + ["big=" + "x" * 5000]
    status, _, _ = post(collector.feedback["feedback"] + "?flatten=true",
                        json.dumps({"thumb": "down", "id": marker}).encode(),
                        {"Content-Type": "application/json", "baggage": ",".join(entries)})
    assert status == 200
    _, attrs = _feedback_span(sink, collector, id=marker)
    kept = [k for k in attrs if k.startswith("k") and k[1:].isdigit()]
    assert len(kept) == 64 and "big" not in attrs
    assert attrs["flowtel.feedback.baggage_dropped"] == 37
