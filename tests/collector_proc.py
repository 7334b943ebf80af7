"""Run the real collector (``flowtel collector --config``) as a child process on loopback ports.

Configs use port 0 everywhere; the start-up log says where each server landed, which is
what a user reads too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_LISTEN = re.compile(r"(receiver|exporter|extension) (\S+): (OTLP/gRPC|OTLP/HTTP|POST /feedback|Prometheus metrics|"
                     r"health and readiness) (?:listening )?on (\S+)")


class CollectorProcess:
    def __init__(self, config_text: str, tmp_path: Path, env: dict[str, str] | None = None,
                 name: str = "collector.yaml", python: str = sys.executable) -> None:
        self.python = python  # another interpreter runs another checkout's flowtel (benchmarks: before / after)
        self.config_path = tmp_path / name
        self.config_path.write_text(config_text)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.grpc: dict[str, str] = {}
        self.http: dict[str, str] = {}
        self.prometheus: dict[str, str] = {}
        self.feedback: dict[str, str] = {}  # receiver id -> full URL of its /feedback
        self.health = ""
        self._ready = threading.Event()

    def start(self, timeout: float = 30) -> CollectorProcess:
        self.lines = []
        self._ready.clear()
        self.proc = subprocess.Popen([self.python, "-m", "flowtel.cli", "collector", "--config",
                                      str(self.config_path)], env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise AssertionError("collector did not start:\n" + self.log)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = _LISTEN.search(line)
            if m:
                _, cid, what, where = m.groups()
                if what == "OTLP/gRPC":
                    self.grpc[cid] = where
                elif what == "OTLP/HTTP":
                    self.http[cid] = where.removesuffix("/v1/traces")
                elif what == "POST /feedback":
                    self.feedback[cid] = where
                elif what == "Prometheus metrics":
                    self.prometheus[cid] = where
                else:
                    self.health = where
            if "flowtel collector ready" in line:
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("collector did not stop in time:\n" + self.log) from None

    def wait_for(self, predicate, timeout: float = 30, interval: float = 0.1):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; collector log:\n{self.log}")
            time.sleep(interval)


class ChildProcess:
    """Any command as a user runs it (a script, the quickstart): its output collected line by line, waited on
    for a line, stopped with a signal."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 180) -> re.Match[str]:
        """The first match of ``pattern`` in the output; fails if the process exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output)
            if found:
                return found
            if self.proc.poll() is not None:
                self._reader.join(5)  # the last lines
                found = re.search(pattern, self.output)
                if found:
                    return found
                raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.output}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"did not stop on {sig!r}:\n{self.output}") from None
