"""The backup MANIFEST: Vitess's JSON (Go field names as keys) plus our own integrity keys.

Vitess decodes a MANIFEST with Go's encoding/json, which ignores unknown keys, so our additions live
in new keys: `TabletAgent` at the top level and `Sha256`/`Size`/`StoredSize` inside each FileEntry.
Unknown keys written by newer tools are kept on read and written back unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core.core_schema import SerializerFunctionWrapHandler

from agent.errors import DataLoss, InvalidArgument
from agent.mysql.datafiles import FileBase

MANIFEST_FILENAME = "MANIFEST"
MAX_MANIFEST_SIZE = 64 << 20
MAX_FILE_ENTRIES = 1_000_000
_ALIAS = re.compile(r"^[A-Za-z0-9_]+-[0-9]+$")
_BACKUP_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}\.\d{6}\.[A-Za-z0-9_]+-[0-9]+$")


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True)
    _nullable: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._nullable = frozenset(f.alias or n for n, f in cls.model_fields.items() if f.default is None)

    @model_validator(mode="before")
    @classmethod
    def _null_is_zero(cls, data: Any) -> Any:
        """Go decodes JSON null into a non-pointer field as its zero value: do the same."""
        if not isinstance(data, dict) or None not in data.values():
            return data
        return {k: v for k, v in data.items() if v is not None or k in cls._nullable}


class FileEntry(_Model):
    """One data file of a builtin backup; file `i` of the list is stored as object `"<i>"`."""

    base: FileBase = Field(alias="Base")
    name: str = Field(alias="Name")
    hash: str = Field(default="", alias="Hash")  # hex CRC-32 (IEEE) of the stored bytes
    parent_path: str = Field(default="", alias="ParentPath")
    # ours: Go's decoder ignores them
    sha256: str | None = Field(default=None, alias="Sha256")  # of the original bytes
    size: int | None = Field(default=None, alias="Size")  # original bytes
    stored_size: int | None = Field(default=None, alias="StoredSize")  # bytes as stored

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("Sha256", "Size", "StoredSize"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class IncrementalDetails(_Model):
    first_timestamp: str = Field(default="", alias="FirstTimestamp")
    first_timestamp_binlog: str = Field(default="", alias="FirstTimestampBinlog")
    last_timestamp: str = Field(default="", alias="LastTimestamp")
    last_timestamp_binlog: str = Field(default="", alias="LastTimestampBinlog")


class StoredObject(_Model):
    """Our integrity record of one stored object (e.g. an xtrabackup stripe)."""

    name: str = Field(alias="Name")
    size: int = Field(alias="Size")
    stored_size: int = Field(alias="StoredSize")
    crc32: str = Field(alias="Crc32")
    sha256: str = Field(alias="Sha256")


@dataclass(frozen=True)
class ObjectRecord:
    """What a MANIFEST says of one stored object. Only the name is certain: Vitess's MANIFESTs keep a
    CRC-32 per builtin file and nothing per xtrabackup object; ours keep sizes and hashes of all."""

    name: str  # the object's name in the backup
    label: str  # how messages call it: the file it holds, or the object name
    size: int | None = None  # original bytes
    stored_size: int | None = None  # bytes as stored
    crc32: str | None = None  # of the stored bytes
    sha256: str | None = None  # of the original bytes


class EncryptionInfo(_Model):
    """`TabletAgent.Encryption`: every object is encrypted (`agent.pipeline.encryption`) under the master key
    `KeyId` names; `ManifestHMAC` authenticates the MANIFEST's own content (`agent.catalog.encryption`)."""

    key_id: str = Field(alias="KeyId")
    cipher: str = Field(alias="Cipher")
    chunk_size: int = Field(alias="ChunkSize")
    manifest_hmac: str = Field(default="", alias="ManifestHMAC")


class AgentInfo(_Model):
    """The `TabletAgent` key: who wrote the backup, per-object hashes Vitess does not keep, encryption."""

    version: str = Field(alias="Version")
    objects: list[StoredObject] = Field(alias="Objects", default_factory=list)
    encryption: EncryptionInfo | None = Field(default=None, alias="Encryption")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("Encryption") is None:
            data.pop("Encryption", None)
        return data


# Keys Vitess writes only for one engine: omitted from our output when unset.
_ENGINE_KEYS = (
    "FileEntries",
    "SkipCompress",
    "ExternalDecompressor",
    "FileName",
    "ExtraCommandLineParams",
    "StreamMode",
    "NumStripes",
    "StripeBlockSize",
    "TabletAgent",
)


class Manifest(_Model):
    """A backup's MANIFEST. Aliases are the Go field names (the JSON keys; type checkers see them as
    the constructor's keywords). Times are RFC 3339 UTC strings, positions carry the flavor prefix."""

    backup_name: str = Field(default="", alias="BackupName")
    backup_method: str = Field(default="", alias="BackupMethod")  # empty means builtin
    position: str = Field(default="", alias="Position")
    purged_position: str = Field(default="", alias="PurgedPosition")
    from_position: str = Field(default="", alias="FromPosition")
    from_backup: str = Field(default="", alias="FromBackup")
    incremental: bool = Field(default=False, alias="Incremental")
    incremental_details: IncrementalDetails | None = Field(default=None, alias="IncrementalDetails")
    backup_time: str = Field(default="", alias="BackupTime")
    finished_time: str = Field(default="", alias="FinishedTime")
    server_uuid: str = Field(default="", alias="ServerUUID")
    tablet_alias: str = Field(default="", alias="TabletAlias")
    hostname: str = Field(default="", alias="Hostname")
    keyspace: str = Field(default="", alias="Keyspace")
    shard: str = Field(default="", alias="Shard")
    mysql_version: str = Field(default="", alias="MySQLVersion")
    upgrade_safe: bool = Field(default=False, alias="UpgradeSafe")
    # builtin and xtrabackup
    compression_engine: str = Field(default="", alias="CompressionEngine")
    skip_compress: bool | None = Field(default=None, alias="SkipCompress")
    external_decompressor: str | None = Field(default=None, alias="ExternalDecompressor")
    # builtin
    file_entries: list[FileEntry] | None = Field(default=None, alias="FileEntries")
    # xtrabackup
    file_name: str | None = Field(default=None, alias="FileName")
    extra_command_line_params: str | None = Field(default=None, alias="ExtraCommandLineParams")
    stream_mode: str | None = Field(default=None, alias="StreamMode")
    num_stripes: int | None = Field(default=None, alias="NumStripes")
    stripe_block_size: int | None = Field(default=None, alias="StripeBlockSize")
    # ours
    tablet_agent: AgentInfo | None = Field(default=None, alias="TabletAgent")
    # the JSON object it was read from (`parse_manifest`), which an encrypted backup's tag covers
    _source: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def source(self) -> dict[str, Any] | None:
        return self._source

    def __eq__(self, other: object) -> bool:
        """Equal content; where a MANIFEST was read from does not count."""
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.__dict__ == other.__dict__ and self.__pydantic_extra__ == other.__pydantic_extra__

    def __hash__(self) -> int:
        return hash(manifest_to_json(self))

    @property
    def engine(self) -> str:
        """The engine that made the backup (`BackupMethod`, empty meaning builtin)."""
        return self.backup_method or "builtin"

    @property
    def backup_datetime(self) -> datetime | None:
        """`BackupTime` parsed, or None when missing or malformed."""
        try:
            return parse_time(self.backup_time)
        except ValueError:
            return None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not data.get("CompressionEngine"):
            data.pop("CompressionEngine", None)  # Go: `json:",omitempty"`
        for key in _ENGINE_KEYS:
            if data.get(key) is None:
                data.pop(key, None)
        return data


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC at second precision, as Go's `time.RFC3339`: `2026-11-23T18:45:00Z`."""
    if t.tzinfo is None:
        raise InvalidArgument(f"time {t} has no time zone")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 time (any offset, optional fraction) into an aware UTC datetime."""
    t = datetime.fromisoformat(value)
    if t.tzinfo is None or "T" not in value.upper():
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    return t.astimezone(UTC)


def backup_name(now: datetime, alias: str) -> str:
    """`<UTC YYYY-MM-DD.HHMMSS>.<alias>`, e.g. `2026-11-23.184500.zone1-0000000102`."""
    if now.tzinfo is None:
        raise InvalidArgument(f"time {now} has no time zone")
    if not _ALIAS.match(alias):
        raise InvalidArgument(f"invalid tablet alias {alias!r} for a backup name")
    return f"{now.astimezone(UTC):%Y-%m-%d.%H%M%S}.{alias}"


def looks_like_backup_name(text: str) -> bool:
    """Whether `text` has the form of a backup name (not a GTID position)."""
    return bool(_BACKUP_NAME.match(text))


def manifest_to_json(m: Manifest) -> bytes:
    """The MANIFEST bytes, indented like Vitess's `json.MarshalIndent(m, "", "  ")`."""
    return b"".join(manifest_pieces(m))


class _DumpedOneByOne(list[Any]):
    """File entries that the (pure-Python, indenting) JSON encoder sees as a list of dicts, each dumped as
    it is reached, as the whole manifest's dump would have it."""

    def __init__(self, entries: Sequence[FileEntry]) -> None:
        super().__init__()
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Any]:
        return (e.model_dump(mode="json", by_alias=True) for e in self._entries)


def manifest_pieces(m: Manifest, size: int = 1 << 16) -> Iterator[bytes]:
    """`manifest_to_json`'s bytes in pieces of about `size`: the indenting encoder's fragments (dozens per
    file entry) are joined a piece at a time, never all at once (tens of MB for 20,000 entries), and each
    file entry is turned into a dict only when the encoder reaches it."""
    if m.file_entries:
        data = m.model_copy(update={"file_entries": []}).model_dump(mode="json", by_alias=True)
        data["FileEntries"] = _DumpedOneByOne(m.file_entries)  # the key keeps its place
    else:
        data = m.model_dump(mode="json", by_alias=True)
    fragments: list[str] = []
    held = 0
    for fragment in json.JSONEncoder(indent=2, ensure_ascii=False).iterencode(data):
        fragments.append(fragment)
        held += len(fragment)
        if held >= size:
            yield "".join(fragments).encode()
            fragments, held = [], 0
    if fragments:
        yield "".join(fragments).encode()


def parse_manifest(data: bytes, backup: str | None = None) -> Manifest:
    """Decode and check a MANIFEST; DataLoss naming the backup when it is not a usable manifest."""
    where = f"MANIFEST of backup {backup}" if backup else "MANIFEST"
    if len(data) > MAX_MANIFEST_SIZE:
        raise DataLoss(f"{where} is {len(data)} bytes, over the {MAX_MANIFEST_SIZE >> 20} MiB limit")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise DataLoss(f"{where} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise DataLoss(f"{where} is not a JSON object")
    try:
        m = Manifest.model_validate(raw)
        m._source = raw
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        raise DataLoss(f"{where} is invalid: {problems}") from None
    if m.file_entries is not None:
        try:
            validate_file_entries(m.file_entries)
        except DataLoss as e:
            raise DataLoss(f"{where}: {e}") from None
    return m


def _safe_relative(path: str) -> bool:
    if not path or "\x00" in path or path.startswith("/") or "\\" in path:
        return False
    return all(p not in ("", ".", "..") for p in path.split("/"))


def validate_file_entries(entries: Sequence[FileEntry]) -> None:
    """Refuse entries that could make a restore write outside its target directories.

    Names must be relative, normalized paths without `..`, NUL or backslashes; ParentPath (set by
    Vitess only in memory during a restore) must be empty or equally safe; no (Base, Name) twice.
    """
    if len(entries) > MAX_FILE_ENTRIES:
        raise DataLoss(f"{len(entries)} FileEntries, more than the limit of {MAX_FILE_ENTRIES}")
    seen: set[tuple[str, str]] = set()
    for i, fe in enumerate(entries):
        if not _safe_relative(fe.name):
            raise DataLoss(
                f"FileEntries[{i}] has unsafe Name {fe.name!r}: names must be relative paths without "
                "'..'; refusing a MANIFEST that would write outside the restore target"
            )
        if fe.parent_path and not _safe_relative(fe.parent_path):
            raise DataLoss(
                f"FileEntries[{i}] has unsafe ParentPath {fe.parent_path!r}: refusing a MANIFEST that "
                "would write outside the restore target"
            )
        key = (str(fe.base), fe.name)
        if key in seen:
            raise DataLoss(f"FileEntries[{i}] repeats {fe.base}/{fe.name}")
        seen.add(key)


def stored_size(m: Manifest) -> int:
    """Bytes as stored, from our integrity keys (0 when the writer did not record them)."""
    total = sum(fe.stored_size or 0 for fe in m.file_entries or [])
    if m.tablet_agent is not None:
        total += sum(o.stored_size for o in m.tablet_agent.objects)
    return total
