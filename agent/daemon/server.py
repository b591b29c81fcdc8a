"""The grpc.aio server: TabletManager, grpc.health.v1 and server reflection on one port."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from agent.config import AgentConfig, is_loopback
from agent.daemon.auth import Authorizer
from agent.daemon.guard import RequestGuard
from agent.daemon.tls import ServerCertificates
from agent.errors import ConfigError
from agent.log import get_logger
from agent.pb import (
    agentdata_pb2,
    tabletmanagerdata_pb2,
    tabletmanagerservice_pb2,
    tabletmanagerservice_pb2_grpc,
)

log = get_logger("agent.daemon.server")
SERVICE_NAME = tabletmanagerservice_pb2.DESCRIPTOR.services_by_name["TabletManager"].full_name


class AgentServer:
    """Owns the grpc.aio server and its health status."""

    def __init__(
        self, servicer: tabletmanagerservice_pb2_grpc.TabletManagerServicer, config: AgentConfig
    ) -> None:
        self.authorizer = Authorizer(config)
        self.certificates = ServerCertificates(config) if config.grpc_cert is not None else None
        self.server = grpc.aio.server(
            interceptors=[RequestGuard(self.authorizer)],
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.so_reuseport", 0),  # a second agent on the same port must fail, not share it
            ],
        )
        tabletmanagerservice_pb2_grpc.add_TabletManagerServicer_to_server(servicer, self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        # Make sure the message descriptors are in the default pool for reflection.
        _ = (agentdata_pb2.DESCRIPTOR, tabletmanagerdata_pb2.DESCRIPTOR)
        self.port = 0

    async def start(self, config: AgentConfig) -> int:
        address = f"{config.grpc_bind_address}:{config.grpc_port}"
        try:
            if self.certificates is not None:
                port = self.server.add_secure_port(address, self.certificates.credentials())
            else:
                port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.5x: "Failed to bind to address"
            port = 0
        if port == 0:
            raise ConfigError(
                f"cannot listen on {address}: the port is in use or the address is not local; "
                "choose another --grpc_port or --grpc_bind_address"
            )
        if config.grpc_cert is None and not is_loopback(config.grpc_bind_address):
            log.warning(
                "INSECURE: serving plaintext gRPC on a non-loopback address (--grpc_insecure); anyone who "
                "reaches it can stop mysqld and overwrite its datadir",
                address=address,
            )
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.port = port
        return port

    def reload(self) -> None:
        """SIGHUP: re-read certificates and tokens; established connections keep going."""
        if self.certificates is not None:
            self.certificates.reload()
        try:
            self.authorizer.reload()
        except ConfigError as e:
            log.error("tokens not reloaded: keeping the old ones", error=str(e))

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
