"""Read a collector config file the way the OpenTelemetry Collector does.

YAML, with ``${env:VAR}``, ``${VAR}`` and ``${env:VAR:-default}`` expanded in string
values (``$$`` is a literal ``$``); a value that is exactly one reference takes the type
the expanded text has in YAML, so ``port: ${env:PORT}`` is a number. Every problem is
reported as ``file:line: key: expected ...`` so ``flowtel validate`` can list them all.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

logger = logging.getLogger("flowtel.collector")
Path = tuple[str | int, ...]
_REF = re.compile(r"\$\$|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    key: str
    expected: str
    got: Any = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        got = "" if self.got is None else f", got {self.got!r}"
        return f"{where}: {self.key or '(top level)'}: expected {self.expected}{got}"


class ConfigFileError(ValueError):
    """One or more problems in a config file; ``str()`` lists each on its own line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Document:
    """A parsed config: plain data plus the line of every key, for error messages."""

    file: str
    data: dict[str, Any]
    lines: dict[Path, int] = field(default_factory=dict)

    def problem(self, path: Path, expected: str, got: Any = None) -> Problem:
        line = None
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                break
        return Problem(self.file, dotted(path), expected, got, line)


def dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _expand(text: str, env: Mapping[str, str], missing: list[str]) -> tuple[str, bool]:
    """Expanded text, and whether the whole text was one reference (so it should be re-typed)."""
    whole = False
    match = _REF.fullmatch(text)
    if match and match.group(0) != "$$":
        whole = True

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""
    return _REF.sub(one, text), whole


def _substitute(value: Any, env: Mapping[str, str], missing: list[str]) -> Any:
    if isinstance(value, str) and "$" in value:
        expanded, whole = _expand(value, env, missing)
        if whole:
            try:
                typed = yaml.safe_load(expanded) if expanded.strip() else None
            except yaml.YAMLError:
                return expanded
            return typed if isinstance(typed, (str, int, float, bool)) or typed is None else expanded
        return expanded
    if isinstance(value, dict):
        return {k: _substitute(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, missing) for v in value]
    return value


def _lines(node: yaml.Node, path: Path, out: dict[Path, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _lines(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


def parse(text: str, file: str, env: Mapping[str, str] | None = None) -> Document:
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigFileError([Problem(file, "", "valid YAML", str(getattr(error, "problem", error)),
                                       mark.line + 1 if mark else None)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError([Problem(file, "", "a mapping of receivers, processors, exporters, extensions and "
                                                 "service", type(data).__name__, 1)])
    missing: list[str] = []
    data = _substitute(data, os.environ if env is None else env, missing)
    for name in dict.fromkeys(missing):
        logger.warning("%s: environment variable %s is not set; it expands to an empty string", file, name)
    lines: dict[Path, int] = {}
    if node is not None:
        _lines(node, (), lines)
    return Document(file, data, lines)


def load(path: str, env: Mapping[str, str] | None = None) -> Document:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise ConfigFileError([Problem(path, "", "a readable config file", error.strerror)]) from None
    return parse(text, path, env)
