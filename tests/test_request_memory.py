"""One request holds at most ``K`` times its decompressed size in memory (issue "hardened under attack"), and what it
holds grows linearly with it. ARCHITECTURE.md ("Bounds") documents ``K``; ``bench/bench_request_memory.py``
prints the figures.

Each crafted shape (``tests/request_memory.py``) goes through an in-process collector by the code path a request
takes in the collector; the tracemalloc peak above what was allocated before the request is compared with the
request's size. tracemalloc counts Python allocations only (upb's arenas are C memory); the bench's ``--rss``
cross-checks with a subprocess's resident memory.
"""

from __future__ import annotations

import pytest
import request_memory
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from flowtel.exporters.prometheus_config import ReceivedMetricsConfig
from flowtel.exporters.received_metrics import ReceivedMetrics

#: The documented bound (ARCHITECTURE.md, "Bounds"): peak Python memory of one request over its decompressed size.
K = 40
#: Allowance for what does not grow with the request (a few first-use allocations, per-request objects).
CONSTANT = 64 << 10
#: A request twice as large may cost at most this much more than twice as much (linear, with noise).
LINEAR = 1.25


@pytest.mark.parametrize("shape", request_memory.SHAPES, ids=lambda s: s.name)
def test_one_request_holds_at_most_k_times_its_size_and_grows_linearly(shape: request_memory.Shape) -> None:
    small = request_memory.measure(shape, shape.n // 2)
    large = request_memory.measure(shape, shape.n)
    for got in (small, large):
        assert got.status == "200 OK", got
        assert got.peak <= K * got.decoded + CONSTANT, (
            f"{shape.name} at n={got.n}: {got.peak} bytes at the peak for a request of {got.decoded} "
            f"({got.ratio:.1f}x, documented bound {K}x)")
    assert large.decoded >= 1.8 * small.decoded  # the shape grows with n
    assert large.peak <= LINEAR * small.peak * large.decoded / small.decoded + CONSTANT, (
        f"{shape.name}: {small.peak} bytes for {small.decoded}, {large.peak} bytes for {large.decoded}: "
        f"faster than linear")


def test_the_shapes_reach_the_stage_they_are_crafted_for() -> None:
    """The worst shapes are the worst because they do work: not refused on the way, and of the measured size."""
    got = request_memory.measure(request_memory.BY_NAME["empty_spans"], 5_000)
    assert got.decoded >= 2 * 5_000 and got.ratio > 1  # every span read (and rejected: partial success)
    got = request_memory.measure(request_memory.BY_NAME["gzip_bomb"], 20_000)
    assert got.wire * 100 < got.decoded and got.ratio > 1  # inflated, then read; the bound is on what it inflates to


def test_a_request_of_many_new_metrics_past_the_family_limit_expires_series_once() -> None:
    """Past ``max_metrics``, each new family used to walk every stored series for expired ones: quadratic in the
    request (4,000 one-point metrics took 1 s of CPU, a 4 MiB request minutes)."""
    received = ReceivedMetrics(ReceivedMetricsConfig(max_metrics=10))
    walks = 0
    expire = received._expire

    def counting(now: float) -> None:
        nonlocal walks
        walks += 1
        expire(now)

    received._expire = counting
    crafted = request_memory.many_metrics(1_000)
    request = ExportMetricsServiceRequest.FromString(crafted.body)
    dropped = received.consume(request, derived_names=set())
    assert dropped == {"metric_limit": 990}
    assert walks == 1
    received.consume(request, derived_names=set())  # within a second of the last: no walk at all
    assert walks == 1
