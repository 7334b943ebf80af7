"""The README's main-job command on a fresh clone: ``bash scripts/collector`` with no ``.venv``.

It must set up only what the collector needs (runtime dependencies: no test tools, no helm, no
system packages), show its progress, reach "ready", and on the next start reuse the ``.venv``
without running pip again. The clone is of the committed tree (``git clone`` of this checkout),
so the test sees what a user or CI would check out. Its cost is one venv build from the pip
cache (about 20 s here); the run prints the times it measured.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector_proc import ChildProcess

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = ("pytest", "ruff", "promptflow", "openai", "kubernetes_validate")


def _user_env() -> dict[str, str]:
    """A shell as a user has it: no virtual environment active, PYTHON unset."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON", "PYTHONPATH")}
    return {**env, "PATH": path}


def _main_job(clone: Path, config: Path) -> ChildProcess:
    return ChildProcess(["bash", "scripts/collector", "--config", str(config)], clone, _user_env())


def _until_ready(job: ChildProcess, started: float) -> tuple[str, float]:
    """Wait for the collector to say it is ready, stop it; its output and the seconds from ``started`` to ready."""
    try:
        job.wait_for("flowtel collector ready", timeout=300)
        elapsed = time.monotonic() - started
    finally:
        code = job.stop(signal.SIGTERM)
    assert code == 0, job.output
    return job.output, elapsed


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to clone the checkout")
def test_main_job_on_a_fresh_clone_installs_only_the_runtime(tmp_path: Path) -> None:
    clone = tmp_path / "flowtel"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone / ".venv").exists()
    text = (clone / "collector-config" / "default.yaml").read_text()
    config = tmp_path / "ports.yaml"  # the shipped default, every port 0: the machine may be running one already
    config.write_text(re.sub(r"\$\{env:FLOWTEL_LISTEN_HOST:-localhost\}:\d+", "127.0.0.1:0", text))

    # a .venv left by a Python below 3.10 (here a stand-in that reports 3.9) is replaced, with a word why
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "python").write_text("#!/bin/sh\necho 3.9.18\nexit 1\n")
    (clone / ".venv" / "bin" / "python").chmod(0o755)
    started = time.monotonic()
    job = _main_job(clone, config)
    try:
        job.wait_for("flowtel setup: creating .venv with ", timeout=120)
        # While the first install runs, the same set-up from a second terminal waits for it, then finds it done.
        waited = subprocess.run(["bash", "scripts/setup"], cwd=clone, env=_user_env(), capture_output=True, text=True,
                                timeout=300)
    except BaseException:
        job.stop(signal.SIGTERM)
        raise
    first, first_s = _until_ready(job, started)
    assert "flowtel setup: replacing .venv: its Python is 3.9.18, flowtel needs 3.10 or newer" in first
    assert waited.returncode == 0, waited.stderr
    assert waited.stderr == "flowtel setup: another setup is running in this directory; waiting for it to finish...\n"
    assert "flowtel setup: installing flowtel into .venv (pip's progress follows)" in first
    assert re.search(r"^Successfully installed .*\bflowtel-", first, re.MULTILINE)  # pip's own progress is shown
    assert "flowtel install:" not in first  # the test set-up (.ci/install: helm, checkov, apt) never ran
    assert "deprecated" not in first.lower()  # the build backend's license warning is gone
    assert "Traceback" not in first

    venv_python = clone / ".venv" / "bin" / "python"
    probe = ("import importlib.util, sys; "
             "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))")
    present = subprocess.run([str(venv_python), "-c", probe, *TEST_ONLY], capture_output=True, text=True,
                             check=True).stdout.split()
    assert present == [], f"test tools in the main job's venv: {present}"
    assert not (clone / ".tools").exists()

    again, again_s = _until_ready(_main_job(clone, config), time.monotonic())
    assert "flowtel setup" not in again and "pip" not in again  # the venv is reused, pip is not run
    print(f"\nfresh clone to ready: {first_s:.1f} s (venv build included); second start: {again_s:.1f} s")
    assert again_s < first_s
