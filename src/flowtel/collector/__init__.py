"""The flowtel collector: the shared pipeline behind OTLP receivers, configured like the OpenTelemetry Collector."""

from .config import CollectorConfig, ConfigFileError, load_config
from .service import Collector

__all__ = ["Collector", "CollectorConfig", "ConfigFileError", "load_config"]
