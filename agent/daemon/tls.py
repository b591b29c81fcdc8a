"""TLS credentials for the gRPC server, reloaded from disk on SIGHUP without dropping the server."""

from __future__ import annotations

from pathlib import Path

import grpc

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.log import get_logger

log = get_logger("agent.daemon.tls")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {flag} {path}: {e.strerror}") from None


class ServerCertificates:
    """Holds the certificate configuration; `reload()` makes new handshakes use the files' current content."""

    def __init__(self, config: AgentConfig) -> None:
        assert config.grpc_cert is not None and config.grpc_key is not None
        self._cert, self._key, self._ca = config.grpc_cert, config.grpc_key, config.grpc_ca
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._initial = self._load()

    def _load(self) -> grpc.ServerCertificateConfiguration:
        key = _read(self._key, "--grpc_key")
        cert = _read(self._cert, "--grpc_cert")
        ca = _read(self._ca, "--grpc_ca") if self._ca is not None else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def reload(self) -> None:
        """Re-read the files; a bad file keeps the old certificates and is reported."""
        try:
            self._pending = self._load()
            log.info("TLS certificates reloaded", cert=str(self._cert))
        except ConfigError as e:
            log.error("TLS certificates not reloaded: keeping the old ones", error=str(e))

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        pending, self._pending = self._pending, None
        return pending

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # None means "keep the current certificates"
            require_client_authentication=self._ca is not None,
        )
