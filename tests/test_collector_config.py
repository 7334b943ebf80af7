"""The collector's config file: the default and the annotated examples, validation, ``${env:...}``.

``flowtel validate`` and ``flowtel collector`` run as child processes (``python -m flowtel.cli``),
as a user runs them; the rest is checked in-process on ``load_config`` and the settings helpers.
Every error message is asserted in full, with its line and key path.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest

from flowtel import cli
from flowtel.collector.config import COMPONENTS, ServiceConfig, load_config, reference
from flowtel.collector.confmap import ConfigFileError, parse
from flowtel.collector.settings import parse_duration, split_endpoint

from collector_proc import CollectorProcess

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "collector-config"
EXAMPLES = ("forward-otlp.yaml", "secure.yaml", "ab-deployments.yaml")
ENDPOINT = "host:port (no scheme), port 0 to 65535, e.g. localhost:4317 or 0.0.0.0:4317"
DURATION = "a duration such as 5s, 200ms or 1m30s"
FLOWTEL_KEYS = ("common_dimensions, resource_dimensions, cardinality_limit, label_value_max_bytes, capture_content, "
                "trace_timeout, max_held_spans, max_queue_size, genai_metrics_skip_scopes, feedback")
SECTIONS = "receivers, processors, exporters, extensions, service"


def _clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything the configs read, plus ``extra``."""
    prefixes = ("FLOWTEL_", "OTLP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in ("DEPLOYMENT", "VARIANT")}
    return {**env, **extra}


BAD_YAML = ("receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: localhost:4317\n"
            "     http:\n        endpoint: localhost:4318\n")
PIPELINE = """
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
"""
UNSET = ("receivers:\n  otlp: {protocols: {http: {endpoint: 'localhost:0'}}}\n"
         "exporters:\n  debug: {verbosity: '${env:FLOWTEL_TEST_VERBOSITY}'}\n" + PIPELINE)


def _collector_config(port: int | str, timeout: str) -> str:
    return (f"receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n"
            f"processors:\n  batch:\n    timeout: {timeout}\n"
            "exporters:\n  debug: {}\n"
            "service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [batch]\n"
            "      exporters: [debug]\n")


@dataclass
class Runs:
    """Every ``python -m flowtel.cli`` run of this module, started together (each pays ~1 s of imports)."""

    dir: Path
    port: int  # free: the broken collector config's receiver
    busy_port: int  # taken by the test while the busy-port config tried to start
    results: dict[str, subprocess.CompletedProcess[str]]

    def __getitem__(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.results[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    d = tmp_path_factory.mktemp("cli")
    (d / "broken.yaml").write_text(BROKEN)
    (d / "bad-yaml.yaml").write_text(BAD_YAML)
    (d / "unset.yaml").write_text(UNSET)
    with socket.socket() as s:  # a port nothing listens on, for the receiver of the broken collector config
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "collector-broken.yaml").write_text(_collector_config(port, "soon"))
    busy = socket.socket()  # a port taken, for a valid config that cannot start
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    (d / "busy-port.yaml").write_text(_collector_config(busy_port, "1s").replace("http:", "grpc:"))
    example_env = _example_env(d)
    jobs: dict[str, tuple[list[str], dict[str, str]]] = {
        "default": (["validate"], {}),
        "default-file": (["validate", "--config", "collector-config/default.yaml"], {}),
        **{example: (["validate", "--config", f"collector-config/{example}"], example_env) for example in EXAMPLES},
        "secure-no-env": (["validate", "--config", "collector-config/secure.yaml"], {}),
        "broken": (["validate", "--config", str(d / "broken.yaml")], {}),
        "bad-yaml": (["validate", "--config", str(d / "bad-yaml.yaml")], {}),
        "unset": (["validate", "--config", str(d / "unset.yaml")], {}),
        "collector-broken": (["collector", "--config", str(d / "collector-broken.yaml")], {}),
        "busy-port": (["collector", "--config", str(d / "busy-port.yaml")], {}),
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "flowtel.cli", *args], env=_clean_env(**env), cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (args, env) in jobs.items()}
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    busy.close()
    return Runs(d, port, busy_port, results)


def problems(text: str, env: dict[str, str] | None = None, name: str = "test.yaml") -> list[str]:
    with pytest.raises(ConfigFileError) as info:
        load_config(text=text, env=env or {}, name=name)
    return [str(p) for p in info.value.problems]


# --- the default config ------------------------------------------------------------------------------


def test_default_config_is_the_embedded_one_byte_for_byte() -> None:
    shipped = (CONFIG_DIR / "default.yaml").read_bytes()
    assert (ROOT / "src/flowtel/collector/default.yaml").read_bytes() == shipped
    assert resources.files("flowtel.collector").joinpath("default.yaml").read_bytes() == shipped


def test_default_config_validates_embedded_and_from_file(runs: Runs) -> None:
    embedded = runs["default"]
    assert (embedded.returncode, embedded.stdout, embedded.stderr) == (
        0, "<embedded default>: valid (pipelines: traces, metrics, logs)\n", "")
    on_disk = runs["default-file"]
    assert (on_disk.returncode, on_disk.stdout, on_disk.stderr) == (
        0, "collector-config/default.yaml: valid (pipelines: traces, metrics, logs)\n", "")


def test_default_config_reads_its_environment() -> None:
    text = (CONFIG_DIR / "default.yaml").read_text()
    config = load_config(text=text, env={})
    assert config.receivers["otlp"].protocols.grpc.endpoint == "localhost:4317"
    assert config.receivers["otlp"].protocols.http.endpoint == "localhost:4318"
    assert config.exporters["prometheus"].endpoint == "localhost:9464"
    assert config.extensions["health_check"].endpoint == "localhost:13133"
    assert config.processors["memory_limiter"].limit_mib == 1024
    assert config.processors["flowtel"].trace_timeout == 300.0
    assert config.processors["batch"].timeout == 0.2
    assert config.service.pipelines["traces"].processors == ["memory_limiter", "flowtel", "batch"]

    config = load_config(text=text, env={"FLOWTEL_LISTEN_HOST": "0.0.0.0", "FLOWTEL_MEMORY_LIMIT_MIB": "512"})
    assert config.receivers["otlp"].protocols.grpc.endpoint == "0.0.0.0:4317"
    assert config.exporters["prometheus"].endpoint == "0.0.0.0:9464"
    assert config.processors["memory_limiter"].limit_mib == 512


# --- the annotated examples --------------------------------------------------------------------------


def _example_env(tmp_path: Path) -> dict[str, str]:
    """What the examples read: TLS material and a token file for secure.yaml (validation only reads them)."""
    files = {}
    for var, name in (("FLOWTEL_TLS_CERT_FILE", "tls.crt"), ("FLOWTEL_TLS_KEY_FILE", "tls.key"),
                      ("FLOWTEL_TLS_CLIENT_CA_FILE", "client-ca.crt"), ("FLOWTEL_SCRAPE_TOKEN_FILE", "scrape-token")):
        path = tmp_path / name
        path.write_text("placeholder\n")
        files[var] = str(path)
    return {**files, "FLOWTEL_OTLP_TOKEN": "20240601", "DEPLOYMENT": "green", "VARIANT": "b"}


def test_collector_config_holds_exactly_the_default_and_the_examples() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(("default.yaml", *EXAMPLES))


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_validates(example: str, runs: Runs) -> None:
    result = runs[example]
    # stderr empty: no problem and no warning about an unset variable
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"collector-config/{example}: valid (pipelines: traces)\n", "")


def test_examples_mean_what_their_comments_say(tmp_path: Path) -> None:
    env = _example_env(tmp_path)
    forward = load_config(str(CONFIG_DIR / "forward-otlp.yaml"), env={})
    assert forward.service.extensions == ["health_check", "file_storage"]
    assert forward.service.pipelines["traces"].exporters == ["prometheus", "otlp/backend", "otlphttp/archive"]
    backend = forward.exporters["otlp/backend"]
    assert (backend.endpoint, backend.tls.insecure, backend.timeout) == ("localhost:14317", True, 10.0)
    assert backend.headers == {"x-scope-orgid": "flowtel"}
    assert (backend.sending_queue.storage, backend.sending_queue.queue_size) == ("file_storage", 5000)
    assert (backend.retry_on_failure.initial_interval, backend.retry_on_failure.max_elapsed_time) == (1.0, 600.0)
    archive = forward.exporters["otlphttp/archive"]
    assert (archive.url, archive.sending_queue.storage) == ("http://localhost:14318/v1/traces", "file_storage")
    assert forward.extensions["file_storage"].directory == "/var/lib/flowtel/queue"

    secure = load_config(str(CONFIG_DIR / "secure.yaml"), env=env)
    for protocol in ("grpc", "http"):
        server = getattr(secure.receivers["otlp"].protocols, protocol)
        assert (server.tls.cert_file, server.tls.client_ca_file) == (env["FLOWTEL_TLS_CERT_FILE"],
                                                                    env["FLOWTEL_TLS_CLIENT_CA_FILE"])
        assert server.auth.authenticator == "bearertokenauth/otlp"
    assert secure.exporters["prometheus"].auth.authenticator == "bearertokenauth/scrape"
    assert secure.exporters["prometheus"].tls.key_file == env["FLOWTEL_TLS_KEY_FILE"]
    # all digits, and still the text as written: a string setting is not turned into a number
    assert secure.extensions["bearertokenauth/otlp"].token == "20240601"
    assert secure.extensions["bearertokenauth/scrape"].filename == env["FLOWTEL_SCRAPE_TOKEN_FILE"]

    ab = load_config(str(CONFIG_DIR / "ab-deployments.yaml"), env=env)
    assert ab.processors["flowtel"].common_dimensions == {"deployment": "green", "variant": "b"}
    assert ab.processors["flowtel"].resource_dimensions == {"service_version": "service.version",
                                                             "environment": "deployment.environment.name"}
    assert (ab.processors["memory_limiter"].limit_mib, ab.processors["memory_limiter"].spike_limit_mib) == (1024, 256)
    assert ab.exporters["debug"].verbosity == "basic"
    assert ab.service.pipelines["traces"].exporters == ["prometheus", "debug"]
    assert load_config(str(CONFIG_DIR / "ab-deployments.yaml"), env={}).processors["flowtel"].common_dimensions \
        == {"deployment": "blue", "variant": "a"}


def _line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line (not a comment) that contains ``needle``."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1)
            if needle in line and not line.lstrip().startswith("#")]
    return hits[occurrence - 1]


def test_secure_example_without_its_environment_lists_each_gap(runs: Runs) -> None:
    result = runs["secure-no-env"]
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    f = "collector-config/secure.yaml"
    secure = CONFIG_DIR / "secure.yaml"
    token, token_file = _line_of(secure, "token: ${env:"), _line_of(secure, "filename: ${env:")
    assert [line for line in lines if "is not set" in line][:3] == [
        f"warning: {f}:{token}: extensions.bearertokenauth/otlp.token: environment variable FLOWTEL_OTLP_TOKEN is "
        "not set; it expands to an empty string",
        f"warning: {f}:{token_file}: extensions.bearertokenauth/scrape.filename: environment variable "
        "FLOWTEL_SCRAPE_TOKEN_FILE is not set; it expands to an empty string",
        f"warning: {f}:{_line_of(secure, 'cert_file: ${env:')}: receivers.otlp.protocols.grpc.tls.cert_file: "
        "environment "
        "variable FLOWTEL_TLS_CERT_FILE is not set; it expands to an empty string"]
    assert len([line for line in lines if "is not set" in line]) == 11  # 3 TLS variables x 3 endpoints, 2 tokens
    empty = "expected a readable file (the path is empty), got ''"
    assert [line for line in lines if "expected" in line] == [
        f"{f}:{_line_of(secure, 'bearertokenauth/otlp:')}: extensions.bearertokenauth/otlp: expected exactly one of "
        "token, filename",
        f"{f}:{_line_of(secure, 'bearertokenauth/scrape:')}: extensions.bearertokenauth/scrape: expected exactly "
        "one of token, filename",
        f"{f}:{_line_of(secure, 'cert_file:', 1)}: receivers.otlp.protocols.grpc.tls.cert_file: {empty}",
        f"{f}:{_line_of(secure, 'key_file:', 1)}: receivers.otlp.protocols.grpc.tls.key_file: {empty}",
        f"{f}:{_line_of(secure, 'cert_file:', 2)}: receivers.otlp.protocols.http.tls.cert_file: {empty}",
        f"{f}:{_line_of(secure, 'key_file:', 2)}: receivers.otlp.protocols.http.tls.key_file: {empty}",
        f"{f}:{_line_of(secure, 'cert_file:', 3)}: exporters.prometheus.tls.cert_file: {empty}",
        f"{f}:{_line_of(secure, 'key_file:', 3)}: exporters.prometheus.tls.key_file: {empty}",
    ]
    assert lines[-1] == "8 problem(s) found"


def _readme_tables() -> dict[str, list[tuple[str, str, str]]]:
    tables: dict[str, list[tuple[str, str, str]]] = {}
    current = None
    for line in (CONFIG_DIR / "README.md").read_text().splitlines():
        if line.startswith("### "):
            current = tables.setdefault(line[4:], [])
        elif current is not None and line.startswith("| `"):
            key, kind, default = (cell.strip() for cell in line.strip("|").split(" | ")[:3])
            current.append((key.strip("`"), kind, default.strip("`")))
    return tables


def test_readme_lists_every_component_key_type_and_default() -> None:
    kinds = {"receivers": "receiver", "processors": "processor", "exporters": "exporter", "extensions": "extension"}
    expected = {f"{kinds[section]} `{ctype}`": reference(model)
                for section, known in COMPONENTS.items() for ctype, model in known.items()}
    expected["`service`"] = reference(ServiceConfig)
    assert _readme_tables() == expected
    # spot checks that the generated rows themselves are right
    assert ("trace_timeout", "duration > 0", "5m") in expected["processor `flowtel`"]
    assert ("limit_percentage", "integer > 0", "none") in expected["processor `memory_limiter`"]
    assert ("retry_on_failure.max_elapsed_time", "duration >= 0", "5m") in expected["exporter `otlp`"]
    assert ("protocols.http.endpoint", "host:port", "localhost:4318") in expected["receiver `otlp`"]


# --- every problem at once ---------------------------------------------------------------------------

BROKEN = """\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: localhost:4317
      http:
        endpoint: localhost:4318
        auth:
          authenticator: bearertokenauth
  otlp/bad:
    protocols:
      http:
        endpoint: localhost
  zipkin:
    endpoint: localhost:9411

processors:
  memory_limiter:
    limit_mib: 512
    check_interval: 5 seconds
  flowtel:
    comon_dimensions: {deployment: blue}
  batch:
    send_batch_size: -5
    timeout: 1s
    timeout: 2s

exporters:
  prometheus:
    endpoint: localhost:4317
  otlp:
    endpoint: backend:4317
    sending_queue:
      storage: file_storage

extensions:
  bearertokenauth:
    token: s3cret

connectors: {}

service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp, otlp/bad]
      processors: [flowtel, memory_limiter, batch]
      exporters: [prometheus, otlp, otlphttp/backend]
    metrics:
      receivers: [otlp]
      processors: [flowtel]
      exporters: [prometheus]
    profiles:
      receivers: [otlp]
      exporters: [otlp]
"""


def test_validate_lists_every_problem_with_file_line_key_and_expectation(runs: Runs) -> None:
    path = runs.dir / "broken.yaml"
    result = runs["broken"]
    assert result.returncode == 1
    assert result.stdout == ""
    f = str(path)
    assert result.stderr.splitlines() == [
        f"{f}:9: receivers.otlp.protocols.http.auth.authenticator: expected a bearertokenauth extension listed in "
        "service.extensions, got 'bearertokenauth'",
        f"{f}:13: receivers.otlp/bad.protocols.http.endpoint: expected {ENDPOINT}, got 'localhost'",
        f"{f}:14: receivers.zipkin: expected a receiver type among otlp, feedback (as type or type/name)",
        f"{f}:20: processors.memory_limiter.check_interval: expected {DURATION}, got '5 seconds'",
        f"{f}:22: processors.flowtel.comon_dimensions: expected no such key (did you mean common_dimensions?); "
        f"known keys: {FLOWTEL_KEYS}",
        f"{f}:24: processors.batch.send_batch_size: expected an integer >= 1, got -5",
        f"{f}:26: processors.batch.timeout: expected each key once (also set on line 25; the last one would "
        "silently win)",
        f"{f}:30: exporters.prometheus.endpoint: expected a port not already used by "
        "receivers.otlp.protocols.grpc.endpoint, got 'localhost:4317'",
        f"{f}:34: exporters.otlp.sending_queue.storage: expected a file_storage extension listed in "
        "service.extensions, got 'file_storage'",
        f"{f}:40: connectors: expected one of the sections {SECTIONS}",
        f"{f}:43: service.extensions[0]: expected an extension defined under extensions, got 'health_check'",
        f"{f}:47: service.pipelines.traces.processors: expected memory_limiter first, so it refuses data before "
        "any work is done, got ['flowtel', 'memory_limiter', 'batch']",
        f"{f}:48: service.pipelines.traces.exporters[2]: expected a component defined under exporters, "
        "got 'otlphttp/backend'",
        f"{f}:51: service.pipelines.metrics.processors[0]: expected a processor that supports metrics (flowtel "
        "takes traces only), got 'flowtel'",
        f"{f}:53: service.pipelines.profiles: expected a pipeline of one of the signals traces, metrics, logs (as "
        "signal or signal/name), got 'profiles'",
        "15 problem(s) found",
    ]
    # the line numbers above are where those keys are written
    lines = BROKEN.splitlines()
    for number, text in ((9, "authenticator:"), (14, "zipkin:"), (22, "comon_dimensions:"), (40, "connectors:"),
                         (49, "metrics:")):
        assert lines[number - 1].strip().startswith(text)


def test_invalid_yaml_is_one_problem_with_line_and_key(runs: Runs) -> None:
    path = runs.dir / "bad-yaml.yaml"
    result = runs["bad-yaml"]
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}:6: receivers.otlp.protocols.http: expected valid YAML, got \"expected <block end>, but found "
        "'<block mapping start>' (column 6), while parsing a block mapping that starts on line 3\"",
        "1 problem(s) found"]


def test_unterminated_quote_points_at_where_it_starts() -> None:
    text = 'receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: "localhost:4318\n'
    assert problems(text) == [
        "test.yaml:5: receivers.otlp.protocols.http.endpoint: expected valid YAML, got 'found unexpected end of "
        "stream (line 6, column 1), while scanning a quoted scalar that starts on line 5'"]


def test_a_key_without_colon_or_an_unclosed_bracket_is_reported_on_its_own_line() -> None:
    # YAML only finds these wrong on the next line; the problem names the line where they are written.
    missing_colon = "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: x\n      http\nservice: {}\n"
    assert problems(missing_colon) == [
        "test.yaml:6: receivers.otlp.protocols: expected valid YAML, got \"could not find expected ':' (line 7, "
        "column 1), while scanning a simple key that starts on line 6\""]
    unclosed = "receivers:\n  otlp:\n    protocols: [grpc, http\nservice: {}\n"
    assert problems(unclosed) == [
        "test.yaml:3: receivers.otlp.protocols: expected valid YAML, got \"expected ',' or ']', but got ':' (line 4, "
        "column 8), while parsing a flow sequence that starts on line 3\""]


def test_a_mapping_given_twice_is_one_problem_not_one_per_key_inside() -> None:
    text = ("receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: localhost:4317\n"
            "      grpc:\n        endpoint: localhost:4319\n"
            "exporters:\n  debug: {}\n" + PIPELINE)
    assert problems(text) == [
        "test.yaml:6: receivers.otlp.protocols.grpc: expected each key once (also set on line 4; the last one "
        "would silently win)"]
    # a key repeated inside the second copy is still one
    assert problems(text.replace("localhost:4319\n", "localhost:4319\n        endpoint: localhost:4320\n")) == [
        "test.yaml:6: receivers.otlp.protocols.grpc: expected each key once (also set on line 4; the last one "
        "would silently win)",
        "test.yaml:8: receivers.otlp.protocols.grpc.endpoint: expected each key once (also set on line 7; the last "
        "one would silently win)"]


def test_unreadable_or_non_mapping_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli.main(["validate", "--config", str(missing)]) == 1
    assert capsys.readouterr().err == (f"{missing}: (top level): expected a readable config file, got 'No such file "
                                       "or directory'\n1 problem(s) found\n")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"# caf\xe9\nservice: {}\n")
    with pytest.raises(ConfigFileError) as info:
        load_config(str(latin1))
    assert str(info.value) == f"{latin1}: (top level): expected a UTF-8 text file, got 'byte 0xe9 at offset 5'"
    assert problems("- receivers\n- service\n") == [
        "test.yaml:1: (top level): expected a mapping of receivers, processors, exporters, extensions and "
        "service, got 'list'"]
    assert problems("") == ["test.yaml: service: expected a service section with at least one pipeline"]


def test_collector_with_a_broken_config_exits_2_before_listening(runs: Runs, tmp_path: Path) -> None:
    path = runs.dir / "collector-broken.yaml"
    result = runs["collector-broken"]
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"flowtel: invalid configuration:\n"
                             f"{path}:8: processors.batch.timeout: expected {DURATION}, got 'soon'\n")
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", runs.port))

    # the same file, fixed, does start and listen: the checks above would see it
    fixed = CollectorProcess(_collector_config(0, "50ms"), tmp_path, name="fixed.yaml")
    fixed.start(timeout=20)
    try:
        assert list(fixed.http) == ["otlp"]
        assert "listening on" in fixed.log
    finally:
        assert fixed.stop() == 0


def test_collector_that_cannot_bind_says_so_without_a_traceback(runs: Runs) -> None:
    result = runs["busy-port"]
    assert result.returncode == 1
    path = runs.dir / "busy-port.yaml"
    # One line: the address and the config key that moves it; no traceback, and no raw line of grpc's C core
    # (every port is checked before anything binds).
    assert result.stderr.splitlines() == [
        f"flowtel: cannot start: cannot listen on 127.0.0.1:{runs.busy_port} (receivers.otlp.protocols.grpc.endpoint "
        f"in {path}): the port is already in use (another flowtel, or another program?); set another port there"]
    assert "listening on" not in result.stderr + result.stdout


# --- smaller checks, in-process ------------------------------------------------------------------------


def test_ports_conflict_only_on_overlapping_addresses() -> None:
    def config(a: str, b: str) -> str:
        return (f"receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: '{a}'}}\n"
                f"      http: {{endpoint: '{b}'}}\nexporters:\n  debug: {{}}\n{PIPELINE}")

    load_config(text=config("127.0.0.1:5000", "127.0.0.2:5000"), env={})  # two interfaces, one port each
    load_config(text=config("127.0.0.1:0", "127.0.0.1:0"), env={})  # any free port, twice
    assert problems(config("0.0.0.0:5000", "localhost:5000")) == [
        "test.yaml:5: receivers.otlp.protocols.http.endpoint: expected a port not already used by "
        "receivers.otlp.protocols.grpc.endpoint, got 'localhost:5000'"]
    assert problems(config("localhost:5000", "127.0.0.1:5000")) == [
        "test.yaml:5: receivers.otlp.protocols.http.endpoint: expected a port not already used by "
        "receivers.otlp.protocols.grpc.endpoint, got '127.0.0.1:5000'"]


def test_references_and_ids() -> None:
    text = """\
receivers:
  otlp/: {protocols: {grpc: {endpoint: 'localhost:0'}}}
  otlp/a: {protocols: {http: {endpoint: 'localhost:0'}}}
processors:
  batch: {}
  batch/2: {}
  memory_limiter: {limit_mib: 100, spike_limit_mib: 100}
exporters:
  debug: {}
  otlphtp: {endpoint: 'http://x:4318'}
extensions:
  file_storage: {}
service:
  extensions: [file_storage, file_storage]
  pipelines:
    traces/:
      receivers: [otlp/a, otlp/a]
      processors: [batch, batch/2, memory_limiter]
      exporters: [debug]
"""
    assert problems(text) == [
        "test.yaml:2: receivers.otlp/: expected an id otlp/name with a non-empty name without spaces",
        "test.yaml:7: processors.memory_limiter: expected a spike limit below the limit",
        "test.yaml:10: exporters.otlphtp: expected an exporter type among prometheus, otlp, otlphttp, debug, "
        "azuremonitor (as type or type/name) (did you mean otlphttp?)",
        "test.yaml:14: service.extensions[1]: expected each extension once, got 'file_storage'",
        "test.yaml:16: service.pipelines.traces/: expected an id traces/name with a non-empty name without spaces, "
        "got 'traces/'",
        "test.yaml:17: service.pipelines.traces/.receivers[1]: expected each receiver in a pipeline once, "
        "got 'otlp/a'",
        "test.yaml:18: service.pipelines.traces/.processors: expected at most one batch processor, "
        "got ['batch', 'batch/2', 'memory_limiter']",
        "test.yaml:18: service.pipelines.traces/.processors: expected memory_limiter first, so it refuses data "
        "before any work is done, got ['batch', 'batch/2', 'memory_limiter']",
    ]


def test_value_messages_say_what_was_expected() -> None:
    text = """\
processors:
  flowtel: {capture_content: maybe, cardinality_limit: lots}
  memory_limiter: {check_interval: -1, limit_mib: 0}
exporters:
  debug: {verbosity: loud}
  otlp: {tls: {insecure: true}}
  prometheus: {endpoint: 'http://localhost:9464'}
receivers:
  otlp: {protocols: {}}
service:
  telemetry: {logs: {level: trace}}
  pipelines:
    traces: {receivers: [], exporters: [debug]}
"""
    assert problems(text) == [
        # same line: in the order the component's keys are documented
        "test.yaml:2: processors.flowtel.cardinality_limit: expected an integer, got 'lots'",
        "test.yaml:2: processors.flowtel.capture_content: expected true or false, got 'maybe'",
        "test.yaml:3: processors.memory_limiter.check_interval: expected a duration > 0, got -1",
        "test.yaml:3: processors.memory_limiter.limit_mib: expected an integer > 0, got 0",
        "test.yaml:5: exporters.debug.verbosity: expected one of 'basic', 'normal' or 'detailed', got 'loud'",
        "test.yaml:6: exporters.otlp.endpoint: expected a value (this key is required)",
        f"test.yaml:7: exporters.prometheus.endpoint: expected {ENDPOINT}, got 'http://localhost:9464'",
        "test.yaml:9: receivers.otlp.protocols: expected at least one of grpc, http",
        "test.yaml:11: service.telemetry.logs.level: expected one of 'debug', 'info', 'warn' or 'error', got 'trace'",
        "test.yaml:13: service.pipelines.traces.receivers: expected at least 1 item(s), got []",
    ]
    grpc = "receivers:\n  otlp: {protocols: {grpc: {max_recv_msg_size_mib: 0}}}\nexporters:\n  debug: {}\n"
    assert problems(grpc + PIPELINE) == [
        "test.yaml:2: receivers.otlp.protocols.grpc.max_recv_msg_size_mib: expected a number > 0, got 0"]


def test_tls_files_must_be_readable_regular_files(tmp_path: Path) -> None:
    cert = tmp_path / "tls.crt"
    cert.write_text("x")
    text = (f"exporters:\n  prometheus:\n    tls:\n      cert_file: {cert}\n      key_file: {tmp_path}\n"
            f"      client_ca_file: {tmp_path / 'ca.crt'}\n"
            "service:\n  pipelines:\n    traces: {receivers: [otlp], exporters: [prometheus]}\n"
            "receivers:\n  otlp: {protocols: {http: {endpoint: 'localhost:0'}}}\n")
    assert problems(text) == [
        f"test.yaml:5: exporters.prometheus.tls.key_file: expected a readable file (it is not a regular file), "
        f"got '{tmp_path}'",
        f"test.yaml:6: exporters.prometheus.tls.client_ca_file: expected a readable file (it does not exist), "
        f"got '{tmp_path / 'ca.crt'}'",
    ]


# --- ${env:...} substitution --------------------------------------------------------------------------


def test_a_whole_reference_takes_its_yaml_type() -> None:
    doc = parse("a: ${env:PORT}\nb: localhost:${env:PORT}\nc: ${env:FLAG}\nd: ${env:RATIO}\ne: ${env:WORD}\n"
                "f: '${env:PORT}'\n", "t.yaml", {"PORT": "4317", "FLAG": "true", "RATIO": "0.5", "WORD": "on it"})
    assert doc.data == {"a": 4317, "b": "localhost:4317", "c": True, "d": 0.5, "e": "on it", "f": 4317}
    assert type(doc.data["a"]) is int


def test_port_from_the_environment_is_an_int_in_the_config() -> None:
    text = ("receivers:\n  otlp: {protocols: {grpc: {endpoint: 'localhost:${env:PORT}'}}}\n"
            "processors:\n  memory_limiter: {limit_mib: '${env:LIMIT}'}\n"
            "exporters:\n  debug: {}\n"
            "service:\n  pipelines:\n    traces:\n"
            "      {receivers: [otlp], processors: [memory_limiter], exporters: [debug]}\n")
    config = load_config(text=text, env={"PORT": "4317", "LIMIT": "256"})
    assert config.receivers["otlp"].protocols.grpc.endpoint == "localhost:4317"
    assert config.processors["memory_limiter"].limit_mib == 256
    assert problems(text, {"PORT": "4317", "LIMIT": "lots"}) == [
        "test.yaml:4: processors.memory_limiter.limit_mib: expected an integer, got 'lots'"]


def test_string_settings_keep_the_text_as_written() -> None:
    text = ("extensions:\n  bearertokenauth: {token: '${env:TOKEN}'}\n"
            "processors:\n  flowtel: {common_dimensions: {version: '${env:VERSION}', deployment: '${env:BLUE}'}}\n"
            "receivers:\n  otlp: {protocols: {http: {auth: {authenticator: bearertokenauth}}}}\n"
            "exporters:\n  debug: {verbosity: '${env:VERBOSITY}'}\n"
            "service:\n  extensions: [bearertokenauth]\n  pipelines:\n"
            "    traces: {receivers: [otlp], processors: [flowtel], exporters: [debug]}\n")
    env = {"TOKEN": "0123", "VERSION": "1.10", "BLUE": "yes", "VERBOSITY": "normal"}
    doc = parse(text, "t.yaml", env)
    # the YAML types, as upstream gives them (0123 is octal in YAML 1.1) ...
    assert doc.data["extensions"]["bearertokenauth"]["token"] == 83
    assert doc.data["processors"]["flowtel"]["common_dimensions"] == {"version": 1.1, "deployment": True}
    # ... but string settings get the text as written
    config = load_config(text=text, env=env)
    assert config.extensions["bearertokenauth"].token == "0123"
    assert config.processors["flowtel"].common_dimensions == {"version": "1.10", "deployment": "yes"}
    assert config.exporters["debug"].verbosity == "normal"
    # and where the text does not fit either, the problem shows the text
    assert problems(text, {**env, "VERBOSITY": "1"}) == [
        "test.yaml:8: exporters.debug.verbosity: expected one of 'basic', 'normal' or 'detailed', got '1'"]


def test_default_only_when_unset_and_dollar_dollar_is_a_literal_dollar() -> None:
    text = "a: ${env:X:-fallback}\nb: ${X:-5}\nc: pa$$word\nd: $${env:X}\ne: cost $5\nf: ${env:X:-}\n"
    assert parse(text, "t.yaml", {}).data == {"a": "fallback", "b": 5, "c": "pa$word", "d": "${env:X}",
                                             "e": "cost $5", "f": None}
    assert parse(text, "t.yaml", {"X": "set"}).data == {"a": "set", "b": "set", "c": "pa$word", "d": "${env:X}",
                                                        "e": "cost $5", "f": "set"}
    # set but empty is not unset: the default does not apply (as upstream)
    assert parse(text, "t.yaml", {"X": ""}).data["a"] is None


def test_unset_variable_expands_empty_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flowtel.collector"):
        doc = parse("exporters:\n  otlp:\n    headers:\n      x-key: key-${env:API_KEY}\n"
                    "      x-other: ${API_KEY}\n", "t.yaml", {})
    assert doc.data == {"exporters": {"otlp": {"headers": {"x-key": "key-", "x-other": None}}}}
    assert [r.getMessage() for r in caplog.records] == [
        "t.yaml:4: exporters.otlp.headers.x-key: environment variable API_KEY is not set; it expands to an empty "
        "string",
        "t.yaml:5: exporters.otlp.headers.x-other: environment variable API_KEY is not set; it expands to an empty "
        "string"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]


def test_unset_variable_warning_reaches_validate_output(runs: Runs) -> None:
    path = runs.dir / "unset.yaml"
    result = runs["unset"]
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"warning: {path}:4: exporters.debug.verbosity: environment variable FLOWTEL_TEST_VERBOSITY is not set; it "
        "expands to an empty string",
        f"{path}:4: exporters.debug.verbosity: expected one of 'basic', 'normal' or 'detailed', got ''",
        "1 problem(s) found"]


def test_malformed_references_are_problems() -> None:
    text = "a: ${file:/run/secret}\nb: ${env:1X}\nc: ${env:OPEN\n"
    assert problems(text + "service: {pipelines: {traces: {receivers: [r], exporters: [e]}}}\n") == [
        "test.yaml:1: a: expected ${env:NAME}, ${NAME} or ${env:NAME:-default} (NAME: letters, digits, _), or $$ "
        "for a literal $, got '${file:/run/secret}'",
        f"test.yaml:1: a: expected one of the sections {SECTIONS}",
        "test.yaml:2: b: expected ${env:NAME}, ${NAME} or ${env:NAME:-default} (NAME: letters, digits, _), or $$ "
        "for a literal $, got '${env:1X}'",
        f"test.yaml:2: b: expected one of the sections {SECTIONS}",
        "test.yaml:3: c: expected ${env:NAME}, ${NAME} or ${env:NAME:-default} (NAME: letters, digits, _), or $$ "
        "for a literal $, got '${'",
        f"test.yaml:3: c: expected one of the sections {SECTIONS}",
        "test.yaml:4: service.pipelines.traces.receivers[0]: expected a component defined under receivers, got 'r'",
        "test.yaml:4: service.pipelines.traces.exporters[0]: expected a component defined under exporters, got 'e'",
    ]


# --- durations and endpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("5s", 5.0), ("200ms", 0.2), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5), (".5s", 0.5), ("250us", 0.00025),
    ("100ns", 1e-7), (" 2m ", 120.0), ("0", 0.0), (3, 3.0), (0.25, 0.25)])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("text", ["5 seconds", "5", "s", "", "1m30", "-5s", "5S", "1d", "5s5", True, None, [5]])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == DURATION


@pytest.mark.parametrize(("text", "parts"), [
    ("localhost:4317", ("localhost", 4317)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:4318", ("::1", 4318)),
    ("collector.example.com:65535", ("collector.example.com", 65535))])
def test_split_endpoint(text: str, parts: tuple[str, int]) -> None:
    assert split_endpoint(text) == parts


@pytest.mark.parametrize("text", ["localhost", "localhost:", "localhost:65536", "localhost:-1", "localhost:43a7",
                                  "http://localhost:4317", "localhost/v1:4317", "local host:4317", "localhost:٤٣"])
def test_split_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        split_endpoint(text)
    assert str(info.value) == ENDPOINT


def test_an_endpoint_needs_a_host() -> None:
    text = "receivers:\n  otlp: {protocols: {grpc: {endpoint: ':4317'}}}\nexporters:\n  debug: {}\n" + PIPELINE
    assert problems(text) == [f"test.yaml:2: receivers.otlp.protocols.grpc.endpoint: expected {ENDPOINT}, "
                              "got ':4317'"]


def test_every_problem_line_has_the_documented_shape(tmp_path: Path) -> None:
    doc_shape = re.compile(r"^\S+:\d+: [\w./\[\]-]+: expected .+")
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigFileError) as info:
        load_config(str(path))
    assert len(info.value.problems) == 15
    assert all(doc_shape.match(str(p)) for p in info.value.problems), str(info.value)


_PIPELINE = """
receivers: {otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}}
processors:
%s
exporters:
  debug: {}
%s
service: {pipelines: {traces: {receivers: [otlp], processors: %s, exporters: [debug%s]}}}
"""


@pytest.mark.parametrize(("processors", "exporters", "expected"), [
    ("  memory_limiter: {limit_mib: 100, limit_percentage: 50}", "", "exactly one of limit_mib, limit_percentage"),
    ("  memory_limiter: {check_interval: 1s}", "", "exactly one of limit_mib, limit_percentage"),
    ("  memory_limiter: {limit_percentage: 101}", "", "an integer <= 100"),
    ("  batch: {}", "  otlp: {endpoint: 'http://backend/v1/traces'}", "host:port"),
    ("  batch: {}", "  otlp: {endpoint: backend:4317, sending_queue: {enabled: false}}", "always queue"),
    ("  batch: {}", "  otlp: {endpoint: backend:4317, retry_on_failure: {multiplier: 0.5}}", ">= 1"),
])
def test_more_component_checks(processors: str, exporters: str, expected: str) -> None:
    ptype = processors.split(":")[0].strip()
    extra = ", " + exporters.split(":")[0].strip() if exporters else ""
    text = _PIPELINE % (processors, exporters, f"[{ptype}]", extra)
    with pytest.raises(ConfigFileError) as error:
        load_config(text=text, name="t.yaml")
    assert len(error.value.problems) == 1, str(error.value)
    assert expected in str(error.value)


def test_memory_limit_as_a_percentage_of_available_memory() -> None:
    from flowtel.collector.processors.memory_limiter import available_mib

    config = load_config(text=_PIPELINE % ("  memory_limiter: {limit_percentage: 50, spike_limit_percentage: 10}",
                                           "", "[memory_limiter]", ""), name="t.yaml")
    limit, spike = config.processors["memory_limiter"].limits_mib()
    total = available_mib()
    assert total > 0
    assert (limit, spike) == (total * 50 // 100, total * 10 // 100)


# --- the command line ------------------------------------------------------------------------------------


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_version_and_help_say_what_each_command_does(capsys: pytest.CaptureFixture[str]) -> None:
    from flowtel import __version__

    assert _help(capsys, "--version") == f"flowtel {__version__}\n"
    top = _help(capsys, "--help")
    assert "``" not in top and ":func:" not in top  # plain text, not reStructuredText
    assert "  collector   run the collector" in top and "  validate    check a config file" in top
    run = _help(capsys, "collector", "--help")
    for port, key in (("4317", "receivers.otlp.protocols.grpc.endpoint"),
                      ("4318", "receivers.otlp.protocols.http.endpoint"), ("8080", "receivers.feedback.endpoint"),
                      ("9464", "exporters.prometheus.endpoint"), ("13133", "extensions.health_check.endpoint")):
        assert re.search(rf"^  {port} +.+ {re.escape(key)}", run, re.MULTILINE), (port, run)
    # the variables the help names are the ones the embedded default reads, no more, no fewer
    default = (CONFIG_DIR / "default.yaml").read_text()
    assert set(re.findall(r"\$\{env:([A-Z_]+)", default)) == set(re.findall(r"^  (FLOWTEL_[A-Z_]+) ", run, re.M))
    assert "examples:\n  flowtel collector\n" in run
    check = _help(capsys, "validate", "--help")
    assert "flowtel validate my.yaml" in check and "warning:" in check


def test_validate_takes_the_file_as_an_argument_or_with_config(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(CONFIG_DIR / "default.yaml")
    valid = f"{path}: valid (pipelines: {', '.join(load_config(path).service.pipelines)})\n"
    assert cli.main(["validate", path]) == 0
    assert capsys.readouterr().out == valid
    assert cli.main(["validate", "--config", path]) == 0
    assert capsys.readouterr().out == valid
    assert cli.main(["validate", path, "--config", "other.yaml"]) == 2
    assert capsys.readouterr().err == f"flowtel validate: two files given ({path} and --config other.yaml); give one\n"


def test_in_process_prometheus_port_taken_names_the_variable() -> None:
    import flowtel
    from flowtel._listen import PortInUse

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"OTEL_EXPORTER_PROMETHEUS_PORT": str(port), "OTEL_TRACES_EXPORTER": "none"}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            with pytest.raises(PortInUse) as info:
                flowtel.configure(set_global=False)
    assert str(info.value) == (
        f"cannot listen on 127.0.0.1:{port} (flowtel's Prometheus endpoint): the port is already in use (another "
        "flowtel, or another program?); set OTEL_EXPORTER_PROMETHEUS_PORT to another port (0 picks a free one), or "
        "leave prometheus out of OTEL_METRICS_EXPORTER")


def test_a_taken_port_in_the_embedded_default_says_how_to_move_it() -> None:
    from flowtel._listen import PortInUse

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = load_config(text=_collector_config(port, "1s"), env={}, name=cli.DEFAULT_CONFIG)
        with pytest.raises(PortInUse) as info:
            cli._check_ports(config)
    assert str(info.value) == (
        f"cannot listen on 127.0.0.1:{port} (receivers.otlp.protocols.http.endpoint of the embedded default config): "
        "the port is already in use (another flowtel, or another program?); to move it, copy "
        "collector-config/default.yaml, change that port and run `flowtel collector --config FILE`")


def test_the_ports_checked_are_those_the_collector_listens_on() -> None:
    config = load_config(str(CONFIG_DIR / "default.yaml"), env={})
    assert list(cli._listening_endpoints(config)) == [
        ("extensions.health_check.endpoint", "localhost:13133"),
        ("receivers.otlp.protocols.grpc.endpoint", "localhost:4317"),
        ("receivers.otlp.protocols.http.endpoint", "localhost:4318"),
        ("receivers.feedback.endpoint", "localhost:8080"),
        ("exporters.prometheus.endpoint", "localhost:9464")]
    # a forwarding exporter's endpoint (exporters.otlp.endpoint) is where it sends, not a port it takes
    forward = load_config(str(CONFIG_DIR / "forward-otlp.yaml"), env={})
    assert [key for key, _ in cli._listening_endpoints(forward)] == [
        "extensions.health_check.endpoint", "receivers.otlp.protocols.grpc.endpoint",
        "receivers.otlp.protocols.http.endpoint", "exporters.prometheus.endpoint"]


def test_an_otlphttp_exporter_needs_an_endpoint_for_every_signal_it_sends() -> None:
    text = """\
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
exporters:
  otlphttp: {traces_endpoint: "http://backend:4318/v1/traces"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlphttp]}
    metrics: {receivers: [otlp], exporters: [otlphttp]}
    logs: {receivers: [otlp], exporters: [otlphttp]}
"""
    assert problems(text) == [
        "test.yaml:4: exporters.otlphttp: expected endpoint, or metrics_endpoint and logs_endpoint: a pipeline of "
        "metrics and logs uses this exporter"]
    fixed = text.replace('{traces_endpoint: "http://backend:4318/v1/traces"}',
                         '{traces_endpoint: "http://t/v1/traces", metrics_endpoint: "http://m/v1/metrics", '
                         'logs_endpoint: "http://l/v1/logs"}')
    urls = load_config(text=fixed, name="test.yaml").exporters["otlphttp"]
    assert [urls.signal_url(s) for s in ("traces", "metrics", "logs")] == ["http://t/v1/traces", "http://m/v1/metrics",
                                                                          "http://l/v1/logs"]
