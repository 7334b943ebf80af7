"""One settings model for the Prometheus endpoint in both hosts: ``PrometheusSettings`` (in-process, from the
environment or code) and ``PrometheusExporterConfig`` (the collector's ``prometheus`` exporter, from its file)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError

from flowtel.collector.config import load_config
from flowtel.collector.confmap import ConfigFileError
from flowtel.exporters.prometheus import PrometheusEndpoint, PrometheusMetricReader, PrometheusSettings
from flowtel.exporters.prometheus_config import PrometheusExporterConfig
from flowtel.settings import BearerToken, ConfigError, ServerTLS, TLSSettings

from tls_certs import self_signed

HOST, PORT = "OTEL_EXPORTER_PROMETHEUS_HOST", "OTEL_EXPORTER_PROMETHEUS_PORT"
CERT, KEY, CA = ("FLOWTEL_PROMETHEUS_TLS_CERT_FILE", "FLOWTEL_PROMETHEUS_TLS_KEY_FILE",
                 "FLOWTEL_PROMETHEUS_TLS_CLIENT_CA_FILE")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(server certificate, its key, a client CA) as paths."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(directory, "server")
    ca, _ = self_signed(directory, "client-ca")
    return str(cert), str(key), str(ca)


def _collector_prometheus(keys: str) -> PrometheusExporterConfig:
    text = f"""receivers: {{otlp: {{protocols: {{http: {{endpoint: 127.0.0.1:0}}}}}}}}
exporters:
  prometheus:
{keys}
service: {{pipelines: {{traces: {{receivers: [otlp], exporters: [prometheus]}}}}}}
"""
    config = load_config(text=text, name="t.yaml").exporters["prometheus"]
    assert isinstance(config, PrometheusExporterConfig)
    return config


# -- one model for both hosts ---------------------------------------------------------------------------------

def test_environment_and_config_file_build_the_same_object(certs: tuple[str, str, str]) -> None:
    cert, key, ca = certs
    env = {HOST: "0.0.0.0", PORT: "9100", CERT: cert, KEY: key, CA: ca}
    from_env = PrometheusSettings.from_env(env)
    from_file = _collector_prometheus(f"""    endpoint: 0.0.0.0:9100
    tls: {{cert_file: {cert}, key_file: {key}, client_ca_file: {ca}}}""")
    assert from_env == PrometheusSettings(endpoint="0.0.0.0:9100", tls=ServerTLS(cert_file=cert, key_file=key,
                                                                                   client_ca_file=ca))
    # The collector's config is the same model (a subclass with its keys about auth and received metrics) ...
    assert isinstance(from_file, PrometheusSettings)
    assert {key: getattr(from_file, key) for key in PrometheusSettings.model_fields} == dict(from_env)
    # ... read from the same variables by the same reader when asked.
    assert PrometheusExporterConfig.from_env(env) == from_file
    assert (from_file.host, from_file.port, from_file.bearer_token) == ("0.0.0.0", 9100, None)


def test_each_host_keeps_its_default_endpoint() -> None:
    assert PrometheusSettings().endpoint == PrometheusSettings.from_env({}).endpoint == "127.0.0.1:9464"
    assert PrometheusExporterConfig().endpoint == "localhost:9464"
    assert _collector_prometheus("    metric_expiration: 1m").endpoint == "localhost:9464"
    # Only a port: the host stays each host's default.
    assert PrometheusSettings.from_env({PORT: "0"}).endpoint == "127.0.0.1:0"
    assert PrometheusExporterConfig.from_env({PORT: "0"}).endpoint == "localhost:0"


@pytest.mark.parametrize(("raw", "endpoint"), [("::1", "[::1]:9100"), ("[::1]", "[::1]:9100"),
                                               ("fe80::1%eth0", "[fe80::1%eth0]:9100"), ("my-host", "my-host:9100")])
def test_host_variable_takes_ipv6_with_or_without_brackets(raw: str, endpoint: str) -> None:
    settings = PrometheusSettings.from_env({HOST: raw, PORT: "9100"})
    assert settings.endpoint == endpoint
    assert (settings.host, settings.port) == (raw.strip("[]"), 9100)


def test_an_ipv6_endpoint_serves() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    endpoint = PrometheusEndpoint(PrometheusMetricReader(), PrometheusSettings.from_env({HOST: "::1", PORT: "0"}))
    endpoint.start()
    try:
        assert endpoint.url == f"http://[::1]:{endpoint.port}/metrics"
        with urllib.request.urlopen(endpoint.url, timeout=5) as response:
            assert response.status == 200
    finally:
        endpoint.shutdown()


def test_an_endpoint_override_replaces_the_host_and_port_variables() -> None:
    env = {HOST: "0.0.0.0", PORT: "9100"}
    assert PrometheusSettings.from_env(env, endpoint="127.0.0.1:0").endpoint == "127.0.0.1:0"
    assert PrometheusSettings.from_env(env, port=0).endpoint == "0.0.0.0:0"
    # A tls override replaces the TLS variables: their pair check does not apply.
    assert PrometheusSettings.from_env({CERT: "/only/cert.pem"}, tls=None).tls is None


# -- errors name the variable ---------------------------------------------------------------------------------

_HOST_EXPECTED = "a host name or IP address (no scheme, port or path), e.g. 0.0.0.0 or ::1"


@pytest.mark.parametrize(("var", "raw", "expected"), [
    (HOST, "http://0.0.0.0", _HOST_EXPECTED),
    (HOST, "0.0.0.0:9100", _HOST_EXPECTED),
    (HOST, "my host", _HOST_EXPECTED),
    (HOST, "[]", _HOST_EXPECTED),
    (PORT, "abc", "a port number"),
    (PORT, "65536", "a port number 0-65535"),
    (CERT, "/nonexistent/cert.pem", "a readable file (it does not exist)"),
    (KEY, "/nonexistent/key.pem", "a readable file (it does not exist)"),
    (CA, "/nonexistent/ca.pem", "a readable file (it does not exist)"),
])
def test_each_variables_error_names_it(certs: tuple[str, str, str], var: str, raw: str, expected: str) -> None:
    cert, key, _ = certs
    env = {CERT: cert, KEY: key} if var in (CERT, KEY, CA) else {}
    with pytest.raises(ConfigError) as info:
        PrometheusSettings.from_env({**env, var: raw})
    assert (info.value.source, info.value.key, info.value.expected, info.value.got) == (
        "environment", var, expected, raw)


def test_tls_variables_need_each_other(certs: tuple[str, str, str]) -> None:
    cert, _, ca = certs
    with pytest.raises(ConfigError) as info:
        PrometheusSettings.from_env({CERT: cert})
    assert str(info.value) == (f"environment: {CERT}/_KEY_FILE: expected both set or neither, "
                               f"got {{'cert': {cert!r}, 'key': None}}")
    with pytest.raises(ConfigError) as info:
        PrometheusSettings.from_env({CA: ca})  # client certificates required of a server that has no TLS
    assert (info.value.key, info.value.got) == (CA, ca)
    assert info.value.expected.startswith(f"set with {CERT} and _KEY_FILE")


# -- the config file ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(PrometheusExporterConfig.IN_PROCESS_ONLY))
def test_in_process_only_keys_are_refused_in_a_config_file(key: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        _collector_prometheus(f"    {key}: 9100")
    assert (f"t.yaml:4: exporters.prometheus.{key}: expected a collector key; {key} is in-process only: "
            f"{PrometheusSettings.IN_PROCESS_ONLY[key]}") in str(info.value)


@pytest.mark.parametrize("name", ["host", "port"])
def test_names_from_code_are_refused_in_a_config_file_with_the_key_to_use(name: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        _collector_prometheus(f"    {name}: 9100")
    assert (f"t.yaml:4: exporters.prometheus.{name}: expected the config file's key endpoint ({name} is its name "
            "in Python code only)") in str(info.value)


def test_the_collector_takes_its_token_from_the_extension_and_checks_it_with_bearer_token() -> None:
    from flowtel.collector.service import Collector

    text = """receivers: {otlp: {protocols: {http: {endpoint: 127.0.0.1:0}}}}
exporters: {prometheus: {endpoint: 127.0.0.1:0, auth: {authenticator: bearertokenauth}}}
extensions: {bearertokenauth: {token: s3cret}}
service:
  extensions: [bearertokenauth]
  pipelines: {traces: {receivers: [otlp], exporters: [prometheus]}}
"""
    collector = Collector(load_config(text=text, name="t.yaml"))
    assert isinstance(collector.extensions["bearertokenauth"], BearerToken)
    collector.start()
    try:
        url = collector.listening.prometheus["prometheus"]
        assert _status(url) == _status(url, "Bearer wrong") == 401
        assert _status(url, "Bearer s3cret") == 200
    finally:
        collector.shutdown(5)


def test_an_in_process_endpoint_takes_a_resolved_token_too() -> None:
    endpoint = PrometheusEndpoint(PrometheusMetricReader(), PrometheusSettings(port=0), token=BearerToken("s3cret"))
    endpoint.start()
    try:
        assert _status(endpoint.url) == 401
        assert _status(endpoint.url, "Bearer s3cret") == 200
    finally:
        endpoint.shutdown()


def _status(url: str, authorization: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


# -- names from before the shared model -----------------------------------------------------------------------

def test_names_from_before_the_shared_model_still_work_in_code(certs: tuple[str, str, str]) -> None:
    cert, key, ca = certs
    by_name = PrometheusSettings(host="0.0.0.0", port=9100, bearer_token="tok", tls=TLSSettings(cert, key, ca))
    by_position = PrometheusSettings("0.0.0.0", 9100, "tok", TLSSettings(cert, key, ca))
    by_key = PrometheusSettings(endpoint="0.0.0.0:9100", bearer_token="tok",
                                tls=ServerTLS(cert_file=cert, key_file=key, client_ca_file=ca))
    assert by_name == by_position == by_key
    assert (by_name.host, by_name.port, by_name.bearer_token) == ("0.0.0.0", 9100, "tok")
    assert by_name.tls is not None
    assert (by_name.tls.cert_file, by_name.tls.key_file, by_name.tls.client_ca_file) == (cert, key, ca)
    assert by_name.tls.settings() == TLSSettings(cert, key, ca)
    # One part: the other is the default's; both hosts' defaults.
    assert PrometheusSettings(port=0).endpoint == "127.0.0.1:0"
    assert PrometheusSettings(host="::1").endpoint == "[::1]:9464"
    assert PrometheusExporterConfig(port=0).endpoint == "localhost:0"
    assert PrometheusSettings(endpoint="0.0.0.0:1", port=2).endpoint == "0.0.0.0:2"


@pytest.mark.parametrize("kwargs", [{"port": "x"}, {"port": 70000}, {"port": True}, {"host": 5}, {"host": "a/b"},
                                    {"host": "0.0.0.0:9100"}, {"endpoint": "nohost", "port": 1},
                                    {"tls": TLSSettings("/nonexistent.pem", "/nonexistent.pem")}])
def test_bad_values_under_old_names_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PrometheusSettings(**kwargs)  # type: ignore[arg-type]


def test_positional_arguments_are_the_old_ones_only() -> None:
    with pytest.raises(TypeError, match="at most 4 positional arguments"):
        PrometheusSettings("h", 1, None, None, "extra")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="host both by position and by keyword"):
        PrometheusSettings("h", host="g")


# -- every key is read somewhere ------------------------------------------------------------------------------

def test_every_key_has_its_variable_or_is_set_elsewhere_deliberately() -> None:
    """A new key gets a variable in ``PrometheusSettings.ENV``, or a place on these lists, deliberately."""
    endpoint_parts = {"host": "endpoint", "port": "endpoint"}  # the two variables make one key
    with_variable = {endpoint_parts.get(var.key, var.key) for var in PrometheusSettings.ENV}
    keys = {k for k in PrometheusSettings.model_fields if k != "tls"} | {
        f"tls.{k}" for k in ServerTLS.model_fields}
    code_only: set[str] = set()
    assert keys - code_only == with_variable
    collector_only = {"auth", "metric_expiration", "resource_to_telemetry_conversion", "promote_resource_attributes",
                      "duplicate_derived_metrics", "duplicate_prefix", "cardinality_limit", "max_metrics",
                      "label_value_max_bytes", "label_count_limit"}
    assert set(PrometheusExporterConfig.model_fields) - set(PrometheusSettings.model_fields) == collector_only
    # In-process only: refused in a config file, skipped by its key reference; the endpoint's parts are code names.
    assert set(PrometheusSettings.IN_PROCESS_ONLY) == {"bearer_token"}
    assert PrometheusExporterConfig.CODE_NAMES == PrometheusSettings.CODE_NAMES == endpoint_parts


def test_the_collector_passes_its_config_through() -> None:
    """No field-by-field mapping: the exporter serves the very object the config file was read into."""
    from flowtel.collector.service import Collector

    text = """receivers: {otlp: {protocols: {http: {endpoint: 127.0.0.1:0}}}}
exporters: {prometheus: {endpoint: 127.0.0.1:0, metric_expiration: 1m}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [prometheus]}}}
"""
    config = load_config(text=text, name="t.yaml")
    collector = Collector(config)
    try:
        exporter = collector.exporters["prometheus"]
        assert exporter._config is config.exporters["prometheus"]
        assert exporter.received.config is config.exporters["prometheus"]
    finally:
        collector.shutdown(1)


def test_readme_documents_every_variable() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Configuration"):]
    section = section[:section.index("\n## ", 1)]
    assert [var.name for var in PrometheusSettings.ENV if var.name not in section] == []
