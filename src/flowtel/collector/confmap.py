"""Read a collector config file the way the OpenTelemetry Collector does.

YAML, with ``${env:VAR}``, ``${VAR}`` and ``${env:VAR:-default}`` expanded in string
values after parsing (``$$`` is a literal ``$``; any other ``${...}`` is a problem); a value
that is exactly one reference takes the type the expanded text has in YAML, so
``port: ${env:PORT}`` is a number, while a string setting keeps the text as written. An unset
variable without a default expands to an empty string, with a warning naming file, line and
key. Every problem is reported as ``file:line: key: expected ...`` (a key given twice too) so
``flowtel validate`` can list them all; the line is where the key is written.
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
# ``$$``, or one ``${...}`` reference (checked against _NAME), or a ``${`` that is never closed.
_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_REF_SYNTAX = "${env:NAME}, ${NAME} or ${env:NAME:-default} (NAME: letters, digits, _), or $$ for a literal $"


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
    """A parsed config: plain data plus the line of every key, for error messages.

    ``problems`` holds what parsing found but could continue past (a key given twice, a
    malformed ``${...}``); ``originals`` the text of each value that a whole ``${env:VAR}``
    reference turned into a number, boolean or null, so a string setting can take the text
    as written (``token: ${env:TOKEN}`` with ``TOKEN=0123`` is ``"0123"``, not ``83``).
    """

    file: str
    data: dict[str, Any]
    lines: dict[Path, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    originals: dict[Path, str] = field(default_factory=dict)

    def line(self, path: Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor the file spells out."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def problem(self, path: Path, expected: str, got: Any = None) -> Problem:
        return Problem(self.file, dotted(path), expected, got, self.line(path))


def dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class _Expansion:
    env: Mapping[str, str]
    missing: list[tuple[str, Path]] = field(default_factory=list)
    malformed: list[tuple[str, Path]] = field(default_factory=list)
    originals: dict[Path, str] = field(default_factory=dict)

    def text(self, text: str, path: Path) -> tuple[str, bool]:
        """Expanded text, and whether the whole text was one reference (so it may be re-typed)."""
        whole = False

        def one(m: re.Match[str]) -> str:
            nonlocal whole
            token = m.group(0)
            if token == "$$":
                return "$"
            ref = _NAME.fullmatch(m.group(1)) if m.group(1) is not None else None
            if ref is None:
                self.malformed.append((token, path))
                return token
            whole = m.span() == (0, len(text))
            name, default = ref.groups()
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self.missing.append((name, path))
            return ""

        return _TOKEN.sub(one, text), whole

    def value(self, value: Any, path: Path) -> Any:
        if isinstance(value, str) and "$" in value:
            expanded, whole = self.text(value, path)
            if not whole:
                return expanded
            # As upstream: a value that is exactly one reference takes the type its text has in YAML.
            # Only scalars are re-typed, and a string keeps its text exactly (no YAML comment or quote
            # handling, so a token "abc #1" stays whole).
            try:
                typed = yaml.safe_load(expanded) if expanded.strip() else None
            except yaml.YAMLError:
                return expanded
            if typed is None or isinstance(typed, (int, float, bool)):
                self.originals[path] = expanded
                return typed
            return expanded
        if isinstance(value, dict):
            return {k: self.value(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, (*path, i)) for i, v in enumerate(value)]
        return value


def _keys_as_text(value: Any) -> Any:
    """Keys as the file spells them: ``4317:`` or ``true:`` are the strings "4317" and "true"."""
    if isinstance(value, dict):
        return {_key_text(k): _keys_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys_as_text(v) for v in value]
    return value


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _lines(node: yaml.Node, path: Path, out: dict[Path, int], duplicates: list[tuple[Path, int, int]]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue  # complex keys and merge keys: nothing to point at
            key_path: Path = (*path, key_node.value)
            line = key_node.start_mark.line + 1
            # a key's line is where the key is written, not where its value starts
            if key_path in out:
                duplicates.append((key_path, out[key_path], line))
                # The last value replaces the first one whole: its keys are not duplicates of the first's.
                replaced: dict[Path, int] = {key_path: line}
                _lines(value_node, key_path, replaced, duplicates)
                out.update(replaced)
                continue
            out[key_path] = line
            _lines(value_node, key_path, out, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            item_path: Path = (*path, i)
            out[item_path] = item.start_mark.line + 1
            _lines(item, item_path, out, duplicates)


# Scanner/parser contexts whose error is found after the line that is wrong (not block structure,
# whose context is the enclosing block while the error is on the line reported).
_UNFINISHED = re.compile(r"while scanning a (simple key|quoted scalar)|while parsing a flow")
_BLOCK_KEY = re.compile(r"( *)([^\s#'\"{\[\-][^#:]*?|'[^']*'|\"[^\"]*\") *:(?:\s|$)")


def _enclosing_keys(text: str, line: int) -> list[str]:
    """For a file YAML cannot parse: the key on 0-based ``line`` and the blocks around it, read from indentation."""
    stack: list[tuple[int, str]] = []
    lines = text.splitlines()
    for i, raw in enumerate(lines[:line + 1]):
        m = _BLOCK_KEY.match(raw)
        if m is None and i < line:
            continue
        indent = len(m.group(1)) if m else len(raw) - len(raw.lstrip(" "))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m:
            stack.append((indent, m.group(2).strip("'\"")))
    return [key for _, key in stack]


def parse(text: str, file: str, env: Mapping[str, str] | None = None) -> Document:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        key = ""
        if mark is not None:
            problem = f"{problem} (column {mark.column + 1})"
            context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
            if context and context_mark is not None:
                problem += f", {context} that starts on line {context_mark.line + 1}"
                if mark.line >= len(text.splitlines()) or _UNFINISHED.match(context):
                    # A key without ':' or an unclosed quote or bracket is only found wrong on a later line
                    # (or at the end of the file): point at the line where it is written.
                    if mark.line != context_mark.line:
                        problem = problem.replace(f"(column {mark.column + 1})",
                                                  f"(line {mark.line + 1}, column {mark.column + 1})", 1)
                    mark = context_mark
            key = dotted(_enclosing_keys(text, mark.line))
        raise ConfigFileError([Problem(file, key, "valid YAML", problem, mark.line + 1 if mark else None)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError([Problem(file, "", "a mapping of receivers, processors, exporters, extensions and "
                                                 "service", type(data).__name__, 1)])
    lines: dict[Path, int] = {}
    duplicates: list[tuple[Path, int, int]] = []
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _lines(node, (), lines, duplicates)
    expansion = _Expansion(os.environ if env is None else env)
    data = expansion.value(_keys_as_text(data), ())
    doc = Document(file, data, lines, originals=expansion.originals)
    for path, first, again in duplicates:
        doc.problems.append(Problem(file, dotted(path), f"each key once (also set on line {first}; "
                                                         "the last one would silently win)", line=again))
    for token, path in expansion.malformed:
        doc.problems.append(doc.problem(path, _REF_SYNTAX, token))
    for name, path in dict.fromkeys(expansion.missing):
        where = f"{file}:{doc.line(path)}" if doc.line(path) else file
        logger.warning("%s: %s: environment variable %s is not set; it expands to an empty string",
                       where, dotted(path), name)
    return doc


def load(path: str, env: Mapping[str, str] | None = None) -> Document:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise ConfigFileError([Problem(path, "", "a readable config file", error.strerror)]) from None
    except UnicodeDecodeError as error:
        raise ConfigFileError([Problem(path, "", "a UTF-8 text file",
                                       f"byte 0x{error.object[error.start]:02x} at offset {error.start}")]) from None
    return parse(text, path, env)
