"""What image bytes are: their format by magic bytes, and whether their structure holds.

Hard examples and labelled samples carry an image as raw bytes. Whoever stores them must know
that the bytes are the image they claim to be before giving them a file name (a ``.png`` suffix
on JPEG bytes misleads every tool that opens it) or disk space (any bytes are not a frame).
:func:`image_problem` walks the container without decoding pixels: PNG chunks with their CRCs
from ``IHDR`` to ``IEND``, JPEG segments from ``SOI`` through a frame header and a scan to
``EOI``. That is cheap (no decoder, no allocation of the pixels) and catches truncated, foreign
or made-up bytes; it is pure, so both the cloud manager and the agent can use it without an
image library.
"""

from __future__ import annotations

import struct
import zlib
from typing import Literal

ImageKind = Literal["jpg", "png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
#: JPEG start-of-frame markers (C0-CF except DHT C4, JPG C8 and DAC CC): they hold the size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers that stand alone, without a length: TEM and the restart markers.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def sniff(data: bytes) -> ImageKind | None:
    """The format the magic bytes of ``data`` announce, or None when neither."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SOI):
        return "jpg"
    return None


def image_problem(data: bytes, claimed: ImageKind | None = None) -> str | None:
    """What is wrong with ``data`` as an image (as ``claimed``, when given), or None."""
    kind = sniff(data)
    if kind is None:
        return f"image: {len(data)} bytes that are neither PNG nor JPEG (magic {data[:8].hex()})"
    if claimed is not None and kind != claimed:
        return f"image: the bytes are {kind.upper()} but image_format says {claimed}"
    problem = _png_problem(data) if kind == "png" else _jpeg_problem(data)
    return f"image: not a valid {kind.upper()}: {problem}" if problem else None


def _png_problem(data: bytes) -> str | None:
    pos, first, seen_idat = len(PNG_SIGNATURE), True, False
    while pos + 12 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return f"chunk {ctype!r} at byte {pos} runs past the end ({length} bytes)"
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : end])
        if zlib.crc32(ctype + body) != crc:
            return f"chunk {ctype!r} at byte {pos} has a bad CRC"
        if first:
            if ctype != b"IHDR" or length != 13:
                return "the first chunk is not a 13-byte IHDR"
            width, height = struct.unpack(">II", body[:8])
            if not width or not height:
                return f"size {width}x{height}"
            first = False
        seen_idat |= ctype == b"IDAT"
        if ctype == b"IEND":
            return None if seen_idat else "no IDAT chunk before IEND"
        pos = end
    return "truncated: no IEND chunk"


def _jpeg_problem(data: bytes) -> str | None:
    pos, sized = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return f"no marker at byte {pos}"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            return "EOI before any scan"
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            return f"segment {marker:#04x} at byte {pos} runs past the end"
        if marker in _SOF_MARKERS:
            if length < 8:
                return "frame header too short"
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if not width or not height:
                return f"size {width}x{height}"
            sized = True
        if marker == 0xDA:  # start of scan: entropy-coded data up to the end of the image
            if not sized:
                return "scan before any frame header"
            return None if data.rstrip(b"\x00").endswith(b"\xff\xd9") else "truncated: no EOI"
        pos += 2 + length
    return "truncated before the first scan"
