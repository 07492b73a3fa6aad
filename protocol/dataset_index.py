"""Reading and writing the seed's dataset index (``data.txt``).

The format, kept exactly so that existing indexes work unchanged: one sample per non-blank line,

    relative/path.jpg x1,y1,x2,y2,cls [x1,y1,x2,y2,cls ...]

with integer pixel corners (``x2``/``y2`` exclusive, at most the image width/height), ``cls`` an
index into the class names, and paths relative to the folder holding the index (absolute paths are
accepted too). A line with only a path is a valid negative sample (an image with nothing in it).

An index grows while people label data, so one bad line must never cost the others: readers skip
it and report it (:class:`LineProblem`) with its line number and the reason.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

BOX_FIELDS = 5  # x1, y1, x2, y2, cls


@dataclass(frozen=True)
class Sample:
    """One labelled image: an absolute image path and its boxes (int32, shape (N, 5))."""

    image: Path
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, BOX_FIELDS), np.int32))
    line_no: int = 0

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.int32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, BOX_FIELDS)
        if boxes.ndim != 2 or boxes.shape[1] != BOX_FIELDS:
            raise ValueError(f"boxes must have shape (N, 5), got {boxes.shape}")
        object.__setattr__(self, "boxes", boxes)
        if not isinstance(self.image, Path):
            object.__setattr__(self, "image", Path(self.image))


@dataclass(frozen=True)
class LineProblem:
    """Why one index line was skipped."""

    line_no: int
    line: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_no}: {self.reason}"


@dataclass
class IndexReadResult:
    samples: list[Sample]
    problems: list[LineProblem]


def _parse_coordinate(text: str, what: str, box_no: int) -> int:
    """Integers as the seed writes them; decimals from other tools are rounded, not rejected."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"box {box_no}: {what} {text!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"box {box_no}: {what} {text!r} is not a finite number")
    return int(round(value))


def _parse_box(token: str, box_no: int, num_classes: int) -> list[int]:
    parts = token.split(",")
    if len(parts) != BOX_FIELDS:
        raise ValueError(
            f"box {box_no}: {token!r} has {len(parts)} comma-separated values, "
            "expected 5 (x1,y1,x2,y2,cls)"
        )
    try:
        x1, y1, x2, y2 = int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:  # not plain integers: the slow path rounds decimals or names the culprit
        x1, y1, x2, y2 = (
            _parse_coordinate(text, name, box_no)
            for text, name in zip(parts[:4], ("x1", "y1", "x2", "y2"), strict=True)
        )
    try:
        cls = int(parts[4])
    except ValueError:
        raise ValueError(f"box {box_no}: class {parts[4]!r} is not an integer") from None
    if not 0 <= cls < num_classes:
        raise ValueError(f"box {box_no}: class {cls} is out of range 0..{num_classes - 1}")
    if x1 < 0 or y1 < 0:
        raise ValueError(f"box {box_no}: negative corner ({x1},{y1})")
    if x2 <= x1:
        raise ValueError(f"box {box_no}: x2 ({x2}) must be greater than x1 ({x1})")
    if y2 <= y1:
        raise ValueError(f"box {box_no}: y2 ({y2}) must be greater than y1 ({y1})")
    return [x1, y1, x2, y2, cls]


def _parse_fields(line: str, base: str, num_classes: int) -> tuple[str, list[list[int]]]:
    """The absolute image path and the boxes of a line, as plain strings and lists.

    Large indexes are counted often, and Path or numpy objects per line would dominate that.
    """
    tokens = line.split()
    if not tokens:
        raise ValueError("blank line")
    image = os.path.normpath(os.path.join(base, tokens[0]))  # join keeps an absolute path as is
    boxes = [_parse_box(token, i, num_classes) for i, token in enumerate(tokens[1:], start=1)]
    return image, boxes


def parse_line(line: str, line_no: int, base: Path, num_classes: int) -> Sample:
    """Parse one non-blank index line into a :class:`Sample`.

    Pure: the image is not looked at (see :func:`read_index` for that). Raises ``ValueError``
    whose message is the reason, ready for a :class:`LineProblem`.
    """
    image, boxes = _parse_fields(line, os.path.abspath(base), num_classes)
    array = np.asarray(boxes, dtype=np.int32).reshape(-1, BOX_FIELDS)
    return Sample(image=Path(image), boxes=array, line_no=line_no)


# ---------------------------------------------------------------------------------------------
# Image size, read from the file header: validating box bounds must not decode every image.


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the JPEG frame header, or None when the header cannot settle it.

    A JPEG carrying EXIF may be rotated by its orientation tag when decoded (OpenCV applies it),
    so for those the caller falls back to decoding.
    """
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        while True:
            byte = f.read(1)
            while byte == b"\xff":  # fill bytes before a marker
                marker = f.read(1)
                if marker != b"\xff":
                    break
                byte = marker
            else:
                return None
            if not marker:
                return None
            code = marker[0]
            if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
                continue  # markers without a length
            length_bytes = f.read(2)
            if len(length_bytes) < 2:
                return None
            (length,) = struct.unpack(">H", length_bytes)
            if code == 0xE1:
                payload = f.read(length - 2)
                if payload.startswith(b"Exif"):
                    return None
                continue
            if code in _JPEG_SOF:
                frame = f.read(5)
                if len(frame) < 5:
                    return None
                _, height, width = struct.unpack(">BHH", frame)
                return (width, height) if width and height else None
            if code == 0xDA:  # start of scan before any frame header: malformed
                return None
            f.seek(length - 2, os.SEEK_CUR)


@lru_cache(maxsize=65536)
def _cached_image_size(path: str, mtime_ns: int, size: int) -> tuple[int, int] | None:
    """The key includes mtime and size so that a replaced image is measured again."""
    file = Path(path)
    try:
        with open(file, "rb") as f:
            head = f.read(32)
        found = _png_size(head)
        if found is None and head[:2] == b"\xff\xd8":
            found = _jpeg_size(file)
    except OSError:
        return None
    if found is not None:
        return found
    import cv2  # other formats (and EXIF JPEGs): decode once, the cache keeps the answer

    image = cv2.imread(path)
    if image is None:
        return None
    return int(image.shape[1]), int(image.shape[0])


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image file as OpenCV would decode it, or None when unreadable."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _cached_image_size(str(path), stat.st_mtime_ns, stat.st_size)


def _check_image(sample: Sample) -> None:
    if not sample.image.is_file():
        raise ValueError(f"image not found: {sample.image}")
    size = image_size(sample.image)
    if size is None:
        raise ValueError(f"image unreadable: {sample.image}")
    width, height = size
    for i, (_, _, x2, y2, _) in enumerate(sample.boxes.tolist(), start=1):
        if x2 > width:
            raise ValueError(f"box {i}: x2 ({x2}) is outside the image width {width}")
        if y2 > height:
            raise ValueError(f"box {i}: y2 ({y2}) is outside the image height {height}")


# ---------------------------------------------------------------------------------------------
# Whole-index operations


def _read_lines(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset index not found: {path}")
    # utf-8-sig drops a BOM written by some editors; undecodable bytes become a missing image
    # on their own line instead of failing the whole index.
    with open(path, encoding="utf-8-sig", errors="replace", newline=None) as f:
        return f.read().splitlines()


def read_index(path: Path, num_classes: int = 4, check_images: bool = True) -> IndexReadResult:
    """Read every valid sample of an index; report the others, never raise for a bad line.

    With ``check_images`` each image must exist and be readable (its size comes from the file
    header, cached) and every box must lie inside it.
    """
    path = Path(path)
    base = path.resolve().parent
    samples: list[Sample] = []
    problems: list[LineProblem] = []
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            sample = parse_line(line, line_no, base, num_classes)
            if check_images:
                _check_image(sample)
        except ValueError as exc:
            problems.append(LineProblem(line_no=line_no, line=line, reason=str(exc)))
            continue
        samples.append(sample)
    return IndexReadResult(samples=samples, problems=problems)


def count_valid_samples(path: Path, num_classes: int = 4) -> int:
    """Number of lines that parse and whose image exists; no image is opened.

    This is what a dataset watcher reports, so it must stay cheap on a large, growing index.
    Box bounds are checked later, when a trainer reads the index with ``check_images``.
    """
    path = Path(path)
    base = str(path.resolve().parent)
    count = 0
    for line in _read_lines(path):
        if not line.strip():
            continue
        try:
            image, _ = _parse_fields(line, base, num_classes)
        except ValueError:
            continue
        if os.path.isfile(image):
            count += 1
    return count


def format_line(sample: Sample, base: Path) -> str:
    """The index line for a sample (no newline); the path is relative when under ``base``."""
    image = Path(os.path.abspath(sample.image))
    base = Path(os.path.abspath(base))
    text = image.relative_to(base).as_posix() if image.is_relative_to(base) else str(image)
    if any(ch.isspace() for ch in text):
        raise ValueError(
            f"image path {text!r} contains whitespace, which the index format cannot hold"
        )
    boxes = " ".join(",".join(str(int(v)) for v in box) for box in sample.boxes.tolist())
    return f"{text} {boxes}" if boxes else text


def append_samples(path: Path, samples: Iterable[Sample]) -> int:
    """Append samples to an index in one write followed by fsync; return how many.

    One ``write`` on an ``O_APPEND`` descriptor keeps concurrent readers from seeing a half
    batch in practice, and the fsync makes accepted labels survive a power cut. All lines are
    formatted before anything is written, so a bad sample leaves the index untouched.
    """
    path = Path(path)
    base = path.resolve().parent
    lines = [format_line(sample, base) for sample in samples]
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = ""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) not in (b"\n", b"\r"):
                prefix = "\n"  # the last line had no newline; do not glue ours onto it
    data = (prefix + "\n".join(lines) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(lines)
