"""flowtel reached through `opentelemetry-instrument` entry points, and the shape of the built wheel."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_opentelemetry_instrument_loads_flowtel(fake_llm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_PROMETHEUS_PORT=str(port), FAKE_LLM_URL=fake_llm.base_url, PF_DISABLE_TRACING="false",
               OTEL_SERVICE_NAME="zero-code", OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="openai_v2",
               PF_SERVING_METRICS_COMMON_DIMENSIONS='{"deployment": "green"}')
    app = str(ROOT / "tests/apps/zero_code_app.py")
    result = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, app],
                            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samples = [s for f in text_string_to_metric_families(result.stdout) for s in f.samples]
    flows = [s for s in samples if s.name == "flow_request_total"]
    assert [(s.labels["flow"], s.labels["deployment"], s.value) for s in flows] == [("zero_code_flow", "green", 1.0)]
    tokens = {s.labels["token_type"]: s.value for s in samples if s.name == "token_consumption_total"}
    assert tokens == {"prompt_tokens": 3.0, "completion_tokens": 5.0}


def test_wheel_installs_only_the_flowtel_namespace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("flowtel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/", 1)[0] for n in names if not n.startswith("flowtel-")}
    assert top_level == {"flowtel"}
    for module in ("flowtel/processors/span_processor.py", "flowtel/exporters/prometheus.py", "flowtel/__init__.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[opentelemetry_configurator]" in text and "flowtel.distro:FlowtelConfigurator" in text
    assert "[opentelemetry_distro]" in text
