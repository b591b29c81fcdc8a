"""The Azure Blob backend's pure parts: block sizing, Shared Key signing, retry policy, credentials and
flags (the service itself is exercised against Azurite in tests/integration/test_azblob_storage.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import build_config
from agent.errors import ConfigError, FailedPrecondition
from agent.storage import storage_from_config
from agent.storage.azblob import (
    BLOCKS,
    DOUBLING_EVERY,
    KEY_ENV,
    MAX_BLOCK,
    MAX_BLOCKS,
    MIB,
    AzureBlobBackupStorage,
    block_size,
    load_account,
)
from agent.storage.azblob_rest import Account, authorization, backoff, is_retryable, string_to_sign

KEY = base64.b64encode(b"k" * 64).decode()
BASE = {"tablet_alias": "zone1-102", "init_keyspace": "ks", "init_shard": "0", "mycnf_file": "/tmp/my.cnf"}
TIB = 1 << 40


@pytest.mark.parametrize("size", [0, 1, 16 * MIB, 10 * (1 << 30), TIB, 50 * TIB])
def test_known_sizes_fit_in_the_block_limit_with_room(size: int) -> None:
    first = block_size(size, 16 * MIB)
    assert 16 * MIB <= first <= MAX_BLOCK and first % MIB == 0
    assert -(-size // first) <= 45_000
    assert all(BLOCKS.size_of(n, first, size) == first for n in (0, 20_000, MAX_BLOCKS - 1))


def test_unknown_sizes_start_at_the_buffer_size_and_grow_within_the_limits() -> None:
    first = block_size(-1, 16 * MIB)
    assert first == 16 * MIB
    sizes = [BLOCKS.size_of(n, first, -1) for n in range(0, MAX_BLOCKS, DOUBLING_EVERY)]
    assert sizes[0] == first and sizes[1] == 2 * first and max(sizes) == MAX_BLOCK
    assert sum(s * DOUBLING_EVERY for s in sizes) > 50 * TIB


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    for attempt, top in ((1, 0.2), (2, 0.4), (3, 0.8), (10, 8.0)):
        waits = {backoff(attempt) for _ in range(50)}
        assert all(top / 2 <= w <= top for w in waits) and len(waits) > 1


@pytest.mark.parametrize(("status", "retry"), [(500, True), (503, True), (429, True), (408, True), (403, False), (404, False), (409, False)])  # fmt: skip
def test_transient_statuses_are_retried(status: int, retry: bool) -> None:
    assert is_retryable(status) is retry


def test_the_string_to_sign_follows_the_shared_key_rules() -> None:
    headers = {
        "x-ms-version": "2021-12-02", "X-MS-Date": "Sun, 24 Nov 2026 01:00:00 GMT", "Content-Length": "0",
        "Content-Type": "application/xml", "x-ms-blob-type": "  BlockBlob ", "If-Match": '"0x1"',
    }  # fmt: skip
    query = {"comp": "block", "blockid": "YWI+Lz0=", "Restype": "x"}
    text = string_to_sign("PUT", "/acct/c/a%20b/0", query, headers, "acct")
    assert text == (
        'PUT\n\n\n\n\napplication/xml\n\n\n"0x1"\n\n\n\n'  # Content-Length 0 signs as empty
        "x-ms-blob-type:BlockBlob\nx-ms-date:Sun, 24 Nov 2026 01:00:00 GMT\nx-ms-version:2021-12-02\n"
        "/acct/acct/c/a%20b/0\nblockid:YWI+Lz0=\ncomp:block\nrestype:x"
    )
    account = Account.from_base64("acct", KEY, "test")
    expected = base64.b64encode(hmac.new(base64.b64decode(KEY), text.encode(), hashlib.sha256).digest())
    assert (
        authorization(account, "PUT", "/acct/c/a%20b/0", query, headers)
        == f"SharedKey acct:{expected.decode()}"
    )


def test_the_key_never_shows_in_a_repr() -> None:
    account = Account.from_base64("acct", KEY, "test")
    assert KEY not in repr(account) and str(account.key) not in repr(account)


def test_a_bad_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(FailedPrecondition, match="not valid base64") as e:
        Account.from_base64("acct", "not*base64!", "VT_AZBLOB_ACCOUNT_KEY")
    assert "not*base64!" not in str(e.value)


def test_the_key_comes_from_the_file_then_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    other = base64.b64encode(b"other").decode()
    assert load_account("acct", key_file, {KEY_ENV: other}).key == base64.b64decode(KEY)
    assert load_account("", None, {KEY_ENV: other, "VT_AZBLOB_ACCOUNT_NAME": "envacct"}) == Account(
        "envacct", b"other"
    )
    with pytest.raises(ConfigError, match="managed identity is not supported"):
        load_account("acct", None, {})
    with pytest.raises(ConfigError, match="azblob_backup_account_name"):
        load_account("", key_file, {})


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {key_file}") as e:
        load_account("acct", key_file, {})
    assert KEY not in str(e.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_account("acct", tmp_path / "missing", {})


def test_flags_build_the_storage(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    flags = {**BASE, "backup_storage_implementation": "azblob", "azblob_backup_account_name": "acct",
             "azblob_backup_account_key_file": str(key_file), "azblob_backup_container_name": "backups",
             "azblob_backup_storage_root": "/fleet/a/", "azblob_backup_parallelism": "2",
             "azblob_backup_buffer_size": str(8 * MIB)}  # fmt: skip
    storage = storage_from_config(build_config(flags, environ={}))
    assert isinstance(storage, AzureBlobBackupStorage)
    assert storage.describe() == "azblob://acct/backups/fleet/a"
    assert storage.settings.parallelism == 2 and storage.settings.buffer_size == 8 * MIB
    assert storage.service.path("fleet/a/x y") == "/backups/fleet/a/x%20y"
    local = build_config(
        {**flags, "azblob_backup_endpoint": "http://127.0.0.1:10000/devstoreaccount1"}, environ={}
    )
    assert storage_from_config(local).service.path(None) == "/devstoreaccount1/backups"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "--azblob_backup_container_name is required"),
        ({"azblob_backup_container_name": "Backups"}, "invalid --azblob_backup_container_name"),
        ({"azblob_backup_container_name": "a--b"}, "invalid --azblob_backup_container_name"),
        ({"azblob_backup_container_name": "okay", "azblob_backup_endpoint": "127.0.0.1:10000"}, "invalid --azblob_backup_endpoint"),
        ({"azblob_backup_container_name": "okay", "azblob_backup_buffer_size": "1000"}, "azblob_backup_buffer_size"),
        ({"azblob_backup_container_name": "okay", "azblob_backup_parallelism": "0"}, "azblob_backup_parallelism"),
    ],
)  # fmt: skip
def test_bad_azblob_flags_are_refused(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({**BASE, "backup_storage_implementation": "azblob", **extra}, environ={})


def test_the_backend_is_imported_only_when_configured() -> None:
    code = (
        "import sys, agent.storage, agent.tablet; "
        "print(any(m.startswith('agent.storage.azblob') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
