"""The real collector under attack: one OTLP receiver (HTTP and gRPC) and one feedback receiver feeding the flowtel
pipeline, forwarding to a recording OTLP sink, and the checks every attack test ends with (nothing lost, still
serving)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import requests
from attacks import flow_trace, request
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector_proc import CollectorProcess
from conftest import Scrape, scrape
from otlp_sink import OTLPSink

CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}, grpc: {endpoint: "127.0.0.1:0"}}}
  feedback: {endpoint: "127.0.0.1:0"}
processors:
  flowtel: {trace_timeout: 1s, feedback: {wait: 0s}}
  batch: {timeout: 20ms}
exporters:
  prometheus: {endpoint: "127.0.0.1:0"}
  otlp/sink: {endpoint: "%(sink)s", tls: {insecure: true}}
service:
  pipelines:
    traces: {receivers: [otlp, feedback], processors: [flowtel, batch], exporters: [prometheus, otlp/sink]}
"""


class Collector:
    def __init__(self, proc: CollectorProcess, sink: OTLPSink) -> None:
        self.proc, self.sink = proc, sink

    @property
    def url(self) -> str:
        return self.proc.http["otlp"] + "/v1/traces"

    def post(self, body: bytes, **headers: str) -> requests.Response:
        return requests.post(self.url, data=body, timeout=120,
                             headers={"Content-Type": "application/x-protobuf", **headers})

    def scrape_text(self) -> str:
        with urllib.request.urlopen(self.proc.prometheus["prometheus"], timeout=30) as response:
            return str(response.read().decode())

    def scrape(self) -> Scrape:
        return scrape(self.proc.prometheus["prometheus"])

    def forwarded(self) -> list[Span]:
        return [span for span, _ in self.sink.spans()]

    def forwarded_bytes(self) -> bytes:
        with self.sink.lock:
            return b"".join(r.SerializeToString() for r in self.sink.requests)

    def accounted(self, log_from: int) -> None:
        """Every accepted span reached the sink (none lost, none twice), a good client is still served, and
        nothing left a traceback in the log."""
        good = flow_trace("good-client")
        assert self.post(request(good)).status_code == 200
        ids = {s.span_id for s in good}

        def settled() -> bool:
            accepted = self.scrape().value("otelcol_receiver_accepted_spans_total")
            forwarded = self.forwarded()
            return ids <= {s.span_id for s in forwarded} and accepted == len(forwarded)
        self.proc.wait_for(settled, timeout=60, interval=0.2)
        assert self.proc.proc is not None and self.proc.proc.poll() is None
        assert "Traceback" not in "".join(self.proc.lines[log_from:])


def started(tmp_path: Path) -> Iterator[Collector]:
    with OTLPSink() as sink:
        proc = CollectorProcess(CONFIG % {"sink": sink.endpoint}, tmp_path).start()
        try:
            yield Collector(proc, sink)
        finally:
            assert proc.stop() == 0, proc.log
