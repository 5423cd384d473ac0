"""A bound on the pixels a request may make the decoders produce, checked before each frame is
decoded: a few KiB of compressed video or PNG can decode to gigabytes and hold a server's
replica for hours, so the bytes a client sends are not bound enough.

The server sets one per upload (:func:`decode_budget`, in ``edgert.serve.uploads``); the CLI and
the Python API set none, since a long video on the user's own disk is the user's choice. The
decoders in :mod:`.video` charge every frame they decode (a frame grabbed to be skipped
decodes too) before decoding it, from the size the container or the image's header states.
"""

from __future__ import annotations

import struct
from contextlib import contextmanager
from contextvars import ContextVar

from .errors import InputError


class OverBudget(InputError):
    """An input that would decode to more than the bound its caller set."""


class DecodeBudget:
    def __init__(self, pixels: int, what: str):
        self.pixels, self.left, self.what = int(pixels), int(pixels), what

    def charge(self, source, height: int, width: int) -> None:
        self.left -= int(height) * int(width)
        if self.left < 0:
            raise OverBudget(f"{self.what}: decodes to more than {self.pixels} pixels "
                             f"({self.pixels * 3 >> 20} MiB of RGB frames) at {source}, a {width}x{height} frame")


_current: ContextVar[DecodeBudget | None] = ContextVar("edgert_decode_budget", default=None)


@contextmanager
def decode_budget(pixels: int, what: str = "input"):
    """Within the block (this thread, or a task or thread started from it), the frames decoded
    may add up to ``pixels``; past that the decoder raises :class:`OverBudget`."""
    token = _current.set(DecodeBudget(pixels, what))
    try:
        yield
    finally:
        _current.reset(token)


def charge(source, height: int, width: int) -> None:
    """Count one frame about to be decoded against the budget in force, if any."""
    budget = _current.get()
    if budget is not None:
        budget.charge(source, height, width)


def bounded() -> bool:
    return _current.get() is not None


def image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) from a JPEG, PNG, BMP or WebP header, without decoding; None when the
    format is another or the header is cut short."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return height, width
        if data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return abs(height), abs(width)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return (height, width) if len(data) >= 30 else None
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = int.from_bytes(data[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    return None


# JPEG's start-of-frame markers (baseline, progressive, lossless, arithmetic), not DHT/JPG/DAC
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return height, width
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a JPEG to trust
            return None
        i += 2 + length
    return None
