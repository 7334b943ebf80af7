"""The real tools the chart's monitoring tests drive: helm (renders the rules), promtool, a Prometheus server.

Each is looked up on PATH, then in the repository's ``.tools/bin`` (where ``.ci/install`` puts
helm). A missing tool fails the test rather than skipping it: a skipped alert test reads as a
passing one in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "flowtel"
RELEASE = "flowtel"
#: The alerts templates/_rules.tpl defines, by their key under `alerts:` in values.yaml.
ALERTS = {
    "flowLatencyP95": "FlowtelFlowLatencyP95High",
    "flowErrorRatio": "FlowtelFlowErrorRatioHigh",
    "nodeFailureRatio": "FlowtelNodeFailureRatioHigh",
    "tokenRateSpike": "FlowtelTokenRateSpike",
    "feedbackThumbsDownRatio": "FlowtelFeedbackThumbsDownRatioHigh",
    "collectorDropping": "FlowtelCollectorDroppingData",
    "collectorDroppingAppTelemetry": "FlowtelCollectorDroppingAppTelemetry",
    "collectorDown": "FlowtelCollectorDown",
}


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(ROOT / ".tools" / "bin"))
    if not found:
        pytest.fail(f"{name} not found on PATH or in .tools/bin: run .ci/install (it installs helm, promtool and "
                    f"prometheus)")
    return found


def run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def render_rules(*sets: str, release: str = RELEASE, namespace: str | None = None) -> dict[str, Any]:
    """The PrometheusRule's ``spec`` as ``helm template`` renders it with ``--set`` ``sets``."""
    args = [tool("helm"), "template", release, str(CHART), "--set", "prometheusRule.enabled=true",
            "--show-only", "templates/prometheusrule.yaml"]
    if namespace:
        args += ["--namespace", namespace]
    for item in sets:
        # --set keeps 0.05 a string (it types only integers and booleans), which the schema refuses.
        args += ["--set-json" if _is_number(item.split("=", 1)[1]) else "--set", item]
    documents = [d for d in yaml.safe_load_all(run(*args).stdout) if d]
    assert len(documents) == 1 and documents[0]["kind"] == "PrometheusRule", documents
    return documents[0]["spec"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_rules(spec: dict[str, Any], path: Path) -> Path:
    """``spec`` is a Prometheus rule file as it stands (the operator passes its groups on unchanged)."""
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def alert_rules(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """The Debian ``prometheus`` server on a loopback port, with its config and data in ``directory``.

    No init system runs here: it is started as a child process and stopped by its pid.
    """

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> PrometheusServer:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"prometheus not ready within {timeout}s:\n{self.log}")
            time.sleep(0.1)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def api(self, path: str, **params: str | list[str]) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer, else AssertionError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{path} {params}: HTTP {error.code} {error.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result vector (each ``{"metric": labels, "value": [t, "v"]}``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]
