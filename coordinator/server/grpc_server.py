"""Builds the coordinator's grpc.aio server: Corral's services, health and reflection.

Owns: which services are registered, the server's options (message sizes, keepalive), its
interceptors (auth.py: tokens and roles; limits.py: watch streams per client) and whether the
listener is TLS (tls.py).
Reflection is on so `grpcurl -plaintext HOST:PORT list` and `describe` need no proto files.
"""
from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from corral.v1 import (actor_service_pb2, actor_service_pb2_grpc, admin_service_pb2, admin_service_pb2_grpc,
                       task_service_pb2, task_service_pb2_grpc)

from ..config import CoordinatorConfig
from ..core.spec import SpecLimits
from ..dispatch.loop import DispatchLoop
from ..telemetry.tracing import SubmissionTracing
from .actor_service import ActorService
from .admin_service import AdminService
from .auth import AuthInterceptor, load_tokens
from .limits import StreamLimitInterceptor
from .tls import mutual_tls, server_credentials
from .task_service import TaskService

SERVICE_NAMES = (
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    actor_service_pb2.DESCRIPTOR.services_by_name["ActorService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def build_server(config: CoordinatorConfig, loop: DispatchLoop, tracing: SubmissionTracing | None = None,
                 ) -> tuple[grpc.aio.Server, health_aio.HealthServicer, int]:
    """Returns the server, its health servicer and the bound port."""
    # Auth first (outermost): a refused call is never counted, read or answered by a servicer.
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if config.tokens_file:
        interceptors.append(AuthInterceptor(load_tokens(config.tokens_file)))
    interceptors.append(StreamLimitInterceptor(config.max_streams_per_peer))
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Close connections whose peer vanished without a FIN (pulled cable, frozen VM).
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.keepalive_min_ping_interval_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
    ])
    limits = SpecLimits(max_input_bytes=config.max_input_bytes)
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(TaskService(loop, limits, tracing), server)
    actor_service_pb2_grpc.add_ActorServiceServicer_to_server(
        ActorService(loop, check_cert_identity=mutual_tls(config), limits=limits), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(loop), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        SERVICE_NAMES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    credentials = server_credentials(config)  # None: plaintext, only when asked (tls.listener_problem)
    try:  # grpc raises RuntimeError (older versions return 0) when it cannot bind
        port = (server.add_secure_port(config.listen, credentials) if credentials is not None
                else server.add_insecure_port(config.listen))
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"--listen / CORRAL_LISTEN: cannot listen on {config.listen} "
                      "(address in use, or not an address of this host)")
    return server, health, port
