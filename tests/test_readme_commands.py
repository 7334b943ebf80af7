"""Every command the README shows still runs.

The README's ``bash`` blocks are parsed; each command must have a runner below (a new command
without one fails ``test_every_readme_command_has_a_runner``). Runners run the command as written,
in a shell, with bounded time; only what must differ on a shared machine is moved: ports (a config
with port 0 everywhere, ``OTEL_EXPORTER_PROMETHEUS_PORT``), ``my.yaml`` / ``app.py`` (written to a
temporary directory) and installs (``pip install .`` goes to a temporary target). Long-running
commands are stopped once they say they are ready; ``pip install PACKAGE`` lines are resolved
(``--dry-run``). ``bash .ci/run`` is the command that runs this test, so it is only checked for
syntax and for running the install, ruff and pytest; commands that need a user's deployment
(``NOT_RUN``) say where what they run is tested instead.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from collector_proc import ChildProcess

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    """Each command of the README's bash blocks, without its trailing comment; lines ending in ``\\`` joined."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for command in re.sub(r"\\\n\s*", "", block).splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


#: Commands that need what no test machine has, by the program they run (after any VAR=value prefix):
#: each with where that program is tested instead.
NOT_RUN = {
    "pf": "prompt flow serving of a user's flow at a user's collector (my_flow, flowtel-collector): "
          "tests/producers/test_promptflow_serving.py runs real `pf flow serve` in its own venv",
    "opentelemetry-instrument pf": "the same serving under flowtel's auto-instrumentation: the conformance test "
                                   "runs this recipe",
}


def _program(command: str) -> str:
    words = [w for w in shlex.split(command) if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w)]
    return " ".join(words[:2]) if words[:1] == ["opentelemetry-instrument"] else words[0]


def _env(**extra: str) -> dict[str, str]:
    """The user's environment with the venv's tools first on PATH (`flowtel`, `python`, `opentelemetry-instrument`)."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moved_default(tmp_path: Path) -> Path:
    """The shipped default config with every port 0 (the log says where each landed)."""
    text = (ROOT / "collector-config" / "default.yaml").read_text()
    moved, count = re.subn(r"\$\{env:FLOWTEL_LISTEN_HOST:-localhost\}:\d+", "127.0.0.1:0", text)
    assert count == 5
    path = tmp_path / "my.yaml"
    path.write_text(moved)
    return path


def _run(command: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _running(command: str, cwd: Path, env: dict[str, str]) -> ChildProcess:
    """A long-running command; ``exec`` so that a signal (Ctrl-C) reaches the command, not a shell around it."""
    return ChildProcess(["bash", "-c", f"exec {command}"], cwd, env)


def _collector(command: str, tmp_path: Path) -> None:
    config = _moved_default(tmp_path)
    # the embedded default's ports are fixed: the same file with port 0 everywhere stands in for it
    command = command.replace("my.yaml", str(config)) if "--config" in command else f"{command} --config {config}"
    cwd = ROOT if command.startswith("bash scripts/") else tmp_path
    running = _running(command, cwd, _env())
    try:
        running.wait_for(r"flowtel collector ready")
        assert re.search(r"OTLP/HTTP listening on http://127\.0\.0\.1:\d+/v1/traces", running.output)
    finally:
        code = running.stop()
    assert code == 0, running.output
    assert "Traceback" not in running.output


def _ci_run(command: str, tmp_path: Path) -> None:
    script = ROOT / ".ci" / "run"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    steps = [line for line in script.read_text().splitlines() if line and not line.startswith("#")]
    # install first, then (among whatever else CI adds) the linter, the type check and the README's test command
    required = ["bash .ci/install", ".venv/bin/ruff check .", "bash .ci/typecheck", ".venv/bin/python -m pytest"]
    assert [step for step in steps if step in required] == required, steps
    assert steps.index("bash .ci/install") == min(steps.index(step) for step in required), steps


def _quickstart(commands: list[str], tmp_path: Path) -> None:
    start, *curls = commands
    port = _free_port()
    running = _running(start, ROOT, _env(OTEL_EXPORTER_PROMETHEUS_PORT=str(port)))
    try:
        running.wait_for(r"metrics stay at http://127\.0\.0\.1:\d+/metrics until Ctrl-C")
        outputs = []
        for curl in curls:
            result = _run(curl.replace(":9464", f":{port}"), tmp_path, _env())
            assert result.returncode == 0, (curl, result.stdout, result.stderr)
            outputs.append(result.stdout)
        assert "flow_request_total{" in outputs[0] and "node_latency_bucket{" in outputs[0]
        assert "trace_id=" in outputs[1]
    finally:
        code = running.stop()
    assert code == 0, running.output


def _pip_install(command: str, tmp_path: Path) -> None:
    target = tmp_path / "site"
    # into a temporary target, not over the test venv's editable install; dependencies are the venv's
    result = _run(f"{command} --no-deps --quiet --target {shlex.quote(str(target))}", ROOT, _env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for installed in ("flowtel/cli.py", "flowtel/collector/default.yaml", "flowtel/processors/analysis.py",
                      "flowtel/exporters/prometheus.py"):
        assert (target / installed).is_file(), installed


APP = '''
import os, urllib.request
from opentelemetry import trace

with trace.get_tracer("app").start_as_current_span("chat gpt-4o-mini", kind=trace.SpanKind.CLIENT, attributes={
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3}):
    pass
trace.get_tracer_provider().force_flush()
port = os.environ["OTEL_EXPORTER_PROMETHEUS_PORT"]
print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
'''


def _zero_code(command: str, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    result = _run(command, tmp_path, _env(OTEL_EXPORTER_PROMETHEUS_PORT=str(_free_port()), OTEL_SERVICE_NAME="app"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r'^token_consumption_total\{.*llm_engine="gpt-4o-mini".*token_type="prompt_tokens"\} 7\.0$',
                     result.stdout, re.MULTILINE), result.stdout


def _validate(command: str, tmp_path: Path) -> None:
    config = _moved_default(tmp_path)
    result = _run(command, tmp_path, _env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(rf"{config.name}: valid \(pipelines: traces[\w/, ]*\)\n", result.stdout), result.stdout


def _help(command: str, tmp_path: Path) -> None:
    result = _run(command, tmp_path, _env())
    assert result.returncode == 0, result.stderr
    assert "receivers.otlp.protocols.grpc.endpoint" in result.stdout and "FLOWTEL_LISTEN_HOST" in result.stdout


def _export(command: str, tmp_path: Path) -> None:
    name = command.split()[1].split("=")[0]
    result = _run(f'{command} && printf %s "${name}"', tmp_path, _env())
    assert result.returncode == 0 and result.stdout.startswith("InstrumentationKey="), result


RUNNERS: dict[str, Callable[[str, Path], None]] = {
    "bash scripts/collector": _collector,
    "bash .ci/run": _ci_run,
    "pip install .": _pip_install,
    "opentelemetry-instrument python app.py": _zero_code,
    "flowtel collector": _collector,
    "flowtel collector --config my.yaml": _collector,
    "flowtel validate my.yaml": _validate,
    "flowtel collector --help": _help,
}
QUICKSTART = [
    "bash scripts/quickstart --requests 20",
    "curl -s 127.0.0.1:9464/metrics | grep -E '^(flow|node|rpc|token)_'",
    "curl -s -H 'Accept: application/openmetrics-text' 127.0.0.1:9464/metrics | grep 'flow_latency_bucket.*trace_id'",
]


def _is_export(command: str) -> bool:
    return command.startswith("export APPLICATIONINSIGHTS_CONNECTION_STRING=")


def _is_pip_install_package(command: str) -> bool:
    return re.fullmatch(r"pip install [A-Za-z0-9_.\[\]-]+", command) is not None and command != "pip install ."


def _others(commands: list[str]) -> list[str]:
    return [c for c in commands if c not in RUNNERS and c not in QUICKSTART and not _is_export(c)]


def test_every_readme_command_has_a_runner() -> None:
    commands = readme_commands()
    assert len(commands) >= len(RUNNERS) + len(QUICKSTART)
    unknown = [c for c in _others(commands) if not _is_pip_install_package(c) and _program(c) not in NOT_RUN]
    assert unknown == [], f"README commands with no runner in {__file__}: {unknown}"
    missing = [c for c in [*RUNNERS, *QUICKSTART] if c not in commands]
    assert missing == [], f"runners for commands the README no longer shows: {missing}"


@pytest.mark.parametrize("command", sorted(RUNNERS))
def test_readme_command_runs(command: str, tmp_path: Path) -> None:
    RUNNERS[command](command, tmp_path)


def test_readme_quickstart_then_curl(tmp_path: Path) -> None:
    _quickstart(QUICKSTART, tmp_path)


def test_readme_export_line(tmp_path: Path) -> None:
    exports = [c for c in readme_commands() if _is_export(c)]
    assert len(exports) == 1
    _export(exports[0], tmp_path)


def test_readme_pip_install_of_a_package_resolves(tmp_path: Path) -> None:
    """`pip install PACKAGE` lines (a dependency an integration needs): the package resolves for this Python."""
    commands = [c for c in _others(readme_commands()) if _is_pip_install_package(c)]
    if not commands:
        pytest.skip("the README shows no `pip install PACKAGE` line")
    for command in commands:
        result = _run(f"{command} --dry-run --no-deps --quiet", tmp_path, _env(), timeout=300)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
