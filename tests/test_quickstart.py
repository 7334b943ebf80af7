"""The quickstart a new user runs first (``examples/quickstart.py``), in both modes, as a child process.

In-process: flowtel in the app, its Prometheus endpoint kept up after ``--requests`` until
interrupted. Collector mode: the plain SDK exporting OTLP to the real collector on the shipped
default config (ports moved to free ones). Both must show all eight standard metrics, one failed
request in ten and every fifth request streamed, as the quickstart's docstring promises.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from flowtel.processors.catalog import STANDARD_METRICS, prometheus_name

from collector_proc import ChildProcess, CollectorProcess
from conftest import ROOT, Scrape, scrape

QUICKSTART = ROOT / "examples" / "quickstart.py"
REQUESTS = 20  # requests 0..19: 4, 9, 14, 19 streamed; 7 and 17 fail at the model


def _metric_names() -> set[str]:
    """The eight standard metrics as Prometheus names (counters gain _total, histograms _count)."""
    return {prometheus_name(m.name, m.unit) + ("_total" if m.kind == "counter" else "_count")
            for m in STANDARD_METRICS}


def _assert_quickstart_numbers(metrics: Scrape) -> None:
    assert metrics.value("flow_request_total", flow="chat_flow", response_code="500",
                         exception="InternalServerError") == 2
    assert metrics.value("flow_request_total", flow="chat_flow", response_code="200") == 14
    assert metrics.value("flow_request_total", flow="streaming_chat_flow", streaming="True") == 4
    assert metrics.value("flow_request_total") == REQUESTS


def test_in_process_quickstart_shows_all_eight_metrics_and_keeps_serving_them() -> None:
    child = ChildProcess([sys.executable, str(QUICKSTART), "--requests", str(REQUESTS), "--interval", "0"], ROOT,
                         {**os.environ, "OTEL_EXPORTER_PROMETHEUS_PORT": "0", "OTEL_TRACES_EXPORTER": "none"})
    try:
        url = child.wait_for(r"metrics at (http://\S+/metrics)").group(1)
        child.wait_for(rf"served {REQUESTS} requests; metrics stay at {re.escape(url)} until Ctrl-C")
        assert child.output.count("failed as planned: InternalServerError") == 2
        metrics = scrape(url)
        assert _metric_names() <= {s.name for s in metrics.samples}, sorted({s.name for s in metrics.samples})
        _assert_quickstart_numbers(metrics)
        assert child.proc.poll() is None  # still serving after its requests, until interrupted
    finally:
        code = child.stop(signal.SIGINT)
    assert code == 0, child.output
    assert "Traceback" not in child.output


def _default_config_on_free_ports() -> str:
    """The shipped default, every port moved to 0 (the log says where each landed), listening on 127.0.0.1."""
    text = (ROOT / "collector-config" / "default.yaml").read_text()
    moved, count = re.subn(r"\$\{env:FLOWTEL_LISTEN_HOST:-localhost\}:\d+", "127.0.0.1:0", text)
    assert count == 5, text
    return moved


def test_collector_quickstart_shows_all_eight_metrics(tmp_path: Path) -> None:
    collector = CollectorProcess(_default_config_on_free_ports(), tmp_path).start()
    try:
        endpoint = collector.http["otlp"]
        child = ChildProcess(
            [sys.executable, str(QUICKSTART), "--collector", "--requests", str(REQUESTS), "--interval", "0"], ROOT,
            {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_METRICS_EXPORTER": "none",
             "OTEL_LOGS_EXPORTER": "none"})
        assert child.proc.wait(120) == 0, child.output
        assert "the numbers are in the collector" in child.output
        url = collector.prometheus["prometheus"]
        metrics = collector.wait_for(lambda: (m := scrape(url)).value("flow_request_total") == REQUESTS and m)
        _assert_quickstart_numbers(metrics)
        missing = _metric_names() - {s.name for s in metrics.samples}
        assert not missing, sorted(missing)
    finally:
        assert collector.stop() == 0, collector.log


def test_quickstart_with_its_port_taken_names_the_port_and_the_variable() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, str(QUICKSTART), "--requests", "1"], cwd=ROOT, timeout=120,
                                env={**os.environ, "OTEL_EXPORTER_PROMETHEUS_PORT": str(port)},
                                capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"quickstart: cannot listen on 127.0.0.1:{port} (flowtel's Prometheus endpoint): the port is already in "
        "use (another flowtel, or another program?); set OTEL_EXPORTER_PROMETHEUS_PORT to another port (0 picks a "
        "free one), or leave prometheus out of OTEL_METRICS_EXPORTER")
    assert "Traceback" not in result.stderr
