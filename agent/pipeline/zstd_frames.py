"""Following zstd frame and block headers (RFC 8878) without decoding, so a decompressor can be fed a
bounded number of blocks at a time whatever the compression ratio."""

from __future__ import annotations

from agent.errors import CorruptData

_ZSTD_MAGIC = 0xFD2FB528
BLOCKS_PER_STEP = 32  # a zstd block decodes to at most 128 KiB: 32 blocks ~ PIECE
# Scanner states: collect a header of N bytes, or skip N bytes.
_MAGIC, _FHD, _FRAME_HEADER_REST, _BLOCK_HEADER = "magic", "fhd", "frame-header", "block-header"
_BLOCK_BODY, _CHECKSUM, _SKIP_SIZE, _SKIPPABLE = "block", "checksum", "skip-size", "skippable"
_SKIPPING = frozenset({_BLOCK_BODY, _CHECKSUM, _SKIPPABLE})
# What `advance` stopped at.
MORE, BLOCK_END, HEADER_END, FRAME_END = "more", "block-end", "header-end", "frame-end"


class ZstdScanner:
    """Follows zstd frame and block headers (RFC 8878) without decoding: finds block and frame
    boundaries so input can be fed a bounded number of blocks at a time, reads each frame's content
    size, and knows whether a frame is open."""

    def __init__(self) -> None:
        self._state = _MAGIC
        self._header = bytearray()
        self._need = 4  # header bytes to collect, or bytes to skip
        self._checksum = False
        self._last = False
        self._fhd = 0
        self.content_size: int | None = None  # of the current frame, once its header is read

    @property
    def at_frame_boundary(self) -> bool:
        return self._state == _MAGIC and not self._header

    def advance(self, data: memoryview, max_blocks: int) -> tuple[int, str]:
        """Consume input up to the end of the `max_blocks`-th block, of a frame header or of a
        frame, whichever comes first: (bytes used, what it stopped at)."""
        pos, size, blocks = 0, len(data), 0
        while pos < size:
            if self._state in _SKIPPING:
                take = min(self._need, size - pos)
                pos += take
                self._need -= take
                if self._need:
                    break
                event = self._end_skip()
            else:
                take = min(self._need - len(self._header), size - pos)
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) < self._need:
                    break
                header = bytes(self._header)
                self._header.clear()
                event = self._on_header(header)
            if event == BLOCK_END:
                blocks += 1
                if blocks < max_blocks:
                    continue
            if event != MORE:
                return pos, event
        return pos, MORE

    def _collect(self, state: str, n: int) -> str:
        self._state, self._need = state, n
        return MORE

    def _skip(self, state: str, n: int) -> str:
        self._state, self._need = state, n
        return self._end_skip() if n == 0 else MORE

    def _on_header(self, h: bytes) -> str:
        """Handle a complete header: what it ended."""
        if self._state == _MAGIC:
            magic = int.from_bytes(h, "little")
            if magic == _ZSTD_MAGIC:
                return self._collect(_FHD, 1)
            if magic & 0xFFFFFFF0 == 0x184D2A50:
                self.content_size = None
                return self._collect(_SKIP_SIZE, 4)
            raise CorruptData(f"not zstd data (frame magic {magic:#010x})")
        if self._state == _FHD:
            d = self._fhd = h[0]
            if d & 0x08:
                raise CorruptData("invalid zstd frame header (reserved bit set)")
            single = bool(d & 0x20)
            self._checksum = bool(d & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
            # Never 0: without the single-segment flag there is a window descriptor.
            return self._collect(_FRAME_HEADER_REST, (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs)
        if self._state == _FRAME_HEADER_REST:
            fcs = (1 if self._fhd & 0x20 else 0, 2, 4, 8)[self._fhd >> 6]
            value = int.from_bytes(h[len(h) - fcs :], "little") if fcs else None
            self.content_size = value + 256 if fcs == 2 and value is not None else value
            self._collect(_BLOCK_HEADER, 3)
            return HEADER_END
        if self._state == _BLOCK_HEADER:
            v = int.from_bytes(h, "little")
            kind = (v >> 1) & 3
            if kind == 3:
                raise CorruptData("invalid zstd block type")
            self._last = bool(v & 1)
            return self._skip(_BLOCK_BODY, 1 if kind == 1 else v >> 3)
        # _SKIP_SIZE
        return self._skip(_SKIPPABLE, int.from_bytes(h, "little"))

    def _end_skip(self) -> str:
        """The bytes to skip are consumed: move on; what that ended."""
        if self._state == _BLOCK_BODY:
            if not self._last:
                self._collect(_BLOCK_HEADER, 3)
                return BLOCK_END
            if self._checksum:
                self._skip(_CHECKSUM, 4)
                return BLOCK_END
        self._collect(_MAGIC, 4)  # after the last block, the checksum or a skippable frame
        return FRAME_END
