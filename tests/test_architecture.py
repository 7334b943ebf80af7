"""ARCHITECTURE.md names real things: every path, class and function it cites in backticks exists.

The page is the answer to "where is X"; a module moved or renamed without it would make that answer wrong
silently. Three kinds of backticked token are checked (the others are config keys, metric names or text):

- paths (a ``/`` and no spaces): the file or directory exists in the repository;
- class names (``TracePipeline``) and ``Class.method``: the class is defined or referenced in the package's
  sources, and a method named on one of flowtel's own classes is defined in that class;
- snake_case names (``split_batches``, ``apply_to_otlp_span()``): the name occurs in the package's sources.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "ARCHITECTURE.md"
SOURCE_DIRS = (ROOT / "src" / "flowtel", ROOT / "processors", ROOT / "exporters")

_PATH = re.compile(r"^[\w.-]+(/[\w.-]+)*/?$")
_CLASS = re.compile(r"^([A-Z][a-z0-9]+[A-Za-z0-9]*)(?:\.([a-z_][a-z0-9_]*))?$")
_SNAKE = re.compile(r"^(_?[a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?:\(\))?$")


def _tokens() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # the picture is prose, not citations
    return sorted(set(re.findall(r"`([^`\n]+)`", text)))


@cache
def _sources() -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for d in SOURCE_DIRS for path in sorted(d.rglob("*.py"))}


@cache
def _classes() -> dict[str, set[str]]:
    """flowtel's own classes, each with the names of the functions defined in it."""
    out: dict[str, set[str]] = {}
    for text in _sources().values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                out.setdefault(node.name, set()).update(
                    n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return out


def _in_sources(name: str) -> bool:
    word = re.compile(rf"\b{re.escape(name)}\b")
    return any(word.search(text) for text in _sources().values())


def test_the_page_cites_paths_and_names() -> None:
    tokens = _tokens()
    assert sum("/" in t for t in tokens) >= 40, "the paths were not found: did the citation format change?"
    assert "TracePipeline" in tokens


def test_every_cited_path_exists() -> None:
    paths = [t for t in _tokens() if "/" in t and " " not in t and _PATH.match(t)]
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"ARCHITECTURE.md cites paths that do not exist: {missing}"


def test_every_cited_class_and_method_exists() -> None:
    problems = []
    for token in _tokens():
        match = _CLASS.match(token)
        if match is None:
            continue
        cls, method = match.groups()
        if not _in_sources(cls):
            problems.append(f"{token}: no class {cls} in the sources")
        elif method and cls in _classes() and method not in _classes()[cls]:
            problems.append(f"{token}: {cls} defines no {method}")
    assert not problems, "ARCHITECTURE.md cites names that do not exist:\n" + "\n".join(problems)


def test_every_cited_function_or_key_occurs_in_the_sources() -> None:
    missing = [t for t in _tokens() if (m := _SNAKE.match(t)) and not _in_sources(m.group(1))]
    assert not missing, f"ARCHITECTURE.md cites names found nowhere in the sources: {missing}"


def test_the_check_catches_a_missing_name() -> None:
    assert _in_sources("split_batches")
    assert not _in_sources("split_batches_renamed_away")
    assert "accept" in _classes()["Intake"] and "no_such_method" not in _classes()["Intake"]


def test_readme_links_the_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Repository layout"):]
    assert "(ARCHITECTURE.md)" in layout
