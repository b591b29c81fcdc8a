"""Compression codecs, registered by name (`--compression-engine-name`), Vitess-compatible formats.

In-process codecs (`zstd`, `pgzip`/`pargzip`, `lz4`, `none`) expose small streaming objects whose
calls release the GIL, so the pipeline runs them in threads. `external` is a shell-free command run
by the pipeline as a streaming filter (through `agent.procs`). Decompressors yield output in bounded
pieces whatever the compression ratio (zstd reaches 32000:1 on zero pages), and report a stream
that ends mid-frame as `CorruptData`.
"""

from __future__ import annotations

import os
import shlex
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import lz4.frame
import zstandard

from agent.errors import DataLoss, FailedPrecondition, InvalidArgument

Buffer = bytes | bytearray | memoryview
PIECE = 4 << 20  # a decompressor yields at most about this much at a time
_INPUT_SLICE = 256 << 10  # zlib/lz4 input fed per call, bounding the copies of unconsumed input


class CorruptData(DataLoss):
    """Stored bytes are not a valid (or complete) stream of the codec."""


class Compressor(Protocol):
    def compress(self, data: Buffer) -> bytes:
        """Compress more input; returns whatever output is ready (maybe empty)."""

    def flush(self) -> bytes:
        """End the stream and return the rest of the output. No more calls but `close` after it."""

    def close(self) -> None:
        """Release resources (worker threads); safe to call at any time, also instead of flush."""


class Decompressor(Protocol):
    def decompress(self, data: Buffer) -> Iterator[bytes]:
        """Lazily yield the non-empty output pieces (at most ~PIECE bytes each) for this input.
        Raises CorruptData for invalid input."""

    def finish(self) -> None:
        """Raise CorruptData if the stream ended in the middle of a frame (truncated)."""


class InProcessCodec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def extension(self) -> str: ...

    def new_compressor(self) -> Compressor: ...

    def new_decompressor(self) -> Decompressor: ...


@dataclass(frozen=True)
class ExternalCodec:
    """A command pair filtering stdin to stdout, e.g. `zstd -T0 -c` / `zstd -d -c`."""

    compress_argv: tuple[str, ...]
    decompress_argv: tuple[str, ...]
    extension: str = ""
    name: str = "external"


Codec = InProcessCodec | ExternalCodec


@dataclass(frozen=True)
class CodecOptions:
    """How to build a codec. `threads`: 0 = one per CPU, 1 = compress in the pipeline's thread."""

    level: int | None = None
    threads: int = 0
    gzip_block_size: int = 1 << 20
    external_compressor: str | None = None
    external_decompressor: str | None = None
    external_extension: str = ""


# --- zstd -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZstdCodec:
    level: int = 3
    threads: int = 0  # python-zstandard's: 0 = no worker threads, -1 = one per CPU
    name: str = field(default="zstd", init=False)
    extension: str = field(default=".zst", init=False)

    def new_compressor(self) -> Compressor:
        return _ZstdCompressor(self.level, self.threads)

    def new_decompressor(self) -> Decompressor:
        return _ZstdDecompressor()


class _ZstdCompressor:
    def __init__(self, level: int, threads: int) -> None:
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        self._c = cctx.compressobj()

    def compress(self, data: Buffer) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush()

    def close(self) -> None:
        pass


_ZSTD_MAGIC = 0xFD2FB528
_BLOCKS_PER_STEP = 32  # a zstd block decodes to at most 128 KiB: 32 blocks ~ PIECE
# scanner states: collect a header of N bytes, or skip N bytes
_MAGIC, _FHD, _BLOCK_HEADER, _SKIP_SIZE = "magic", "fhd", "block-header", "skip-size"
_FRAME_HEADER_REST, _BLOCK_BODY, _CHECKSUM, _SKIPPABLE = "frame-header", "block", "checksum", "skippable"
_COLLECT: Mapping[str, int] = MappingProxyType({_MAGIC: 4, _FHD: 1, _BLOCK_HEADER: 3, _SKIP_SIZE: 4})


class _ZstdScanner:
    """Follows zstd frame and block headers (RFC 8878) without decoding: finds block boundaries so
    input can be fed a bounded number of blocks at a time, and knows whether a frame is open."""

    def __init__(self) -> None:
        self._state = _MAGIC
        self._header = bytearray()
        self._skip = 0
        self._checksum = False
        self._last = False

    @property
    def at_frame_boundary(self) -> bool:
        return self._state == _MAGIC and not self._header

    def advance(self, data: memoryview, max_blocks: int) -> int:
        """Consume input up to the end of the `max_blocks`-th block ending in it; return bytes used."""
        pos, size, ended = 0, len(data), 0
        while pos < size:
            need = _COLLECT.get(self._state)
            if need is None:
                take = min(self._skip, size - pos)
                pos += take
                self._skip -= take
                if self._skip == 0 and self._end_skip():
                    ended += 1
                    if ended >= max_blocks:
                        break
                continue
            take = min(need - len(self._header), size - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == need:
                header = bytes(self._header)
                self._header.clear()
                if self._on_header(header):
                    ended += 1
                    if ended >= max_blocks:
                        break
        return pos

    def _skip_to(self, state: str, n: int) -> bool:
        self._state, self._skip = state, n
        return self._end_skip() if n == 0 else False

    def _on_header(self, h: bytes) -> bool:
        """Handle a complete header; True when a block ended (an empty block has no body)."""
        if self._state == _MAGIC:
            magic = int.from_bytes(h, "little")
            if magic == _ZSTD_MAGIC:
                self._state = _FHD
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state = _SKIP_SIZE
            else:
                raise CorruptData(f"not zstd data (frame magic {magic:#010x})")
            return False
        if self._state == _FHD:
            d = h[0]
            if d & 0x08:
                raise CorruptData("invalid zstd frame header (reserved bit set)")
            single = bool(d & 0x20)
            self._checksum = bool(d & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs
            self._state = _BLOCK_HEADER if rest == 0 else _FRAME_HEADER_REST
            self._skip = rest
            return False
        if self._state == _BLOCK_HEADER:
            v = int.from_bytes(h, "little")
            kind = (v >> 1) & 3
            if kind == 3:
                raise CorruptData("invalid zstd block type")
            self._last = bool(v & 1)
            return self._skip_to(_BLOCK_BODY, 1 if kind == 1 else v >> 3)
        # _SKIP_SIZE
        return self._skip_to(_SKIPPABLE, int.from_bytes(h, "little"))

    def _end_skip(self) -> bool:
        """The bytes to skip are consumed: move on; True when that ended a block."""
        state = self._state
        if state == _FRAME_HEADER_REST:
            self._state = _BLOCK_HEADER
        elif state == _BLOCK_BODY:
            if not self._last:
                self._state = _BLOCK_HEADER
            elif self._checksum:
                self._state, self._skip = _CHECKSUM, 4
            else:
                self._state = _MAGIC
            return True
        else:  # _CHECKSUM, _SKIPPABLE
            self._state = _MAGIC
        return False


class _ZstdDecompressor:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        self._scan = _ZstdScanner()

    def decompress(self, data: Buffer) -> Iterator[bytes]:
        view = memoryview(data)
        while view:
            n = self._scan.advance(view, _BLOCKS_PER_STEP)
            try:
                out: bytes = self._d.decompress(view[:n])
            except zstandard.ZstdError as e:
                raise CorruptData(f"invalid zstd data: {e}") from None
            if out:
                yield out
            view = view[n:]

    def finish(self) -> None:
        if not self._scan.at_frame_boundary:
            raise CorruptData("zstd stream is truncated (it ends inside a frame)")


# --- gzip (pgzip / pargzip) ---------------------------------------------------------------------


def _gzip_member(block: bytes, level: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(block) + c.flush()


@dataclass(frozen=True)
class GzipCodec:
    """Gzip as independent members of `block_size` input bytes, compressed by `threads` threads:
    standard multi-member gzip that `gzip -dc` and Go's gzip reader read."""

    name: str = "pgzip"
    level: int = 1
    block_size: int = 1 << 20
    threads: int = 1
    extension: str = field(default=".gz", init=False)

    def new_compressor(self) -> Compressor:
        return _GzipCompressor(self.level, self.block_size, self.threads)

    def new_decompressor(self) -> Decompressor:
        return _GzipDecompressor()


class _GzipCompressor:
    def __init__(self, level: int, block_size: int, threads: int) -> None:
        self._level = level
        self._block_size = block_size
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[bytes]] = deque()
        self._buf = bytearray()
        self._members = 0

    def compress(self, data: Buffer) -> bytes:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= self._block_size:
            block = bytes(self._buf[: self._block_size])
            del self._buf[: self._block_size]
            self._submit(block, out)
        while self._pending and self._pending[0].done():
            out.append(self._pending.popleft().result())
        return b"".join(out)

    def flush(self) -> bytes:
        out: list[bytes] = []
        if self._buf or self._members == 0:
            block, self._buf = bytes(self._buf), bytearray()
            if self._pending:
                self._submit(block, out)
            else:
                out.append(_gzip_member(block, self._level))
        out.extend(f.result() for f in self._pending)
        self._pending.clear()
        self.close()
        return b"".join(out)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _submit(self, block: bytes, out: list[bytes]) -> None:
        self._members += 1
        if self._threads <= 1:
            out.append(_gzip_member(block, self._level))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="gzip")
        while len(self._pending) >= 2 * self._threads:
            out.append(self._pending.popleft().result())
        self._pending.append(self._pool.submit(_gzip_member, block, self._level))


class _GzipDecompressor:
    """Reads concatenated gzip members."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)
        self._in_member = False

    def decompress(self, data: Buffer) -> Iterator[bytes]:
        view = memoryview(data)
        try:
            while view:
                buf: Buffer = view[:_INPUT_SLICE]
                view = view[_INPUT_SLICE:]
                while True:
                    if buf:
                        self._in_member = True
                    out = self._d.decompress(buf, PIECE)
                    if out:
                        yield out
                    if self._d.eof:
                        buf = self._d.unused_data
                        self._d = zlib.decompressobj(31)
                        self._in_member = False
                        if not buf:
                            break
                    elif self._d.unconsumed_tail:
                        buf = self._d.unconsumed_tail
                    elif len(out) == PIECE:
                        buf = b""  # more output may be pending
                    else:
                        break
        except zlib.error as e:
            raise CorruptData(f"invalid gzip data: {e}") from None

    def finish(self) -> None:
        if self._in_member:
            raise CorruptData("gzip stream is truncated (it ends inside a member)")


# --- lz4 ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lz4Codec:
    level: int = 0
    name: str = field(default="lz4", init=False)
    extension: str = field(default=".lz4", init=False)

    def new_compressor(self) -> Compressor:
        return _Lz4Compressor(self.level)

    def new_decompressor(self) -> Decompressor:
        return _Lz4Decompressor()


class _Lz4Compressor:
    def __init__(self, level: int) -> None:
        self._c = lz4.frame.LZ4FrameCompressor(compression_level=level, content_checksum=True)
        self._begun = False

    def _begin(self) -> bytes:
        if self._begun:
            return b""
        self._begun = True
        return self._c.begin()  # type: ignore[no-any-return]

    def compress(self, data: Buffer) -> bytes:
        header = self._begin()
        out: bytes = self._c.compress(data)
        return header + out if header else out

    def flush(self) -> bytes:
        header = self._begin()
        out: bytes = self._c.flush()
        return header + out

    def close(self) -> None:
        pass


class _Lz4Decompressor:
    """Reads concatenated lz4 frames."""

    def __init__(self) -> None:
        self._d = lz4.frame.LZ4FrameDecompressor()
        self._in_frame = False

    def decompress(self, data: Buffer) -> Iterator[bytes]:
        view = memoryview(data)
        try:
            while view:
                buf: Buffer = view[:_INPUT_SLICE]
                view = view[_INPUT_SLICE:]
                while True:
                    if buf:
                        self._in_frame = True
                    out: bytes = self._d.decompress(buf, max_length=PIECE)
                    if out:
                        yield out
                    if self._d.eof:
                        buf = self._d.unused_data or b""
                        self._d = lz4.frame.LZ4FrameDecompressor()
                        self._in_frame = False
                        if not buf:
                            break
                    elif self._d.needs_input:
                        break
                    else:
                        buf = b""
        except RuntimeError as e:
            raise CorruptData(f"invalid lz4 data: {e}") from None

    def finish(self) -> None:
        if self._in_frame:
            raise CorruptData("lz4 stream is truncated (it ends inside a frame)")


# --- none ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoCodec:
    name: str = field(default="none", init=False)
    extension: str = field(default="", init=False)

    def new_compressor(self) -> Compressor:
        return _Identity()

    def new_decompressor(self) -> Decompressor:
        return _Identity()


class _Identity:
    def compress(self, data: Buffer) -> bytes:
        return data if isinstance(data, bytes) else bytes(data)

    def flush(self) -> bytes:
        return b""

    def close(self) -> None:
        pass

    def decompress(self, data: Buffer) -> Iterator[bytes]:
        view = memoryview(data)
        for i in range(0, len(view), PIECE):
            yield bytes(view[i : i + PIECE])

    def finish(self) -> None:
        pass


# --- registry -----------------------------------------------------------------------------------


def _threads(o: CodecOptions) -> int:
    return o.threads if o.threads > 0 else os.cpu_count() or 1


def _level(o: CodecOptions, name: str, default: int, low: int, high: int) -> int:
    level = default if o.level is None else o.level
    if not low <= level <= high:
        raise InvalidArgument(f"invalid compression level {level} for {name}: use {low} to {high}")
    return level


def _zstd(o: CodecOptions) -> Codec:
    threads = _threads(o)
    return ZstdCodec(level=_level(o, "zstd", 3, -7, 22), threads=0 if threads == 1 else threads)


def _gzip(name: str) -> Callable[[CodecOptions], Codec]:
    def make(o: CodecOptions) -> Codec:
        level = _level(o, name, 1, 0, 9)
        return GzipCodec(name=name, level=level, block_size=o.gzip_block_size, threads=_threads(o))

    return make


def _lz4(o: CodecOptions) -> Codec:
    return Lz4Codec(level=_level(o, "lz4", 0, 0, 16))


def _none(o: CodecOptions) -> Codec:
    return NoCodec()


def _external(o: CodecOptions) -> Codec:
    if not o.external_compressor or not o.external_decompressor:
        raise InvalidArgument(
            "--compression-engine-name=external needs --external-compressor and --external-decompressor"
        )
    return ExternalCodec(
        compress_argv=_split("--external-compressor", o.external_compressor),
        decompress_argv=_split("--external-decompressor", o.external_decompressor),
        extension=o.external_extension,
    )


def _split(flag: str, command: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(command))
    except ValueError as e:
        raise InvalidArgument(f"cannot parse {flag} {command!r}: {e}") from None
    if not argv:
        raise InvalidArgument(f"{flag} is empty")
    return argv


CODECS: Mapping[str, Callable[[CodecOptions], Codec]] = MappingProxyType(
    {
        "zstd": _zstd,
        "pgzip": _gzip("pgzip"),
        "pargzip": _gzip("pargzip"),
        "lz4": _lz4,
        "none": _none,
        "external": _external,
    }
)


def get_codec(name: str, options: CodecOptions | None = None) -> Codec:
    """The codec registered as `name`; InvalidArgument listing the valid names otherwise."""
    factory = CODECS.get(name)
    if factory is None:
        raise InvalidArgument(f"unknown compression engine {name!r}: use one of {', '.join(sorted(CODECS))}")
    return factory(options or CodecOptions())


def manifest_compression(codec: Codec) -> dict[str, object]:
    """Manifest fields (snake_case) recording how objects were compressed."""
    if isinstance(codec, ExternalCodec):
        return {
            "compression_engine": codec.name,
            "skip_compress": False,
            "external_decompressor": shlex.join(codec.decompress_argv),
        }
    if isinstance(codec, NoCodec):
        return {"compression_engine": "", "skip_compress": True, "external_decompressor": ""}
    return {"compression_engine": codec.name, "skip_compress": False, "external_decompressor": ""}


def codec_for_manifest(
    compression_engine: str,
    skip_compress: bool,
    external_decompressor: str = "",
    *,
    decompressor_override: str | None = None,
    allow_manifest_decompressor: bool = False,
) -> Codec:
    """The codec to restore with, from the MANIFEST (never from the current flags).

    As Vitess: SkipCompress means none, an empty engine means pgzip. The command recorded in the
    MANIFEST runs only when allowed (a forged manifest must not choose what the agent executes);
    `decompressor_override` (the configured --external-decompressor) wins.
    """
    if skip_compress:
        return NoCodec()
    engine = compression_engine or "pgzip"
    if engine != "external":
        if engine == "none":
            return NoCodec()
        return get_codec(engine)
    command = decompressor_override or (external_decompressor if allow_manifest_decompressor else "")
    if not command:
        raise FailedPrecondition(
            "the backup was compressed with an external command: set --external-decompressor"
            + (f" (the MANIFEST records {external_decompressor!r})" if external_decompressor else "")
        )
    argv = _split("external decompressor", command)
    return ExternalCodec(compress_argv=(), decompress_argv=argv)
