"""The real tools the chart's monitoring tests drive: helm (renders the rules), promtool, prometheus.

Each is looked up on PATH, then in the repository's ``.tools/bin`` (where ``.ci/install`` puts
helm). A missing tool fails the test rather than skipping it: a skipped alert test reads as a
passing one in CI.
"""

from __future__ import annotations

import shutil
import subprocess
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
