"""The Helm chart (helm/flowtel) and the collector image, checked with the real tools.

Every values file in helm/flowtel/ci/ is linted and rendered by a real ``helm``; the manifests are
validated against Kubernetes 1.33's schemas (kubernetes-validate) and scanned by checkov; the
collector config in each rendered ConfigMap is validated by ``flowtel validate``, and for two of
them started with the container's exact command and fed prompt flow traffic over OTLP. The tools
come from ``.ci/install`` (``.tools/bin`` or PATH); a missing tool fails the test, it never skips.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from flowtel.collector import load_config
from flowtel.collector.config import CollectorConfig

from conftest import reset_otel_globals, scrape
from ingestion import IngestionServer
from otlp_sink import OTLPSink
from producers import QUESTION, answer_tool, broken_tool, retrieve_tool, run_dag_flow, use_promptflow_openai_injection

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "flowtel"
CI_VALUES = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
RELEASE, NAMESPACE = "flowtel", "llm"
# Ports the chart's config listens on (values.yaml `ports`); the live runs need them free on loopback.
PORTS = {"otlp-grpc": 4317, "otlp-http": 4318, "metrics": 9464, "health": 13133, "feedback": 8080}
CONTAINER_CONFIG = "/etc/flowtel/config.yaml"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def tool(name: str) -> str:
    """A real tool from .tools/bin (where .ci/install puts it) or PATH; missing is a failure, not a skip."""
    local = ROOT / ".tools" / "bin" / name
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    venv = Path(sys.executable).parent / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (neither .tools/bin, the venv nor PATH): run `bash .ci/install`")
    return found


def run(cmd: list[str], *, check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def helm_template(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args], check=check)


def render(*args: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(helm_template(*args).stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return [d["kind"] for d in docs]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """flowtel's Deployment or StatefulSet (not the gateway's)."""
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == RELEASE]
    assert len(found) == 1, kinds(docs)
    return found[0]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_text(docs: list[dict[str, Any]]) -> str:
    return str(find(docs, "ConfigMap", RELEASE)["data"]["config.yaml"])


def chart_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The collector container's environment as the chart sets it, Secret references resolved from the render."""
    secrets = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "Secret"}
    env: dict[str, str] = {}
    for var in container(workload(docs)).get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
    return env


def sections(config: CollectorConfig) -> dict[str, Any]:
    """A parsed config as plain data, without the file name, to compare two files' meaning."""
    return {"service": config.service.model_dump(),
            **{s: {cid: m.model_dump() for cid, m in getattr(config, s).items()}
               for s in ("receivers", "processors", "exporters", "extensions")}}


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    return {name: render("-f", str(path)) for name, path in CI_VALUES.items()}


# ---- the matrix: lint, schemas, checkov, configs -------------------------------------------------------------

def test_ci_matrix_covers_the_issue() -> None:
    assert set(CI_VALUES) == {"defaults", "appinsights", "persistence", "gateway", "monitoring", "everything"}


@pytest.mark.parametrize("name", sorted(CI_VALUES))
def test_helm_lint(name: str) -> None:
    result = run([tool("helm"), "lint", "--strict", str(CHART), "-f", str(CI_VALUES[name])])
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout + result.stderr


def test_chart_app_version_is_flowtels() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == importlib.metadata.version("flowtel")


def test_manifests_valid_for_kubernetes_1_33(renders: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    files = []
    for name, docs in renders.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        files.append(str(path))
    result = run([tool("kubernetes-validate"), "-k", "1.33.0", "--strict", *files], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # The Prometheus Operator's kinds have no bundled schema; they are the only ones it may not know.
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr))
    assert unknown == CRD_KINDS, unknown
    passed = re.findall(r"passed for resource (\S+) against version 1\.33", result.stdout + result.stderr)
    assert len(passed) == sum(1 for docs in renders.values() for d in docs if d["kind"] not in CRD_KINDS)


def test_prometheus_operator_objects_by_hand(renders: dict[str, list[dict[str, Any]]]) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule cannot be validated offline (CRDs): their fields by hand."""
    docs = renders["monitoring"]
    main = find(docs, "Service", RELEASE)
    headless = find(docs, "Service", f"{RELEASE}-headless")
    pods = workload(docs)["spec"]["template"]

    monitor = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= main["metadata"]["labels"].items()
    # Pods would be scraped twice if the headless Service matched too.
    assert not selector.items() <= headless["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in main["spec"]["ports"]} and endpoint["path"] == "/metrics"

    podmonitor = find(docs, "PodMonitor")
    assert podmonitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert podmonitor["spec"]["selector"]["matchLabels"].items() <= pods["metadata"]["labels"].items()
    [pod_endpoint] = podmonitor["spec"]["podMetricsEndpoints"]
    assert pod_endpoint["port"] in {p["name"] for p in container(workload(docs))["ports"]}

    rule = find(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert isinstance(rule["spec"]["groups"], list)
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and r["expr"], r

    dashboard = find(docs, "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["flowtel.json"] == (CHART / "dashboards" / "flowtel.json").read_text().rstrip("\n")
    assert json.loads(dashboard["data"]["flowtel.json"])["title"]

    # Each behind its own flag: none of them in the defaults.
    assert not CRD_KINDS & set(kinds(renders["defaults"]))
    assert f"{RELEASE}-dashboard" not in {d["metadata"]["name"] for d in renders["defaults"]}


def test_checkov_passes_with_reasoned_skips(renders: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """One checkov run (it is the slow tool) over every rendered values file and the Dockerfile."""
    for name, docs in renders.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    config = CHART / ".checkov.yaml"
    result = run([tool("checkov"), "-d", str(tmp_path), "--framework", "kubernetes", "dockerfile",
                  "--config-file", str(config), "--skip-download", "-o", "json"], check=False, timeout=300)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}, result.stderr[-2000:]
    for check_type, report in by_type.items():
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert failed == [], (check_type, failed)
        assert report["summary"]["parsing_errors"] == 0
    assert by_type["kubernetes"]["summary"]["passed"] > 500
    # checkov also counts pod specs inside workloads, so at least every manifest was read
    assert by_type["kubernetes"]["summary"]["resource_count"] >= sum(len(d) for d in renders.values())
    assert result.returncode == 0
    # Every skip carries a written reason: the comment right above it names the check.
    lines = config.read_text().splitlines()
    skips = yaml.safe_load(config.read_text())["skip-check"]
    assert skips
    for check in skips:
        at = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        assert lines[at - 1].strip().startswith("#") and any(check in line for line in lines[max(0, at - 4):at]), check


def test_default_config_is_collector_configs_default(renders: dict[str, list[dict[str, Any]]]) -> None:
    rendered = config_text(renders["defaults"])
    default = (ROOT / "collector-config" / "default.yaml").read_text()
    for env in ({}, {"FLOWTEL_LISTEN_HOST": "0.0.0.0", "FLOWTEL_MEMORY_LIMIT_MIB": "800"}):
        ours = load_config(text=rendered, env=env, name="chart")
        theirs = load_config(text=default, env=env, name="default.yaml")
        assert sections(ours) == sections(theirs), env
    # and what the container sees: listening on every interface, the memory budget from values
    env = chart_env(renders["defaults"])
    assert env["FLOWTEL_LISTEN_HOST"] == "0.0.0.0"
    live = load_config(text=rendered, env=env)
    assert live.receivers["otlp"].protocols.grpc.endpoint == "0.0.0.0:4317"
    assert live.processors["memory_limiter"].limit_mib == 800


@pytest.mark.parametrize("name", sorted(CI_VALUES))
def test_rendered_config_passes_flowtel_validate(name: str, renders: dict[str, list[dict[str, Any]]],
                                                 tmp_path: Path) -> None:
    docs = renders[name]
    path = tmp_path / "config.yaml"
    path.write_text(config_text(docs))
    env = {**os.environ, **chart_env(docs)}
    result = run([tool("flowtel"), "validate", "--config", str(path)], check=False, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{path}: valid" in result.stdout + result.stderr


# ---- what the values do ---------------------------------------------------------------------------------------

def test_toggles_shape_the_config(renders: dict[str, list[dict[str, Any]]]) -> None:
    def parsed(name: str) -> dict[str, Any]:
        return dict(yaml.safe_load(config_text(renders[name])))

    ai = parsed("appinsights")
    assert ai["exporters"]["azuremonitor"]["connection_string"] == "${env:APPLICATIONINSIGHTS_CONNECTION_STRING}"
    assert ai["exporters"]["azuremonitor"]["retry_total"] == 0
    assert ai["service"]["pipelines"]["traces"]["exporters"] == ["prometheus", "azuremonitor"]
    env = chart_env(renders["appinsights"])
    assert env["APPLICATIONINSIGHTS_CONNECTION_STRING"].startswith("InstrumentationKey=0000")
    # the connection string is in the Secret, never in the ConfigMap
    assert "InstrumentationKey" not in config_text(renders["appinsights"])

    persist = parsed("persistence")
    assert persist["extensions"]["file_storage"]["directory"] == "/var/lib/flowtel/storage"
    assert "file_storage" in persist["service"]["extensions"]
    assert persist["exporters"]["otlp/forward"]["sending_queue"] == {"storage": "file_storage", "queue_size": 5000}
    assert persist["exporters"]["otlp/forward"]["headers"] == {"x-scope-orgid": "flowtel"}

    # forward and appInsights take the apps' metrics and logs too, not only the enriched spans
    for kind in ("metrics", "logs"):
        assert "otlp/forward" in persist["service"]["pipelines"][kind]["exporters"], kind
    every = parsed("everything")
    for kind in ("traces", "metrics", "logs"):
        assert {"azuremonitor", "otlp/forward"} <= set(every["service"]["pipelines"][kind]["exporters"]), kind
    assert every["exporters"]["azuremonitor"]["storage"] == "file_storage"
    assert every["receivers"]["otlp"]["protocols"]["grpc"]["auth"] == {"authenticator": "bearertokenauth/otlp"}
    assert every["receivers"]["feedback"]["auth"] == {"authenticator": "bearertokenauth/feedback"}
    assert every["extensions"]["bearertokenauth/otlp"] == {"token": "${env:FLOWTEL_OTLP_TOKEN}"}
    env = chart_env(renders["everything"])
    assert (env["FLOWTEL_OTLP_TOKEN"], env["FLOWTEL_FEEDBACK_TOKEN"]) == ("ci-otlp-token", "ci-feedback-token")
    assert "ci-otlp-token" not in config_text(renders["everything"])


def test_pods_are_hardened(renders: dict[str, list[dict[str, Any]]]) -> None:
    docs = renders["everything"]
    gateway = find(docs, "Deployment", f"{RELEASE}-gateway")
    for obj in (workload(docs), gateway):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        c = container(obj)
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["path"] == "/" and ports[c[probe]["httpGet"]["port"]] == 13133

    flowtel = container(workload(docs))
    assert {p["name"]: p["containerPort"] for p in flowtel["ports"]} == PORTS
    service = find(docs, "Service", RELEASE)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == PORTS
    assert flowtel["command"] + flowtel["args"] == ["flowtel", "collector", "--config", CONTAINER_CONFIG]
    config_mount = next(m for m in flowtel["volumeMounts"] if m["mountPath"] == "/etc/flowtel")
    assert config_mount["readOnly"] is True


def test_statefulset_only_with_persistence(renders: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in renders.items():
        persistent = bool(yaml.safe_load(CI_VALUES[name].read_text() or "{}").get("persistence", {}).get("enabled"))
        assert workload(docs)["kind"] == ("StatefulSet" if persistent else "Deployment"), name
        assert "PersistentVolumeClaim" not in kinds(docs)
    sts = workload(renders["persistence"])
    assert sts["spec"]["serviceName"] == f"{RELEASE}-headless"
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    mount = next(m for m in container(sts)["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    directory = yaml.safe_load(config_text(renders["persistence"]))["extensions"]["file_storage"]["directory"]
    assert directory.startswith(mount["mountPath"] + "/")
    hpa = find(renders["everything"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": RELEASE}
    assert "replicas" not in workload(renders["everything"])["spec"]  # the HPA owns it


def test_checksum_annotation_rolls_pods_on_config_change() -> None:
    def checksum(*args: str) -> str:
        return str(workload(render(*args))["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum()
    # the hash of the config itself (the ConfigMap's block scalar adds the final newline)
    assert base == hashlib.sha256(config_text(render()).rstrip("\n").encode()).hexdigest()
    assert checksum("--set", "replicaCount=3") == base
    assert checksum("--set", "config.processors.flowtel.trace_timeout=2m") != base
    assert checksum("--set", "forward.enabled=true", "--set", "forward.endpoint=tempo:4317") != base


def test_gateway_routes_by_trace_id_through_the_headless_service(renders: dict[str, list[dict[str, Any]]]) -> None:
    docs = renders["gateway"]
    headless = find(docs, "Service", f"{RELEASE}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    gateway_cm = find(docs, "ConfigMap", f"{RELEASE}-gateway")
    gw = yaml.safe_load(gateway_cm["data"]["config.yaml"])
    lb = gw["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert lb["resolver"]["dns"] == {"hostname": f"{RELEASE}-headless.{NAMESPACE}.svc.cluster.local", "port": "4317"}
    assert lb["protocol"]["otlp"]["tls"] == {"insecure": True}
    assert gw["service"]["pipelines"]["traces"] == {"receivers": ["otlp"], "processors": ["memory_limiter"],
                                                   "exporters": ["loadbalancing"]}
    assert gw["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    # The apps' logs follow their traces; their metrics go by service.name, so each app's series stays on one pod.
    assert gw["service"]["pipelines"]["logs"]["exporters"] == ["loadbalancing"]
    assert gw["service"]["pipelines"]["metrics"]["exporters"] == ["loadbalancing/metrics"]
    assert gw["exporters"]["loadbalancing/metrics"]["routing_key"] == "service"
    assert gw["exporters"]["loadbalancing/metrics"]["resolver"] == lb["resolver"]

    deployment = find(docs, "Deployment", f"{RELEASE}-gateway")
    assert container(deployment)["image"].startswith("otel/opentelemetry-collector-contrib:0.")
    assert container(deployment)["args"] == ["--config=/etc/otelcol/config.yaml"]
    gateway_pods = deployment["spec"]["template"]["metadata"]["labels"]
    flowtel_pods = workload(docs)["spec"]["template"]["metadata"]["labels"]
    gateway_svc = find(docs, "Service", f"{RELEASE}-gateway")
    # Each Service selects its own tier only: apps -> gateway -> flowtel, never apps -> flowtel by accident.
    assert gateway_svc["spec"]["selector"].items() <= gateway_pods.items()
    assert not gateway_svc["spec"]["selector"].items() <= flowtel_pods.items()
    for svc in (find(docs, "Service", RELEASE), headless):
        assert svc["spec"]["selector"].items() <= flowtel_pods.items()
        assert not svc["spec"]["selector"].items() <= gateway_pods.items()
    assert workload(docs)["spec"]["replicas"] == 3

    # Feedback can land on any pod: it goes back through the gateway, the rest is processed here.
    flowtel = yaml.safe_load(config_text(docs))
    pipelines = flowtel["service"]["pipelines"]
    assert pipelines["traces/feedback"] == {"receivers": ["feedback"], "exporters": ["otlp/gateway"]}
    assert pipelines["traces"]["receivers"] == ["otlp"]
    assert pipelines["traces"]["processors"] == ["memory_limiter", "flowtel", "batch"]
    assert flowtel["exporters"]["otlp/gateway"] == {
        "endpoint": f"{RELEASE}-gateway.{NAMESPACE}.svc.cluster.local:4317", "tls": {"insecure": True}}
    # with auth, the gateway checks the apps' token and passes it on to the pods
    every = yaml.safe_load(find(renders["everything"], "ConfigMap", f"{RELEASE}-gateway")["data"]["config.yaml"])
    assert every["exporters"]["loadbalancing"]["protocol"]["otlp"]["auth"] == {"authenticator": "bearertokenauth"}
    assert every["receivers"]["otlp"]["protocols"]["http"]["auth"] == {"authenticator": "bearertokenauth"}
    assert "gateway" not in " ".join(d["metadata"]["name"] for d in renders["defaults"])


def test_notes_tell_the_endpoint_to_set() -> None:
    def notes(*args: str) -> str:
        out = run([tool("helm"), "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                   *args]).stdout
        return out[out.index("NOTES:"):]

    direct = notes()
    assert f"OTEL_EXPORTER_OTLP_ENDPOINT=http://{RELEASE}.{NAMESPACE}.svc.cluster.local:4318" in direct
    assert f"POST http://{RELEASE}.{NAMESPACE}.svc.cluster.local:8080/feedback" in direct
    via_gateway = notes("-f", str(CI_VALUES["gateway"]))
    assert f"OTEL_EXPORTER_OTLP_ENDPOINT=http://{RELEASE}-gateway.{NAMESPACE}.svc.cluster.local:4318" in via_gateway
    assert f"http://{RELEASE}.{NAMESPACE}.svc.cluster.local:4318" not in via_gateway
    # port-forward is for a user's machine; from inside the cluster the Service's name is used
    assert "from your machine" in direct and f"port-forward svc/{RELEASE} 9464" in direct
    assert f"curl -s http://{RELEASE}.{NAMESPACE}.svc.cluster.local:9464/metrics" in direct
    assert "inside the cluster" not in direct


def test_notes_warn_about_replicas_without_the_gateway() -> None:
    def notes(*args: str) -> str:
        out = run([tool("helm"), "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                   *args]).stdout
        return out[out.index("NOTES:"):]

    warning = "flowtel replicas without the gateway (gateway.enabled=false)"
    assert warning not in notes()
    assert f"WARNING: up to 3 {warning}" in notes("--set", "replicaCount=3")
    assert f"WARNING: up to 10 {warning}" in notes("--set", "autoscaling.enabled=true")  # maxReplicas
    assert warning not in notes("-f", str(CI_VALUES["gateway"]), "--set", "replicaCount=3")


def test_throughput_figures_are_stated_once_in_the_readme() -> None:
    """The chart's documents point to the README's "Performance" figures instead of repeating them."""
    spans_per_s = re.compile(r"\b\d{1,3},\d{3}(?: to \d{1,3},\d{3})? spans/s(?! per replica)")
    for path in (CHART / "README.md", CHART / "values.yaml"):
        # 10,000 spans/s per replica per CPU is the planning rule, not a measurement
        stated = [m.group(0) for m in spans_per_s.finditer(path.read_text()) if not m.group(0).startswith("10,000")]
        assert stated == [], (path, stated)
    assert "(../../README.md#collector-throughput)" in (CHART / "README.md").read_text()
    assert "### Collector throughput" in (ROOT / "README.md").read_text()


def test_schema_and_required_values_refuse_mistakes() -> None:
    for args, message in (
        (["--set", "persistance.enabled=true"], "additional properties 'persistance' not allowed"),
        (["--set", "appInsights.enable=true"], "additional properties 'enable' not allowed"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "ports.health=0"], "/ports/health"),
        (["--set", "appInsights.enabled=true"], "appInsights.connectionString (or existingSecret) is required"),
        (["--set", "auth.enabled=true"], "auth.otlpToken (or existingSecret) is required"),
        (["--set", "forward.enabled=true"], "forward.endpoint"),
    ):
        result = helm_template(*args, check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)


def test_existing_secret_is_used_instead_of_a_new_one() -> None:
    docs = render("--set", "appInsights.enabled=true", "--set", "auth.enabled=true", "--set", "existingSecret=llm-keys")
    assert "Secret" not in kinds(docs)
    refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container(workload(docs))["env"] if "valueFrom" in v}
    assert refs == {"APPLICATIONINSIGHTS_CONNECTION_STRING": {"name": "llm-keys",
                                                              "key": "applicationinsights-connection-string"},
                    "FLOWTEL_OTLP_TOKEN": {"name": "llm-keys", "key": "otlp-token"},
                    "FLOWTEL_FEEDBACK_TOKEN": {"name": "llm-keys", "key": "feedback-token"}}


# ---- the image ------------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)
            if not m[0].lstrip().startswith("#")]


def test_dockerfile_runs_what_the_chart_runs(renders: dict[str, list[dict[str, Any]]]) -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    assert final_stage[0] == ("FROM", "python:3.11-slim")
    last = {op: arg for op, arg in final_stage}
    user = last["USER"].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), last["USER"]
    assert int(user[0]) == container(workload(renders["defaults"]))["securityContext"]["runAsUser"]
    chart = container(workload(renders["defaults"]))
    assert json.loads(last["ENTRYPOINT"]) + json.loads(last["CMD"]) == chart["command"] + chart["args"]
    assert {int(p) for p in last["EXPOSE"].split()} == set(PORTS.values())
    assert "FLOWTEL_LISTEN_HOST=0.0.0.0" in last["ENV"].split()
    assert "--no-cache-dir" in last["RUN"]
    # Every file the build copies from the context exists and is not excluded by .dockerignore.
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.split("/")[0] not in ignored, source


# ---- the rendered config, run as the container runs it --------------------------------------------------------

def _ports_free() -> None:
    busy = []
    for name, port in PORTS.items():
        with socket.socket() as s:
            # as the collector's servers do: connections in TIME_WAIT from an earlier run do not count
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{name} {port}")
    if busy:
        pytest.fail("the chart's config listens on fixed ports, and these are taken on 127.0.0.1: "
                    + ", ".join(busy) + " (stop whatever holds them and re-run)")


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class ContainerRun:
    """The container's command (from the rendered pod spec) with the extracted config, on loopback."""

    def __init__(self, docs: list[dict[str, Any]], tmp_path: Path) -> None:
        self.config = tmp_path / "config.yaml"
        self.config.write_text(config_text(docs))
        c = container(workload(docs))
        argv = [arg.replace(CONTAINER_CONFIG, str(self.config)) for arg in c["command"] + c["args"]]
        assert argv[1:] == ["collector", "--config", str(self.config)]
        self.argv = [tool(argv[0]), *argv[1:]]
        self.env = {**os.environ, **chart_env(docs), "FLOWTEL_LISTEN_HOST": "127.0.0.1"}
        self.log = tmp_path / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ContainerRun:
        _ports_free()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_for(lambda: _get(f"http://127.0.0.1:{PORTS['health']}/")[0] == 200, "readiness on 13133")
        return self

    def wait_for(self, condition: Any, what: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"collector exited {self.proc.returncode} waiting for {what}:\n{self.log.read_text()}")
            try:
                value = condition()
            except (OSError, ValueError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("collector did not stop on SIGTERM:\n" + self.log.read_text())

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def app_tracer() -> Iterator[None]:
    reset_otel_globals()
    use_promptflow_openai_injection(True)
    yield
    reset_otel_globals()


def _send_prompt_flow_traffic(base_url: str, headers: dict[str, str] | None = None) -> str:
    """3 chat flows and 1 broken one, traced by promptflow-tracing, over OTLP/HTTP. Returns a trace's traceparent."""
    provider = TracerProvider(resource=Resource.create({"service.name": "chart-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{PORTS['otlp-http']}/v1/traces", headers=headers)))
    trace.set_tracer_provider(provider)
    parents = []
    tracer = trace.get_tracer("promptflow")
    nodes = [("retrieve", retrieve_tool(base_url)), ("answer", answer_tool(base_url))]
    for _ in range(3):
        with tracer.start_as_current_span("request") as request:
            run_dag_flow("chat_flow", {"question": QUESTION}, nodes)
            ctx = request.get_span_context()
            parents.append(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01")
    with pytest.raises(ValueError):
        run_dag_flow("broken_flow", {"question": QUESTION}, [("broken", broken_tool)])
    assert provider.force_flush(30_000)
    provider.shutdown()
    return parents[0]


def _metrics() -> Any:
    return scrape(f"http://127.0.0.1:{PORTS['metrics']}/metrics")


def test_default_config_runs_as_the_container_runs_it(renders: dict[str, list[dict[str, Any]]], tmp_path: Path,
                                                      fake_llm: Any, app_tracer: None) -> None:
    with ContainerRun(renders["defaults"], tmp_path) as collector:
        traceparent = _send_prompt_flow_traffic(fake_llm.base_url)
        m = collector.wait_for(lambda: (s := _metrics()).value("flow_request_total") == 4 and s,
                               "4 flow requests on :9464")
        assert m.value("flow_request_total", flow="chat_flow", response_code="200") == 3
        assert m.value("flow_request_total", flow="broken_flow") == 1
        assert m.value("token_consumption_total", flow="chat_flow", node="answer", llm_engine="gpt-4o-mini",
                       token_type="prompt_tokens") == 3 * 4
        assert m.value("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="http") >= 4 * 3
        # feedback on one of those traces, as prompt flow serving's API takes it
        status, body = _get(f"http://127.0.0.1:{PORTS['feedback']}/feedback", data=b'"thumbup"',
                            headers={"Content-Type": "application/json", "traceparent": traceparent})
        assert (status, json.loads(body)) == (200, {"status": "Feedback received."})
        assert collector.stop() == 0
    assert "flowtel collector stopped" in collector.log.read_text()


def test_everything_on_config_runs_as_the_container_runs_it(tmp_path: Path, fake_llm: Any, app_tracer: None) -> None:
    """Auth, persistence, forward and App Insights at once; backends replaced by local ones through values."""
    with OTLPSink() as backend, IngestionServer() as azure:
        docs = render("-f", str(CI_VALUES["everything"]),
                      "--set", f"persistence.mountPath={tmp_path / 'data'}",
                      "--set", f"forward.endpoint={backend.endpoint}",
                      "--set-string", f"appInsights.connectionString={azure.connection_string}",
                      "--set", "appInsights.settings.retry_total=0")
        with ContainerRun(docs, tmp_path) as collector:
            # the OTLP token is required
            status, _ = _get(f"http://127.0.0.1:{PORTS['otlp-http']}/v1/traces", data=b"",
                             headers={"Content-Type": "application/x-protobuf"})
            assert status == 401
            _send_prompt_flow_traffic(fake_llm.base_url, headers={"Authorization": "Bearer ci-otlp-token"})
            m = collector.wait_for(lambda: (s := _metrics()).value("flow_request_total") == 4 and s,
                                   "4 flow requests on :9464")
            assert m.value("flow_request_total", flow="chat_flow") == 3
            spans = collector.wait_for(lambda: len(backend.spans()) >= 4 * 3 and backend.spans(),
                                       "spans forwarded to the OTLP backend")
            assert any(a.key == "gen_ai.request.model" for span, _ in spans for a in span.attributes)
            assert collector.wait_for(lambda: azure.span_rows(), "spans at App Insights")
            # the queues' directory on the pod's volume
            assert (tmp_path / "data" / "storage").is_dir()
            status, _ = _get(f"http://127.0.0.1:{PORTS['feedback']}/feedback", data=b'"thumbup"',
                             headers={"Content-Type": "application/json"})
            assert status == 401
            assert collector.stop() == 0
        assert azure.invalid == []
