"""A real Azure Blob service for tests: Azurite's blob server on 127.0.0.1, one per test session.

Azurite is installed with npm into `.tools/azurite` of the repository (`make setup` and `.ci/run` do it),
never globally. Its account is the well-known development account, whose key is public.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.sandbox import free_port

REPO = Path(__file__).resolve().parent.parent
AZURITE = REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same in every Azurite); not a secret.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MISSING = (
    f"Azurite is not installed in {AZURITE.parent.parent.parent}: run `make setup` "
    "(or `npm install --prefix .tools/azurite azurite@3.35.0`) to run the Azure Blob tests"
)


def installed() -> bool:
    return AZURITE.is_file()


class AzuriteServer:
    """Azurite's blob service on a free port of 127.0.0.1, data in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = (workdir / "azurite.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--location", str(workdir), "--silent", "--skipApiVersionCheck", "--disableTelemetry",
                "--loose",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=1).read()
            except urllib.error.HTTPError:
                return  # it answers (403: the probe is unsigned)
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not start: see {workdir / 'azurite.log'}") from None
                time.sleep(0.1)
            else:
                return

    @property
    def connection_string(self) -> str:
        return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={self.endpoint};"

    def service(self) -> Any:
        """A synchronous SDK client, for checking what the service holds."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def new_container(self) -> str:
        name = f"backups-{uuid.uuid4().hex[:12]}"
        self.service().create_container(name)
        return name

    def blob_names(self, container: str) -> list[str]:
        return sorted(b.name for b in self.service().get_container_client(container).list_blobs())

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(10)
        self._log.close()
