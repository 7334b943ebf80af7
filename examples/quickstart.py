"""flowtel quickstart: a prompt flow app, traced with promptflow-tracing, against a local fake model.

Runs fully offline. It starts the bundled fake OpenAI-compatible server, calls
``flowtel.configure()`` (Prometheus endpoint on 127.0.0.1:9464 unless
``OTEL_EXPORTER_PROMETHEUS_PORT`` says otherwise; spans to OTLP only if
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set), and serves a stream of requests through a small
flex flow: retrieve (embeddings) -> answer (chat), every fifth answer streamed, and one
request in ten failing at the model. Watch the metrics with:

    curl -s 127.0.0.1:9464/metrics | grep -E '^(flow|node|rpc|token)_'

    python examples/quickstart.py                 # serve requests until Ctrl-C
    python examples/quickstart.py --requests 20   # 20 requests, a summary, then the metrics until Ctrl-C
    python examples/quickstart.py --collector     # no flowtel in the app: plain OTLP to a flowtel collector
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
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
        if i % 5 == 4:  # requests 4, 9, 14, ...: streamed
            "".join(streaming_chat_flow(question))
        else:  # requests 7, 17, 27, ...: the model answers 500
            chat_flow(question, model="fail-500" if i % 10 == 7 else "gpt-4o-mini")
    except openai.APIError as error:
        print(f"request {i} failed as planned: {type(error).__name__}")


def serve(requests: int, interval: float) -> None:
    """Serve ``requests`` requests (0: until Ctrl-C), ``interval`` seconds apart."""
    i = 0
    while not requests or i < requests:
        serve_one(i)
        i += 1
        time.sleep(interval)


def _stop_on_sigterm() -> None:
    """SIGTERM ends the quickstart as Ctrl-C does: flushed, endpoint closed, no traceback."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="flowtel quickstart (offline): a traced prompt flow app against a bundled fake model",
        epilog="Prometheus endpoint: 127.0.0.1:9464 unless OTEL_EXPORTER_PROMETHEUS_PORT says otherwise "
               "(0 picks a free port).")
    parser.add_argument("--requests", type=int, default=0,
                        help="serve N requests, print a summary, then keep serving the metrics until Ctrl-C "
                             "(default: serve requests until Ctrl-C)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between requests")
    parser.add_argument("--collector", action="store_true",
                        help="leave flowtel out of the app and send plain OTLP to a flowtel collector "
                             "(OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318); exits after --requests")
    args = parser.parse_args()
    _stop_on_sigterm()
    try:
        if args.collector:
            run_against_collector(args)
        else:
            run_in_process(args)
    except OSError as error:  # a port already in use: the message names it and what moves it
        print(f"quickstart: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def run_in_process(args: argparse.Namespace) -> None:
    telemetry = flowtel.configure()
    try:
        start_trace()  # prompt flow's own setup: wraps the openai client; keeps flowtel's tracer provider
        where = telemetry.prometheus.url if telemetry.prometheus else "(Prometheus disabled)"
        with FakeLLMServer(chunk_delay_s=0.02) as server:
            LLM[:] = [openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)]
            print(f"fake model at {server.base_url}; metrics at {where}", flush=True)
            serve(args.requests, args.interval)
        telemetry.span_processor.force_flush()
        if telemetry.prometheus is None:
            return
        body = urllib.request.urlopen(telemetry.prometheus.url, timeout=5).read().decode()
        print("\n".join(line for line in body.splitlines()
                        if line.startswith(("flow_request_total", "token_consumption_total"))))
        # The numbers live in this process: keep serving them so `curl` (and Prometheus) can read them.
        print(f"served {args.requests} requests; metrics stay at {where} until Ctrl-C", flush=True)
        threading.Event().wait()
    finally:
        telemetry.shutdown()


def run_against_collector(args: argparse.Namespace) -> None:
    """What an app that changes no code looks like: the bare SDK exporting OTLP to the collector."""
    from opentelemetry import trace as otel_trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from flowtel.instrumentation import PromptflowStreamingInstrumentor

    provider = TracerProvider(resource=Resource.create({"service.name": "quickstart"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    otel_trace.set_tracer_provider(provider)
    # promptflow-tracing records when a stream ends, not when its first chunk left: flowtel's instrumentation
    # adds that moment as a span event (opentelemetry-instrument loads it by itself where flowtel is installed),
    # so the collector can derive firstbyte and the streaming duration.
    PromptflowStreamingInstrumentor().instrument()
    start_trace()
    try:
        with FakeLLMServer(chunk_delay_s=0.02) as server:
            LLM[:] = [openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)]
            endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
            print(f"fake model at {server.base_url}; spans to the collector at {endpoint}", flush=True)
            serve(args.requests, args.interval)
    finally:
        provider.shutdown()  # sends what is still batched, also on Ctrl-C
    print(f"done: {args.requests or 'all'} requests sent; the numbers are in the collector, which keeps serving "
          "them: curl -s localhost:9464/metrics | grep -E '^(flow|node|rpc|token)_'", flush=True)


if __name__ == "__main__":
    sys.exit(main())
