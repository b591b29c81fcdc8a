"""azblob_upload / azblob_download: the agent's builtin backup into, and restore from, Azure Blob Storage
(Azurite on 127.0.0.1) against the Azure SDK's own bulk transfer of the same files (`upload_blob` /
`download_blob` with max_concurrency=4), same bytes (compression off on both sides), same service,
alternating rounds.

    python -m bench.azblob [--size-gb 0.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from azure.storage.blob import ContainerClient

from bench.common import BenchResult, datadir_megabytes, dataset, drop_caches, report, timed
from tests import azuriteserver
from tests.agent_process import AgentProcess
from tests.azuriteserver import ACCOUNT, KEY, AzuriteServer
from tests.integration.helpers import backup, restore
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
    agent = AgentProcess(sb.cnf, work / "unused", work / "agent", extra=flags, env=env)
    agent.start(timeout=60)
    try:
        note = drop_caches()
        up.agent_seconds.append(timed(lambda: backup(agent, timeout=3600, allow_primary=True)))
        drop_caches()
        up.ref_seconds.append(timed(lambda: reference_upload(container, sb)))
        drop_caches()
        down.agent_seconds.append(timed(lambda: restore(agent, timeout=3600)))
        drop_caches()
        down.ref_seconds.append(timed(lambda: reference_download(container, work / "download")))
    finally:
        agent.stop()
        container.delete_container()
    return note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if not azuriteserver.installed():
        print(azuriteserver.MISSING, file=sys.stderr)
        return 2
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-azblob-", dir=Path.cwd() / "var"))
    server = AzuriteServer(work / "azurite")
    sb = dataset(work, args.size_gb)
    try:
        mb = datadir_megabytes(sb)
        sdk = f"azure-storage-blob, max_concurrency={CONCURRENCY}"
        up = BenchResult("azblob_upload", megabytes=mb, reference=f"upload_blob of each file ({sdk})")
        down = BenchResult("azblob_download", megabytes=mb, reference=f"download_blob of each blob ({sdk})")
        note = ""
        for _ in range(args.rounds):
            note = one_round(server, sb, work, up, down)
        report(
            [up, down],
            [note, f"data set {mb:.0f} MB of InnoDB files, compression off on both sides, {args.rounds} rounds, medians",
             "the agent's figures are whole RPCs (backup: mysqld stopped and restarted; restore: datadir replaced, "
             "mysqld restarted); the reference only copies files"],
            f"python -m bench.azblob --size-gb {args.size_gb} --rounds {args.rounds}",
        )  # fmt: skip
    finally:
        sb.destroy()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
