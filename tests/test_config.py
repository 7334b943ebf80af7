"""FlowtelConfig.from_env: every value read from an explicit environ mapping (os.environ is never touched)."""

from __future__ import annotations

import pytest

from flowtel.config import ConfigError, FlowtelConfig


def test_empty_environment_gives_defaults() -> None:
    config = FlowtelConfig.from_env({})
    assert config == FlowtelConfig()
    assert dict(config.common_dimensions) == {}
    assert dict(config.resource_dimensions) == {}
    assert config.cardinality_limit == 2000
    assert config.capture_content is False


def test_pf_serving_common_dimensions_json_parsed() -> None:
    config = FlowtelConfig.from_env({"PF_SERVING_METRICS_COMMON_DIMENSIONS": '{"deployment": "blue", "variant": "b"}'})
    assert dict(config.common_dimensions) == {"deployment": "blue", "variant": "b"}


def test_flowtel_common_dimensions_override_pf_keys() -> None:
    config = FlowtelConfig.from_env({
        "PF_SERVING_METRICS_COMMON_DIMENSIONS": '{"deployment": "blue", "variant": "b"}',
        "FLOWTEL_METRICS_COMMON_DIMENSIONS": '{"deployment": "green", "region": "eu"}',
    })
    assert dict(config.common_dimensions) == {"deployment": "green", "variant": "b", "region": "eu"}


def test_common_dimension_values_are_stringified() -> None:
    config = FlowtelConfig.from_env({"FLOWTEL_METRICS_COMMON_DIMENSIONS": '{"shard": 3}'})
    assert dict(config.common_dimensions) == {"shard": "3"}


def test_empty_common_dimensions_variable_is_ignored() -> None:
    config = FlowtelConfig.from_env({"PF_SERVING_METRICS_COMMON_DIMENSIONS": ""})
    assert dict(config.common_dimensions) == {}


@pytest.mark.parametrize("var", ["PF_SERVING_METRICS_COMMON_DIMENSIONS", "FLOWTEL_METRICS_COMMON_DIMENSIONS"])
@pytest.mark.parametrize("raw", ["{deployment: blue}", '{"a": "b"', "not json"])
def test_bad_json_common_dimensions(var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({var: raw})
    message = str(info.value)
    assert "environment" in message
    assert var in message
    assert "expected" in message
    assert info.value.source == "environment"
    assert info.value.key == var
    assert info.value.got == raw


@pytest.mark.parametrize("raw", ['["deployment", "blue"]', '"blue"', "42", "null", "true"])
def test_non_object_common_dimensions(raw: str) -> None:
    var = "PF_SERVING_METRICS_COMMON_DIMENSIONS"
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({var: raw})
    message = str(info.value)
    assert message.startswith(f"environment: {var}: expected ")
    assert "JSON object" in message
    assert info.value.got == raw


def test_config_error_is_a_value_error_with_fields() -> None:
    err = ConfigError("environment", "X", "an integer", "abc")
    assert isinstance(err, ValueError)
    assert str(err) == "environment: X: expected an integer, got 'abc'"


@pytest.mark.parametrize(("raw", "expected"), [("5", 5), (" 17 ", 17), ("2000", 2000)])
def test_cardinality_limit_parsed(raw: str, expected: int) -> None:
    assert FlowtelConfig.from_env({"FLOWTEL_METRICS_CARDINALITY_LIMIT": raw}).cardinality_limit == expected


@pytest.mark.parametrize("raw", ["abc", "1.5", "10k", "0x10", "1e3"])
def test_bad_cardinality_limit_integer(raw: str) -> None:
    var = "FLOWTEL_METRICS_CARDINALITY_LIMIT"
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({var: raw})
    assert str(info.value) == f"environment: {var}: expected an integer, got {raw!r}"


def test_blank_cardinality_limit_keeps_default() -> None:
    assert FlowtelConfig.from_env({"FLOWTEL_METRICS_CARDINALITY_LIMIT": "   "}).cardinality_limit == 2000


@pytest.mark.parametrize("raw", ["0", "-1"])
def test_cardinality_limit_below_one_rejected_from_env(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({"FLOWTEL_METRICS_CARDINALITY_LIMIT": raw})
    assert info.value.source == "environment"
    assert info.value.key == "FLOWTEL_METRICS_CARDINALITY_LIMIT"
    assert info.value.expected == "an integer >= 1"
    assert info.value.got == int(raw)


def test_cardinality_limit_zero_error_names_the_environment_variable() -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({"FLOWTEL_METRICS_CARDINALITY_LIMIT": "0"})
    assert "FLOWTEL_METRICS_CARDINALITY_LIMIT" in str(info.value)
    assert "environment" in str(info.value)


def test_cardinality_limit_zero_rejected_directly() -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig(cardinality_limit=0)
    assert str(info.value) == "FlowtelConfig: cardinality_limit: expected an integer >= 1, got 0"


def test_cardinality_limit_zero_rejected_as_override() -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({}, cardinality_limit=0)
    assert info.value.key == "cardinality_limit"


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True), (" true ", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
])
def test_capture_content_bool_parsing(raw: str, expected: bool) -> None:
    config = FlowtelConfig.from_env({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": raw})
    assert config.capture_content is expected


def test_capture_content_empty_keeps_default() -> None:
    assert FlowtelConfig.from_env({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": ""}).capture_content is False


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_capture_content_bad_bool(raw: str) -> None:
    var = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({var: raw})
    assert str(info.value) == (f"environment: {var}: expected true, false, NO_CONTENT, SPAN_ONLY, EVENT_ONLY or "
                               f"SPAN_AND_EVENT, got {raw!r}")


@pytest.mark.parametrize(("raw", "expected"), [("NO_CONTENT", False), ("SPAN_ONLY", True), ("event_only", True),
                                               ("SPAN_AND_EVENT", True)])
def test_capture_content_util_genai_modes(raw: str, expected: bool) -> None:
    # opentelemetry-util-genai (openai-v2) reads these values from the same variable
    var = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
    assert FlowtelConfig.from_env({var: raw}).capture_content is expected


def test_flowtel_capture_content_overrides_otel_variable() -> None:
    config = FlowtelConfig.from_env({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
                                     "FLOWTEL_CAPTURE_CONTENT": "false"})
    assert config.capture_content is False


def test_resource_dimensions_pairs() -> None:
    config = FlowtelConfig.from_env({
        "FLOWTEL_METRICS_RESOURCE_DIMENSIONS": "service=service.name, instance = service.instance.id",
    })
    assert dict(config.resource_dimensions) == {"service": "service.name", "instance": "service.instance.id"}


def test_resource_dimensions_value_may_contain_equals() -> None:
    config = FlowtelConfig.from_env({"FLOWTEL_METRICS_RESOURCE_DIMENSIONS": "k=a=b"})
    assert dict(config.resource_dimensions) == {"k": "a=b"}


@pytest.mark.parametrize("raw", ["service", "service=", "=service.name", "a=b,,c=d", "a=b,c"])
def test_bad_resource_dimensions(raw: str) -> None:
    var = "FLOWTEL_METRICS_RESOURCE_DIMENSIONS"
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({var: raw})
    assert str(info.value) == (
        f"environment: {var}: expected comma-separated dimension=resource.attribute pairs, got {raw!r}")


def test_numeric_settings_from_env() -> None:
    config = FlowtelConfig.from_env({"FLOWTEL_TRACE_TIMEOUT": "2.5", "FLOWTEL_MAX_HELD_SPANS": "10",
                                     "FLOWTEL_MAX_QUEUE_SIZE": "20"})
    assert (config.trace_timeout_s, config.max_held_spans, config.max_queue_size) == (2.5, 10, 20)


@pytest.mark.parametrize(("var", "raw", "expected"), [
    ("FLOWTEL_TRACE_TIMEOUT", "soon", "a number"),
    ("FLOWTEL_MAX_HELD_SPANS", "many", "an integer"),
    ("FLOWTEL_MAX_QUEUE_SIZE", "1.0", "an integer"),
])
def test_bad_numeric_settings(var: str, raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({var: raw})
    assert str(info.value) == f"environment: {var}: expected {expected}, got {raw!r}"


@pytest.mark.parametrize("raw", ["0", "-1"])
def test_non_positive_trace_timeout_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({"FLOWTEL_TRACE_TIMEOUT": raw})
    assert info.value.source == "environment"
    assert info.value.key == "FLOWTEL_TRACE_TIMEOUT"
    assert info.value.expected == "a finite number of seconds > 0"
    assert info.value.got == float(raw)


@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_non_finite_trace_timeout_rejected(raw: str) -> None:
    with pytest.raises(ConfigError):
        FlowtelConfig.from_env({"FLOWTEL_TRACE_TIMEOUT": raw})


def test_unknown_override_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({}, cardinality=5)
    assert info.value.source == "FlowtelConfig"
    assert info.value.key == "cardinality"
    assert "cardinality_limit" in info.value.expected


def test_overrides_win_over_environment() -> None:
    config = FlowtelConfig.from_env({"FLOWTEL_METRICS_CARDINALITY_LIMIT": "5"}, cardinality_limit=7)
    assert config.cardinality_limit == 7
