"""FlowtelConfig.from_env: every value read from an explicit environ mapping (os.environ is never touched)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

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
    assert info.value.got == raw  # as written in the variable


def test_cardinality_limit_zero_error_names_the_environment_variable() -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({"FLOWTEL_METRICS_CARDINALITY_LIMIT": "0"})
    assert "FLOWTEL_METRICS_CARDINALITY_LIMIT" in str(info.value)
    assert "environment" in str(info.value)


def test_cardinality_limit_zero_rejected_directly() -> None:
    # Built in code, the model's own (pydantic) error, still a ValueError naming the key.
    with pytest.raises(ValidationError) as info:
        FlowtelConfig(cardinality_limit=0)
    assert isinstance(info.value, ValueError)
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(("cardinality_limit",), "greater_than_equal")]


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
    ("FLOWTEL_TRACE_TIMEOUT", "soon", "a duration such as 5s, 200ms or 1m30s"),
    ("FLOWTEL_FEEDBACK_WAIT", "-1", "a duration such as 5s, 200ms or 1m30s"),
    ("FLOWTEL_MAX_HELD_SPANS", "many", "an integer"),
    ("FLOWTEL_MAX_QUEUE_SIZE", "1.5", "an integer"),
])
def test_bad_numeric_settings(var: str, raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({var: raw})
    assert str(info.value) == f"environment: {var}: expected {expected}, got {raw!r}"


@pytest.mark.parametrize("raw", ["0", "0s", "0.0"])
def test_non_positive_trace_timeout_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        FlowtelConfig.from_env({"FLOWTEL_TRACE_TIMEOUT": raw})
    assert info.value.source == "environment"
    assert info.value.key == "FLOWTEL_TRACE_TIMEOUT"
    assert info.value.expected == "a duration > 0"
    assert info.value.got == raw


@pytest.mark.parametrize(("raw", "seconds"), [("300", 300.0), ("2.5", 2.5), ("5m", 300.0), ("1m30s", 90.0),
                                              ("200ms", 0.2)])
def test_trace_timeout_from_env_seconds_or_duration(raw: str, seconds: float) -> None:
    config = FlowtelConfig.from_env({"FLOWTEL_TRACE_TIMEOUT": raw})
    assert config.trace_timeout == config.trace_timeout_s == seconds


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


# -- one model for both hosts ---------------------------------------------------------------------------------

def _collector_flowtel(keys: str) -> object:
    from flowtel.collector.config import load_config

    text = f"""
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:0}}}}}}}}
processors:
  flowtel:
{keys}
exporters: {{debug: {{}}}}
service: {{pipelines: {{traces: {{receivers: [otlp], processors: [flowtel], exporters: [debug]}}}}}}
"""
    return load_config(text=text, name="t.yaml").processors["flowtel"]


def test_environment_and_config_file_build_the_same_object() -> None:
    from_env = FlowtelConfig.from_env({
        "FLOWTEL_METRICS_COMMON_DIMENSIONS": '{"deployment": "blue"}', "FLOWTEL_TRACE_TIMEOUT": "90",
        "FLOWTEL_FEEDBACK_WAIT": "2s", "FLOWTEL_FEEDBACK_MAX_WAITING": "7", "FLOWTEL_CAPTURE_CONTENT": "true",
        "FLOWTEL_FEEDBACK_POSITIVE_THRESHOLD": "3"})
    from_file = _collector_flowtel("""    common_dimensions: {deployment: blue}
    trace_timeout: 1m30s
    capture_content: true
    feedback: {wait: 2s, max_waiting: 7, positive_threshold: 3}""")
    assert type(from_file) is FlowtelConfig
    assert from_file == from_env
    assert from_env.feedback.scoring().positive_threshold == 3.0


@pytest.mark.parametrize("key", sorted(FlowtelConfig.IN_PROCESS_ONLY))
def test_in_process_only_keys_are_refused_in_a_config_file(key: str) -> None:
    from flowtel.collector.confmap import ConfigFileError

    with pytest.raises(ConfigFileError) as info:
        _collector_flowtel(f"    {key}: 1")
    assert f"t.yaml:5: processors.flowtel.{key}: expected a collector key; {key} is in-process only" in str(
        info.value)


def test_names_from_before_the_shared_model_still_work_in_code() -> None:
    from flowtel.processors.scoring import FeedbackScoring

    config = FlowtelConfig(trace_timeout_s=5, schedule_delay_s=0.05, feedback_window_s=60, feedback_wait_s=0,
                           feedback_max_requests=3, feedback_max_waiting=4,
                           feedback_scoring=FeedbackScoring(evaluation_name="stars", positive_threshold=3.0,
                                                            labels={"meh": (0.5, "thumbdown")}))
    assert (config.trace_timeout, config.schedule_delay) == (5.0, 0.05)
    assert (config.trace_timeout_s, config.schedule_delay_s, config.feedback_window_s, config.feedback_wait_s,
            config.feedback_max_requests, config.feedback_max_waiting) == (5.0, 0.05, 60.0, 0.0, 3, 4)
    scoring = config.feedback_scoring
    assert (scoring.evaluation_name, scoring.positive_threshold) == ("stars", 3.0)
    assert scoring.score("meh") is not None and scoring.score("meh").value == 0.5  # type: ignore[union-attr]


def test_every_key_has_its_variable_or_is_set_in_code_only() -> None:
    """A new key gets a variable in ``FlowtelConfig.ENV`` or a place on this list, deliberately."""
    from flowtel.config import FeedbackConfig

    code_only = {"genai_metrics_skip_scopes", "schedule_delay", "feedback.evaluation_name", "feedback.labels",
                 "feedback.rating_fields"}
    keys = {k for k in FlowtelConfig.model_fields if k != "feedback"} | {
        f"feedback.{k}" for k in FeedbackConfig.model_fields}
    with_variable = {var.key for var in FlowtelConfig.ENV}
    assert keys - code_only == with_variable


def test_readme_documents_every_variable() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Configuration"):]
    section = section[:section.index("\n## ", 1)]
    missing = [var.name for var in FlowtelConfig.ENV if var.name not in section]
    assert missing == []


@pytest.mark.parametrize(("name", "key"), [("trace_timeout_s", "trace_timeout"), ("feedback_wait_s", "feedback.wait"),
                                           ("feedback_scoring", "feedback")])
def test_names_from_code_are_refused_in_a_config_file_with_the_key_to_use(name: str, key: str) -> None:
    from flowtel.collector.confmap import ConfigFileError

    with pytest.raises(ConfigFileError) as info:
        _collector_flowtel(f"    {name}: 1")
    assert f"t.yaml:5: processors.flowtel.{name}: expected the config file's key {key} ({name} is its name in " \
           "Python code only)" in str(info.value)
