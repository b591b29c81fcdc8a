"""Encrypted backups in the catalog: the keys from the configuration, the cipher a new backup is written
with, the MANIFEST's `TabletAgent.Encryption` record and its HMAC, and the checks a restore makes before
it touches anything (the key the MANIFEST names is configured; the MANIFEST is authentic).

The tag covers the MANIFEST's JSON object as stored (keys sorted, no spaces, `ManifestHMAC` empty:
`manifest_content`), so any edit of a key or value (positions, file entries, hashes, sizes, the engine,
the codec, the key id, keys unknown to this version) is refused, while re-indenting is not; and a newer
agent whose model has more fields still verifies what an older one wrote.
"""

from __future__ import annotations

import copy
import json

from agent import AGENT_VERSION
from agent.catalog.manifest import AgentInfo, EncryptionInfo, Manifest
from agent.config import AgentConfig
from agent.errors import DataLoss, FailedPrecondition
from agent.pipeline.encryption import CIPHER, MAX_CHUNK_SIZE, AuthenticationFailed, BackupCipher, Keyring

_DOMAIN = b"tablet-agent MANIFEST v1\n"


def keyring_from(config: AgentConfig) -> Keyring:
    """The configured keys, read from their files now (FailedPrecondition naming a bad file)."""
    return Keyring.load(config.backup_encryption_key_file, config.decryption_key_paths)


def backup_cipher(config: AgentConfig, backup_name: str) -> BackupCipher | None:
    """The cipher a new backup's objects are encrypted with; None when no key is configured."""
    key = keyring_from(config).current
    return BackupCipher(key, backup_name) if key is not None else None


def manifest_content(manifest: Manifest, *, as_written: bool = False) -> bytes:
    """The canonical bytes the MANIFEST's tag covers: of the JSON it was read from (`parse_manifest`), or
    with `as_written` (or when it was not read) of the JSON it is written as."""
    source = None if as_written else manifest.source
    data = copy.deepcopy(source) if source is not None else manifest.model_dump(mode="json", by_alias=True)
    agent = data.get("TabletAgent")
    encryption = agent.get("Encryption") if isinstance(agent, dict) else None
    if isinstance(encryption, dict):
        encryption["ManifestHMAC"] = ""
    return _DOMAIN + json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal_manifest(manifest: Manifest, cipher: BackupCipher | None) -> Manifest:
    """`manifest` with `TabletAgent.Encryption` and its tag, when the backup is encrypted."""
    if cipher is None:
        return manifest
    agent = manifest.tablet_agent or AgentInfo(Version=AGENT_VERSION)
    info = EncryptionInfo(KeyId=cipher.key.key_id, Cipher=CIPHER, ChunkSize=cipher.chunk_size)
    unsigned = manifest.model_copy(update={"tablet_agent": agent.model_copy(update={"encryption": info})})
    tag = cipher.key.authenticate(manifest_content(unsigned, as_written=True))
    signed = info.model_copy(update={"manifest_hmac": tag})
    return manifest.model_copy(update={"tablet_agent": agent.model_copy(update={"encryption": signed})})


def encryption_of(manifest: Manifest) -> EncryptionInfo | None:
    return manifest.tablet_agent.encryption if manifest.tablet_agent is not None else None


def restore_cipher(manifest: Manifest, keyring: Keyring, where: str) -> BackupCipher | None:
    """The cipher to read an encrypted backup with, after checking its MANIFEST's tag; None for a backup
    that is not encrypted. FailedPrecondition when no configured key has the id the MANIFEST names,
    DataLoss when the MANIFEST does not verify."""
    info = encryption_of(manifest)
    if info is None:
        return None
    if info.cipher != CIPHER:
        raise FailedPrecondition(
            f"backup {where} is encrypted with {info.cipher!r}, which this agent cannot decrypt ({CIPHER} only): "
            "restore it with the tool that wrote it"
        )
    key = keyring.find(info.key_id)
    if key is None:
        raise FailedPrecondition(
            f"backup {where} is encrypted with key id {info.key_id}, and {keyring.describe()}: add the key file "
            "with that id to --backup_decryption_key_files (comma-separated; the agent logs each file's key id "
            "at start) and restart the agent"
        )
    if not info.manifest_hmac or not key.verify(manifest_content(manifest), info.manifest_hmac):
        raise AuthenticationFailed(
            f"the MANIFEST of backup {where} fails its authentication (HMAC under key {info.key_id}): it was "
            "edited or forged after the backup was written; restore another backup"
        )
    if not 0 < info.chunk_size <= MAX_CHUNK_SIZE:
        raise DataLoss(f"the MANIFEST of backup {where} records encrypted chunks of {info.chunk_size} bytes")
    return BackupCipher(key, manifest.backup_name, info.chunk_size)
