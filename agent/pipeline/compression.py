"""Compression codecs, registered by name (`--compression-engine-name`), Vitess-compatible formats.

In-process codecs (`zstd`, `pgzip`/`pargzip`, `lz4`, `none`) expose small streaming objects whose
calls release the GIL, so the pipeline runs them in threads. `zstd` and `pgzip` are *framed*: a stream
is a concatenation of independent frames (gzip members) of `frame_size` input bytes, which the
pipeline compresses several at a time (standard format: any decoder reads concatenated frames).
`external` is a shell-free command run by the pipeline as a streaming filter (through `agent.procs`).
Decompressors yield output in bounded pieces whatever the compression ratio (zstd reaches 32000:1 on
zero pages), and report a stream that ends mid-frame as `CorruptData`.
"""

from __future__ import annotations

import os
import shlex
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import lz4.frame
import zstandard

from agent.errors import CorruptData, FailedPrecondition, InvalidArgument
from agent.pipeline.zstd_frames import BLOCKS_PER_STEP, FRAME_END, HEADER_END, ZstdScanner

Buffer = bytes | bytearray | memoryview
PIECE = 4 << 20  # a decompressor yields at most about this much at a time
_INPUT_SLICE = 256 << 10  # zlib/lz4 input fed per call, bounding the copies of unconsumed input


OutputBuffers = Callable[[int], memoryview]  # a writable buffer of at least n bytes


class Compressor(Protocol):
    def compress(self, data: Buffer) -> bytes:
        """Compress more input; returns whatever output is ready (maybe empty)."""

    def flush(self) -> bytes:
        """End the stream and return the rest of the output. No more calls but `close` after it."""

    def close(self) -> None:
        """Release resources (worker threads); safe to call at any time, also instead of flush."""


class Decompressor(Protocol):
    def decompress(self, data: Buffer) -> Iterator[Buffer]:
        """Lazily yield the non-empty output pieces (at most ~PIECE bytes each) for this input.
        Raises CorruptData for invalid input. Keeps no reference to `data` once exhausted."""

    def finish(self) -> None:
        """Raise CorruptData if the stream ended in the middle of a frame (truncated)."""


class InProcessCodec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def extension(self) -> str: ...

    def new_compressor(self) -> Compressor: ...

    def new_decompressor(self, output: OutputBuffers | None = None) -> Decompressor:
        """`output`, if given, supplies the buffers that whole pieces are decoded into (no fresh
        memory per piece): such a piece is a memoryview of one; recycle it once used."""


@runtime_checkable
class FramedCodec(Protocol):
    """An in-process codec whose stream is independent frames of `frame_size` input bytes each: the
    pipeline compresses up to `threads` frames of one stream at once; `new_compressor` cuts the
    same frames in the caller's thread."""

    @property
    def frame_size(self) -> int: ...

    @property
    def threads(self) -> int: ...

    def compress_frame(self, data: Buffer) -> bytes:
        """`data` as one complete frame. Thread-safe."""


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


FRAME_SIZE = 2 << 20
# Level 1 by measurement (`python -m bench.compression_levels`, README): on InnoDB files it is about twice
# as fast as level 3 and no larger (smaller, on both data sets measured). Vitess's default level is 1 too.
DEFAULT_ZSTD_LEVEL = 1
# At level 3, 2 MiB frames compress as small as one frame (+0.05% measured on InnoDB files) and
# faster (the match tables stay in cache); smaller frames start to cost ratio.


@dataclass(frozen=True)
class ZstdCodec:
    """zstd frames of `frame_size` input bytes, each with its content size and checksum; `threads`:
    how many frames of one stream the pipeline compresses at once (0 or 1: one)."""

    level: int = DEFAULT_ZSTD_LEVEL
    threads: int = 0
    frame_size: int = FRAME_SIZE
    name: str = field(default="zstd", init=False)
    extension: str = field(default=".zst", init=False)

    def compress_frame(self, data: Buffer) -> bytes:
        # A context per frame costs microseconds and makes this thread-safe.
        return zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(data)

    def new_compressor(self) -> Compressor:
        return _FramedCompressor(self)

    def new_decompressor(self, output: OutputBuffers | None = None) -> Decompressor:
        return _ZstdDecompressor(output)


class _FramedCompressor:
    """A framed codec used as a stream: one frame per `frame_size` bytes, at least one frame."""

    def __init__(self, codec: FramedCodec) -> None:
        self._codec = codec
        self._buf = bytearray()
        self._frames = 0

    def compress(self, data: Buffer) -> bytes:
        self._buf += data
        size = self._codec.frame_size
        whole = len(self._buf) // size * size
        if not whole:
            return b""
        with memoryview(self._buf) as view:
            out = [self._codec.compress_frame(view[i : i + size]) for i in range(0, whole, size)]
        del self._buf[:whole]
        self._frames += len(out)
        return b"".join(out)

    def flush(self) -> bytes:
        if self._frames and not self._buf:
            return b""
        out = self._codec.compress_frame(self._buf)
        self._buf = bytearray()
        self._frames += 1
        return out

    def close(self) -> None:
        self._buf = bytearray()


_WHOLE_FRAME_SLACK = 64 << 10  # a frame of at most PIECE content is at most this much bigger


class _ZstdDecompressor:
    """A frame that declares a content size of at most PIECE is held back and decoded in one call
    when it is complete (faster than streaming; its output is exactly that size); other frames are
    streamed a few blocks at a time. Skippable frames are skipped."""

    def __init__(self, output: OutputBuffers | None) -> None:
        self._output = output
        self._whole = zstandard.ZstdDecompressor()
        self._stream = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        self._scan = ZstdScanner()
        self._held: list[memoryview] = []  # the current frame's parts in the current input
        self._spill = bytearray()  # its start from earlier inputs (`spilled` bytes; reused)
        self._spilled = 0
        self._held_size = 0  # spilled + held
        self._streaming = False  # the current frame goes through the streaming decoder

    def decompress(self, data: Buffer) -> Iterator[Buffer]:
        view = memoryview(data)
        while view:
            n, event = self._scan.advance(view, BLOCKS_PER_STEP)
            part, view = view[:n], view[n:]
            if self._streaming:
                yield from self._feed(part)
                self._streaming = event != FRAME_END
                continue
            self._held.append(part)
            self._held_size += n
            size = self._scan.content_size
            if event == FRAME_END:
                with self._take_held() as frame:
                    if size is not None:  # else a skippable frame
                        yield from self._decode_whole(frame, size)
            elif event == HEADER_END and (size is None or size > PIECE):
                self._streaming = True
                with self._take_held() as frame:
                    yield from self._feed(frame)
            elif self._held_size > PIECE + _WHOLE_FRAME_SLACK:  # not a frame we produce: stream it
                self._streaming = True
                with self._take_held() as frame:
                    yield from self._feed_in_steps(frame)
        self._spill_held()  # the caller may reuse `data` once this is exhausted

    def _spill_held(self) -> None:
        need = self._held_size
        if need > len(self._spill):
            grown = bytearray(max(need, 2 * len(self._spill), 1 << 20))
            grown[: self._spilled] = self._spill[: self._spilled]
            self._spill = grown
        for part in self._held:
            self._spill[self._spilled : self._spilled + len(part)] = part
            self._spilled += len(part)
        self._held = []

    def _take_held(self) -> memoryview:
        """The current frame so far (release the view before the next input)."""
        if not self._spilled and len(self._held) == 1:
            frame = self._held[0]
        else:
            self._spill_held()
            frame = memoryview(self._spill)[: self._spilled]
        self._held, self._spilled, self._held_size = [], 0, 0
        return frame

    def _decode_whole(self, frame: Buffer, size: int) -> Iterator[Buffer]:
        try:
            if self._output is None:
                out: Buffer = self._whole.decompress(frame)
                n = len(out)
            else:
                out = self._output(size)[:size]
                with self._whole.stream_reader(frame) as reader:
                    n = reader.readinto(out)
                    n += len(reader.read(1))  # to the frame's end: its checksum is verified there
        except zstandard.ZstdError as e:
            raise CorruptData(f"invalid zstd data: {e}") from None
        if n != size:
            raise CorruptData(f"invalid zstd data: a frame declares {size} bytes and holds {n}")
        if size:
            yield out

    def _feed(self, data: Buffer) -> Iterator[Buffer]:
        try:
            out: bytes = self._stream.decompress(data)
        except zstandard.ZstdError as e:
            raise CorruptData(f"invalid zstd data: {e}") from None
        if out:
            yield out

    def _feed_in_steps(self, data: Buffer) -> Iterator[Buffer]:
        """Held bytes from the start of a frame, fed a bounded number of blocks at a time."""
        scan, view = ZstdScanner(), memoryview(data)
        while view:
            n, _ = scan.advance(view, BLOCKS_PER_STEP)
            yield from self._feed(view[:n])
            view = view[n:]

    def finish(self) -> None:
        if not self._scan.at_frame_boundary:
            raise CorruptData("zstd stream is truncated (it ends inside a frame)")


# --- gzip (pgzip / pargzip) ---------------------------------------------------------------------


@dataclass(frozen=True)
class GzipCodec:
    """Gzip as independent members of `block_size` input bytes (up to `threads` compressed at once by
    the pipeline): standard multi-member gzip that `gzip -dc` and Go's gzip reader read."""

    name: str = "pgzip"
    level: int = 1
    block_size: int = 1 << 20
    threads: int = 1
    extension: str = field(default=".gz", init=False)

    @property
    def frame_size(self) -> int:
        return self.block_size

    def compress_frame(self, data: Buffer) -> bytes:
        c = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()

    def new_compressor(self) -> Compressor:
        return _FramedCompressor(self)

    def new_decompressor(self, output: OutputBuffers | None = None) -> Decompressor:
        return _GzipDecompressor()


class _GzipDecompressor:
    """Reads concatenated gzip members."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)
        self._in_member = False

    def decompress(self, data: Buffer) -> Iterator[Buffer]:
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

    def new_decompressor(self, output: OutputBuffers | None = None) -> Decompressor:
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

    def decompress(self, data: Buffer) -> Iterator[Buffer]:
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

    def new_decompressor(self, output: OutputBuffers | None = None) -> Decompressor:
        return _Identity()


class _Identity:
    def compress(self, data: Buffer) -> bytes:
        return data if isinstance(data, bytes) else bytes(data)

    def flush(self) -> bytes:
        return b""

    def close(self) -> None:
        pass

    def decompress(self, data: Buffer) -> Iterator[Buffer]:
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
    return ZstdCodec(
        level=_level(o, "zstd", DEFAULT_ZSTD_LEVEL, -7, 22), threads=0 if threads == 1 else threads
    )


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


def whole_compressor(codec: InProcessCodec) -> Callable[[Buffer], bytes]:
    """A function giving a whole input's complete stream (the bytes `new_compressor` gives for it), for many
    small inputs in one thread: a zstd context is reused from call to call instead of made per frame."""
    if isinstance(codec, ZstdCodec):
        context = zstandard.ZstdCompressor(level=codec.level, write_checksum=True)

        def zstd_whole(data: Buffer) -> bytes:
            return context.compress(data) if len(data) <= codec.frame_size else _whole(codec, data)

        return zstd_whole
    return lambda data: _whole(codec, data)


def _whole(codec: InProcessCodec, data: Buffer) -> bytes:
    compressor = codec.new_compressor()
    try:
        return compressor.compress(data) + compressor.flush()
    finally:
        compressor.close()


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
