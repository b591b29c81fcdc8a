"""Client-side authenticated encryption of stored objects: AES-256-GCM over fixed-size chunks of the
compressed stream, a random data key per object wrapped by the master key, and the MANIFEST's tag.

Construction (format version 1):

- The master key K is 32 random bytes from `--backup_encryption_key_file`. Three keys are derived from
  it with HKDF-SHA256 (no salt, distinct `info` labels): the key-wrapping key KEK, the MANIFEST's HMAC
  key, and the key id (8 bytes, shown as 16 hex digits): a one-way fingerprint that names the key in
  MANIFESTs and messages and says nothing about K.
- Each object gets a fresh random 32-byte data key DK. The object starts with an 80-byte header:
  `MAGIC (8) | chunk size C (4, big-endian) | key id (8) | wrap nonce (12, random) | AES-GCM(KEK, DK)
  (48)`; the wrapping's associated data is the header's first 20 bytes plus `<backup name>/<object
  name>`, so a header (and with it every chunk) only opens as the object it was written for: an object
  moved to another name or backup, or an edited header, is refused.
- The compressed stream is then cut into chunks of exactly C bytes, the last one holding the rest (0 to
  C bytes; an empty stream is one empty final chunk). Chunk i is stored as AES-GCM(DK, nonce = i as 12
  big-endian bytes, associated data = MAGIC | i (8) | final flag (1)): its ciphertext and 16-byte tag.
  DK is used for one object only, so counter nonces never repeat under a key. The index in the nonce
  and the associated data detects reordered chunks, the final flag a truncation (a stream that ends
  after a non-final chunk) and appended data, the per-object DK chunks spliced in from another object.
- Plaintext is released only chunk by chunk after its tag verified; an object's bytes cost
  80 + 16 per chunk more than the compressed stream.
- The MANIFEST stays plain JSON (Vitess tooling lists it) and carries an HMAC-SHA256 tag of its own
  canonical content (`agent.catalog.encryption`), keyed from K.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import DataLoss, FailedPrecondition

Buffer = bytes | bytearray | memoryview
CIPHER = "AES-256-GCM"
MAGIC = b"TAGCM\x00\x00\x01"  # tablet-agent GCM chunks, format version 1
CHUNK_SIZE = 1 << 20  # bytes of the compressed stream per chunk
MAX_CHUNK_SIZE = 64 << 20
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
_HEADER = struct.Struct(">8sI8s12s48s")
_PREFIX = struct.Struct(">8sI8s")  # the header's part bound into the key wrapping
HEADER_SIZE = _HEADER.size  # 80
_CHUNK_AD = struct.Struct(">8sQB")
_KEY_ID_SIZE = 8


class AuthenticationFailed(DataLoss):
    """An encrypted object (or a MANIFEST's tag) does not verify: modified, reordered, truncated, spliced,
    moved, or written under another key."""


def _derive(secret: bytes, label: bytes, length: int = KEY_SIZE) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(secret)


class MasterKey:
    """A master key: 32 secret bytes, known by their key id. Never printed."""

    __slots__ = ("_kek", "_mac_key", "key_id", "source")

    def __init__(self, secret: bytes, source: str = "") -> None:
        if len(secret) != KEY_SIZE:
            raise ValueError(f"a master key is {KEY_SIZE} bytes, not {len(secret)}")
        self.key_id = _derive(secret, b"tablet-agent key id v1", _KEY_ID_SIZE).hex()
        self._kek = AESGCM(_derive(secret, b"tablet-agent object key wrapping v1"))
        self._mac_key = _derive(secret, b"tablet-agent manifest hmac v1")
        self.source = source  # the file it came from, for messages

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    @classmethod
    def from_file(cls, path: Path, flag: str) -> MasterKey:
        """Read a key file: 32 random bytes as 64 hex digits or base64 (`openssl rand -hex 32`). Refused
        (FailedPrecondition) when group or others may read it, or when it holds anything else."""
        try:
            st = path.stat()
            raw = path.read_bytes()
        except OSError as e:
            raise FailedPrecondition(f"{flag}: cannot read {path}: {e.strerror or e}") from None
        if st.st_mode & 0o077:
            raise FailedPrecondition(
                f"{flag}: {path} has mode {stat.S_IMODE(st.st_mode):04o}: a key file must not be readable or "
                f"writable by group or others; run `chmod 600 {path}`"
            )
        secret = parse_key(raw)
        if secret is None:
            raise FailedPrecondition(
                f"{flag}: {path} must hold {KEY_SIZE} random bytes as 64 hex digits or base64; create one with "
                f"`openssl rand -hex {KEY_SIZE} > {path} && chmod 600 {path}`"
            )
        return cls(secret, str(path))

    def wrap(self, data_key: bytes, nonce: bytes, ad: bytes) -> bytes:
        return self._kek.encrypt(nonce, data_key, ad)

    def unwrap(self, wrapped: bytes, nonce: bytes, ad: bytes) -> bytes | None:
        try:
            return self._kek.decrypt(nonce, wrapped, ad)
        except InvalidTag:
            return None

    def authenticate(self, content: bytes) -> str:
        """HMAC-SHA256 of `content` (a MANIFEST's canonical bytes) as 64 hex digits."""
        return hmac.new(self._mac_key, content, sha256).hexdigest()

    def verify(self, content: bytes, tag: str) -> bool:
        return hmac.compare_digest(self.authenticate(content), tag.lower())


def parse_key(raw: bytes) -> bytes | None:
    """32 bytes from 64 hex digits or base64 text (surrounding whitespace ignored), else None."""
    text = raw.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        secret = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return secret if len(secret) == KEY_SIZE else None


@dataclass(frozen=True)
class Keyring:
    """The key new backups are encrypted with (None: they are not) and every key restores may use."""

    current: MasterKey | None
    keys: tuple[MasterKey, ...]

    @classmethod
    def load(cls, current: Path | None, older: Sequence[Path] = ()) -> Keyring:
        """Read the key files (FailedPrecondition naming the file and the fix)."""
        key = MasterKey.from_file(current, "--backup_encryption_key_file") if current is not None else None
        keys = [key] if key is not None else []
        for path in older:
            other = MasterKey.from_file(path, "--backup_decryption_key_files")
            if all(k.key_id != other.key_id for k in keys):
                keys.append(other)
        return cls(key, tuple(keys))

    def find(self, key_id: str) -> MasterKey | None:
        return next((k for k in self.keys if k.key_id == key_id.lower()), None)

    def describe(self) -> str:
        if not self.keys:
            return "no key is configured"
        return "the configured keys are " + ", ".join(
            f"{k.key_id} ({k.source or 'given'})" for k in self.keys
        )


@dataclass(frozen=True)
class BackupCipher:
    """Seals and opens the objects of one backup (named `backup`) with `key`."""

    key: MasterKey
    backup: str
    chunk_size: int = CHUNK_SIZE

    def sealer(self, object_name: str) -> Sealer:
        return Sealer(self.key, self._context(object_name), self.chunk_size)

    def opener(self, object_name: str, where: str = "") -> Opener:
        """`where` is how errors name the stored object (default: the object name)."""
        return Opener(self.key, self._context(object_name), where or object_name)

    def _context(self, object_name: str) -> bytes:
        return f"{self.backup}/{object_name}".encode()


def sealer_for(cipher: BackupCipher | None, object_name: str) -> Sealer | None:
    return cipher.sealer(object_name) if cipher is not None else None


def opener_for(cipher: BackupCipher | None, object_name: str, where: str = "") -> Opener | None:
    return cipher.opener(object_name, where) if cipher is not None else None


def _chunk_ad(index: int, final: bool) -> bytes:
    return _CHUNK_AD.pack(MAGIC, index, 1 if final else 0)


def _nonce(index: int) -> bytes:
    return index.to_bytes(NONCE_SIZE, "big")


class Sealer:
    """Encrypts one object's stream: `update` with the compressed bytes in order, then `finish`. Each
    returns the stored bytes ready (the header first). One thread at a time."""

    def __init__(self, key: MasterKey, context: bytes, chunk_size: int = CHUNK_SIZE) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} out of range")
        data_key, wrap_nonce = os.urandom(KEY_SIZE), os.urandom(NONCE_SIZE)
        prefix = _PREFIX.pack(MAGIC, chunk_size, bytes.fromhex(key.key_id))
        wrapped = key.wrap(data_key, wrap_nonce, prefix + b"\x00" + context)
        self._header: bytes | None = prefix + wrap_nonce + wrapped
        self._aead = AESGCM(data_key)
        self._size = chunk_size
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def _seal(self, data: Buffer, final: bool) -> bytes:
        out = self._aead.encrypt(_nonce(self._index), data, _chunk_ad(self._index, final))
        self._index += 1
        return out

    def _take_header(self) -> list[bytes]:
        header, self._header = self._header, None
        return [header] if header is not None else []

    def update(self, data: Buffer) -> bytes:
        if self._done:
            raise RuntimeError("Sealer.update after finish")
        out = self._take_header()
        size = self._size
        if not self._buf and len(data) > size:  # seal straight from the caller's buffer
            view = memoryview(data)
            n = (len(view) - 1) // size * size  # keep the rest back: the final chunk is never full-and-early
            out += [self._seal(view[i : i + size], False) for i in range(0, n, size)]
            self._buf += view[n:]
            return b"".join(out)
        self._buf += data
        if len(self._buf) > size:
            n = (len(self._buf) - 1) // size * size
            with memoryview(self._buf) as view:
                out += [self._seal(view[i : i + size], False) for i in range(0, n, size)]
            del self._buf[:n]
        return b"".join(out)

    def finish(self) -> bytes:
        """The final chunk (and the header, for an empty stream)."""
        if self._done:
            raise RuntimeError("Sealer.finish twice")
        self._done = True
        out = self._take_header()
        out.append(self._seal(self._buf, True))
        self._buf = bytearray()
        return b"".join(out)


class Opener:
    """Decrypts and verifies one object's stored bytes: `update` in order, then `finish`. Each returns
    verified plaintext; AuthenticationFailed (naming the object) as soon as something does not verify."""

    def __init__(self, key: MasterKey, context: bytes, where: str) -> None:
        self._key = key
        self._context = context
        self._where = where
        self._aead: AESGCM | None = None
        self._stored = 0  # chunk size + tag, once the header is read
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def _fail(self, what: str) -> AuthenticationFailed:
        return AuthenticationFailed(
            f"authentication failed for {self._where}: {what}; the stored object was modified, truncated, "
            "reordered or replaced: restore another backup (or verify it with `tabletctl verify`)"
        )

    def _read_header(self) -> None:
        magic, size, key_id, wrap_nonce, wrapped = _HEADER.unpack_from(self._buf)
        if magic != MAGIC:
            raise self._fail("it does not start with tablet-agent's encryption header")
        if key_id.hex() != self._key.key_id:
            raise self._fail(f"its header names key {key_id.hex()}, not the MANIFEST's {self._key.key_id}")
        if not 0 < size <= MAX_CHUNK_SIZE:
            raise self._fail(f"its header says chunks of {size} bytes")
        data_key = self._key.unwrap(
            wrapped, wrap_nonce, bytes(self._buf[: _PREFIX.size]) + b"\x00" + self._context
        )
        if data_key is None:
            raise self._fail("its header does not verify for this object name, backup and key")
        self._aead = AESGCM(data_key)
        self._stored = size + TAG_SIZE
        del self._buf[:HEADER_SIZE]

    def _open(self, data: Buffer, final: bool) -> bytes:
        assert self._aead is not None
        try:
            out = self._aead.decrypt(_nonce(self._index), data, _chunk_ad(self._index, final))
        except InvalidTag:
            if final:
                raise self._fail(
                    f"chunk {self._index} is not a valid final chunk (the object ends early, or its end was "
                    "damaged)"
                ) from None
            raise self._fail(f"chunk {self._index} does not verify") from None
        self._index += 1
        return out

    def update(self, data: Buffer) -> bytes:
        if self._done:
            raise RuntimeError("Opener.update after finish")
        self._buf += data
        if self._aead is None:
            if len(self._buf) < HEADER_SIZE:
                return b""
            self._read_header()
        stored = self._stored
        if len(self._buf) <= stored:
            return b""
        n = (len(self._buf) - 1) // stored * stored  # the last chunk waits: it may be the final one
        with memoryview(self._buf) as view:
            out = [self._open(view[i : i + stored], False) for i in range(0, n, stored)]
        del self._buf[:n]
        return b"".join(out)

    def finish(self) -> bytes:
        """The final chunk's plaintext; AuthenticationFailed if the object ends anywhere else."""
        if self._done:
            raise RuntimeError("Opener.finish twice")
        self._done = True
        if self._aead is None:
            if len(self._buf) < HEADER_SIZE:
                raise self._fail(f"it holds {len(self._buf)} bytes, less than an encryption header")
            self._read_header()
        if len(self._buf) < TAG_SIZE:
            after = f"chunk {self._index - 1}" if self._index else "its header"
            raise self._fail(f"it ends after {after} without a final chunk (truncated)")
        out = self._open(self._buf, True)
        self._buf = bytearray()
        return out
