"""One LLM app, instrumented by one real producer, run in that producer's own virtual environment.

``python app.py PRODUCER BASE_URL QUESTION HOST [RESULT]`` runs the conformance workload
against the fake LLM at ``BASE_URL``:

* ``qa_flow`` twice: node ``retrieve`` (embeddings of the question), node ``answer`` (chat);
* ``stream_flow`` once: node ``answer_stream`` (streamed chat with usage, consumed in the node);
* ``fail_flow`` once: node ``answer`` calls model ``fail-500``; the error ends the flow.

Every flow and node is the producer's own workflow / task marker (``@mlflow.trace``,
``@openlit.trace``, OpenInference ``chain``, OpenLLMetry ``@workflow`` / ``@task``, an app span
with ``gen_ai.operation.name=invoke_workflow`` for openai-v2, ``@trace`` for promptflow-tracing);
model calls are the producer's OpenAI instrumentation. ``QUESTION`` carries the canary.

``HOST`` is ``collector`` (the producer exports OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``,
as its docs say) or ``inprocess`` (``flowtel.configure()`` first, the producer on flowtel's
tracer provider, spans on to ``OTEL_EXPORTER_OTLP_ENDPOINT``); in-process, the app writes its
Prometheus scrape to ``RESULT`` before it exits.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import openai

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
SYSTEM = "Answer briefly"


class Producer:
    """How one producer marks flows and nodes and instruments the OpenAI client."""

    #: prompt flow streams by returning the generator (its spans then end when the stream is consumed);
    #: the others' apps consume the stream inside the node and return text.
    returns_streams = False

    def setup(self, host: str) -> None:
        raise NotImplementedError

    def flow(self, name: str) -> Decorator:
        raise NotImplementedError

    def node(self, name: str) -> Decorator:
        raise NotImplementedError

    def shutdown(self) -> None:
        pass

    def extra_flows(self, question: str) -> None:
        """Flows only this producer's API can make (conformance.Spec.extra_flows says what they yield)."""


class MLflow(Producer):
    def setup(self, host: str) -> None:
        base = os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        if host == "collector" and base:
            # Traces only: MLflow also exports metrics when it sees a metrics endpoint (the base endpoint implies
            # one), and flowtel's collector takes traces only. (With the mlflow-tracing SDK alone that metrics path
            # even calls MlflowClient, which it lacks, and every span fails to end.)
            os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = base.rstrip("/") + "/v1/traces"
        if host == "inprocess":
            # MLflow keeps a tracer provider of its own unless told to use the global one (flowtel's). Without
            # an OTLP endpoint it also writes each trace to its tracking store: a local one (in the working
            # directory the test gives the app), beside the point here.
            os.environ["MLFLOW_USE_DEFAULT_TRACER_PROVIDER"] = "false"
        import mlflow

        self.mlflow = mlflow
        mlflow.openai.autolog()

    def flow(self, name: str) -> Decorator:
        return self.mlflow.trace(name=name)  # no span_type: MLflow's default UNKNOWN, what most apps send

    def node(self, name: str) -> Decorator:
        if name == "retrieve":  # one node through the context-manager API, the others decorated
            def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
                def run(*args: Any, **kwargs: Any) -> Any:
                    with self.mlflow.start_span(name=name, span_type="CHAIN"):
                        return fn(*args, **kwargs)
                return run
            return decorate
        return self.mlflow.trace(name=name, span_type="CHAIN")

    def extra_flows(self, question: str) -> None:
        # The client API: a trace and its spans started and ended by id, with no context involved.
        client = self.mlflow.MlflowClient()
        root = client.start_trace(name="client_flow", inputs={"q": question})
        node = client.start_span(name="lookup", trace_id=root.trace_id, parent_id=root.span_id, span_type="CHAIN",
                                 inputs={"q": question})
        client.end_span(trace_id=node.trace_id, span_id=node.span_id, outputs={"found": question})
        client.end_trace(trace_id=root.trace_id, outputs={"answer": question})

    def shutdown(self) -> None:
        from mlflow.tracing.provider import provider

        tracer_provider = provider.get()  # MLflow's own one unless it shares the global one
        if hasattr(tracer_provider, "force_flush"):
            tracer_provider.force_flush()


class OpenLIT(Producer):
    def setup(self, host: str) -> None:
        import openlit

        self.openlit = openlit
        pricing = os.path.join(os.path.dirname(__file__), "openlit_pricing.json")
        # In-process, OpenLIT's content log events would leave through its own logger provider, which flowtel
        # does not sit in: they are turned off (through the collector they are refused: it takes traces only).
        openlit.init(application_name="conformance", environment="test", pricing_json=pricing,
                     disable_metrics=True, capture_message_content=True, disable_events=host == "inprocess")

    def flow(self, name: str) -> Decorator:
        return _renamed(self.openlit.trace, name)

    def node(self, name: str) -> Decorator:
        return _renamed(self.openlit.trace, name)


def _sdk_to_otlp(host: str) -> None:
    """Producers without an exporter set-up of their own: the SDK and its OTLP/HTTP exporter, as an app does."""
    if host != "collector":
        return  # in-process, flowtel.configure() has set the global provider
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


class OpenInference(Producer):
    def setup(self, host: str) -> None:
        _sdk_to_otlp(host)
        from openinference.instrumentation import OITracer, TraceConfig
        from openinference.instrumentation.openai import OpenAIInstrumentor
        from opentelemetry import trace

        OpenAIInstrumentor().instrument()
        self.tracer = OITracer(trace.get_tracer(__name__), config=TraceConfig())

    def flow(self, name: str) -> Decorator:
        return self.tracer.chain(name=name)  # type: ignore[no-any-return]

    def node(self, name: str) -> Decorator:
        return self.tracer.chain(name=name)  # type: ignore[no-any-return]


class Traceloop(Producer):
    def setup(self, host: str) -> None:
        from traceloop.sdk import Traceloop as TL
        from traceloop.sdk.decorators import task, workflow

        self.workflow, self.task = workflow, task
        # Offline: no API key, the OTLP/HTTP endpoint in TRACELOOP_BASE_URL, its telemetry off (set by the test).
        kwargs: dict[str, Any] = {"app_name": "conformance", "disable_batch": True}
        if host == "inprocess":
            # Traceloop reuses the global provider, where flowtel's processor already is; it insists on an
            # exporter or processor of its own, so it gets one that sends nothing (no second, raw export).
            kwargs["processor"] = _NoopProcessor()
        TL.init(**kwargs)

    def flow(self, name: str) -> Decorator:
        return self.workflow(name=name)  # type: ignore[no-any-return]

    def node(self, name: str) -> Decorator:
        return self.task(name=name)  # type: ignore[no-any-return]


class OpenAIV2(Producer):
    def setup(self, host: str) -> None:
        _sdk_to_otlp(host)
        from opentelemetry import trace
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()
        self.tracer = trace.get_tracer("conformance")

    def flow(self, name: str) -> Decorator:
        return self._span(name, {"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": name})

    def node(self, name: str) -> Decorator:
        return self._span(name, {})

    def _span(self, name: str, attributes: dict[str, str]) -> Decorator:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                with self.tracer.start_as_current_span(name, attributes=attributes):
                    return fn(*args, **kwargs)
            return run
        return decorate


class Promptflow(Producer):
    returns_streams = True

    def setup(self, host: str) -> None:
        from promptflow.tracing import trace

        from flowtel._promptflow_private import inject_openai_api  # promptflow-tracing's private API

        _sdk_to_otlp(host)
        inject_openai_api()  # what start_trace() does: prompt flow's own spans around each openai call
        self.trace = trace

    def flow(self, name: str) -> Decorator:
        return _renamed(self.trace, name)

    def node(self, name: str) -> Decorator:
        return _renamed(self.trace, name)


class _NoopProcessor:
    def on_start(self, span: Any, parent_context: Any = None) -> None: ...
    def on_end(self, span: Any) -> None: ...
    def _on_ending(self, span: Any) -> None: ...
    def shutdown(self) -> None: ...
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _renamed(decorator: Any, name: str) -> Decorator:
    """Producers that name a span after its function: give the function the flow / node name."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__name__ = fn.__qualname__ = name
        return decorator(fn)  # type: ignore[no-any-return]
    return decorate


PRODUCERS: dict[str, Callable[[], Producer]] = {
    "mlflow": MLflow, "openlit": OpenLIT, "openinference": OpenInference, "openinference-genai": OpenInference,
    "traceloop": Traceloop, "openai-v2": OpenAIV2, "promptflow": Promptflow,
}


def workload(p: Producer, llm: openai.OpenAI, question: str) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]

    @p.node("retrieve")
    def retrieve(q: str) -> int:
        return len(llm.embeddings.create(model="text-embedding-3-small", input=q).data)

    @p.node("answer")
    def answer(q: str, model: str = "gpt-4o-mini") -> str:
        return llm.chat.completions.create(model=model, messages=messages).choices[0].message.content or ""

    @p.node("answer_stream")
    def answer_stream(q: str) -> Any:
        stream = llm.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                             stream_options={"include_usage": True})
        text = (c.choices[0].delta.content or "" for c in stream if c.choices)
        return text if p.returns_streams else "".join(text)

    @p.flow("qa_flow")
    def qa_flow(q: str) -> str:
        retrieve(q)
        return answer(q)

    @p.flow("stream_flow")
    def stream_flow(q: str) -> Any:
        return answer_stream(q)

    @p.flow("fail_flow")
    def fail_flow(q: str) -> str:
        return answer(q, model="fail-500")

    for _ in range(2):
        qa_flow(question)
    "".join(stream_flow(question))
    with contextlib.suppress(openai.InternalServerError):
        fail_flow(question)


@contextlib.contextmanager
def in_process(result_path: str) -> Iterator[None]:
    import flowtel
    from flowtel.exporters.prometheus import PrometheusSettings

    handle = flowtel.configure(prometheus=PrometheusSettings(port=0))
    try:
        yield
    finally:
        assert handle.span_processor.force_flush(30_000)
        assert handle.prometheus is not None
        with urllib.request.urlopen(handle.prometheus.url, timeout=10) as response:
            body = response.read()
        handle.shutdown()
        with open(result_path, "wb") as out:
            out.write(body)


def main(argv: list[str]) -> None:
    name, base_url, question, host = argv[:4]
    producer = PRODUCERS[name]()
    llm = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0)
    scope = in_process(argv[4]) if host == "inprocess" else contextlib.nullcontext()
    with scope:
        producer.setup(host)
        workload(producer, llm, question)
        producer.extra_flows(question)
        producer.shutdown()
        if host == "collector":
            from opentelemetry import trace

            provider = trace.get_tracer_provider()
            if hasattr(provider, "shutdown"):
                provider.shutdown()  # flushes the producer's exporter before the process exits


if __name__ == "__main__":
    main(sys.argv[1:])
