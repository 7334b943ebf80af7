"""The flowtel collector: the shared pipeline behind OTLP receivers, configured like the OpenTelemetry Collector.

The public names are resolved on first use (PEP 562) rather than imported here, so importing a
module of the collector (a receiver, its settings) does not load the whole service, its components
and every exporter with it. Exporters import nothing of this package (``tests/test_structure.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import CollectorConfig, ConfigFileError, load_config
    from .service import Collector

_PUBLIC = {"Collector": ".service", "CollectorConfig": ".config", "ConfigFileError": ".config",
           "load_config": ".config"}

__all__ = ["Collector", "CollectorConfig", "ConfigFileError", "load_config"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
