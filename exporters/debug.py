"""``debug`` exporter: log what the pipeline sends, as the upstream collector's debug exporter does.

``basic`` logs one line per batch, ``normal`` one line per span, ``detailed`` the whole
request as OTLP JSON. Meant for trying a config out, not for production volumes.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, Literal

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flowtel.collector.settings import Model
from flowtel.selfmetrics import SelfMetrics

logger = logging.getLogger("flowtel.debug")
_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _otlp_json(request: ExportTraceServiceRequest) -> str:
    """OTLP/JSON: the protobuf JSON mapping, except that ids are hex (not base64) and enums integers."""
    data: dict[str, Any] = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rs in data.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                for obj in (span, *span.get("links", ())):
                    for key in _ID_KEYS:
                        if obj.get(key):
                            obj[key] = base64.b64decode(obj[key]).hex()
    return json.dumps(data, separators=(", ", ": "), ensure_ascii=False)


class DebugExporterConfig(Model):
    verbosity: Literal["basic", "normal", "detailed"] = "basic"


class DebugExporter:
    def __init__(self, exporter_id: str, config: DebugExporterConfig, self_metrics: SelfMetrics) -> None:
        self.id = exporter_id
        self._verbosity = config.verbosity
        self._self = self_metrics

    def start(self) -> None:
        pass

    def export(self, payload: bytes, spans: int) -> None:
        logger.info("%s: %d span(s)", self.id, spans)
        if self._verbosity != "basic":
            request = ExportTraceServiceRequest.FromString(payload)
            if self._verbosity == "detailed":
                logger.info("%s", _otlp_json(request))
            else:
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            logger.info("%s: %s trace=%s span=%s attributes=%d", self.id, span.name,
                                        span.trace_id.hex(), span.span_id.hex(), len(span.attributes))
        self._self.add("otelcol.exporter.sent.spans", spans, self.id)

    def shutdown(self, deadline: float) -> None:
        pass
