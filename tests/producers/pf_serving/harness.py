"""Run prompt flow serving as users run it: ``pf flow serve`` from its own virtual environment.

The environment (``.venv-pfserving``, built by ``.ci/install`` from ``requirements.txt`` next to this file) holds
promptflow, -devkit, -core, -tracing 1.18.5 and prompt flow's LLM tool (promptflow-tools); prompt flow pins
``opentelemetry-sdk<1.39`` so it cannot share flowtel's test environment. Offline set-up, as a user would do it:

- connections live under ``PF_HOME_DIRECTORY`` (a fresh temporary directory), their secrets are encrypted with a key
  kept by ``keyring``: ``PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring`` keeps it in a file there;
- prompt flow's own usage telemetry is switched off (``pf config set telemetry.enabled=false``);
- ``PF_DISABLE_TRACING=false``: serving emits no flow, node or LLM span otherwise;
- tiktoken cannot download its encoding: prompt flow counts a streamed LLM call's tokens with tiktoken, so streamed
  calls carry no token counts at all (and prompt flow's own ``token_consumption`` has none for them either).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
VENV = REPO / ".venv-pfserving"
FLOW = HERE / "flow"


def _port_range() -> range:
    """The ports this suite may listen on besides port 0: ``FLOWTEL_TEST_PORTS`` (``first-last``), 25000-25999 by
    default: serving is started on a port chosen here, which the test then calls."""
    first, last = os.environ.get("FLOWTEL_TEST_PORTS", "25000-25999").split("-")
    return range(int(first), int(last) + 1)


PORTS = _port_range()


def venv_bin(name: str) -> str:
    path = VENV / "bin" / name
    if not path.exists():
        raise AssertionError(f"{path} is missing: run `bash .ci/install` (it builds the prompt flow serving venv)")
    return str(path)


_handed_out: set[int] = set()  # a port handed out may not be bound yet: never hand it out twice


def free_port() -> int:
    for port in PORTS:
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise AssertionError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def pf_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PF_", "PROMPTFLOW_", "VIRTUAL_ENV"))}
    env.update({"PF_HOME_DIRECTORY": str(home), "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
                "PF_DISABLE_TRACING": "false", "PATH": f"{VENV / 'bin'}:{env.get('PATH', '')}"})
    env.update(extra or {})
    return env


def create_connection(home: Path, llm_base_url: str) -> None:
    env = pf_env(home)
    for args in (["config", "set", "telemetry.enabled=false"],
                 ["connection", "create", "--file", str(HERE / "connection.yaml"), "--set",
                  f"base_url={llm_base_url}/v1"]):
        subprocess.run([venv_bin("pf"), *args], env=env, check=True, capture_output=True, timeout=120)


class Serving:
    """``pf flow serve --source FLOW`` on a port of this suite's range, stopped with SIGINT (as Ctrl-C does) so
    prompt flow's meter provider flushes its metrics at exit."""

    def __init__(self, home: Path, env: dict[str, str], command: list[str] | None = None,
                 engine: str = "flask") -> None:
        self.port = free_port()
        self.log_path = home / f"serving-{self.port}.log"
        base = [venv_bin("pf"), "flow", "serve", "--source", str(FLOW), "--host", "127.0.0.1", "--port",
                str(self.port), "--skip-open-browser", "--engine", engine]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([*(command or []), *base], env=pf_env(home, env), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("prompt flow serving did not start:\n" + self.log)
            time.sleep(0.2)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
