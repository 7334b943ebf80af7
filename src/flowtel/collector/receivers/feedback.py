"""``feedback`` receiver: prompt flow's ``POST /feedback``, turned into spans for the traces pipeline.

The endpoint (``flowtel.feedback``) records each feedback as a ``promptflow-feedback`` span
in the judged request's trace; this receiver encodes it as OTLP and hands it to its
pipelines like any received span, so the ``flowtel`` processor correlates it and derives
the ``feedback`` metric, and every traces exporter forwards it. Overload answers 503 with
Retry-After, as the OTLP receivers do. Its token is its own ``auth`` (not the OTLP one).

With several collector replicas the feedback must meet its trace's spans on one replica:
route it through a trace-id-aware load balancer (the Helm chart's gateway), e.g. a
``traces/feedback`` pipeline ``[feedback] -> [otlp/gateway]``.
"""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from pydantic import Field

from flowtel._wsgi import WSGIEndpoint
from flowtel.feedback import FeedbackApp, FeedbackLimits, FeedbackUnavailable

from ..refusal import Refused
from ..settings import Auth, Endpoint, HTTPServerBounds, ServerTLS, split_endpoint
from .otlp import Intake

_LIMITS = FeedbackLimits()


class FeedbackReceiverConfig(HTTPServerBounds):
    #: Where ``POST /feedback`` is served (prompt flow serving's port).
    endpoint: Endpoint = "localhost:8080"
    #: Largest feedback body, in bytes; larger ones get 413.
    max_request_body_size: int = Field(_LIMITS.max_body_bytes, gt=0)
    #: Baggage entries kept as attributes; the rest are dropped and counted on the span.
    max_baggage_entries: int = Field(_LIMITS.max_baggage_entries, ge=0)
    #: Resource of the feedback spans (``service.name`` defaults to ``flowtel-feedback``).
    resource: dict[str, str] = Field(default_factory=dict)
    tls: ServerTLS | None = None
    auth: Auth | None = None


class FeedbackReceiver:
    kind = "feedback"  # the service lists where it listens under this name
    path = "/feedback"

    def __init__(self, receiver_id: str, config: FeedbackReceiverConfig, intake: Intake, token: str | None) -> None:
        self._intake = intake
        # No span processors: the handler hands each ended span to _submit, which raises into the request.
        # Always sampled: the app already made its sampling decision, and feedback is what the user sent.
        provider = TracerProvider(resource=Resource.create({"service.name": "flowtel-feedback", **config.resource}),
                                  sampler=ALWAYS_ON)
        limits = FeedbackLimits(max_body_bytes=config.max_request_body_size,
                                max_baggage_entries=config.max_baggage_entries)
        app = FeedbackApp(provider, token=token, limits=limits, sink=self._submit,
                          on_refused=lambda reason, detail: intake.refuse_request("http", reason, detail))
        host, port = split_endpoint(config.endpoint)
        self._endpoint = WSGIEndpoint(app, host, port, name=f"flowtel-{receiver_id}",
                                      tls=config.tls.settings() if config.tls else None,
                                      limits=config.server_limits(config.max_request_body_size),
                                      check_head=app.check_head,
                                      on_refused=lambda reason, detail: intake.refuse_request("http", reason, detail))

    @property
    def url(self) -> str:
        return self._endpoint.url

    def _submit(self, span: ReadableSpan) -> None:
        try:
            self._intake.accept(encode_spans([span]), "http")
        except Refused as refused:
            raise FeedbackUnavailable(refused.message, refused.retry_after_s) from None

    def start(self) -> None:
        self._endpoint.start()

    def shutdown(self) -> None:
        self._endpoint.shutdown()
