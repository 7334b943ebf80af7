"""Extensions, named as upstream: ``health_check``, ``bearertokenauth`` and ``file_storage``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import model_validator

from flowtel._wsgi import WSGIEndpoint

from .settings import Endpoint, Model, ServerTLS, split_endpoint


class HealthCheckConfig(Model):
    endpoint: Endpoint = "localhost:13133"
    path: str = "/"
    tls: ServerTLS | None = None


class BearerTokenAuthConfig(Model):
    """The token itself, or ``filename`` of a file holding it (a mounted Kubernetes Secret)."""

    token: str | None = None
    filename: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BearerTokenAuthConfig:
        if bool(self.token) == bool(self.filename):
            raise ValueError("exactly one of token, filename")
        if self.filename and not os.access(self.filename, os.R_OK):
            raise ValueError(f"filename: a readable file (cannot read {self.filename!r})")
        return self

    def read_token(self) -> str:
        if self.token:
            return self.token
        assert self.filename is not None
        with open(self.filename, encoding="utf-8") as f:
            return f.read().strip()


class FileStorageConfig(Model):
    directory: str = "/var/lib/flowtel/file_storage"
    create_directory: bool = True


class FileStorage:
    """A running ``file_storage``: the directory exporters keep their queues in (one sub-directory each)."""

    def __init__(self, config: FileStorageConfig) -> None:
        if config.create_directory:
            os.makedirs(config.directory, mode=0o700, exist_ok=True)
        self.directory = config.directory

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class ServiceStatus:
    """Shared by the service and the health endpoint: starting -> ready -> draining."""

    def __init__(self) -> None:
        self.state = "starting"
        self.since = time.time()

    def set(self, state: str) -> None:
        self.state = state
        self.since = time.time()


class HealthCheck:
    """``GET <path>``: 200 while the collector is ready, 503 while starting or draining (liveness and readiness)."""

    kind = "health"  # the service lists where it listens under this name

    def __init__(self, config: HealthCheckConfig, status: ServiceStatus) -> None:
        self._config = config
        self._status = status
        host, port = split_endpoint(config.endpoint)
        self._endpoint = WSGIEndpoint(self._app, host, port, name="flowtel-health",
                                      tls=config.tls.settings() if config.tls else None)

    @property
    def url(self) -> str:
        return self._endpoint.url + self._config.path

    def start(self) -> None:
        self._endpoint.start()

    def shutdown(self) -> None:
        self._endpoint.shutdown()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") != self._config.path:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        ready = self._status.state == "ready"
        body = json.dumps({
            "status": "Server available" if ready else "Server not available",
            "state": self._status.state,
            "upSince": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._status.since)),
        }).encode()
        start_response("200 OK" if ready else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
