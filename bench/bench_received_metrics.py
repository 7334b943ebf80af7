"""What exposing received OTLP metrics on Prometheus costs, against decoding the requests alone.

Workload. An app's ``MeterProvider`` (the OpenTelemetry SDK) with prompt flow's kind of metrics:
a counter (``--label-sets`` label sets), a histogram with prompt flow's 20 millisecond buckets (same
label sets), an up-down counter and a gauge (a tenth of them each). Before timing, the app records
and is collected ``--requests`` times in a row, in CUMULATIVE or DELTA temporality, and each
collection is encoded as its OTLP exporter encodes it (``encode_metrics``) into bytes: a real
sequence of requests with rising timestamps, as one app would send them.

Stages, each timed with the thread's CPU clock over the whole sequence:

- decode: ``ExportMetricsServiceRequest.FromString`` of every request (what the collector's
  receiver does anyway): the baseline;
- decode + read: the same, then every point's attributes (``flowtel.otlp.decode_attributes``),
  value or bucket counts read into Python objects: the least any consumer of the points does;
- decode + consume: decode, then ``ReceivedMetrics.consume`` (translation, delta accumulation,
  limits) into a fresh ``ReceivedMetrics``;
- scrape: ``families()`` plus prometheus-client's text exposition of everything exposed, once
  after the sequence (a scrape, without HTTP), reported per exposed sample.

Rounds alternate the order of the stages; each round's ratios (decode + consume) / decode and
(decode + consume) / (decode + read) are paired, and their medians are reported with the medians
of points/s. Timings are reported, never asserted.

    .venv/bin/python bench/bench_received_metrics.py [--requests 50] [--label-sets 100] [--rounds 7] [--delta]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client.exposition import generate_latest

import flowtel.collector  # noqa: F401  (the collector's config before the exporter modules it imports)
from flowtel.exporters.received_metrics import ReceivedMetrics
from flowtel.otlp import decode_attributes
from flowtel.processors.catalog import PF_BUCKETS_MS


class _Families:
    def __init__(self, received: ReceivedMetrics) -> None:
        self.received = received

    def collect(self) -> list:  # type: ignore[type-arg]
        return self.received.families()


def workload(requests: int, label_sets: int, delta: bool) -> tuple[list[bytes], int]:
    temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
    reader = InMemoryMetricReader(preferred_temporality={Counter: temporality, Histogram: temporality,
                                                         UpDownCounter: temporality})
    provider = MeterProvider(resource=Resource.create({"service.name": "bench", "service.instance.id": "1"}),
                             metric_readers=[reader])
    meter = provider.get_meter("bench", "1.0")
    counter = meter.create_counter("llm.requests", unit="{request}")
    histogram = meter.create_histogram("llm.latency", unit="ms", explicit_bucket_boundaries_advisory=PF_BUCKETS_MS)
    updown = meter.create_up_down_counter("sessions.active")
    gauge = meter.create_gauge("queue.depth")
    labels = [{"flow": f"flow-{i % 7}", "node": f"node-{i}", "model": "gpt-4o-mini"} for i in range(label_sets)]
    out: list[bytes] = []
    points = 0
    for n in range(requests):
        for i, attrs in enumerate(labels):
            counter.add(1 + (i + n) % 3, attrs)
            histogram.record(float((i * 37 + n * 11) % 5000), attrs)
            if i % 10 == 0:
                updown.add(1 if n % 2 else -1, attrs)
                gauge.set(float(n), attrs)
        data = reader.get_metrics_data()
        assert data is not None
        request = encode_metrics(data)
        points += sum(len(getattr(m, m.WhichOneof("data")).data_points) for rm in request.resource_metrics
                      for sm in rm.scope_metrics for m in sm.metrics)
        out.append(request.SerializeToString())
    provider.shutdown()
    return out, points


def _decode(raw: list[bytes]) -> int:
    start = time.thread_time_ns()
    for body in raw:
        ExportMetricsServiceRequest.FromString(body)
    return time.thread_time_ns() - start


def _read(raw: list[bytes]) -> int:
    start = time.thread_time_ns()
    for body in raw:
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics:
            decode_attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        decode_attributes(point.attributes)
                        if kind == "histogram":
                            list(point.bucket_counts), tuple(point.explicit_bounds), point.sum, point.count
                        else:
                            getattr(point, point.WhichOneof("value"))
    return time.thread_time_ns() - start


def _consume(raw: list[bytes]) -> tuple[int, ReceivedMetrics, dict[str, int]]:
    received = ReceivedMetrics()
    dropped: dict[str, int] = {}
    start = time.thread_time_ns()
    for body in raw:
        for reason, n in received.consume(ExportMetricsServiceRequest.FromString(body), derived_names=set()).items():
            dropped[reason] = dropped.get(reason, 0) + n
    return time.thread_time_ns() - start, received, dropped


def _scrape(received: ReceivedMetrics) -> tuple[int, int]:
    holder = _Families(received)
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(holder)  # type: ignore[arg-type]
    start = time.thread_time_ns()
    text = generate_latest(registry)
    elapsed = time.thread_time_ns() - start
    samples = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return elapsed, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--label-sets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    raw, points = workload(args.requests, args.label_sets, args.delta)
    decode_rates, read_rates, consume_rates, ratios, read_ratios, scrape_us = [], [], [], [], [], []
    samples = 0
    dropped: dict[str, int] = {}
    _decode(raw[:5])
    _consume(raw[:5])  # warm-up
    for round_ in range(args.rounds):
        if round_ % 2:
            consumed, received, dropped = _consume(raw)
            read = _read(raw)
            decoded = _decode(raw)
        else:
            decoded = _decode(raw)
            read = _read(raw)
            consumed, received, dropped = _consume(raw)
        scraped, samples = _scrape(received)
        decode_rates.append(points / decoded * 1e9)
        read_rates.append(points / read * 1e9)
        consume_rates.append(points / consumed * 1e9)
        ratios.append(consumed / decoded)
        read_ratios.append(consumed / read)
        scrape_us.append(scraped / 1e3)
    result = {
        "temporality": "delta" if args.delta else "cumulative",
        "requests": args.requests, "points": points, "bytes_per_request": sum(map(len, raw)) // len(raw),
        "decode_points_per_s": round(statistics.median(decode_rates)),
        "decode_read_points_per_s": round(statistics.median(read_rates)),
        "decode_consume_points_per_s": round(statistics.median(consume_rates)),
        "cost_ratio_to_decode": round(statistics.median(ratios), 2),
        "cost_ratio_to_read": round(statistics.median(read_ratios), 2),
        "scrape_ms": round(statistics.median(scrape_us) / 1e3, 2), "scrape_samples": samples,
        "scrape_us_per_sample": round(statistics.median(scrape_us) / max(samples, 1), 2),
        "dropped": dropped,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['temporality']}: {args.requests} requests, {points} points "
          f"({result['bytes_per_request']} bytes per request), {args.rounds} rounds, thread CPU")
    print(f"  decode only         {result['decode_points_per_s']:>10,} points/s")
    print(f"  decode + read       {result['decode_read_points_per_s']:>10,} points/s")
    print(f"  decode + consume    {result['decode_consume_points_per_s']:>10,} points/s  "
          f"({result['cost_ratio_to_decode']}x the decode-only CPU, {result['cost_ratio_to_read']}x decode + read; "
          "medians of paired rounds)")
    print(f"  one scrape          {result['scrape_ms']} ms for {samples} samples "
          f"({result['scrape_us_per_sample']} us per sample)")
    print(f"  dropped             {dropped or 'nothing'}")


if __name__ == "__main__":
    main()
