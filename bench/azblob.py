"""azblob_upload / azblob_download: the agent's builtin backup into, and restore from, Azure Blob Storage
(Azurite on 127.0.0.1) against the Azure SDK's own bulk transfer of the same files (`upload_blob` /
`download_blob` with max_concurrency=4), same bytes (compression off on both sides), same service,
alternating rounds.

    python -m bench.azblob [--size-gb 0.2] [--rounds 2]
"""

from __future__ import annotations

import os
import shutil
import sys
from functools import partial
from pathlib import Path

from azure.storage.blob import ContainerClient

from bench._object_storage import measure_round, run
from bench.common import BenchResult
from tests import azuriteserver
from tests.azuriteserver import ACCOUNT, KEY, AzuriteServer
from tests.sandbox import Sandbox

CONCURRENCY = 4


def reference_upload(container: ContainerClient, sb: Sandbox) -> None:
    sb.stop()
    try:
        for path in sorted(p for p in sb.datadir.rglob("*") if p.is_file()):
            with path.open("rb") as f:
                container.upload_blob(f"ref/{path.relative_to(sb.datadir)}", f, max_concurrency=CONCURRENCY)
    finally:
        sb.start()


def reference_download(container: ContainerClient, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    for blob in container.list_blobs(name_starts_with="ref/"):
        dest = target / blob.name.removeprefix("ref/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as f:
            container.download_blob(blob.name, max_concurrency=CONCURRENCY).readinto(f)


def one_round(server: AzuriteServer, sb: Sandbox, work: Path, up: BenchResult, down: BenchResult) -> str:
    name = server.new_container()
    container = server.service().get_container_client(name)
    flags = [
        "--backup_storage_implementation", "azblob", "--azblob_backup_account_name", ACCOUNT,
        "--azblob_backup_container_name", name, "--azblob_backup_endpoint", server.endpoint,
        "--compression-engine-name", "none",
    ]  # fmt: skip
    env = {**os.environ, "VT_AZBLOB_ACCOUNT_KEY": KEY}
    references = (partial(reference_upload, container), partial(reference_download, container))
    try:
        return measure_round(sb, work, flags, up, down, references=references, env=env)
    finally:
        container.delete_container()


def main(argv: list[str] | None = None) -> int:
    if not azuriteserver.installed():
        print(azuriteserver.MISSING, file=sys.stderr)
        return 2
    sdk = f"azure-storage-blob, max_concurrency={CONCURRENCY}"
    references = (f"upload_blob of each file ({sdk})", f"download_blob of each blob ({sdk})")
    return run("azblob", argv, lambda work: AzuriteServer(work / "azurite"), one_round, references=references)


if __name__ == "__main__":
    sys.exit(main())
