"""Property-based: the real collector's receivers, over loopback, on mutated protobuf (HTTP and gRPC), JSON and
feedback bodies.

Every answer is a clear 2xx / 4xx (never a 5xx; over gRPC never INTERNAL, UNKNOWN or DATA_LOSS), nothing leaves a
traceback in the collector's log, and no span is accepted and then lost: once the fuzzing is over, the spans the
receivers accepted (their own metric) are exactly the spans the sink received. Bounded examples so CI stays well
under a minute.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
from attacked_collector import Collector, started
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_fuzz_wire import requests as otlp_requests

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    yield from started(tmp_path_factory.mktemp("fuzz"))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes replaced, cut, inserted or repeated (or as it is: valid bodies must pass too)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(out)))
        kind = draw(st.sampled_from(["replace", "cut", "insert", "repeat"]))
        if kind == "replace" and at < len(out):
            out[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del out[at:at + draw(st.integers(1, 16))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            out[at:at] = out[at:at + draw(st.integers(1, 64))]
    return bytes(out)


def _answered(response: requests.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:300])


@FUZZ
@given(st.data())
def test_mutated_protobuf_bodies(collector: Collector, data: st.DataObject) -> None:
    body = data.draw(mutated(data.draw(otlp_requests())))
    if data.draw(st.booleans()):
        _answered(collector.post(gzip.compress(body), **{"Content-Encoding": "gzip"}))
    else:
        _answered(collector.post(body))


_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)


@pytest.fixture(scope="module")
def grpc_export(collector: Collector) -> Iterator[Any]:
    with grpc.insecure_channel(collector.proc.grpc["otlp"]) as channel:
        yield channel.unary_unary(_EXPORT)  # raw bytes in and out: the mutated body goes on the wire as it is


@FUZZ
@given(st.data())
def test_mutated_grpc_messages(grpc_export: Any, data: st.DataObject) -> None:
    body = data.draw(mutated(data.draw(otlp_requests())))
    try:
        grpc_export(body, timeout=30)
    except grpc.RpcError as error:
        assert error.code() not in _SERVER_FAULTS, (error.code(), error.details())


def _hex_ids(obj: Any) -> Any:
    """OTLP/JSON writes ids as hex, where the protobuf JSON mapping writes base64."""
    if isinstance(obj, dict):
        for key in ("traceId", "spanId", "parentSpanId"):
            if isinstance(obj.get(key), str):
                obj[key] = base64.b64decode(obj[key]).hex()
        for value in obj.values():
            _hex_ids(value)
    elif isinstance(obj, list):
        for value in obj:
            _hex_ids(value)
    return obj


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(
        ["resourceSpans", "scopeSpans", "spans", "traceId", "spanId", "name", "attributes", "key", "value",
         "stringValue", "kind", "rating", "comment", "x"]), children, max_size=4), max_leaves=10)


@FUZZ
@given(st.data())
def test_mutated_json_bodies(collector: Collector, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        message = ExportTraceServiceRequest.FromString(data.draw(otlp_requests()))
        text = json.dumps(_hex_ids(json_format.MessageToDict(message))).encode()
        body = data.draw(mutated(text))
    else:
        body = json.dumps(data.draw(JSON_VALUES)).encode()
    _answered(collector.post(body, **{"Content-Type": "application/json"}))


TRACEPARENTS = st.sampled_from(["", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "garbage",
                                "00-00000000000000000000000000000000-0000000000000000-01"])


@FUZZ
@given(st.data())
def test_mutated_feedback_bodies(collector: Collector, data: st.DataObject) -> None:
    value = data.draw(JSON_VALUES)
    body = json.dumps(value).encode()
    if data.draw(st.booleans()):
        body = data.draw(mutated(body))
    headers = {"Content-Type": "application/json", "traceparent": data.draw(TRACEPARENTS),
               "baggage": data.draw(st.sampled_from(["", "variant=b", "a=%zz,,=", "k=" + "v" * 5000]))}
    flatten = data.draw(st.sampled_from(["", "?flatten=true", "?flatten=false"]))
    url = collector.proc.feedback["feedback"] + flatten
    _answered(requests.post(url, data=body, headers=headers, timeout=30))


def test_fuzzed_collector_lost_nothing_and_still_serves(collector: Collector) -> None:
    """Runs after the fuzzing above (file order): every accepted span reached the sink, none twice."""
    collector.accounted(0)
    metrics = collector.scrape()
    for receiver, transport in (("otlp", "http"), ("otlp", "grpc"), ("feedback", "http")):
        # the fuzz did reach the pipeline, not only the parsers
        assert metrics.value("otelcol_receiver_accepted_spans_total", receiver=receiver, transport=transport) > 0
