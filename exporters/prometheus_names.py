"""OpenTelemetry metric and attribute names to Prometheus names, as the specification's compatibility rules say.

Follows the OpenTelemetry specification ("Prometheus and OpenMetrics Compatibility") and the
upstream Collector's translator (``pkg/translator/prometheus``, ``NormalizeName`` on, metric
suffixes on), so dashboards written against the upstream ``prometheus`` exporter keep working:

- the name is split into tokens on every character that is not a letter or digit and joined
  with ``_`` (so ``http.server.duration`` -> ``http_server_duration``, runs of ``_`` collapse);
- the unit adds its Prometheus suffix unless the name already has that token: ``s`` ->
  ``_seconds``, ``ms`` -> ``_milliseconds``, ``By`` -> ``_bytes``, ``foo/s`` -> ``_foo_per_second``;
  annotations in braces (``{token}``) add nothing; unknown units are kept as their own token;
- monotonic sums end in ``_total`` (which prometheus-client adds on exposition; any ``total``
  token inside the name is moved to the end), gauges with unit ``1`` end in ``_ratio``;
- a leading digit gains a ``_`` prefix.

Label names: invalid characters become ``_``; a leading digit gains ``key_``, a single
leading ``_`` gains ``key`` (upstream); an empty key becomes ``key_`` and ``__name__`` becomes ``key__name__``
(either would make the scrape unparsable); two attribute keys that sanitise to one label name
have their values joined with ``;`` in the order of their original keys (specification).

flowtel's own derived metrics use ``flowtel.processors.catalog.prometheus_name`` instead
(prompt flow's names: ``flow_latency`` stays ``flow_latency``); see ``received_metrics``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

_TOKEN_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9_]")

#: Main unit -> Prometheus suffix (upstream ``unitMap``).
UNIT_SUFFIXES: Mapping[str, str] = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds", "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes", "TiBy": "tibibytes",
    "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams",
    "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}
#: Per-unit (after ``/``) -> Prometheus suffix (upstream ``perUnitMap``).
PER_UNIT_SUFFIXES: Mapping[str, str] = {
    "s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year",
}
_BRACES = re.compile(r"\{[^}]*\}")

GAUGE, COUNTER, HISTOGRAM, SUMMARY = "gauge", "counter", "histogram", "summary"


def _unit_tokens(unit: str) -> tuple[str, str]:
    """``(main, per)`` suffix tokens of a UCUM unit; empty when it adds nothing."""
    unit = _BRACES.sub("", unit).strip()
    if not unit:
        return "", ""
    main, _, per = unit.partition("/")
    main_suffix = UNIT_SUFFIXES.get(main, main)
    per_suffix = PER_UNIT_SUFFIXES.get(per, per) if per else ""
    return _clean(main_suffix), _clean(per_suffix)


def _clean(text: str) -> str:
    return "_".join(t for t in _TOKEN_SPLIT.split(text) if t)


@lru_cache(maxsize=4096)
def metric_name(name: str, unit: str, kind: str, monotonic: bool = False) -> str:
    """Prometheus family name of an OpenTelemetry metric (``_total`` included for monotonic sums).

    ``kind`` is the Prometheus type it becomes (``GAUGE``, ``COUNTER``, ``HISTOGRAM``, ``SUMMARY``).
    """
    tokens = [t for t in _TOKEN_SPLIT.split(name) if t]
    main, per = _unit_tokens(unit)
    if main and main not in tokens:
        tokens.append(main)
    if per and per not in tokens:
        tokens.extend(("per", per))
    if kind == COUNTER and monotonic:
        tokens = [t for t in tokens if t != "total"]
        tokens.append("total")
    if kind == GAUGE and unit.strip() == "1":
        tokens.append("ratio")
    out = "_".join(tokens) or "_"
    return "_" + out if out[0].isdigit() else out


@lru_cache(maxsize=4096)
def label_name(key: str) -> str:
    """Prometheus label name of an attribute key (upstream ``NormalizeLabel``)."""
    if not key:
        return "key_"  # an empty label name breaks the whole exposition (``{="v"}``)
    if key == "__name__":
        return "key__name__"  # the metric name's own label: written twice, the exposition does not parse
    out = _LABEL_INVALID.sub("_", key)
    if out[0].isdigit():
        return "key_" + out
    if out.startswith("_") and not out.startswith("__"):
        return "key" + out
    return out


def label_value(value: Any) -> str:
    """Attribute value as a label value: strings as they are, booleans ``true``/``false``, arrays and maps as
    JSON, bytes as base64 (as upstream's ``AsString``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), default=_json_default)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def labels(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Label names and values of attribute ``(key, value)`` pairs; keys colliding after sanitising join with ``;``
    in the order of their original keys (specification)."""
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value in pairs:
        name = label_name(key)
        if name not in out:
            out[name], owner[name] = value, key
            continue
        group = groups.get(name)
        if group is None:
            group = groups[name] = [(owner[name], out[name])]
        group.append((key, value))
    for name, group in groups.items():
        out[name] = ";".join(value for _, value in sorted(group))
    return out
