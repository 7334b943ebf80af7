"""An app that logs a GenAI content event, a prompt flow node's printed line and a plain line, through the
logs set-up of ``flowtel.configure()`` (OTLP to ``OTEL_EXPORTER_OTLP_ENDPOINT``). argv[1] is the canary."""

from __future__ import annotations

import logging
import sys

from opentelemetry._logs import LogRecord, get_logger, get_logger_provider

import flowtel

canary = sys.argv[1]
telemetry = flowtel.configure()
get_logger("openai-v2").emit(LogRecord(event_name="gen_ai.user.message", body={"content": canary},
                                       attributes={"gen_ai.input.messages": canary, "gen_ai.system": "openai"}))
logging.getLogger("promptflow").warning("[prepare in line 0 (index starts from 0)] stdout> %s", canary)
logging.getLogger("app").warning("served one request")
get_logger_provider().force_flush()  # type: ignore[attr-defined]
telemetry.shutdown()
get_logger_provider().shutdown()  # type: ignore[attr-defined]
