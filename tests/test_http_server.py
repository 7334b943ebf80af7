"""The collector's HTTP listeners under attack, over loopback: the real collector process, raw HTTP/1.1 clients and
the real OTLP/HTTP exporter. Each test attacks, then checks that a good client is still served and that the
collector's own metrics account for every refused request (and that its log has no traceback).

What the server must do (``flowtel._wsgi``, on uvicorn): keep connections alive (HTTP/1.1) with a real listen
backlog, take chunked bodies, listen on IPv6, bound connections (the connection longest waiting for a head makes
room) and threads, bound the request head in time and size, answer a stalled body 408 (no traceback), hold at
most ``max_buffered_bytes`` of request bodies, and name no Python version in its Server header.
"""

from __future__ import annotations

import inspect
import json
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from uvicorn.protocols.http import httptools_impl

from flowtel import _uvicorn
from flowtel._wsgi import WSGIEndpoint

from http_attack import Holder, host_port, keep_alive_load, post_bytes, process_status
from otlp_sink import OTLPSink
from test_collector_receivers import (
    PROTOBUF,
    Collector,
    Snapshot,
    _started,
    accepted,
    post,
    refused,
    sdk_spans,
    spans_request,
)

MIB = 1 << 20
CAP = 300

EDGE_CONFIG = """
receivers:
  otlp:
    protocols:
      http: {endpoint: "127.0.0.1:0", max_request_body_size: 1048576, max_buffered_bytes: 4194304,
             max_connections: %(cap)d, read_header_timeout: 60s, read_timeout: 2s}
  otlp/big:
    protocols:
      http: {endpoint: "127.0.0.1:0", max_request_body_size: 4194304, max_buffered_bytes: 8388608, read_timeout: 2s}
  feedback: {endpoint: "127.0.0.1:0", read_timeout: 2s}
processors:
  batch: {timeout: 20ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
extensions:
  health_check: {endpoint: "127.0.0.1:0"}
service:
  extensions: [health_check]
  pipelines:
    traces: {receivers: [otlp, otlp/big, feedback], processors: [batch], exporters: [prometheus, otlp/sink]}
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    with OTLPSink() as sink:
        yield from _started(EDGE_CONFIG % {"sink": sink.endpoint, "cap": CAP}, tmp_path_factory.mktemp("edge"), sink)


@pytest.fixture(autouse=True)
def _edge_healthy_after(request: pytest.FixtureRequest) -> Iterator[None]:
    used = request.getfixturevalue("edge") if "edge" in request.fixturenames else None
    since = len(used.proc.lines) if used else 0
    yield
    if used is not None:
        used.assert_healthy(since)


def fb(edge: Collector) -> str:
    return edge.proc.feedback["feedback"]


def wait_forwarded_count(edge: Collector, before: Snapshot, n: int) -> None:
    assert edge.sink is not None
    sink = edge.sink
    edge.proc.wait_for(lambda: len(sink.spans()) - before.forwarded >= n, timeout=60)


def rss_peak_kib(pid: int, samples: int = 10) -> int:
    peak = 0
    for _ in range(samples):
        peak = max(peak, process_status(pid)["rss_kib"])
        time.sleep(0.1)
    return peak


def test_200_keep_alive_clients_are_all_served_without_resets(edge: Collector) -> None:
    before = edge.snapshot()
    request, _ = spans_request(2)
    result = keep_alive_load(edge.traces_url(), clients=200, requests_each=5, body=request.SerializeToString())
    assert result.errors == []
    assert result.statuses == {200: 1000}
    # HTTP/1.1 and kept alive: one connection per client (the old server answered HTTP/1.0 and closed each).
    assert result.versions == {"HTTP/1.1": 1000}
    assert result.connections == 200
    wait_forwarded_count(edge, before, 2000)
    edge.still_serving(before, "http", {accepted("http"): 2000}, earlier=2000)


def test_real_exporters_in_parallel_succeed_on_the_first_try(edge: Collector) -> None:
    before = edge.snapshot()
    exporters = [HTTPSpanExporter(endpoint=edge.traces_url(), timeout=30) for _ in range(16)]

    def export_all(exporter: HTTPSpanExporter) -> list[SpanExportResult]:
        return [exporter.export(sdk_spans(3, "parallel")) for _ in range(10)]

    try:
        with ThreadPoolExecutor(16) as pool:
            results = [r for batch in pool.map(export_all, exporters) for r in batch]
    finally:
        for exporter in exporters:
            exporter.shutdown()
    assert results == [SpanExportResult.SUCCESS] * 160
    wait_forwarded_count(edge, before, 480)
    # Nothing refused, so nothing was retried: exactly the spans sent were accepted.
    assert edge.delta(before) == {accepted("http"): 480}


def test_two_thousand_slow_heads_hold_neither_threads_nor_more_than_the_cap(edge: Collector) -> None:
    before = edge.snapshot()
    idle = process_status(edge.pid)
    slow_head = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"  # and then nothing: the head never ends
    with Holder() as slow:
        opened = slow.open(edge.http_url(), 2000, slow_head)
        assert opened == 2000  # a real backlog: every connection was accepted
        # At most max_connections stay open: each one past the cap closed the one longest waiting for its head.
        # (The event loop accepts up to the backlog at once, so it may hold more for a moment before it evicts.)
        edge.proc.wait_for(lambda: process_status(edge.pid)["fds"] <= idle["fds"] + CAP + 10, timeout=20)
        # One event loop holds the connections: no thread each (the old server had 1 961 threads for 1 980).
        assert process_status(edge.pid)["threads"] <= idle["threads"] + 2
        # A good client is served meanwhile (it makes room the same way).
        edge.send_good("http")
        assert slow.answers(timeout=3) == [None] * 2000  # no answer: closed, or still waiting for the head
        closed_by_server = slow.closed
    # Each connection past the cap closed one waiting for its head: ours, or one left idle by an earlier test.
    assert 2000 + 1 - CAP - 100 <= closed_by_server <= 2000 + 1 - CAP
    delta = edge.delta(before)
    evicted = delta.pop(refused("http", "evicted_slow_head"))
    # Every eviction of a connection that had sent part of a head is counted (one that the server evicted before
    # reading its first bytes was only idle); none was refused outright, since slow heads make room.
    assert 2000 + 1 - CAP - 50 <= evicted <= 2000 + 1 - CAP
    assert delta == {accepted("http"): 2}
    edge.still_serving(edge.snapshot(), "http", {})


def test_stalled_body_is_408_without_a_traceback_and_counted(edge: Collector) -> None:
    before = edge.snapshot()
    request, _ = spans_request(1)
    body = request.SerializeToString()
    with Holder() as stalled:
        # 40 OTLP requests and 5 feedbacks send half of their body, then nothing (read_timeout is 2 s).
        assert stalled.open(edge.http_url(), 40, post_bytes("/v1/traces", body)[:-len(body) // 2]) == 40
        feedback = b'"thumbup"'
        assert stalled.open(fb(edge), 5, post_bytes("/feedback", feedback, "application/json")[:-3]) == 5
        started = time.monotonic()
        answers = stalled.answers(timeout=15)
    assert time.monotonic() - started < 10
    assert [a[0] if a else None for a in answers] == [408] * 45
    assert all(a is not None and a[1]["connection"] == "close" for a in answers)
    edge.still_serving(before, "http", {refused("http", "body_timeout"): 40,
                                        refused("http", "body_timeout", "feedback"): 5})


def test_slow_head_is_408_and_a_huge_head_431(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = EDGE_CONFIG.replace("read_header_timeout: 60s", "read_header_timeout: 1s")
    with OTLPSink() as sink:
        for edge in _started(config % {"sink": sink.endpoint, "cap": CAP}, tmp_path_factory.mktemp("head"), sink):
            before = edge.snapshot()
            with Holder() as clients:
                clients.open(edge.http_url(), 3, b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
                clients.open(edge.http_url(), 2, b"POST /v1/traces HTTP/1.1\r\nX-Big: " + b"a" * (70 * 1024))
                clients.open(edge.http_url(), 4, b"GARBAGE / NOT-HTTP\r\n\r\n")
                answers = clients.answers(timeout=10)
            assert [a[0] if a else None for a in answers] == [408, 408, 408, 431, 431, 400, 400, 400, 400]
            edge.still_serving(before, "http", {refused("http", "head_timeout"): 3,
                                                refused("http", "head_too_large"): 2, refused("http", "bad_http"): 4})
            # One line per kind of refusal, not one per request: a client cannot fill the log.
            log = "".join(edge.proc.lines[before.log_lines:])
            assert log.count("bad_http") == 1 and log.count("Invalid HTTP request") == 1, log


def test_stalled_large_bodies_hold_at_most_the_buffered_bytes_bound(edge: Collector) -> None:
    before = edge.snapshot()
    head = (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 1048576\r\n\r\n")
    rss_before = process_status(edge.pid)["rss_kib"]
    with Holder() as stalled:
        # 60 bodies of 1 MiB announced (the largest allowed), 1 KiB sent: the old server allocated each announced
        # body up front (60 MiB here; 90 at 1 byte/s held 989 MiB in production). Now each holds what it sent.
        assert stalled.open(edge.http_url(), 60, head + bytes(1024)) == 60
        assert rss_peak_kib(edge.pid) - rss_before < 16 * 1024
        edge.send_good("http")  # good clients are served meanwhile
        answers = stalled.answers(timeout=15)
    assert [a[0] if a else None for a in answers] == [408] * 60
    # Bodies that arrive are charged as they come. otlp/big takes 4 MiB bodies and buffers 8 MiB: 20 clients send
    # 3.5 MiB of 4 MiB and stall, 70 MiB that the old server held; now at most 2 are held, the rest are refused
    # (503, Retry-After) as the budget runs out; read buffers of each connection sending (up to about 0.5 MiB)
    # come on top.
    big_head = head.replace(b"1048576", b"4194304")
    with Holder() as filling:
        assert filling.open(edge.http_url("otlp/big"), 20, big_head + bytes(3584 * 1024)) == 20
        assert rss_peak_kib(edge.pid) - rss_before < (8 + 20 * 0.5 + 8) * 1024
        answers = filling.answers(timeout=15)
    statuses = [a[0] if a else 0 for a in answers]
    busy, timed_out = statuses.count(503), statuses.count(408)
    assert busy >= 18 and busy + timed_out == 20, statuses
    assert all(a[1].get("retry-after") == "1" for a in answers if a and a[0] == 503)
    edge.still_serving(before, "http", {refused("http", "body_timeout"): 60, accepted("http"): 2,
                                        refused("http", "body_timeout", "otlp/big"): timed_out,
                                        refused("http", "buffer_full", "otlp/big"): busy}, earlier=2)


def test_chunked_bodies_are_accepted(edge: Collector) -> None:
    before = edge.snapshot()
    request, ids = spans_request(3)
    data = request.SerializeToString()
    response = requests.post(edge.traces_url(), data=iter([data[:10], data[10:]]),  # a generator: chunked
                             headers={"Content-Type": PROTOBUF}, timeout=10)
    assert response.status_code == 200, response.content
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    edge.wait_forwarded(ids, before)
    feedback = requests.post(fb(edge), data=iter([b'"thumb', b'up"']), headers={"Content-Type": "application/json"},
                             timeout=10)
    assert feedback.status_code == 200, feedback.content
    # A chunked body over max_request_body_size is cut off at the limit and answered as the receiver answers a
    # Content-Length over it (413, RESOURCE_EXHAUSTED, counted).
    too_big = requests.post(edge.traces_url(), data=iter([bytes(512 * 1024)] * 3), headers={"Content-Type": PROTOBUF},
                            timeout=10)
    assert too_big.status_code == 413
    edge.still_serving(before, "http", {accepted("http"): 3, accepted("http", "feedback"): 1,
                                        refused("http", "too_large"): 1}, earlier=4)


def test_server_header_names_no_python_version(edge: Collector) -> None:
    before = edge.snapshot()
    request, _ = spans_request(1)
    answers = [post(edge.traces_url(), request.SerializeToString()),
               requests.post(fb(edge), data=b'"ok"', headers={"Content-Type": "application/json"}, timeout=10),
               requests.get(edge.proc.prometheus["prometheus"], timeout=10),
               requests.get(edge.proc.health, timeout=10)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    for answer in answers:
        server = answer.headers.get("Server", "")
        assert "python" not in server.lower() and "/" not in server, answer.headers
    wait_forwarded_count(edge, before, 2)  # the span and the feedback, so that they count in no later test


def test_feedback_without_content_type_is_taken_as_json(edge: Collector) -> None:
    before = edge.snapshot()
    with socket.create_connection(host_port(fb(edge)), timeout=10) as sock:
        sock.sendall(b'POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n"thumbup"')
        received = b""
        while b"Feedback received" not in received and (chunk := sock.recv(4096)):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert json.loads(received.partition(b"\r\n\r\n")[2]) == {"status": "Feedback received."}
    edge.still_serving(before, "http", {accepted("http", "feedback"): 1}, earlier=1)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ipv6_listener(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = EDGE_CONFIG.replace('http: {endpoint: "127.0.0.1:0"', 'http: {endpoint: "[::1]:0"')
    with OTLPSink() as sink:
        for edge in _started(config % {"sink": sink.endpoint, "cap": CAP}, tmp_path_factory.mktemp("v6"), sink):
            assert edge.http_url().startswith("http://[::1]:")
            before = edge.snapshot()
            exporter = HTTPSpanExporter(endpoint=edge.traces_url(), timeout=10)
            try:
                assert exporter.export(sdk_spans(2, "ipv6")) == SpanExportResult.SUCCESS
            finally:
                exporter.shutdown()
            wait_forwarded_count(edge, before, 2)
            edge.still_serving(before, "http", {accepted("http"): 2}, earlier=2)


def test_uvicorn_internals_flowtel_extends_are_still_there() -> None:
    """flowtel._uvicorn subclasses uvicorn's protocol; an upgrade that renames what it overrides or reads must
    fail here, not silently drop the connection cap and the head deadline."""
    assert _uvicorn.private_api_present() == []
    protocol_init = inspect.getsource(httptools_impl.HttpToolsProtocol.__init__)
    for name in _uvicorn.READ:
        assert f"self.{name} " in protocol_init or f"self.{name}:" in protocol_init, name
    cycle_init = inspect.getsource(httptools_impl.RequestResponseCycle.__init__)
    for name in _uvicorn.CYCLE:
        assert f"self.{name} " in cycle_init or f"self.{name}:" in cycle_init, name


def test_in_process_endpoint_leaves_the_apps_signals_and_logging_alone() -> None:
    """The Prometheus and feedback endpoints run inside users' apps (some served by uvicorn themselves): starting
    and stopping flowtel's server changes no signal handler and no logger the app configured."""
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    access, error = logging.getLogger("uvicorn.access"), logging.getLogger("uvicorn.error")
    handler = logging.NullHandler()
    access.addHandler(handler)
    try:
        state = (access.handlers[:], access.propagate, access.level, error.handlers[:], error.propagate, error.level)

        def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]

        endpoint = WSGIEndpoint(app, "127.0.0.1", 0, name="in-app").start()
        try:
            answer = requests.get(endpoint.url, timeout=10)
            assert (answer.status_code, answer.text) == (200, "ok\n")
            assert {sig: signal.getsignal(sig) for sig in signals} == signals
        finally:
            endpoint.shutdown()
        assert (access.handlers, access.propagate, access.level, error.handlers, error.propagate,
                error.level) == state
        assert {sig: signal.getsignal(sig) for sig in signals} == signals
        with pytest.raises(OSError):  # the port was released: nothing listens there any more
            socket.create_connection(("127.0.0.1", endpoint.port), timeout=2).close()
    finally:
        access.removeHandler(handler)
