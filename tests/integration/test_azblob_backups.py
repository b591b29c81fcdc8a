"""Backups and restores through the real agent into a real Azure Blob service (Azurite, on 127.0.0.1):
builtin, xtrabackup, incrementals and a point-in-time restore; also through a proxy that injects faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.azuriteserver import ACCOUNT, KEY, AzuriteServer
from tests.faulty_proxy import FaultyProxy
from tests.integration import helpers
from tests.integration.helpers import Tablets

pytestmark = pytest.mark.integration
KEY_ENV = {"VT_AZBLOB_ACCOUNT_KEY": KEY}


@dataclass(frozen=True)
class Container:
    server: AzuriteServer
    name: str
    key_file: Path  # holds the account key, mode 0600
    proxy: FaultyProxy | None = None  # when set, the agent talks to the service through it

    def flags(self, *more: str) -> list[str]:
        endpoint = f"{self.proxy.endpoint}/{ACCOUNT}" if self.proxy else self.server.endpoint
        return [
            "--backup_storage_implementation", "azblob", "--azblob_backup_account_name", ACCOUNT,
            "--azblob_backup_container_name", self.name, "--azblob_backup_storage_root", "prod",
            "--azblob_backup_endpoint", endpoint, "--azblob_backup_buffer_size", str(1 << 20), *more,
        ]  # fmt: skip

    def manifests(self) -> list[dict[str, object]]:
        client = self.server.service().get_container_client(self.name)
        names = [n for n in self.server.blob_names(self.name) if n.endswith("/MANIFEST")]
        return [json.loads(client.download_blob(n).readall()) for n in names]


@pytest.fixture
def container(azurite: AzuriteServer, azure_container: str, tmp_path: Path) -> Container:
    key_file = tmp_path / "azblob.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    return Container(azurite, azure_container, key_file)


@pytest.fixture
def proxied(container: Container) -> Iterator[Container]:
    p = FaultyProxy(container.server.endpoint)
    yield Container(container.server, container.name, container.key_file, p)
    p.stop()


def test_builtin_backup_and_restore_through_azblob(tablets: Tablets, container: Container) -> None:
    flags = container.flags("--azblob_backup_account_key_file", str(container.key_file))
    helpers.builtin_round_trip(tablets, container, flags=flags)
    assert all(n.startswith("prod/ks/0/") for n in container.server.blob_names(container.name))


def test_xtrabackup_incrementals_and_pitr_through_azblob(tablets: Tablets, container: Container) -> None:
    manifests = helpers.incrementals_and_pitr(tablets, container, env=KEY_ENV, restore_full=True)
    assert [m["BackupMethod"] for m in manifests] == ["xtrabackup", "builtin", "builtin"]


def test_transient_azblob_faults_are_retried(tablets: Tablets, proxied: Container) -> None:
    helpers.round_trip_through_faults(tablets, proxied, megabytes=12, env=KEY_ENV)


def test_persistent_azblob_failure_fails_the_backup_cleanly(tablets: Tablets, proxied: Container) -> None:
    err, agent = helpers.backup_while_store_is_down(tablets, proxied, megabytes=6, env=KEY_ENV)
    assert "InternalError (HTTP 500)" in (err.details() or "") and "abort" not in (err.details() or "")
    assert KEY not in (err.details() or "") and KEY not in agent.log()
    assert proxied.server.blob_names(proxied.name) == []
