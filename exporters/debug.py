"""``debug`` exporter: log what the pipeline sends, as the upstream collector's debug exporter does.

``basic`` logs one line per batch, ``normal`` one line per span, metric or log record,
``detailed`` the whole request as OTLP JSON. Meant for trying a config out, not for
production volumes. Takes traces, metrics and logs.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flowtel.selfmetrics import SelfMetrics
from flowtel.settings import Model

logger = logging.getLogger("flowtel.debug")
_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _otlp_json(request: Message) -> str:
    """OTLP/JSON: the protobuf JSON mapping, except that ids (of spans, links, exemplars and log records) are hex
    (not base64) and enums integers."""
    data: dict[str, Any] = json_format.MessageToDict(request, use_integers_for_enums=True)
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_KEYS and isinstance(value, str) and value:
                    node[key] = base64.b64decode(value).hex()
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
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

    def export_metrics(self, request: ExportMetricsServiceRequest, payload: bytes, points: int) -> None:
        logger.info("%s: %d metric point(s)", self.id, points)
        if self._verbosity != "basic":
            if self._verbosity == "detailed":
                logger.info("%s", _otlp_json(request))
            else:
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            kind = metric.WhichOneof("data")
                            points_of = len(getattr(metric, kind).data_points) if kind else 0
                            logger.info("%s: %s %s unit=%s points=%d", self.id, metric.name, kind, metric.unit,
                                        points_of)
        self._self.add("otelcol.exporter.sent.metric_points", points, self.id)

    def export_logs(self, request: ExportLogsServiceRequest, payload: bytes, records: int) -> None:
        logger.info("%s: %d log record(s)", self.id, records)
        if self._verbosity != "basic":
            if self._verbosity == "detailed":
                logger.info("%s", _otlp_json(request))
            else:
                for rl in request.resource_logs:
                    for sl in rl.scope_logs:
                        for record in sl.log_records:
                            body = record.body.WhichOneof("value")
                            logger.info("%s: %s severity=%d body=%s attributes=%d", self.id,
                                        record.severity_text or "-", record.severity_number, body or "empty",
                                        len(record.attributes))
        self._self.add("otelcol.exporter.sent.log_records", records, self.id)

    def shutdown(self, deadline: float) -> None:
        pass
