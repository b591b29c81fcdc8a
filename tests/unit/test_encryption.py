"""The encrypted chunk format, its pipeline paths and the MANIFEST's tag: round trips, and every tampering
the construction must catch (reorder, truncate, splice, wrong key, wrong associated data)."""

import hashlib
import os
import shutil
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.catalog.encryption import manifest_content, restore_cipher, seal_manifest
from agent.catalog.manifest import AgentInfo, FileEntry, Manifest, manifest_to_json, parse_manifest
from agent.errors import DataLoss, FailedPrecondition
from agent.mysql.datafiles import FileBase
from agent.pipeline.compression import CodecOptions, ExternalCodec, get_codec
from agent.pipeline.encryption import (
    HEADER_SIZE,
    TAG_SIZE,
    AuthenticationFailed,
    BackupCipher,
    Keyring,
    MasterKey,
    Opener,
    Sealer,
    parse_key,
)
from agent.pipeline.load import DecodedStream, restore
from agent.pipeline.store import file_chunks, store, store_striped
from tests.unit.test_pipeline import MemoryWriter, _compressible, _pieces

C = 1000  # a small chunk size makes many chunks


def _key() -> MasterKey:
    return MasterKey(os.urandom(32))


def _seal(sealer: Sealer, data: bytes, step: int) -> bytes:
    out = b"".join(sealer.update(data[i : i + step]) for i in range(0, len(data), step))
    return out + sealer.finish()


def _open(opener: Opener, stored: bytes, step: int = 777) -> bytes:
    out = b"".join(opener.update(stored[i : i + step]) for i in range(0, len(stored), step))
    return out + opener.finish()


def _chunks(stored: bytes) -> tuple[bytes, list[bytes]]:
    header, body = stored[:HEADER_SIZE], stored[HEADER_SIZE:]
    n = C + TAG_SIZE
    return header, [body[i : i + n] for i in range(0, len(body), n)]


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 3 * C, 10 * C + 17])
@pytest.mark.parametrize("step", [1, 333, C, 4 * C])
def test_round_trip_and_layout(size: int, step: int) -> None:
    cipher = BackupCipher(_key(), "2026-01-01.000000.zone1-0000000001", C)
    data = os.urandom(size)
    stored = _seal(cipher.sealer("3"), data, step)
    chunks = max(1, -(-size // C))
    assert len(stored) == HEADER_SIZE + size + chunks * TAG_SIZE
    assert data[:64] not in stored or size < 16
    assert _open(cipher.opener("3"), stored) == data


def test_every_tampering_is_refused_naming_the_object() -> None:
    key = _key()
    cipher = BackupCipher(key, "b1", C)
    data = os.urandom(5 * C + 100)
    stored = _seal(cipher.sealer("7"), data, 4096)
    header, chunks = _chunks(stored)
    assert len(chunks) == 6

    def refused(bad: bytes, *, cipher: BackupCipher = cipher, name: str = "7") -> str:
        with pytest.raises(AuthenticationFailed) as e:
            _open(cipher.opener(name, "ks/0/b1/7"), bad)
        assert e.value.code.name == "DATA_LOSS"
        assert "ks/0/b1/7" in str(e.value)
        return str(e.value)

    flipped = bytearray(stored)
    flipped[HEADER_SIZE + 2 * (C + TAG_SIZE) + 5] ^= 1
    assert "chunk 2" in refused(bytes(flipped))
    swapped = [*chunks]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    assert "chunk 1" in refused(header + b"".join(swapped))  # reorder
    assert "final" in refused(header + b"".join(chunks[:-1]))  # the last chunk dropped
    assert "final" in refused(header + b"".join(chunks[:-1]) + chunks[-1][:-1])  # cut inside it
    assert "final" in refused(header + b"".join(chunks[:3]))  # cut at a chunk boundary
    refused(stored + chunks[-1])  # a chunk appended after the final one
    refused(header)  # nothing but the header
    refused(stored[: HEADER_SIZE - 1])  # not even that
    # splice: a chunk of another object of the same backup and key, at the same index
    other = _seal(cipher.sealer("8"), os.urandom(5 * C + 100), 4096)
    _, other_chunks = _chunks(other)
    assert "chunk 3" in refused(header + b"".join([*chunks[:3], other_chunks[3], *chunks[4:]]))
    # a whole object moved to another name, or into another backup: its header does not open there
    assert "header" in refused(stored, name="8")
    assert "header" in refused(stored, cipher=BackupCipher(key, "b2", C))
    # wrong key: another key with the same id in the header cannot exist; a foreign header is named
    assert "names key" in refused(stored, cipher=BackupCipher(_key(), "b1", C))
    bad_header = bytearray(stored)
    bad_header[HEADER_SIZE - 3] ^= 1  # inside the wrapped data key
    assert "header" in refused(bytes(bad_header))
    bad_size = bytearray(stored)
    bad_size[11] ^= 1  # the chunk size, bound to the wrapping as associated data
    refused(bytes(bad_size))
    assert "encryption header" in refused(b"\x28\xb5\x2f\xfd" + stored[4:])  # not ours at all


def test_associated_data_binds_index_and_final_flag() -> None:
    """A chunk encrypted as final at index i never opens as non-final or at another index."""
    key = _key()
    cipher = BackupCipher(key, "b", C)
    stored = _seal(cipher.sealer("0"), b"x" * C, C)  # exactly one full chunk: it is the final one
    assert len(stored) == HEADER_SIZE + C + TAG_SIZE
    header, (chunk,) = _chunks(stored)
    with pytest.raises(AuthenticationFailed):  # now followed by more: read as non-final
        _open(cipher.opener("0"), header + chunk + chunk)
    assert _open(cipher.opener("0"), stored) == b"x" * C


def test_key_files(tmp_path: Path) -> None:
    secret = os.urandom(32)
    hex_file, b64_file = tmp_path / "hex.key", tmp_path / "b64.key"
    hex_file.write_text(secret.hex() + "\n")
    import base64

    b64_file.write_bytes(base64.b64encode(secret))
    for f in (hex_file, b64_file):
        f.chmod(0o600)
    a = MasterKey.from_file(hex_file, "--backup_encryption_key_file")
    b = MasterKey.from_file(b64_file, "--backup_encryption_key_file")
    assert a.key_id == b.key_id and len(a.key_id) == 16
    assert secret.hex() not in repr(a) and a.key_id not in secret.hex()
    hex_file.chmod(0o640)
    with pytest.raises(FailedPrecondition, match=f"chmod 600 {hex_file}"):
        MasterKey.from_file(hex_file, "--backup_encryption_key_file")
    short = tmp_path / "short.key"
    short.write_text("abcd")
    short.chmod(0o600)
    with pytest.raises(FailedPrecondition, match="openssl rand -hex 32"):
        MasterKey.from_file(short, "--backup_encryption_key_file")
    assert parse_key(b"zz" * 32) is None
    ring = Keyring.load(b64_file, [hex_file.with_name("b64.key"), b64_file])
    assert len(ring.keys) == 1 and ring.find(a.key_id.upper()) is not None


async def _source(data: bytes) -> AsyncIterator[bytes]:
    async for piece in _pieces(data, 100_000):
        yield piece


@pytest.mark.parametrize("name", ["zstd", "pgzip", "lz4", "none", "external"])
async def test_pipeline_round_trip_crc_is_of_the_ciphertext(name: str, tmp_path: Path) -> None:
    if name == "external":
        if shutil.which("zstd") is None:
            pytest.skip("zstd CLI not installed")
        codec = ExternalCodec(("zstd", "-c"), ("zstd", "-dc"))
    else:
        codec = get_codec(name, CodecOptions(threads=2))
    cipher = BackupCipher(_key(), "b", 64 << 10)
    marker = b"MARKER-0123456789-" * 3
    data = _compressible(3 << 20) + marker + _compressible(100_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    for source in (file_chunks(src), _source(data)):
        writer = MemoryWriter()
        stats = await store(source, writer, codec, sealer=cipher.sealer("0"))
        stored = bytes(writer.data)
        assert marker not in stored
        assert stats.crc32_hex == f"{zlib.crc32(stored):08x}" and stats.stored_size == len(stored)
        assert stats.sha256_hex == hashlib.sha256(data).hexdigest()

        async def chunks(stored: bytes = stored) -> AsyncIterator[bytes]:
            async for piece in _pieces(stored, 50_000):
                yield piece

        out = tmp_path / "out"
        got = await restore(
            chunks(),
            codec,
            out,
            expected_crc32_hex=stats.crc32_hex,
            expected_sha256_hex=stats.sha256_hex,
            name="ks/0/b/0",
            opener=cipher.opener("0", "ks/0/b/0"),
        )
        assert got.sha256_hex == stats.sha256_hex and out.read_bytes() == data
        # a chunk swap the CRC cannot see (no CRC given): the authentication names the object
        bad = bytearray(stored)
        n = (64 << 10) + TAG_SIZE
        first, second = HEADER_SIZE, HEADER_SIZE + n
        bad[first : first + n], bad[second : second + n] = (
            stored[second : second + n],
            stored[first : first + n],
        )
        stream = DecodedStream(
            _pieces(bytes(bad), 70_000),
            codec,
            expected_crc32_hex=None,
            name="ks/0/b/0",
            opener=cipher.opener("0", "ks/0/b/0"),
        )
        with pytest.raises(AuthenticationFailed, match="ks/0/b/0"):
            async for _ in stream:
                pass
        await stream.aclose()


async def test_striped_objects_each_have_their_own_key(tmp_path: Path) -> None:
    codec = get_codec("zstd", CodecOptions(threads=2))
    cipher = BackupCipher(_key(), "b", 32 << 10)
    data = _compressible(2 << 20)
    writers = [MemoryWriter() for _ in range(3)]
    names = [f"backup.xbstream.zst-{k:03d}" for k in range(3)]
    stats = await store_striped(
        _source(data), writers, codec, block_size=10_000, sealers=[cipher.sealer(n) for n in names]
    )
    parts = []
    for w, n, s in zip(writers, names, stats, strict=True):
        assert s.crc32_hex == f"{zlib.crc32(bytes(w.data)):08x}"
        stream = DecodedStream(
            _pieces(bytes(w.data), 40_000),
            codec,
            expected_crc32_hex=s.crc32_hex,
            name=n,
            opener=cipher.opener(n),
        )
        parts.append(b"".join([c async for c in stream]))
    assert sum(map(len, parts)) == len(data)
    # stripe 0's bytes stored as stripe 1: refused
    stream = DecodedStream(
        _pieces(bytes(writers[0].data), 40_000),
        codec,
        expected_crc32_hex=None,
        name=names[1],
        opener=cipher.opener(names[1]),
    )
    with pytest.raises(AuthenticationFailed, match="header"):
        async for _ in stream:
            pass
    await stream.aclose()


def _manifest() -> Manifest:
    return Manifest(
        BackupName="2026-01-01.000000.zone1-0000000001",
        Hostname="db1",
        BackupMethod="builtin",
        Position="MariaDB/0-1-100",
        FileEntries=[
            FileEntry(Base=FileBase.DATA, Name="t/a.ibd", Hash="0badf00d", Sha256="ab" * 32, Size=5)
        ],
        TabletAgent=AgentInfo(Version="1"),
        SomethingNewer={"kept": [1, 2]},
    )


def test_manifest_tag_round_trips_and_catches_edits() -> None:
    key = _key()
    ring = Keyring(key, (key,))
    cipher = BackupCipher(key, "2026-01-01.000000.zone1-0000000001")
    sealed = seal_manifest(_manifest(), cipher)
    data = manifest_to_json(sealed)
    assert b'"KeyId": "' + key.key_id.encode() in data and b"ManifestHMAC" in data
    reread = parse_manifest(data)
    assert manifest_content(reread) == manifest_content(sealed) == manifest_content(reread, as_written=True)
    got = restore_cipher(reread, ring, "ks/0/b")
    assert got is not None and got.key.key_id == key.key_id and got.backup == reread.backup_name
    # re-indented: still the same content
    import json

    assert restore_cipher(parse_manifest(json.dumps(json.loads(data)).encode()), ring, "ks/0/b") is not None
    for old, new in [
        (b"MariaDB/0-1-100", b"MariaDB/0-1-101"),
        (b"0badf00d", b"0badf00e"),
        (b"t/a.ibd", b"t/b.ibd"),
        (b'"kept"', b'"kepT"'),
        (b'"BackupMethod": "builtin"', b'"BackupMethod": "xtrabackup"'),
        (
            b'"Hostname": "db1"',
            b'"Hostname": null',
        ),  # the same to the model, not to the tag: the JSON is covered
        (b'"Version": "1"', b'"Version": "1", "Extra": 1'),
    ]:
        assert old in data
        with pytest.raises(AuthenticationFailed, match="MANIFEST of backup ks/0/b"):
            restore_cipher(parse_manifest(data.replace(old, new)), ring, "ks/0/b")
    with pytest.raises(DataLoss):
        restore_cipher(parse_manifest(data.replace(b'"Size": 5', b'"Size": 6')), ring, "ks/0/b")
    # a MANIFEST re-tagged under another key names that key: no key, no restore
    other = _key()
    forged = seal_manifest(_manifest(), BackupCipher(other, "x"))
    with pytest.raises(FailedPrecondition, match=other.key_id):
        restore_cipher(forged, ring, "ks/0/b")
    # unencrypted backups restore whatever keys are configured
    assert restore_cipher(_manifest(), ring, "ks/0/b") is None
    assert restore_cipher(_manifest(), Keyring(None, ()), "ks/0/b") is None
