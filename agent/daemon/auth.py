"""Per-RPC authorization and the audit log.

Callers are identified by a bearer token (`authorization: Bearer <token>` metadata, tokens from
--grpc_auth_token_file) or by their mTLS client certificate (CN or a SAN listed in
--grpc_admin_identities / --grpc_readonly_identities). Read-only RPCs need any known caller, the rest
need an admin. With neither tokens nor identities configured every caller is allowed (the loopback
default); mutating calls are audit-logged either way.
"""

from __future__ import annotations

import enum
import hmac
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.errors import ConfigError, PermissionDenied
from agent.log import get_logger

READ_ONLY_METHODS = frozenset(
    {
        "Ping", "Status", "FullStatus", "ListBackups", "WatchOperation",
        "ReplicationStatus", "PrimaryStatus", "PrimaryPosition", "Check",
    }
)  # fmt: skip

audit = get_logger("agent.audit")


class Role(enum.StrEnum):
    READONLY = "readonly"
    ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    identity: str
    role: Role | None


def parse_token_file(path: Path) -> dict[str, tuple[str, Role]]:
    """Lines `<role> <name> <token>` (`#` comments). The file must not be readable by others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read --grpc_auth_token_file {path}: {e.strerror}") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"--grpc_auth_token_file {path} is readable by other users: chmod 600 {path}")
    tokens: dict[str, tuple[str, Role]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in {r.value for r in Role}:
            raise ConfigError(
                f"--grpc_auth_token_file {path} line {number}: expected `<admin|readonly> <name> <token>`"
            )
        tokens[fields[2]] = (fields[1], Role(fields[0]))
    return tokens


def _identities(value: str) -> frozenset[str]:
    return frozenset(v.strip() for v in value.split(",") if v.strip())


class Authorizer:
    """Decides who may call what; reloadable (SIGHUP) without restarting the server."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._tokens: dict[str, tuple[str, Role]] = {}
        self.reload()

    def reload(self) -> None:
        path = self._config.grpc_auth_token_file
        self._tokens = parse_token_file(path) if path is not None else {}
        self._admins = _identities(self._config.grpc_admin_identities)
        self._readers = _identities(self._config.grpc_readonly_identities)

    @property
    def enforcing(self) -> bool:
        return bool(self._tokens or self._admins or self._readers)

    def identify(
        self, metadata: Sequence[tuple[str, Any]], auth: Mapping[str, Sequence[bytes]], peer: str
    ) -> Caller:
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                presented = value.removeprefix("Bearer ").strip()
                for token, (name, role) in self._tokens.items():
                    if hmac.compare_digest(token.encode(), presented.encode()):
                        return Caller(f"token:{name}", role)
                return Caller(f"unknown token from {peer}", None)
        names = [v.decode(errors="replace") for k in ("x509_common_name", "x509_subject_alternative_name")
                 for v in auth.get(k, ())]  # fmt: skip
        for name in names:
            if name in self._admins:
                return Caller(f"cert:{name}", Role.ADMIN)
        for name in names:
            if name in self._readers:
                return Caller(f"cert:{name}", Role.READONLY)
        who = f"cert:{names[0]}" if names else peer
        return Caller(who, None if self.enforcing else Role.ADMIN)

    def authorize(self, method: str, caller: Caller) -> None:
        mutating = method not in READ_ONLY_METHODS
        allowed = caller.role is Role.ADMIN or (caller.role is Role.READONLY and not mutating)
        if not allowed:
            audit.warning("denied", who=caller.identity, rpc=method, pid=os.getpid())
            needs = "an admin identity" if mutating else "a known identity"
            raise PermissionDenied(
                f"permission denied: {caller.identity} may not call {method} (it needs {needs}: a token from "
                "--grpc_auth_token_file or a client certificate listed in --grpc_admin_identities)"
            )
        if mutating:
            audit.info("allowed", who=caller.identity, rpc=method)
