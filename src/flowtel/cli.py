"""The ``flowtel`` command: ``flowtel collector`` runs the collector, ``flowtel validate`` checks a config."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from pydantic import BaseModel

from flowtel import __version__
from flowtel._listen import PortInUse, ensure_free, in_use
from flowtel.collector import Collector, CollectorConfig, ConfigFileError, load_config
from flowtel.collector.config import component_type
from flowtel.collector.service import configure_logging
from flowtel.collector.settings import split_endpoint

DEFAULT_CONFIG = "<embedded default>"

_DESCRIPTION = """\
flowtel: OpenTelemetry GenAI enrichment and prompt flow's eight standard metrics for LLM apps.
This command runs flowtel as a collector (apps send it OTLP) or checks a collector config file.
In-process use needs no command: call flowtel.configure() or run `opentelemetry-instrument`.

commands (`flowtel COMMAND --help` says more):
  collector   run the collector (the embedded default config unless --config)
  validate    check a config file and list every problem"""

_EXAMPLES = """\
examples:
  flowtel collector                                # the embedded default config
  flowtel collector --config collector-config/forward-otlp.yaml
  flowtel validate my.yaml                         # every problem as file:line: key: expected ...
  flowtel collector --help                         # ports and the variables it reads"""

_COLLECTOR_DESCRIPTION = """\
Run the flowtel collector: it takes traces over OTLP, enriches them with the GenAI attributes,
derives prompt flow's eight metrics and the GenAI metrics, serves them to Prometheus and forwards
the enriched spans to the exporters the config names. The config has the OpenTelemetry Collector's
shape (receivers, processors, exporters, extensions, service); without --config it is the embedded
default, the same as collector-config/default.yaml. It runs until SIGTERM or Ctrl-C, then drains.

ports of the embedded default (each is an `endpoint` key of the config; to move one, copy
collector-config/default.yaml, change the port and pass --config):
  4317   OTLP/gRPC          receivers.otlp.protocols.grpc.endpoint
  4318   OTLP/HTTP          receivers.otlp.protocols.http.endpoint  (POST /v1/traces)
  8080   user feedback      receivers.feedback.endpoint             (POST /feedback)
  9464   Prometheus         exporters.prometheus.endpoint           (GET /metrics)
  13133  health, readiness  extensions.health_check.endpoint

environment variables of the embedded default (any config can read more as ${env:VAR}):
  FLOWTEL_LISTEN_HOST        address every port listens on (default localhost; 0.0.0.0 in a container)
  FLOWTEL_MEMORY_LIMIT_MIB   memory_limiter limit_mib: refuse data above it (default 1024)"""

_COLLECTOR_EXAMPLES = """\
examples:
  flowtel collector
  FLOWTEL_LISTEN_HOST=0.0.0.0 flowtel collector --config my.yaml
  # then, in the app: OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python app.py
  curl -s localhost:9464/metrics | grep -E '^(flow|node|rpc|token)_'"""

_VALIDATE_DESCRIPTION = """\
Check a collector config file without starting anything: every problem is listed, one per line,
as FILE:LINE: KEY: expected ..., and `warning:` lines say what would work but is probably
unintended (an unset ${env:VAR} expands to an empty string). Exit status 0 when the config is
valid, 1 when it is not. Variables in the file are expanded from the environment, as the
collector would."""

_VALIDATE_EXAMPLES = """\
examples:
  flowtel validate my.yaml
  flowtel validate --config my.yaml
  flowtel validate                                 # the embedded default
  # a config rendered by the Helm chart: the recipe is in helm/flowtel/README.md"""


def _load(path: str | None) -> CollectorConfig:
    with _labelled_warnings():
        if path is None:
            text = resources.files("flowtel.collector").joinpath("default.yaml").read_text(encoding="utf-8")
            return load_config(text=text, name=DEFAULT_CONFIG)
        return load_config(path)


@contextmanager
def _labelled_warnings() -> Iterator[None]:
    """Loading logs its warnings (unset variables) before the collector's logging is set up: print them
    to stderr as ``warning: ...`` so they cannot be mistaken for problems that make the config invalid."""
    log = logging.getLogger("flowtel.collector")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_lowercase_level)
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _lowercase_level(record: logging.LogRecord) -> bool:
    record.levelname = record.levelname.lower()
    return True


def _collector(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigFileError as error:
        print(f"flowtel: invalid configuration:\n{error}", file=sys.stderr)
        return 2
    try:
        _check_ports(config)
    except PortInUse as error:
        print(f"flowtel: cannot start: {error}", file=sys.stderr)
        return 1
    configure_logging(config.service.telemetry.logs.level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        collector = Collector(config).start()
    except (OSError, RuntimeError) as error:  # grpcio reports a port it cannot bind as RuntimeError
        print(f"flowtel: cannot start: {error}", file=sys.stderr)
        return 1
    _tune_gc()
    while not stop.wait(1.0):
        pass
    collector.shutdown()
    return 0


def _check_ports(config: Any) -> None:
    """Before anything binds: a taken port is named with the config key that moves it (binding first would only
    say "address already in use", and grpcio would print a raw error line of its own)."""
    for key, endpoint in _listening_endpoints(config):
        host, port = split_endpoint(endpoint)
        try:
            ensure_free(host, port)
        except OSError as error:
            if not in_use(error):
                raise
            if config.file == DEFAULT_CONFIG:
                raise PortInUse(endpoint, f"{key} of the embedded default config", "to move it, copy "
                                "collector-config/default.yaml, change that port and run `flowtel collector --config "
                                "FILE`") from None
            raise PortInUse(endpoint, f"{key} in {config.file}", "set another port there") from None


def _listening_endpoints(config: Any) -> Iterator[tuple[str, str]]:
    """(config key, endpoint) of every server the config starts: the extensions the service lists, the receivers
    and the prometheus exporters its pipelines use (other exporters' endpoints are where they send to)."""
    used = {"extensions": set(config.service.extensions),
            "receivers": {r for p in config.service.pipelines.values() for r in p.receivers},
            "exporters": {e for p in config.service.pipelines.values() for e in p.exporters
                          if component_type(e) == "prometheus"}}
    for section, ids in used.items():
        for cid, model in getattr(config, section).items():
            if cid in ids:
                yield from _endpoints(model, f"{section}.{cid}")


def _endpoints(model: BaseModel, key: str) -> Iterator[tuple[str, str]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name == "endpoint" and isinstance(value, str):
            yield f"{key}.endpoint", value
        elif isinstance(value, BaseModel):
            yield from _endpoints(value, f"{key}.{name}")


def _tune_gc() -> None:
    """The collector allocates many short-lived objects per span; Python's default collector
    thresholds (700 allocations) made it walk the long-lived start-up heap over and over. Freeze what
    start-up built and collect the young generation only when the live objects have grown by 200,000
    (the count is allocations minus deallocations): at 50,000 the queue and held traces alone crossed
    it, and each walk of them took about 30 ms, 14 % of the CPU at 10,000 spans/s; at 200,000 the
    steady state runs about one collection in 15 s (bench/README.md). Cyclic garbage, which only
    these collections free, stays bounded by that growth."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 20, 100)


def _validate(args: argparse.Namespace) -> int:
    if args.file and args.config and args.file != args.config:
        print(f"flowtel validate: two files given ({args.file} and --config {args.config}); give one",
              file=sys.stderr)
        return 2
    try:
        config = _load(args.file or args.config)
    except ConfigFileError as error:
        print(f"{error}\n{len(error.problems)} problem(s) found", file=sys.stderr)
        return 1
    pipelines = ", ".join(config.service.pipelines)
    print(f"{config.file}: valid (pipelines: {pipelines})")
    return 0


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="flowtel", description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"flowtel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="collector or validate")
    run = sub.add_parser("collector", description=_COLLECTOR_DESCRIPTION, epilog=_COLLECTOR_EXAMPLES,
                         formatter_class=raw)
    run.add_argument("--config", metavar="FILE", help="config file in the OpenTelemetry Collector's shape")
    run.set_defaults(func=_collector)
    check = sub.add_parser("validate", description=_VALIDATE_DESCRIPTION, epilog=_VALIDATE_EXAMPLES,
                           formatter_class=raw)
    check.add_argument("file", nargs="?", metavar="FILE", help="config file to check (default: the embedded one)")
    check.add_argument("--config", metavar="FILE", help="the same, as `flowtel collector` takes it")
    check.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
