"""flowtel: OpenTelemetry GenAI enrichment and prompt flow's standard metrics, in-process or as a collector."""

from __future__ import annotations

from flowtel._configure import Flowtel, configure
from flowtel.config import ConfigError, FlowtelConfig

__all__ = ["ConfigError", "Flowtel", "FlowtelConfig", "__version__", "configure"]
__version__ = "0.1.0"
