"""The package's structure holds: every module imports on its own, and the shared logic depends on no host.

An import cycle hides behind the order in which tests happen to import modules (the collector first), so each
module is imported alone in a fresh interpreter. The layering check reads the sources (no import needed): the
logic both hosts share (``flowtel.processors`` and the core modules it builds on) must not import the collector,
the exporters or the in-process set-up, or a change to a host could break the other host's logic.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import flowtel

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"flowtel": ROOT / "src" / "flowtel", "flowtel.processors": ROOT / "processors",
                "flowtel.exporters": ROOT / "exporters", "flowtel.collector": ROOT / "src" / "flowtel" / "collector",
                "flowtel.collector.receivers": ROOT / "src" / "flowtel" / "collector" / "receivers",
                "flowtel.collector.processors": ROOT / "src" / "flowtel" / "collector" / "processors"}

#: The logic both hosts run, and the core modules it stands on.
SHARED = ("flowtel.processors", "flowtel.semconv", "flowtel.spans", "flowtel.config", "flowtel.settings",
          "flowtel.selfmetrics", "flowtel._log", "flowtel._gc", "flowtel._fork")
#: What only a host may import.
HOSTS = ("flowtel.collector", "flowtel.exporters", "flowtel._configure", "flowtel.cli", "flowtel.distro",
         "flowtel.feedback", "flowtel.otlp", "flowtel._wsgi", "flowtel.instrumentation")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, directory in PACKAGE_DIRS.items():
        out[package] = directory / "__init__.py"
        for info in pkgutil.iter_modules([str(directory)]):
            if not info.ispkg:
                out[f"{package}.{info.name}"] = directory / f"{info.name}.py"
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names of the flowtel modules ``path`` imports (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("flowtel")}


def test_the_package_directories_are_where_the_installed_package_finds_them() -> None:
    assert Path(flowtel.__file__).resolve() == PACKAGE_DIRS["flowtel"] / "__init__.py"
    assert len(_modules()) > 30


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    def load(name: str) -> tuple[str, str]:
        run = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                             timeout=120, cwd="/")
        return name, (run.stderr.strip().splitlines() or ["?"])[-1] if run.returncode else ""

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = {name: error for name, error in pool.map(load, sorted(_modules())) if error}
    assert failures == {}


def test_shared_logic_imports_no_host() -> None:
    offending = {}
    for module, path in _modules().items():
        if _within(module, SHARED):
            hosts = sorted(name for name in _imports(module, path) if _within(name, HOSTS))
            if hosts:
                offending[module] = hosts
    assert offending == {}


def test_every_package_directory_is_checked() -> None:
    # A new subpackage must be listed above, or its modules escape both checks.
    dirs = {p.parent for base in (ROOT / "src" / "flowtel", ROOT / "processors", ROOT / "exporters")
            for p in base.rglob("__init__.py")}
    assert dirs == set(PACKAGE_DIRS.values())


def test_exporters_import_nothing_of_the_collector() -> None:
    """Every exporter, for both hosts, lives in exporters/ and knows nothing of the collector: the collector's
    registry (flowtel.collector.components) adapts them, so an app importing an exporter never loads it."""
    offending = {}
    for module, path in _modules().items():
        if _within(module, ("flowtel.exporters",)):
            found = sorted(name for name in _imports(module, path) if _within(name, ("flowtel.collector",)))
            if found:
                offending[module] = found
    assert offending == {}


def test_the_layering_check_sees_a_violation(tmp_path: Path) -> None:
    # The check itself must be able to fail: relative and absolute imports of hosts from processors/ are found.
    probe = tmp_path / "probe.py"
    probe.write_text("from ..collector import service\nfrom flowtel.exporters import prometheus\n", encoding="utf-8")
    found = _imports("flowtel.processors.probe", probe)
    assert {"flowtel.collector.service", "flowtel.exporters.prometheus"} <= found
    assert _within("flowtel.collector.service", HOSTS) and not _within("flowtel.configx", SHARED)
