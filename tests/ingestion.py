"""A local Application Insights ingestion endpoint that validates what it receives and misbehaves on command.

The real Azure Monitor exporter reaches it through
``InstrumentationKey=<uuid>;IngestionEndpoint=http://127.0.0.1:PORT/`` and posts JSON arrays of
envelopes to ``/v2.1/track``. Every envelope is checked against the public ingestion schema
(envelope keys, iKey, time format, context tags, the known ``baseType`` values and the required
``baseData`` fields of each, property key and value limits); an invalid item is answered the way
ingestion answers it (206 with a per-item 400) and recorded in ``invalid`` so a test fails on it.

Behaviour for the next requests (or until ``recover()``):

- ``respond(status)``: answer 429 / 500 / 503 / 400 ... for the whole request (``retry_after`` adds
  the header);
- ``partial(indexes, status)``: 206 with a per-item error for those indexes, the rest accepted;
- ``hang()``: read the request and never answer it (the client times out);
- ``down()`` / ``up()``: stop listening (connection refused) and listen again on the same port.

Only items in an answer that accepted them count as delivered: ``deliveries()`` counts each item
by its identity (a span by its span id, a span event by its span and time, a metric row by name,
dimensions and time) so tests can assert exactly-once delivery.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

QUIET = {  # the exporter's own telemetry about itself, and its remote configuration, off in tests
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
}

#: The envelope name each baseType travels under.
ENVELOPE_NAMES = {
    "RequestData": "Microsoft.ApplicationInsights.Request",
    "RemoteDependencyData": "Microsoft.ApplicationInsights.RemoteDependency",
    "MetricData": "Microsoft.ApplicationInsights.Metric",
    "ExceptionData": "Microsoft.ApplicationInsights.Exception",
    "MessageData": "Microsoft.ApplicationInsights.Message",
    "EventData": "Microsoft.ApplicationInsights.Event",
    "PageViewData": "Microsoft.ApplicationInsights.PageView",
    "AvailabilityData": "Microsoft.ApplicationInsights.Availability",
}
#: Context tag keys of the public schema (``ai.user.userAgent`` is sent by the exporter, accepted by ingestion).
KNOWN_TAGS = frozenset({
    "ai.application.ver", "ai.device.id", "ai.device.locale", "ai.device.model", "ai.device.oemName",
    "ai.device.osVersion", "ai.device.type", "ai.location.ip", "ai.location.country", "ai.location.province",
    "ai.location.city", "ai.operation.id", "ai.operation.name", "ai.operation.parentId",
    "ai.operation.syntheticSource", "ai.operation.correlationVector", "ai.session.id", "ai.session.isFirst",
    "ai.user.accountId", "ai.user.id", "ai.user.authUserId", "ai.user.userAgent", "ai.cloud.role",
    "ai.cloud.roleVer", "ai.cloud.roleInstance", "ai.cloud.location", "ai.internal.sdkVersion",
    "ai.internal.agentVersion", "ai.internal.nodeName",
})
#: gen_ai content keys whose values may be up to 256 KiB instead of 8192 characters.
LONG_PROPERTY_KEYS = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.tool.definitions",
    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "gen_ai.evaluation.explanation",
})
MAX_KEY, MAX_VALUE, MAX_LONG_VALUE = 150, 8192, 256 * 1024
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?(Z|[+-]00:00)$")
_DURATION = re.compile(r"^\d+\.\d{2}:[0-5]\d:[0-5]\d\.\d{3,7}$")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _str(value: Any, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_properties(where: str, properties: Any, problems: list[str]) -> None:
    if properties is None:
        return
    if not isinstance(properties, dict):
        problems.append(f"{where}.properties: not an object")
        return
    for key, value in properties.items():
        if not key or len(key) > MAX_KEY:
            problems.append(f"{where}.properties: key of {len(key)} characters (1..{MAX_KEY})")
        limit = MAX_LONG_VALUE if key in LONG_PROPERTY_KEYS else MAX_VALUE
        if not _str(value, limit):
            problems.append(f"{where}.properties[{key!r}]: not a string of <= {limit} characters")


def _check_measurements(where: str, measurements: Any, problems: list[str]) -> None:
    if measurements is None:
        return
    if not isinstance(measurements, dict) or not all(
            _str(k, MAX_KEY) and k and _number(v) for k, v in measurements.items()):
        problems.append(f"{where}.measurements: not an object of finite numbers")


def _require(where: str, data: Mapping[str, Any], checks: Mapping[str, Callable[[Any], bool]], optional: bool,
             problems: list[str]) -> None:
    for key, check in checks.items():
        if key not in data or data[key] is None:
            if not optional:
                problems.append(f"{where}.{key}: required")
        elif not check(data[key]):
            problems.append(f"{where}.{key}: invalid value {str(data[key])[:80]!r}")


_BASE_REQUIRED: dict[str, dict[str, Callable[[Any], bool]]] = {
    "RequestData": {"id": lambda v: _str(v, 128) and bool(v), "name": lambda v: _str(v, 1024) and bool(v),
                    "duration": lambda v: isinstance(v, str) and bool(_DURATION.match(v)),
                    "responseCode": lambda v: _str(v, 1024) and bool(v), "success": lambda v: isinstance(v, bool)},
    "RemoteDependencyData": {"id": lambda v: _str(v, 128) and bool(v), "name": lambda v: _str(v, 1024) and bool(v),
                             "duration": lambda v: isinstance(v, str) and bool(_DURATION.match(v)),
                             "success": lambda v: isinstance(v, bool), "type": lambda v: _str(v, 1024) and bool(v)},
    "MetricData": {"metrics": lambda v: isinstance(v, list) and len(v) > 0},
    "ExceptionData": {"exceptions": lambda v: isinstance(v, list) and len(v) > 0},
    "MessageData": {"message": lambda v: _str(v, 32768)},
    "EventData": {"name": lambda v: _str(v, 512) and bool(v)},
}
_SEVERITY_LEVELS = ("Verbose", "Information", "Warning", "Error", "Critical")
_BASE_OPTIONAL: dict[str, dict[str, Callable[[Any], bool]]] = {
    "RequestData": {"url": lambda v: _str(v, 2048), "source": lambda v: _str(v, 1024)},
    "RemoteDependencyData": {"resultCode": lambda v: _str(v, 1024), "data": lambda v: _str(v, 8192),
                             "target": lambda v: _str(v, 1024)},
    # Names (the .NET SDK) or their numbers 0-4 (the JavaScript SDKs, and the Python exporter's log rows).
    "MessageData": {"severityLevel": lambda v: v in _SEVERITY_LEVELS or (type(v) is int and 0 <= v < 5)},
}


def validate(envelope: Any, ikey: str) -> list[str]:
    """Everything wrong with one envelope (empty when ingestion would accept it)."""
    problems: list[str] = []
    if not isinstance(envelope, dict):
        return ["envelope: not an object"]
    unknown = set(envelope) - {"ver", "name", "time", "sampleRate", "seq", "iKey", "tags", "data"}
    if unknown:
        problems.append(f"envelope: unknown keys {sorted(unknown)}")
    if envelope.get("iKey") != ikey:
        problems.append(f"envelope.iKey: {envelope.get('iKey')!r} is not this resource's key")
    if not (isinstance(envelope.get("time"), str) and _TIME.match(envelope["time"])):
        problems.append(f"envelope.time: {envelope.get('time')!r} is not an ISO 8601 UTC time")
    if "sampleRate" in envelope and not (_number(envelope["sampleRate"]) and 0 < envelope["sampleRate"] <= 100):
        problems.append("envelope.sampleRate: not in (0, 100]")
    tags = envelope.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        problems.append("envelope.tags: not an object of strings")
        tags = {}
    for key in set(tags) - KNOWN_TAGS:
        problems.append(f"envelope.tags: unknown tag {key!r}")
    if "ai.operation.id" in tags and not _TRACE_ID.match(tags["ai.operation.id"]):
        problems.append(f"tags[ai.operation.id]: {tags['ai.operation.id']!r} is not a 32-hex trace id")
    if "ai.operation.parentId" in tags and not _SPAN_ID.match(tags["ai.operation.parentId"]):
        problems.append(f"tags[ai.operation.parentId]: {tags['ai.operation.parentId']!r} is not a 16-hex span id")
    data = envelope.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("baseData"), dict):
        return [*problems, "envelope.data: needs baseType and a baseData object"]
    base_type, base = data.get("baseType"), data["baseData"]
    if base_type not in ENVELOPE_NAMES:
        return [*problems, f"data.baseType: unknown {base_type!r}"]
    if envelope.get("name") != ENVELOPE_NAMES[base_type]:
        problems.append(f"envelope.name: {envelope.get('name')!r} does not match baseType {base_type}")
    if not isinstance(base.get("ver"), int):
        problems.append(f"{base_type}.ver: required integer")
    if base_type in ("RequestData", "RemoteDependencyData") and "ai.operation.id" not in tags:
        problems.append(f"{base_type}: tags need ai.operation.id")
    _require(base_type, base, _BASE_REQUIRED.get(base_type, {}), False, problems)
    _require(base_type, base, _BASE_OPTIONAL.get(base_type, {}), True, problems)
    _check_properties(base_type, base.get("properties"), problems)
    _check_measurements(base_type, base.get("measurements"), problems)
    if base_type == "MetricData":
        for i, point in enumerate(base.get("metrics") or []):
            where = f"MetricData.metrics[{i}]"
            if not isinstance(point, dict):
                problems.append(f"{where}: not an object")
                continue
            _require(where, point, {"name": lambda v: _str(v, 1024) and bool(v), "value": _number}, False, problems)
            _require(where, point, {"ns": lambda v: _str(v, 256), "count": lambda v: isinstance(v, int) and v >= 0,
                                    "min": _number, "max": _number, "stdDev": _number}, True, problems)
            if _number(point.get("min")) and _number(point.get("max")) and point["min"] > point["max"]:
                problems.append(f"{where}: min > max")
    if base_type == "ExceptionData":
        for i, detail in enumerate(base.get("exceptions") or []):
            where = f"ExceptionData.exceptions[{i}]"
            if not isinstance(detail, dict):
                problems.append(f"{where}: not an object")
                continue
            _require(where, detail, {"message": lambda v: _str(v, 32768)}, False, problems)
            _require(where, detail, {"typeName": lambda v: _str(v, 1024), "stack": lambda v: _str(v, 32768),
                                     "hasFullStack": lambda v: isinstance(v, bool)}, True, problems)
    return problems


def item_key(envelope: Mapping[str, Any]) -> tuple[Any, ...]:
    """The identity of a telemetry item: the same item sent twice has the same key."""
    data, tags = envelope["data"], envelope.get("tags", {})
    base_type, base = data["baseType"], data["baseData"]
    if base_type in ("RequestData", "RemoteDependencyData"):
        return ("span", tags.get("ai.operation.id"), base["id"])
    if base_type == "MetricData":
        point = base["metrics"][0]
        return ("metric", point["name"], envelope["time"], tuple(sorted((base.get("properties") or {}).items())))
    return ("event", base_type, tags.get("ai.operation.parentId"), envelope["time"],
            json.dumps(base, sort_keys=True))


@dataclass
class TrackRequest:
    """One POST as the endpoint saw it."""

    status: int  # what it answered (0: no answer, the connection was dropped)
    keys: list[tuple[Any, ...]]
    accepted: list[int] = field(default_factory=list)  # indexes accepted


@dataclass
class _Plan:
    status: int = 200
    partial: dict[int, int] = field(default_factory=dict)  # index -> per-item status
    partial_message: str = "injected per-item failure"
    retry_after: str | None = None
    hang: bool = False
    times: int | None = None  # None: until recover()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.server.ingestion._handle(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, ingestion: IngestionServer) -> None:
        self.ingestion = ingestion
        super().__init__(("127.0.0.1", port), _Handler)


class IngestionServer:
    def __init__(self, ikey: str | None = None) -> None:
        self.ikey = ikey or str(uuid.uuid4())
        assert _UUID.match(self.ikey)
        self._lock = threading.Lock()
        self._plans: list[_Plan] = []
        self._release = threading.Event()  # set: hung requests give up at once
        self.hang_s = 30.0
        self.requests: list[TrackRequest] = []
        self.invalid: list[str] = []
        self.other_paths: list[str] = []
        self._rows: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.up()

    # -- lifecycle ---------------------------------------------------------------------------------------

    def up(self) -> None:
        """Listen (again, on the same port after ``down()``)."""
        if self._server is not None:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                self._server = _Server(self.port, self)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ingestion", daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening: new connections are refused until ``up()``."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def close(self) -> None:
        self._release.set()
        self.down()

    def __enter__(self) -> IngestionServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def connection_string(self) -> str:
        return f"InstrumentationKey={self.ikey};IngestionEndpoint={self.endpoint}"

    def refuses_connections(self) -> bool:
        with socket.socket() as probe:
            probe.settimeout(1)
            return probe.connect_ex(("127.0.0.1", self.port)) != 0

    # -- behaviour ---------------------------------------------------------------------------------------

    def respond(self, status: int, *, times: int | None = None, retry_after: str | None = None) -> None:
        """Answer ``status`` to the next ``times`` requests (all of them until ``recover()`` when None)."""
        self._plan(_Plan(status=status, retry_after=retry_after, times=times))

    def partial(self, errors: Mapping[int, int], *, times: int = 1, message: str = "injected per-item failure",
                ) -> None:
        """206: the item at each index of ``errors`` fails with its status code, the rest are accepted."""
        self._plan(_Plan(status=206, partial=dict(errors), partial_message=message, times=times))

    def hang(self, *, times: int | None = None) -> None:
        """Read requests but never answer them (the connection is closed when the client gives up)."""
        self._release.clear()
        self._plan(_Plan(hang=True, times=times))

    def reset(self) -> None:
        """Forget every plan (hung requests give up now); listening or not stays as it is."""
        with self._lock:
            self._plans.clear()
        self._release.set()

    def recover(self) -> None:
        """Back to normal: listening, answering 200."""
        self.reset()
        self.up()

    def _plan(self, plan: _Plan) -> None:
        with self._lock:
            self._plans.append(plan)

    def _next_plan(self) -> _Plan:
        with self._lock:
            if not self._plans:
                return _Plan()
            plan = self._plans[0]
            if plan.times is not None:
                plan.times -= 1
                if plan.times <= 0:
                    self._plans.pop(0)
            return plan

    # -- the endpoint ------------------------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        if not re.fullmatch(r"/+v2(\.1)?/track", path):
            with self._lock:
                self.other_paths.append(handler.path)
            handler._answer(404, {"error": "unknown path"})
            return
        if handler.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, list):
            with self._lock:
                self.invalid.append("request: body is not a JSON array of envelopes")
                self.requests.append(TrackRequest(400, []))
            handler._answer(400, {"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
            return
        problems = [validate(envelope, self.ikey) for envelope in body]
        keys = [item_key(e) if not p else ("invalid", i) for i, (e, p) in enumerate(zip(body, problems, strict=True))]
        plan = self._next_plan()
        if plan.hang:
            with self._lock:
                self.requests.append(TrackRequest(0, keys))
            self._release.wait(self.hang_s)
            handler.close_connection = True
            return
        if plan.status not in (200, 206):
            with self._lock:
                self.requests.append(TrackRequest(plan.status, keys))
            headers = {"Retry-After": plan.retry_after} if plan.retry_after else None
            handler._answer(plan.status, {"itemsReceived": len(body), "itemsAccepted": 0,
                                          "errors": [{"index": i, "statusCode": plan.status,
                                                      "message": "injected failure"} for i in range(len(body))]},
                            headers)
            return
        errors: list[dict[str, Any]] = []
        accepted: list[int] = []
        for i in range(len(body)):
            if problems[i]:
                errors.append({"index": i, "statusCode": 400, "message": "; ".join(problems[i])})
            elif i in plan.partial:
                errors.append({"index": i, "statusCode": plan.partial[i], "message": plan.partial_message})
            else:
                accepted.append(i)
        with self._lock:
            for p in problems:
                self.invalid.extend(p)
            self._rows.extend(body[i] for i in accepted)
            self.requests.append(TrackRequest(206 if errors else 200, keys, accepted))
        handler._answer(206 if errors else 200,
                        {"itemsReceived": len(body), "itemsAccepted": len(accepted), "errors": errors})

    # -- what arrived ------------------------------------------------------------------------------------

    def rows(self, base_type: str | None = None) -> list[dict[str, Any]]:
        """Accepted envelopes, optionally of one baseType."""
        with self._lock:
            rows = list(self._rows)
        return [r for r in rows if base_type is None or r["data"]["baseType"] == base_type]

    def metric_rows(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.rows("MetricData")
                if name is None or r["data"]["baseData"]["metrics"][0]["name"] == name]

    def span_rows(self) -> dict[str, dict[str, Any]]:
        """Request and dependency rows by span id (the last one when an id arrived twice)."""
        return {r["data"]["baseData"]["id"]: r for r in self.rows()
                if r["data"]["baseType"] in ("RequestData", "RemoteDependencyData")}

    def deliveries(self) -> Counter[tuple[Any, ...]]:
        """How many times each item was accepted."""
        return Counter(item_key(r) for r in self.rows())

    def statuses(self) -> Counter[int]:
        with self._lock:
            return Counter(r.status for r in self.requests)

    def wait_for(self, condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(interval)
        return condition()


def metric_sums(rows: Sequence[Mapping[str, Any]], name: str, dimensions: Sequence[str] | None = None,
                ) -> dict[tuple[tuple[str, str], ...], dict[str, float]]:
    """Sum rows of one metric by their dimensions: value (the sum for histograms) and count."""
    out: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    for row in rows:
        point = row["data"]["baseData"]["metrics"][0]
        if point["name"] != name:
            continue
        props = row["data"]["baseData"].get("properties") or {}
        key = tuple(sorted(props.items())) if dimensions is None else tuple((d, props.get(d, "")) for d in dimensions)
        acc = out.setdefault(key, {"value": 0.0, "count": 0.0})
        acc["value"] += point["value"]
        acc["count"] += point.get("count", 1)
    return out
