"""Feedback in-process: an app that serves HTTP itself mounts flowtel's WSGI or ASGI feedback app.

The same seed 000 exchange as the collector test, with the scoring app and the feedback
endpoint in one process under ``flowtel.configure()``: the feedback span goes through the
in-process pipeline, which joins it to the request and counts it on the Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc

from flowtel._wsgi import WSGIEndpoint
from flowtel.feedback import FeedbackLimits
from flowtel.processors.correlation import RequestIndex, RequestRecord
from flowtel.processors.scoring import FeedbackScoring, Score

from feedback_client import ScoringApp, post, seed_client
from producers import use_promptflow_openai_injection


def _feedback(harness):  # type: ignore[no-untyped-def]
    return [s for s in harness.spans() if s.name == "promptflow-feedback"]


def test_wsgi_feedback_app_joins_the_request_in_process(make_harness, fake_llm) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness({"PF_SERVING_METRICS_COMMON_DIMENSIONS": '{"deployment": "green"}'})
    use_promptflow_openai_injection(True)
    endpoint = WSGIEndpoint(harness.handle.feedback_app(), "127.0.0.1", 0, name="feedback").start()
    try:
        with ScoringApp(fake_llm.base_url) as app:
            exchange = seed_client(app.url, endpoint.url + "/feedback", {"thumb": "up", "reason": "clear"},
                                   query="?flatten=true")
            assert exchange.feedback_status == 200
            assert exchange.feedback_response == {"status": "Feedback received."}
            status, _, body = post(endpoint.url + "/feedback", b"{not json", {"Content-Type": "application/json"})
            assert status == 400 and json.loads(body)["error"]["code"] == "malformed"
    finally:
        endpoint.shutdown()
    [span] = _feedback(harness)
    client = exchange.client_span
    assert (span.context.trace_id, span.parent.span_id) == (client.trace_id, client.span_id)
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [(client.trace_id,
                                                                                       client.span_id)]
    attrs = dict(span.attributes)
    assert attrs["thumb"] == "up" and attrs["reason"] == "clear"
    assert attrs["flowtel.feedback.correlated"] is True
    assert attrs["flowtel.request.flow"] == "chat_flow" and attrs["flowtel.request.input_tokens"] == 8
    [event] = [e for e in span.events if e.name == "gen_ai.evaluation.result"]
    assert dict(event.attributes) == {"gen_ai.evaluation.name": "user_feedback", "gen_ai.evaluation.score.value": 1.0,
                                      "gen_ai.evaluation.score.label": "thumbup",
                                      "gen_ai.evaluation.explanation": "clear"}
    metrics = harness.scrape()
    assert metrics.value("feedback_total", flow="chat_flow", score_label="thumbup", correlated="true",
                         deployment="green") == 1
    assert metrics.value("flowtel_receiver_refused_requests_total", receiver="feedback", reason="malformed") == 1


def _asgi(app, body_chunks: list[bytes], headers: dict[str, str], path: str = "/feedback"):  # type: ignore[no-untyped-def]
    sent: list[dict] = []
    chunks = list(body_chunks)

    async def receive() -> dict:
        body = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    start, body = sent
    return start["status"], dict((k.decode(), v.decode()) for k, v in start["headers"]), body["body"]


def test_asgi_feedback_app_reads_chunked_bodies_and_bounds_them(make_harness) -> None:  # type: ignore[no-untyped-def]
    harness = make_harness(feedback_wait_s=0)  # no request will come: do not wait for one
    app = harness.handle.feedback_asgi_app(limits=FeedbackLimits(max_body_bytes=64), token="s3cret")
    auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/json",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    status, headers, body = _asgi(app, [b'{"rating"', b': 0.2}'], auth)
    assert (status, json.loads(body)) == (200, {"status": "Feedback received."})
    assert headers["content-type"] == "application/json"
    # No Content-Length: the body is cut off at the limit, not read to its end.
    status, _, body = _asgi(app, [b'"' + b"x" * 40, b"x" * 40 + b'"', b"never read"], auth)
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"
    status, headers, _ = _asgi(app, [b'"thumbup"'], {"Content-Type": "application/json"})
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    [span] = _feedback(harness)
    assert span.context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
    assert span.attributes["feedback"] == '{"rating": 0.2}'
    assert span.attributes["flowtel.feedback.correlated"] is False
    [event] = [e for e in span.events if e.name == "gen_ai.evaluation.result"]
    assert event.attributes["gen_ai.evaluation.score.label"] == "thumbdown"


def test_scoring_reads_the_usual_shapes() -> None:
    scoring = FeedbackScoring()
    assert scoring.score("thumbdown") == Score(0.0, "thumbdown")
    assert scoring.score(" Thumbs-Up ") == Score(1.0, "thumbup")
    assert scoring.score("\N{THUMBS DOWN SIGN}") == Score(0.0, "thumbdown")
    assert scoring.score(True) == Score(1.0, "thumbup") and scoring.score(False) == Score(0.0, "thumbdown")
    assert scoring.score(0.7) == Score(0.7, "thumbup") and scoring.score(0.2) == Score(0.2, "thumbdown")
    assert scoring.score("4") == Score(4.0, "thumbup")
    assert scoring.score(float("nan")) is None and scoring.score("maybe") is None and scoring.score(None) is None
    assert scoring.score({"vote": "down", "comment": "wrong"}) == Score(0.0, "thumbdown", "wrong")
    assert scoring.score({"rating": {"rating": 5}}) is None  # one level only
    stars = FeedbackScoring(positive_threshold=3)
    assert stars.score(2) == Score(2.0, "thumbdown") and stars.score(3) == Score(3.0, "thumbup")
    # From span attributes: prompt flow's raw body, or the flattened keys.
    assert scoring.read({"feedback": '"thumbup"'}) == Score(1.0, "thumbup")
    assert scoring.read({"feedback": "thumbdown"}) == Score(0.0, "thumbdown")  # sent without JSON quotes
    assert scoring.read({"feedback": '{"score": 0}'}) == Score(0.0, "thumbdown")
    assert scoring.read({"rating": 1, "user.tier": "pro"}) == Score(1.0, "thumbup")
    assert scoring.read({"feedback": '"no idea"'}) is None


def _record(trace_id: int) -> RequestRecord:
    return RequestRecord(trace_id, (trace_id + 1, trace_id + 2, trace_id + 3), "chat_flow", "200", False, 12.5, {})


def test_request_index_is_bounded_in_count_and_age() -> None:
    index = RequestIndex(max_requests=3, window_ns=1_000)
    for i in range(5):
        index.add(_record(i * 10), now_ns=i)
    assert len(index) == 3 and 0 not in index and 10 not in index and 40 in index
    assert index.find(40, 43) is not None and index.find(10, 11) is None
    # The traceparent may name the flow span, the request span or its parent; another span gets the latest.
    second = RequestRecord(40, (100, 101, 102), "other_flow", "200", False, 1.0, {})
    index.add(second, now_ns=5)
    assert len(index) == 3 and index.find(40, 999) is second and index.find(40, 41).flow == "chat_flow"
    index.expire(now_ns=1_004)
    assert len(index) == 2 and 20 not in index  # indexed at 2, older than the 1 µs window by now
    index.expire(now_ns=10_000)
    assert len(index) == 0


def test_request_index_memory_stays_flat_without_feedback() -> None:
    """A stream of requests that never get feedback: memory grows to the bound, then not at all."""
    index = RequestIndex(max_requests=20_000, window_ns=3600 * 10**9)
    resource = {"service.name": "chat-app", "app.variant": "b"}  # shared, as the adapters share it per batch
    tracemalloc.start()
    try:
        def feed(start: int, count: int) -> None:
            for i in range(start, start + count):
                index.add(RequestRecord(i, (i, i + 1, i + 2), "chat_flow", "200", False, 12.5, resource,
                                        "gpt-4o-mini", 120, 30), now_ns=i)
        feed(0, 40_000)  # the bound, then one full turnover (the dict's table settles at its size)
        settled = tracemalloc.get_traced_memory()[0]
        feed(40_000, 160_000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(index) == 20_000
    assert after <= settled * 1.02, (settled, after)
    per_request = settled / 20_000
    assert 100 < per_request < 1024, per_request  # the README's "about 0.5 KiB each"
