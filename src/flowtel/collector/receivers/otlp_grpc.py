"""OTLP/gRPC transport of the ``otlp`` receiver, served with grpcio: TraceService, MetricsService and
LogsService, each registered only when a pipeline of its signal takes this receiver (UNIMPLEMENTED otherwise).

The handler takes raw bytes (no deserializer in grpcio) so a malformed message becomes
INVALID_ARGUMENT with the reason, not an opaque INTERNAL. grpcio itself enforces
``max_recv_msg_size_mib`` (RESOURCE_EXHAUSTED) and decompresses gzip.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2

from flowtel.otlp import MalformedRequest
from flowtel.settings import BearerToken

from ..refusal import Refused
from ..settings import split_endpoint
from .otlp import MIB, AnyIntake, GRPCServerConfig


def _unavailable(context: grpc.ServicerContext, refused: Refused) -> None:
    delay = Duration()
    delay.FromNanoseconds(int(refused.retry_after_s * 1e9))
    info = error_details_pb2.RetryInfo(retry_delay=delay)
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=refused.message)
    status.details.add().Pack(info)
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(grpc.StatusCode.UNAVAILABLE, refused.message)


class GRPCTransport:
    kind = "grpc"  # the service lists where it listens under this name

    def __init__(self, config: GRPCServerConfig, intakes: dict[str, AnyIntake], token: BearerToken | None,
                 max_workers: int = 8) -> None:
        self._config = config
        self._token = token
        limit = int(config.max_recv_msg_size_mib * MIB)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="flowtel-grpc"),
            options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(intake.signal.grpc_service, {
                "Export": grpc.unary_unary_rpc_method_handler(self._handler(intake))})
            for intake in intakes.values()))
        host, port = split_endpoint(config.endpoint)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if config.tls is not None:
            tls = config.tls
            with open(tls.key_file, "rb") as k, open(tls.cert_file, "rb") as c:
                pair = (k.read(), c.read())
            ca = open(tls.client_ca_file, "rb").read() if tls.client_ca_file else None  # noqa: SIM115
            credentials = grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.endpoint} for OTLP/gRPC")
        self.host = host
        self.tls = config.tls is not None

    def _handler(self, intake: AnyIntake) -> Any:
        def export(raw: bytes, context: grpc.ServicerContext) -> bytes:
            return self._export(intake, raw, context)
        return export

    def _export(self, intake: AnyIntake, raw: bytes, context: grpc.ServicerContext) -> bytes:
        request_type = intake.signal.request
        if self._token is not None:
            header = dict(context.invocation_metadata()).get("authorization")
            if not self._token.check(header if isinstance(header, str) else None):
                intake.refuse_request("grpc", "unauthenticated", "missing or wrong bearer token")
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            request = request_type.FromString(raw)
        except DecodeError as error:
            intake.refuse_request("grpc", "malformed", str(error))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {request_type.__name__}: {error}")
        try:
            response = intake.accept(request, "grpc", raw)
        except Refused as refused:
            _unavailable(context, refused)
        except MalformedRequest as error:
            intake.refuse_request("grpc", "malformed", str(error))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return response.SerializeToString()

    def start(self) -> None:
        self._server.start()

    def shutdown(self, grace_s: float) -> Any:
        return self._server.stop(grace_s)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"
