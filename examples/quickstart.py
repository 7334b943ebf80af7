"""flowtel quickstart: a prompt flow app, traced with promptflow-tracing, against a local fake model.

Runs fully offline. It starts the bundled fake OpenAI-compatible server, calls
``flowtel.configure()`` (Prometheus endpoint on 127.0.0.1:9464 unless
``OTEL_EXPORTER_PROMETHEUS_PORT`` says otherwise; spans to OTLP only if
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set), and serves a stream of requests through a small
flex flow: retrieve (embeddings) -> answer (chat), every fifth answer streamed, and one
request in ten failing at the model. Watch the metrics with:

    curl -s 127.0.0.1:9464/metrics | grep -E '^(flow|node|rpc|token)_'

    python examples/quickstart.py                 # run until Ctrl-C
    python examples/quickstart.py --requests 20   # run 20 requests, print a summary, exit
    python examples/quickstart.py --collector     # no flowtel in the app: plain OTLP to a flowtel collector
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("PF_DISABLE_TRACING", "false")  # promptflow-tracing is off unless told otherwise
sys.path.insert(0, str(Path(__file__).parent))

import openai
from promptflow.tracing import start_trace, trace

import flowtel

from fake_llm import FakeLLMServer

LLM: list[openai.OpenAI] = []


@trace
def retrieve(question: str) -> list[float]:
    return LLM[0].embeddings.create(model="text-embedding-3-small", input=question).data[0].embedding


@trace
def answer(question: str, model: str) -> str:
    reply = LLM[0].chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           temperature=0.2)
    return reply.choices[0].message.content or ""


def _text(chunks: Iterator) -> Iterator[str]:
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


@trace
def chat_flow(question: str, model: str = "gpt-4o-mini") -> str:
    retrieve(question)
    return answer(question, model)


@trace
def streaming_chat_flow(question: str) -> Iterator[str]:
    retrieve(question)
    return _text(LLM[0].chat.completions.create(model="gpt-4o-mini", stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": question}]))


def serve_one(i: int) -> None:
    question = f"request {i}: what does flowtel measure"
    try:
        if i % 5 == 4:
            "".join(streaming_chat_flow(question))
        else:
            chat_flow(question, model="fail-500" if i % 10 == 9 else "gpt-4o-mini")
    except openai.APIError as error:
        print(f"request {i} failed as planned: {type(error).__name__}")


def serve(requests: int, interval: float) -> None:
    """Serve ``requests`` requests (0: until Ctrl-C), ``interval`` seconds apart."""
    i = 0
    try:
        while not requests or i < requests:
            serve_one(i)
            i += 1
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="flowtel quickstart (offline)")
    parser.add_argument("--requests", type=int, default=0, help="stop after N requests (default: run until Ctrl-C)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between requests")
    parser.add_argument("--collector", action="store_true",
                        help="leave flowtel out of the app and send plain OTLP to a flowtel collector "
                             "(OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318)")
    args = parser.parse_args()
    if args.collector:
        return run_against_collector(args)

    telemetry = flowtel.configure()
    start_trace()  # prompt flow's own setup: wraps the openai client; keeps flowtel's tracer provider
    with FakeLLMServer(chunk_delay_s=0.02) as server:
        LLM[:] = [openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)]
        where = telemetry.prometheus.url if telemetry.prometheus else "(Prometheus disabled)"
        print(f"fake model at {server.base_url}; metrics at {where}", flush=True)
        serve(args.requests, args.interval)
    telemetry.span_processor.force_flush()
    if telemetry.prometheus is not None:
        body = urllib.request.urlopen(telemetry.prometheus.url, timeout=5).read().decode()
        print("\n".join(line for line in body.splitlines()
                        if line.startswith(("flow_request_total", "token_consumption_total"))))
    telemetry.shutdown()


def run_against_collector(args: argparse.Namespace) -> None:
    """What an app that changes no code looks like: the bare SDK exporting OTLP to the collector."""
    from opentelemetry import trace as otel_trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "quickstart"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    otel_trace.set_tracer_provider(provider)
    start_trace()
    with FakeLLMServer(chunk_delay_s=0.02) as server:
        LLM[:] = [openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)]
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
        print(f"fake model at {server.base_url}; spans to the collector at {endpoint}", flush=True)
        serve(args.requests, args.interval)
    provider.shutdown()
    print("done; the collector's metrics: curl -s localhost:9464/metrics | grep -E '^(flow|node|rpc|token)_'")


if __name__ == "__main__":
    main()
