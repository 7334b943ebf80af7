"""The chart's alerting rules, through the real tools: ``helm template`` renders them, promtool checks them.

The PrometheusRule's ``spec`` (its ``groups``) is a Prometheus rule file as it stands; it is
extracted from the rendered manifest and given to ``promtool check rules`` and to
``promtool test rules`` with the unit tests in helm/flowtel/tests/, which make every alert
fire on a series just over its threshold and stay quiet on one just under it. Moving a
threshold across that boundary must make those unit tests fail, which shows the boundary
series really sit next to the thresholds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from monitoring_tools import ALERTS, CHART, alert_rules, render_rules, run, tool, write_rules

UNIT_TESTS = sorted((CHART / "tests").glob("*.test.yaml"))


def _promtool_test(rules: dict, tmp_path: Path, files: list[Path] = UNIT_TESTS) -> tuple[int, str]:
    """Run unit test ``files`` against ``rules`` (written as rules.yaml beside copies of the files)."""
    write_rules(rules, tmp_path / "rules.yaml")
    names = []
    for path in files:
        shutil.copy(path, tmp_path / path.name)
        names.append(str(tmp_path / path.name))
    done = run(tool("promtool"), "test", "rules", *names, check=False)
    return done.returncode, done.stdout + done.stderr


def test_default_rules_pass_promtool_check_and_unit_tests(tmp_path: Path) -> None:
    rules = render_rules()
    assert [g["name"] for g in rules["groups"]] == ["flowtel.flows", "flowtel.collector"]
    assert set(alert_rules(rules)) == set(ALERTS.values())
    checked = run(tool("promtool"), "check", "rules", str(write_rules(rules, tmp_path / "rules.yaml")))
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout, checked.stdout

    assert UNIT_TESTS, "no promtool unit tests in helm/flowtel/tests"
    code, output = _promtool_test(rules, tmp_path)
    assert code == 0, output
    assert output.count("SUCCESS") == len(UNIT_TESTS), output

    # Every alert is shown firing (with its labels and annotations) and shown quiet.
    fired, quiet = set(), set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
                for alert in check["exp_alerts"]:
                    assert alert["exp_labels"]["severity"] and alert["exp_annotations"]["summary"], path
                    assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}, path
    assert fired == quiet == set(ALERTS.values())


def test_rules_carry_severity_labels_and_annotations_from_values() -> None:
    rules = alert_rules(render_rules())
    severities = {name: rule["labels"]["severity"] for name, rule in rules.items()}
    assert severities == {
        "FlowtelFlowLatencyP95High": "warning", "FlowtelFlowErrorRatioHigh": "critical",
        "FlowtelNodeFailureRatioHigh": "warning", "FlowtelTokenRateSpike": "warning",
        "FlowtelFeedbackThumbsDownRatioHigh": "warning", "FlowtelCollectorDroppingData": "warning",
        "FlowtelCollectorDroppingAppTelemetry": "warning", "FlowtelCollectorDown": "critical"}
    assert {name: rule["for"] for name, rule in rules.items()} == {
        "FlowtelFlowLatencyP95High": "10m", "FlowtelFlowErrorRatioHigh": "10m", "FlowtelNodeFailureRatioHigh": "10m",
        "FlowtelTokenRateSpike": "15m", "FlowtelFeedbackThumbsDownRatioHigh": "30m",
        "FlowtelCollectorDroppingData": "5m", "FlowtelCollectorDroppingAppTelemetry": "5m",
        "FlowtelCollectorDown": "5m"}
    # The Azure monitoring lab's latency alert (seed 002) is on 4000 ms.
    assert rules["FlowtelFlowLatencyP95High"]["expr"].endswith("> 4000")
    for name, rule in rules.items():
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name
        if name.startswith("FlowtelFlow") or name in ("FlowtelTokenRateSpike", "FlowtelFeedbackThumbsDownRatioHigh",
                                                      "FlowtelNodeFailureRatioHigh"):
            # per flow, and per deployment / variant when the series have them
            assert "sum by (flow, " in rule["expr"] and "deployment, variant" in rule["expr"], name
            assert "$labels.flow" in rule["annotations"]["summary"], name
            assert "$labels.deployment" in rule["annotations"]["summary"], name


# One value nudged just across the boundary the unit tests sit on: the alert must then fire where
# the unit test expects it quiet (or stop firing), so `promtool test rules` fails for that alert.
BOUNDARY = [
    ("alerts.flowLatencyP95.thresholdMs=3950", "FlowtelFlowLatencyP95High"),  # the quiet variant has 3958 ms
    ("alerts.flowLatencyP95.thresholdMs=4040", "FlowtelFlowLatencyP95High"),  # the firing one has 4038 ms
    ("alerts.flowErrorRatio.threshold=0.048", "FlowtelFlowErrorRatioHigh"),  # quiet at 4.9%
    ("alerts.flowErrorRatio.threshold=0.052", "FlowtelFlowErrorRatioHigh"),  # firing at 5.1%
    ("alerts.nodeFailureRatio.threshold=0.085", "FlowtelNodeFailureRatioHigh"),  # quiet at 9%
    ("alerts.nodeFailureRatio.threshold=0.115", "FlowtelNodeFailureRatioHigh"),  # firing at 11%
    ("alerts.tokenRateSpike.factor=2.8", "FlowtelTokenRateSpike"),  # quiet at 2.9x
    ("alerts.tokenRateSpike.factor=3.6", "FlowtelTokenRateSpike"),  # firing at 3.5x
    ("alerts.tokenRateSpike.minTokensPerSecond=0.4", "FlowtelTokenRateSpike"),  # quiet at 0.5 tokens/s
    ("alerts.feedbackThumbsDownRatio.threshold=0.28", "FlowtelFeedbackThumbsDownRatioHigh"),  # quiet at 29%
    ("alerts.feedbackThumbsDownRatio.threshold=0.32", "FlowtelFeedbackThumbsDownRatioHigh"),  # firing at 31%
    ("alerts.feedbackThumbsDownRatio.minFeedbackPerSecond=0.008", "FlowtelFeedbackThumbsDownRatioHigh"),  # 0.0083/s
    ("alerts.collectorDown.for=8m", "FlowtelCollectorDown"),  # down 6 min at 12m: pending, not firing
    ("alerts.collectorDropping.for=15m", "FlowtelCollectorDroppingData"),
    ("alerts.collectorDroppingAppTelemetry.for=15m", "FlowtelCollectorDroppingAppTelemetry"),
]


@pytest.mark.parametrize(("setting", "alert"), BOUNDARY, ids=[s for s, _ in BOUNDARY])
def test_unit_tests_fail_when_a_threshold_crosses_their_boundary(setting: str, alert: str, tmp_path: Path) -> None:
    files = [path for path in UNIT_TESTS if f"alertname: {alert}" in path.read_text()]
    code, output = _promtool_test(render_rules(setting), tmp_path, files)
    assert code != 0, f"promtool test rules still passes with {setting}:\n{output}"
    assert f"alertname: {alert}," in output, output
    # only that alert's tests broke
    others = set(ALERTS.values()) - {alert}
    assert not any(f"alertname: {other}," in output for other in others), output


def test_thresholds_windows_and_severities_come_from_values(tmp_path: Path) -> None:
    default = alert_rules(render_rules())
    changed_spec = render_rules(
        "alerts.flowLatencyP95.thresholdMs=1000", "alerts.flowLatencyP95.for=3m",
        "alerts.flowLatencyP95.severity=critical", "alerts.flowErrorRatio.threshold=0.2",
        "alerts.nodeFailureRatio.threshold=0.25", "alerts.tokenRateSpike.factor=5",
        "alerts.tokenRateSpike.minTokensPerSecond=50", "alerts.feedbackThumbsDownRatio.threshold=0.5",
        "alerts.feedbackThumbsDownRatio.minFeedbackPerSecond=0.2", "alerts.rateWindow=2m")
    changed = alert_rules(changed_spec)
    latency = changed["FlowtelFlowLatencyP95High"]
    assert latency["expr"].endswith("> 1000") and "> 4000" not in latency["expr"]
    assert latency["for"] == "3m" and latency["labels"]["severity"] == "critical"
    assert "above 1000 ms" in latency["annotations"]["summary"]
    assert default["FlowtelFlowErrorRatioHigh"]["expr"].endswith("> 0.05")
    assert changed["FlowtelFlowErrorRatioHigh"]["expr"].endswith("> 0.2")
    assert changed["FlowtelNodeFailureRatioHigh"]["expr"].endswith("> 0.25")
    spike = changed["FlowtelTokenRateSpike"]["expr"]
    assert "> 5 * sum by" in spike and spike.endswith(">= 50") and "> 3 * sum by" not in spike
    feedback = changed["FlowtelFeedbackThumbsDownRatioHigh"]["expr"]
    assert "> 0.5)" in feedback and feedback.endswith(">= 0.2")
    for name, rule in changed.items():
        if name != "FlowtelCollectorDown":
            assert "[2m]" in rule["expr"] and "[5m]" not in rule["expr"], name
        assert rule["expr"] != default[name]["expr"] or name == "FlowtelCollectorDown", name
    # and the changed rules are still valid rules
    run(tool("promtool"), "check", "rules", str(write_rules(changed_spec, tmp_path / "rules.yaml")))


@pytest.mark.parametrize("key", list(ALERTS))
def test_a_disabled_alert_disappears(key: str, tmp_path: Path) -> None:
    rules = render_rules(f"alerts.{key}.enabled=false")
    assert set(alert_rules(rules)) == set(ALERTS.values()) - {ALERTS[key]}
    run(tool("promtool"), "check", "rules", str(write_rules(rules, tmp_path / "rules.yaml")))


def test_groups_with_every_alert_disabled_disappear(tmp_path: Path) -> None:
    flows = [f"alerts.{k}.enabled=false" for k in ALERTS if not k.startswith("collector")]
    assert [g["name"] for g in render_rules(*flows)["groups"]] == ["flowtel.collector"]
    nothing = render_rules(*(f"alerts.{k}.enabled=false" for k in ALERTS))
    assert nothing == {"groups": []}
    checked = run(tool("promtool"), "check", "rules", str(write_rules(nothing, tmp_path / "rules.yaml")))
    assert "SUCCESS: 0 rules found" in checked.stdout, checked.stdout


def test_collector_alerts_select_this_releases_scrape_job() -> None:
    """A ServiceMonitor's job is the Service (the full name), a PodMonitor's <namespace>/<name>."""
    default = alert_rules(render_rules())["FlowtelCollectorDown"]["expr"]
    assert default == ('up{job=~"flowtel|default/flowtel", namespace="default"} == 0 or '
                       'absent(up{job=~"flowtel|default/flowtel", namespace="default"})')
    other = alert_rules(render_rules(release="llm", namespace="observability"))
    selector = 'job=~"llm-flowtel|observability/llm-flowtel", namespace="observability"'
    assert other["FlowtelCollectorDown"]["expr"].count(selector) == 2
    assert other["FlowtelCollectorDroppingData"]["expr"].count(selector) == 4
    named = alert_rules(render_rules("fullnameOverride=llm-telemetry"))["FlowtelCollectorDown"]["expr"]
    assert 'job=~"llm-telemetry|default/llm-telemetry"' in named
