"""Entry points for ``opentelemetry-instrument``: run an app under flowtel without code changes.

    pip install flowtel && opentelemetry-instrument python app.py

The SDK's auto-instrumentation loads ``FlowtelDistro`` (``opentelemetry_distro``) and
``FlowtelConfigurator`` (``opentelemetry_configurator``); the configurator calls
``flowtel.configure()``, which reads the same ``OTEL_*`` variables the SDK would.
"""

from __future__ import annotations

from typing import Any

# The module starts with a file-wide `# type: ignore`, so mypy sees none of its names (py.typed notwithstanding).
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]

from flowtel._otel_sdk import BaseConfigurator


class FlowtelDistro(BaseDistro):
    def _configure(self, **kwargs: Any) -> None:
        pass  # flowtel's defaults live in configure(), so code and auto-instrumentation behave alike


class FlowtelConfigurator(BaseConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        from flowtel._configure import configure

        # opentelemetry-instrument loads the promptflow streaming instrumentor through its entry point.
        configure(instrument_promptflow_streaming=False)
