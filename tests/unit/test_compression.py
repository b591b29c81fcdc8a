import gzip
import os
import shutil
import struct
import subprocess

import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import FailedPrecondition, InvalidArgument
from agent.pipeline.compression import (
    CODECS,
    PIECE,
    CodecOptions,
    CorruptData,
    ExternalCodec,
    GzipCodec,
    InProcessCodec,
    NoCodec,
    ZstdCodec,
    codec_for_manifest,
    get_codec,
    manifest_compression,
)

IN_PROCESS = ["zstd", "pgzip", "pargzip", "lz4", "none"]
CLI = {"zstd": ["zstd", "-dc"], "pgzip": ["gzip", "-dc"], "pargzip": ["gzip", "-dc"], "lz4": ["lz4", "-dc"]}
SMALL_BLOCKS = CodecOptions(threads=3, gzip_block_size=4096)


def _codec(name: str, options: CodecOptions = SMALL_BLOCKS) -> InProcessCodec:
    codec = get_codec(name, options)
    assert not isinstance(codec, ExternalCodec)
    return codec


def _compress(codec: InProcessCodec, data: bytes, step: int) -> bytes:
    c = codec.new_compressor()
    out = [c.compress(data[i : i + step]) for i in range(0, len(data), step)]
    return b"".join(out) + c.flush()


def _decompress(codec: InProcessCodec, stored: bytes, step: int) -> bytes:
    d = codec.new_decompressor()
    out = [piece for i in range(0, len(stored), step) for piece in d.decompress(stored[i : i + step])]
    d.finish()
    return b"".join(out)


def _sample(n: int) -> bytes:
    half = os.urandom(n // 2)
    return half + bytes(n // 4) + b"abc" * ((n - len(half) - n // 4) // 3)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(IN_PROCESS),
    data=st.one_of(st.binary(max_size=20_000), st.integers(0, 300_000).map(_sample)),
    in_step=st.integers(1, 70_000),
    out_step=st.integers(1, 70_000),
)
def test_every_codec_round_trips_any_chunking(name: str, data: bytes, in_step: int, out_step: int) -> None:
    codec = _codec(name)
    assert _decompress(codec, _compress(codec, data, in_step), out_step) == data


@pytest.mark.parametrize("name", sorted(CLI))
@pytest.mark.parametrize("size", [0, 1, 5000, 3 << 20])
def test_real_cli_tools_read_our_output(name: str, size: int) -> None:
    tool = CLI[name]
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} not installed")
    data = _sample(size)
    stored = _compress(_codec(name, CodecOptions(threads=2)), data, 1 << 20)
    result = subprocess.run(tool, input=stored, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("zstd", ["zstd", "-c", "-T2"]),
        ("zstd", ["zstd", "-c", "--no-check", "-19"]),
        ("pgzip", ["pigz", "-c", "-b", "128"]),
        ("pgzip", ["gzip", "-c"]),
        ("lz4", ["lz4", "-c", "-BD"]),
    ],
)
def test_we_read_concatenated_cli_output(name: str, argv: list[str]) -> None:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} not installed")
    data = _sample(2 << 20)
    stored = subprocess.run(argv, input=data, capture_output=True, check=True).stdout
    assert _decompress(_codec(name), stored + stored, 100_000) == data + data


def test_pgzip_output_is_standard_multi_member_gzip() -> None:
    data = _sample(50_000)
    stored = _compress(_codec("pgzip"), data, 7000)
    assert gzip.decompress(stored) == data
    assert stored.count(b"\x1f\x8b\x08") >= 50_000 // 4096


def test_zstd_frames_of_every_header_shape_and_skippable_frames() -> None:
    data = _sample(200_000)
    frames = [
        zstandard.ZstdCompressor(write_content_size=True).compress(data),  # single segment + size
        zstandard.ZstdCompressor(write_content_size=False, write_checksum=False).compress(b"x" * 1000),
        struct.pack("<II", 0x184D2A5E, 5) + b"skip!",
        zstandard.ZstdCompressor().compress(b""),
    ]
    stored = b"".join(frames)
    codec = _codec("zstd")
    for step in (1, 3, 1000, len(stored)):
        assert _decompress(codec, stored, step) == data + b"x" * 1000


@pytest.mark.parametrize("name", ["zstd", "pgzip", "lz4"])
def test_truncated_streams_are_detected(name: str) -> None:
    codec = _codec(name)
    stored = _compress(codec, _sample(100_000), 10_000)
    for cut in (1, 5, len(stored) // 2, len(stored) - 1):
        d = codec.new_decompressor()
        with pytest.raises(CorruptData, match="truncated"):
            for _ in d.decompress(stored[:cut]):
                pass
            d.finish()


@pytest.mark.parametrize("name", ["zstd", "pgzip", "lz4"])
def test_garbage_is_corrupt_data(name: str) -> None:
    d = _codec(name).new_decompressor()
    with pytest.raises(CorruptData):
        for _ in d.decompress(b"this is not compressed at all" * 10):
            pass
        d.finish()


@pytest.mark.parametrize("name", IN_PROCESS)
def test_decompression_output_is_bounded_whatever_the_ratio(name: str) -> None:
    codec = _codec(name)
    c = codec.new_compressor()
    stored = b"".join(c.compress(bytes(16 << 20)) for _ in range(4)) + c.flush()
    d = codec.new_decompressor()
    total = 0
    for piece in d.decompress(stored):
        assert 0 < len(piece) <= PIECE
        total += len(piece)
    d.finish()
    assert total == 64 << 20


def test_unknown_engine_lists_the_valid_names() -> None:
    with pytest.raises(InvalidArgument) as info:
        get_codec("brotli")
    assert str(info.value) == (
        "unknown compression engine 'brotli': use one of external, lz4, none, pargzip, pgzip, zstd"
    )
    with pytest.raises(TypeError):
        CODECS["brotli"] = CODECS["zstd"]  # type: ignore[index]


def test_levels_and_threads() -> None:
    assert get_codec("zstd", CodecOptions(threads=2)) == ZstdCodec(level=1, threads=2)
    assert get_codec("zstd", CodecOptions(level=9, threads=1)) == ZstdCodec(level=9, threads=0)
    assert get_codec("pargzip", CodecOptions(threads=4)) == GzipCodec(name="pargzip", level=1, threads=4)
    with pytest.raises(InvalidArgument, match="use 0 to 9"):
        get_codec("pgzip", CodecOptions(level=12))
    assert get_codec("lz4").extension == ".lz4"
    assert get_codec("none").extension == ""


def test_external_codec_from_options() -> None:
    options = CodecOptions(
        external_compressor="zstd -T0 -c", external_decompressor="zstd -d -c", external_extension=".zst"
    )
    codec = get_codec("external", options)
    assert codec == ExternalCodec(("zstd", "-T0", "-c"), ("zstd", "-d", "-c"), ".zst")
    assert manifest_compression(codec) == {
        "compression_engine": "external",
        "skip_compress": False,
        "external_decompressor": "zstd -d -c",
    }
    with pytest.raises(InvalidArgument, match="--external-decompressor"):
        get_codec("external", CodecOptions(external_compressor="zstd -c"))


def test_restore_codec_follows_the_manifest() -> None:
    assert isinstance(codec_for_manifest("zstd", True), NoCodec)
    assert codec_for_manifest("", False) == get_codec("pgzip")
    assert codec_for_manifest("lz4", False).name == "lz4"
    assert manifest_compression(NoCodec()) == {
        "compression_engine": "",
        "skip_compress": True,
        "external_decompressor": "",
    }
    with pytest.raises(FailedPrecondition, match="set --external-decompressor"):
        codec_for_manifest("external", False, "rm -rf /")
    allowed = codec_for_manifest("external", False, "zstd -dc", allow_manifest_decompressor=True)
    assert isinstance(allowed, ExternalCodec) and allowed.decompress_argv == ("zstd", "-dc")
    override = codec_for_manifest("external", False, "evil", decompressor_override="lz4 -dc")
    assert isinstance(override, ExternalCodec) and override.decompress_argv == ("lz4", "-dc")


def test_lz4_output_is_a_checksummed_frame() -> None:
    stored = _compress(_codec("lz4"), b"hello" * 1000, 100)
    assert lz4.frame.decompress(stored) == b"hello" * 1000
    assert lz4.frame.get_frame_info(stored)["content_checksum"]
