"""TLS, mTLS and per-RPC authorization of a real agent."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from agent.pb import agentdata_pb2, tabletmanagerdata_pb2, tabletmanagerservice_pb2_grpc
from tests.certs import CertificateAuthority
from tests.integration.conftest import AgentFactory
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


def secure_stub(
    address: str, ca: Path, cert: Path | None = None, key: Path | None = None
) -> tuple[grpc.Channel, tabletmanagerservice_pb2_grpc.TabletManagerStub]:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    channel = grpc.secure_channel(address, creds)
    return channel, tabletmanagerservice_pb2_grpc.TabletManagerStub(channel)


def ping(stub: tabletmanagerservice_pb2_grpc.TabletManagerStub, **kw: object) -> str:
    return stub.Ping(tabletmanagerdata_pb2.PingRequest(payload="x"), timeout=5, **kw).payload  # type: ignore[arg-type]


@pytest.fixture
def pki(tmp_path: Path) -> CertificateAuthority:
    d = tmp_path / "pki"
    d.mkdir()
    return CertificateAuthority(d)


def test_mtls_with_identities(
    replica: Sandbox, agent_factory: AgentFactory, pki: CertificateAuthority, tmp_path: Path
):
    server_cert, server_key = pki.issue("tablet-102", server=True)
    admin = pki.issue("controller")
    reader = pki.issue("monitor")
    stranger = pki.issue("stranger")
    rogue_ca = CertificateAuthority(tmp_path, "rogue-ca")
    rogue = rogue_ca.issue("controller")
    agent = agent_factory(
        replica,
        extra=["--grpc_cert", str(server_cert), "--grpc_key", str(server_key), "--grpc_ca", str(pki.path),
               "--grpc_admin_identities", "controller", "--grpc_readonly_identities", "monitor"],
        start=False,
    )  # fmt: skip
    agent.start(probe=secure_ping(agent.address, pki.path, *admin))

    ch, stub = secure_stub(agent.address, pki.path, *admin)
    with ch:
        assert ping(stub) == "x"
    ch, stub = secure_stub(agent.address, pki.path, *reader)
    with ch:
        assert stub.Status(agentdata_pb2.StatusRequest(), timeout=5).tablet_alias == "zone1-0000000102"
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Backup(tabletmanagerdata_pb2.BackupRequest(), timeout=10))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "cert:monitor may not call Backup" in (err.value.details() or "")
    ch, stub = secure_stub(agent.address, pki.path, *stranger)
    with ch, pytest.raises(grpc.RpcError) as err:
        ping(stub)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    for creds in ((None, None), rogue):  # no client cert / a cert from another CA: no handshake
        ch, stub = secure_stub(agent.address, pki.path, *creds)
        with ch, pytest.raises(grpc.RpcError) as err:
            ping(stub)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(agent.address) as plain, pytest.raises(grpc.RpcError):
        tabletmanagerservice_pb2_grpc.TabletManagerStub(plain).Ping(
            tabletmanagerdata_pb2.PingRequest(), timeout=3
        )
    log = agent.log()
    assert '"denied"' in log and "cert:monitor" in log


def secure_ping(address: str, ca: Path, cert: Path | None = None, key: Path | None = None, **kw: object):
    def probe() -> None:
        ch, stub = secure_stub(address, ca, cert, key)
        with ch:
            ping(stub, **kw)

    return probe


def test_tokens_and_sighup_reload(
    replica: Sandbox, agent_factory: AgentFactory, pki: CertificateAuthority, tmp_path
):
    tokens = tmp_path / "tokens"
    tokens.write_text("admin ops s3cret-admin\nreadonly dash s3cret-read\n")
    tokens.chmod(0o600)
    server_cert, server_key = pki.issue("tablet-102", server=True)
    agent = agent_factory(
        replica,
        extra=["--grpc_cert", str(server_cert), "--grpc_key", str(server_key), "--grpc_auth_token_file", str(tokens)],
        start=False,
    )  # fmt: skip
    admin_md = (("authorization", "Bearer s3cret-admin"),)
    agent.start(probe=secure_ping(agent.address, pki.path, metadata=admin_md))
    ch, stub = secure_stub(agent.address, pki.path)
    with ch:
        with pytest.raises(grpc.RpcError) as err:
            ping(stub)  # no token
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            stub.CancelOperation(agentdata_pb2.CancelOperationRequest(), timeout=5,
                                 metadata=(("authorization", "Bearer s3cret-read"),))  # fmt: skip
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # rotate the tokens and the server certificate, then SIGHUP: no restart, new ones apply
        tokens.write_text("admin ops rotated-admin\n")
        new_cert, new_key = pki.issue("tablet-102-new", server=True)
        os.replace(new_cert, server_cert)
        os.replace(new_key, server_key)
        assert agent.proc is not None
        pid = agent.proc.pid
        agent.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        with pytest.raises(grpc.RpcError):
            ping(stub, metadata=admin_md)
        assert ping(stub, metadata=(("authorization", "Bearer rotated-admin"),)) == "x"
    assert agent.proc.poll() is None and agent.proc.pid == pid
    log = agent.log()
    assert "s3cret" not in log and "rotated-admin" not in log
    assert "TLS certificates reloaded" in log


def test_plaintext_on_a_non_loopback_address_is_refused(
    replica: Sandbox, agent_factory: AgentFactory
) -> None:
    agent = agent_factory(replica, extra=["--grpc_bind_address", "0.0.0.0"], start=False)
    with pytest.raises(RuntimeError, match="is not a loopback address"):
        agent.start(timeout=20)


def test_tabletctl_speaks_mtls_and_sends_tokens(
    replica: Sandbox, agent_factory: AgentFactory, pki: CertificateAuthority, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.agent_process import REPO

    tokens = tmp_path / "tokens"
    tokens.write_text("admin ops ctl-token\n")
    tokens.chmod(0o600)
    server_cert, server_key = pki.issue("tablet-102", server=True)
    client = pki.issue("controller")
    agent = agent_factory(
        replica,
        extra=["--grpc_cert", str(server_cert), "--grpc_key", str(server_key), "--grpc_ca", str(pki.path),
               "--grpc_auth_token_file", str(tokens)],
        start=False,
    )  # fmt: skip
    agent.start(
        probe=secure_ping(agent.address, pki.path, *client, metadata=(("authorization", "Bearer ctl-token"),))
    )
    ctl = [sys.executable, "-m", "agent.ctl.main", "--server", agent.address, "--tls-ca", str(pki.path),
           "--tls-cert", str(client[0]), "--tls-key", str(client[1]), "status"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(
        ctl, capture_output=True, text=True, timeout=60, env={**env, "TABLETCTL_TOKEN": "ctl-token"}
    )
    assert ok.returncode == 0, ok.stderr
    assert "zone1-0000000102" in ok.stdout
    denied = subprocess.run(ctl, capture_output=True, text=True, timeout=60, env=env)
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr


def test_an_insecure_listener_is_flagged_in_status(replica: Sandbox, agent_factory: AgentFactory) -> None:
    agent = agent_factory(replica, extra=["--grpc_bind_address", "0.0.0.0", "--grpc_insecure"])
    with agent.channel() as ch:
        status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=5)
    assert any("INSECURE" in p for p in status.health_problems)
    assert "INSECURE" in agent.log()
