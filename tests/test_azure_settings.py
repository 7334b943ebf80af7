"""``AzureMonitorSettings``: one settings model for Application Insights, read from the environment in-process
and from the ``azuremonitor`` exporter's keys by the collector (``AzureMonitorExporterConfig`` adds the keys only
a collector has)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from flowtel.collector.components import AzureMonitorExporterConfig  # the collector first: it imports exporters
from flowtel.collector.config import load_config
from flowtel.collector.confmap import ConfigFileError
from flowtel.exporters.azure_monitor import SELF_TELEMETRY_SWITCHES, AzureMonitorSettings
from flowtel.exporters.azuremonitor_collector import AzureMonitorCollectorExporter
from flowtel.selfmetrics import SelfMetrics
from flowtel.settings import ConfigError

KEY = "00000000-0000-4000-8000-000000000001"
CONNECTION = f"InstrumentationKey={KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"
HTTP_CONNECTION = f"InstrumentationKey={KEY};IngestionEndpoint=http://127.0.0.1:22001/"
#: Keys only the collector's subclass has.
COLLECTOR_ONLY = {"storage", "queue_size", "capture_content"}


@pytest.fixture(autouse=True)
def _no_connection_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)


def _collector_azuremonitor(keys: str) -> Any:
    text = f"""
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:0}}}}}}}}
exporters:
  azuremonitor:
{keys}
service: {{pipelines: {{traces: {{receivers: [otlp], exporters: [azuremonitor]}}}}}}
"""
    return load_config(text=text, name="t.yaml").exporters["azuremonitor"]


def _shared(config: AzureMonitorSettings) -> dict[str, Any]:
    return config.model_dump(exclude=COLLECTOR_ONLY)


# -- one model for both hosts ---------------------------------------------------------------------------------

def test_environment_and_config_file_build_the_same_settings() -> None:
    from_env = AzureMonitorSettings.from_env({
        "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, "FLOWTEL_AZURE_CREDENTIAL": "Managed_Identity",
        "AZURE_CLIENT_ID": "client-1", "FLOWTEL_AZURE_DISABLE_OFFLINE_STORAGE": "yes",
        "FLOWTEL_AZURE_STORAGE_MAX_SIZE": "1048576", "FLOWTEL_AZURE_STORAGE_RETRY_INTERVAL": "90",
        "FLOWTEL_AZURE_TIMEOUT": "2.5", "FLOWTEL_AZURE_READ_TIMEOUT": "1m",
        "FLOWTEL_AZURE_MAX_ENVELOPES_PER_SECOND": "0",
        "FLOWTEL_AZURE_ROOT_FLOWS_AS_REQUESTS": "false", "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "TRUE"})
    from_file = _collector_azuremonitor(f"""    connection_string: "{CONNECTION}"
    credential: managed_identity
    client_id: client-1
    disable_offline_storage: true
    storage_max_size: 1048576
    storage_retry_interval: 1m30s
    timeout: 2500ms
    read_timeout: 60s
    max_envelopes_per_second: 0
    root_flows_as_requests: false
    self_telemetry: false
    queue_size: 7""")
    assert type(from_file) is AzureMonitorExporterConfig and isinstance(from_file, AzureMonitorSettings)
    assert from_file.queue_size == 7
    assert _shared(from_file) == from_env.model_dump()
    assert AzureMonitorSettings.model_validate(_shared(from_file)) == from_env
    assert (from_env.timeout, from_env.read_timeout, from_env.storage_retry_interval) == (2.5, 60.0, 90.0)
    # and so the Azure exporters get the same arguments from either host
    file_kwargs, env_kwargs = from_file.exporter_kwargs("traces"), from_env.exporter_kwargs("traces")
    assert type(file_kwargs.pop("credential")).__name__ == type(env_kwargs.pop("credential")).__name__ \
        == "ManagedIdentityCredential"
    assert file_kwargs == env_kwargs == {
        "connection_string": CONNECTION, "disable_offline_storage": True, "storage_max_size": 1048576,
        "storage_retention_period": 172800.0, "storage_min_retry_interval": 90.0, "timeout": 2.5,
        "read_timeout": 60.0, "max_envelopes_per_second": 0}


def test_collector_defaults_are_the_in_process_defaults() -> None:
    from_file = _collector_azuremonitor(f'    connection_string: "{CONNECTION}"')
    assert _shared(from_file) == AzureMonitorSettings(connection_string=CONNECTION).model_dump()
    assert (from_file.storage, from_file.queue_size, from_file.capture_content) == (None, 1000, False)


def test_the_collector_exporter_is_built_from_the_config_as_it_is(tmp_path: Any) -> None:
    config = AzureMonitorExporterConfig(connection_string=CONNECTION, traces=False, metrics=False, queue_size=3)
    exporter = AzureMonitorCollectorExporter("azuremonitor", config, SelfMetrics())
    assert exporter._settings is config
    # a file_storage extension's directory goes onto a copy, every other key as it was
    stored = AzureMonitorCollectorExporter("azuremonitor", config, SelfMetrics(), str(tmp_path))
    assert stored._settings.storage_directory == str(tmp_path)
    assert stored._settings.exporter_kwargs("traces")["storage_directory"] == str(tmp_path / "traces")
    assert stored._settings.model_dump(exclude={"storage_directory"}) == config.model_dump(
        exclude={"storage_directory"})
    assert config.storage_directory is None


def test_the_collector_takes_the_connection_string_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigFileError) as info:
        _collector_azuremonitor("    traces: true")
    assert ("exporters.azuremonitor.connection_string: expected a connection string, InstrumentationKey=<uuid>;"
            "IngestionEndpoint=https://... (or APPLICATIONINSIGHTS_CONNECTION_STRING in the environment)") in str(
        info.value)
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", CONNECTION)
    config = _collector_azuremonitor("    traces: true")
    assert config.connection_string == CONNECTION
    assert config.instrumentation_key == KEY
    # the file's own wins
    other = CONNECTION.replace("0001", "0002")
    assert _collector_azuremonitor(f'    connection_string: "{other}"').connection_string == other


@pytest.mark.parametrize(("keys", "error"), [
    ('    connection_string: "InstrumentationKey=nope"',
     "t.yaml:5: exporters.azuremonitor.connection_string: expected a connection string with "
     "InstrumentationKey=<a lowercase uuid>, got 'InstrumentationKey=nope'"),
    (f'    connection_string: "{HTTP_CONNECTION}"\n    credential: default',
     "t.yaml:6: exporters.azuremonitor.credential: expected an https IngestionEndpoint (AAD tokens are never "
     "sent over http), got 'default'"),
    (f'    connection_string: "{CONNECTION}"\n    credential: password',
     "t.yaml:6: exporters.azuremonitor.credential: expected one of 'none', 'managed_identity' or 'default', "
     "got 'password'"),
    (f'    connection_string: "{CONNECTION}"\n    timeout: 0s',
     "t.yaml:6: exporters.azuremonitor.timeout: expected a duration > 0, got '0s'"),
    (f'    connection_string: "{CONNECTION}"\n    max_envelopes_per_second: -1',
     "t.yaml:6: exporters.azuremonitor.max_envelopes_per_second: expected an integer >= 0, got -1"),
])
def test_config_file_errors_name_the_key_and_line(keys: str, error: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        _collector_azuremonitor(keys)
    assert error in str(info.value)


@pytest.mark.parametrize("key", sorted(AzureMonitorSettings.IN_PROCESS_ONLY))
def test_in_process_only_keys_are_refused_in_a_config_file(key: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        _collector_azuremonitor(f'    connection_string: "{CONNECTION}"\n    {key}: /var/lib/flowtel')
    assert f"t.yaml:6: exporters.azuremonitor.{key}: expected a collector key; {key} is in-process only: " \
           f"{AzureMonitorSettings.IN_PROCESS_ONLY[key]}" in str(info.value)


@pytest.mark.parametrize(("name", "key"), sorted(AzureMonitorSettings.CODE_NAMES.items()))
def test_names_from_code_are_refused_in_a_config_file(name: str, key: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        _collector_azuremonitor(f'    connection_string: "{CONNECTION}"\n    {name}: 5')
    assert f"t.yaml:6: exporters.azuremonitor.{name}: expected the config file's key {key}" in str(info.value)


def test_collector_only_keys_are_refused_in_process() -> None:
    for key, value in (("storage", "file_storage"), ("queue_size", 5), ("capture_content", True)):
        with pytest.raises(ValidationError, match=f"{key}\n  Extra inputs are not permitted"):
            AzureMonitorSettings(connection_string=CONNECTION, **{key: value})


# -- the environment ------------------------------------------------------------------------------------------

#: Variables whose text every value is valid for.
ANY_TEXT = {"AZURE_CLIENT_ID", "FLOWTEL_AZURE_STORAGE_DIRECTORY", *SELF_TELEMETRY_SWITCHES}
BAD = [
    ("APPLICATIONINSIGHTS_CONNECTION_STRING", "InstrumentationKey=nope", "InstrumentationKey=<a lowercase uuid>"),
    ("APPLICATIONINSIGHTS_CONNECTION_STRING", f"InstrumentationKey={KEY};Authorization=aad",
     "Authorization=ikey or no Authorization (use a credential for AAD)"),
    ("FLOWTEL_AZURE_CREDENTIAL", "password", "one of 'none', 'managed_identity' or 'default'"),
    ("FLOWTEL_AZURE_DISABLE_OFFLINE_STORAGE", "maybe", "true or false"),
    ("FLOWTEL_AZURE_STORAGE_MAX_SIZE", "50MB", "an integer"),
    ("FLOWTEL_AZURE_STORAGE_MAX_SIZE", "0", "an integer >= 1"),
    ("FLOWTEL_AZURE_STORAGE_RETRY_INTERVAL", "soon", "a duration such as 5s, 200ms or 1m30s"),
    ("FLOWTEL_AZURE_STORAGE_RETRY_INTERVAL", "0", "a duration > 0"),
    ("FLOWTEL_AZURE_TIMEOUT", "-1", "a duration such as 5s, 200ms or 1m30s"),
    ("FLOWTEL_AZURE_READ_TIMEOUT", "inf", "a duration such as 5s, 200ms or 1m30s"),
    ("FLOWTEL_AZURE_MAX_ENVELOPES_PER_SECOND", "-1", "an integer >= 0"),
    ("FLOWTEL_AZURE_ROOT_FLOWS_AS_REQUESTS", "sometimes", "true or false"),
]


@pytest.mark.parametrize(("var", "raw", "expected"), BAD)
def test_each_variables_error_names_it(var: str, raw: str, expected: str) -> None:
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, var: raw}
    with pytest.raises(ConfigError) as info:
        AzureMonitorSettings.from_env(env)
    assert str(info.value) == f"environment: {var}: expected {expected}, got {raw!r}"


def test_every_variable_has_an_error_case_or_takes_any_text() -> None:
    assert {var for var, _, _ in BAD} | ANY_TEXT == {var.name for var in AzureMonitorSettings.ENV}


def test_a_credential_over_http_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        AzureMonitorSettings.from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": HTTP_CONNECTION,
                                       "FLOWTEL_AZURE_CREDENTIAL": "default"})
    assert str(info.value) == ("environment: FLOWTEL_AZURE_CREDENTIAL: expected an https IngestionEndpoint (AAD "
                               "tokens are never sent over http), got 'default'")


def test_no_connection_string_says_where_one_comes_from() -> None:
    with pytest.raises(ConfigError) as info:
        AzureMonitorSettings.from_env({"FLOWTEL_AZURE_TIMEOUT": "5"})
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in str(info.value) and info.value.key == "connection_string"


@pytest.mark.parametrize(("var", "raw", "key", "value"), [
    ("FLOWTEL_AZURE_TIMEOUT", "20", "timeout", 20.0),  # plain seconds, as the variables were always read
    ("FLOWTEL_AZURE_TIMEOUT", "1500ms", "timeout", 1.5),
    ("FLOWTEL_AZURE_READ_TIMEOUT", "0.5", "read_timeout", 0.5),
    ("FLOWTEL_AZURE_STORAGE_RETRY_INTERVAL", "120", "storage_retry_interval", 120.0),
    ("FLOWTEL_AZURE_STORAGE_DIRECTORY", "/var/lib/flowtel", "storage_directory", "/var/lib/flowtel"),
    ("FLOWTEL_AZURE_DISABLE_OFFLINE_STORAGE", "1", "disable_offline_storage", True),
    ("FLOWTEL_AZURE_ROOT_FLOWS_AS_REQUESTS", "off", "root_flows_as_requests", False),
    ("FLOWTEL_AZURE_CREDENTIAL", "DEFAULT", "credential", "default"),
    ("AZURE_CLIENT_ID", "client-9", "client_id", "client-9"),
])
def test_variables_keep_their_meaning(var: str, raw: str, key: str, value: object) -> None:
    settings = AzureMonitorSettings.from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, var: raw})
    assert getattr(settings, key) == value


@pytest.mark.parametrize(("statsbeat", "sdkstats", "on"), [
    ("true", None, False), (None, "True", False), ("true", "false", False), ("false", "true", False),
    ("false", "false", True), ("1", None, True), (None, None, True)])
def test_either_self_telemetry_switch_set_to_true_turns_it_off(statsbeat: str | None, sdkstats: str | None,
                                                                on: bool) -> None:
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION}
    for var, value in zip(SELF_TELEMETRY_SWITCHES, (statsbeat, sdkstats), strict=True):
        if value is not None:
            env[var] = value
    assert AzureMonitorSettings.from_env(env).self_telemetry is on


def test_overrides_win_over_the_environment() -> None:
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, "FLOWTEL_AZURE_TIMEOUT": "5"}
    assert AzureMonitorSettings.from_env(env, timeout=7).timeout == 7.0
    assert AzureMonitorSettings.from_env(env, timeout_s=8).timeout == 8.0  # an old name as an override too


def test_every_key_has_its_variable_or_is_set_in_code_only() -> None:
    """A new key gets a variable in ``AzureMonitorSettings.ENV`` or a place on this list, deliberately."""
    code_only = {
        "traces", "metrics",  # in-process: OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER and configure()'s arguments
        "metric_export_interval",  # in-process: unset, the SDK's reader reads OTEL_METRIC_EXPORT_INTERVAL
        "storage_retention", "retry_total", "retry_backoff",  # never had a variable
        "token_credential",  # an object
    }
    with_variable = {var.key for var in AzureMonitorSettings.ENV}
    assert set(AzureMonitorSettings.model_fields) - code_only == with_variable
    assert not code_only & with_variable


# -- code written against the old dataclass -------------------------------------------------------------------

class _Credential:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("no token is needed here")


def test_names_from_before_the_shared_model_still_work_in_code() -> None:
    credential = _Credential()
    settings = AzureMonitorSettings(
        connection_string=CONNECTION, credential=credential, credential_kind="", storage_retention_s=3600,
        storage_retry_interval_s=1.0, timeout_s=3, read_timeout_s=4.5, retry_backoff_s=0.2,
        metric_export_interval_s=2.0, storage_directory="/tmp/azure", retry_total=0)
    assert (settings.credential, settings.token_credential) == ("none", credential)
    assert (settings.storage_retention, settings.storage_retry_interval, settings.timeout, settings.read_timeout,
            settings.retry_backoff, settings.metric_export_interval) == (3600.0, 1.0, 3.0, 4.5, 0.2, 2.0)
    assert (settings.credential_kind, settings.storage_retention_s, settings.storage_retry_interval_s,
            settings.timeout_s, settings.read_timeout_s, settings.retry_backoff_s,
            settings.metric_export_interval_s) == ("", 3600.0, 1.0, 3.0, 4.5, 0.2, 2.0)
    kwargs = settings.exporter_kwargs("traces")
    assert kwargs["credential"] is credential and kwargs["storage_min_retry_interval"] == 1.0
    assert kwargs["retry_backoff_factor"] == 0.2 and kwargs["storage_directory"] == "/tmp/azure/traces"

    kind = AzureMonitorSettings(connection_string=CONNECTION, credential_kind="managed_identity", credential=None)
    assert (kind.credential, kind.credential_kind, kind.token_credential) == ("managed_identity",
                                                                               "managed_identity", None)
    assert AzureMonitorSettings.from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION},
                                         credential=credential).token_credential is credential


def test_metric_export_interval_unset_in_process_leaves_it_to_the_sdk() -> None:
    """Unset, the in-process reader reads OTEL_METRIC_EXPORT_INTERVAL as before; the collector's default is 1m."""
    unset = AzureMonitorSettings(connection_string=CONNECTION)
    assert (unset.metric_export_interval, unset.metric_export_interval_s) == (60.0, None)
    assert AzureMonitorSettings(connection_string=CONNECTION, metric_export_interval_s=None).metric_export_interval_s \
        is None
    assert AzureMonitorSettings(connection_string=CONNECTION, metric_export_interval="5s").metric_export_interval_s \
        == 5.0


@pytest.mark.parametrize(("options", "key"), [
    ({"credential_kind": "default"}, "credential"),
    ({"credential": _Credential()}, "token_credential"),
    ({"token_credential": _Credential()}, "token_credential"),
])
def test_a_token_is_never_sent_over_http(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as info:
        AzureMonitorSettings(connection_string=HTTP_CONNECTION, **options)
    assert [(e["loc"], e["msg"]) for e in info.value.errors()] == [
        ((key,), "Value error, an https IngestionEndpoint (AAD tokens are never sent over http)")]


def test_a_credential_object_needs_get_token() -> None:
    with pytest.raises(ValidationError, match="token_credential\n  Value error, a token credential"):
        AzureMonitorSettings(connection_string=CONNECTION, token_credential=object())
