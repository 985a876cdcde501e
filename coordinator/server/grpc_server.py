"""Builds the coordinator's grpc.aio server: Corral's services, health and reflection.

Owns: which services are registered and the server's options (message sizes, keepalive).
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
from .task_service import TaskService

SERVICE_NAMES = (
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    actor_service_pb2.DESCRIPTOR.services_by_name["ActorService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def build_server(config: CoordinatorConfig, loop: DispatchLoop, tracing: SubmissionTracing | None = None,
                 ) -> tuple[grpc.aio.Server, health_aio.HealthServicer, int]:
    """Returns the server, its health servicer and the bound port."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Close connections whose peer vanished without a FIN (pulled cable, frozen VM).
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ])
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(
        TaskService(loop, SpecLimits(max_input_bytes=config.max_input_bytes), tracing), server)
    actor_service_pb2_grpc.add_ActorServiceServicer_to_server(ActorService(loop), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(loop), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        SERVICE_NAMES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    return server, health, port
