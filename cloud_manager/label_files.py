"""``edgeloop label import``: reading labelled samples from what an annotation tool returns.

Four layouts, each read by the project's one reader of it: the seed's index (``data.txt``,
``protocol.dataset_index.read_index``), a YOLO folder, a COCO JSON and a Label Studio JSON export
(``protocol.label_formats``, converted
into a scratch index with the images left in place). A bad line or image is skipped and reported
(``data.txt:7: box 1: class 9 is out of range 0..3``), never fatal for the rest.

The samples then travel to the cloud in requests of at most :data:`BATCH_BYTES` of images, each
image named by its sha256 (the key the node dedupes on).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.dataset_index import read_index
from protocol.label_formats import import_coco, import_label_studio, import_yolo

LABEL_FORMATS = ("index", "yolo", "coco", "label-studio")
#: Image bytes per ``label_import`` request, under the 4 MiB message limit with room to spare.
BATCH_BYTES = 3 * 1024 * 1024
#: The largest image one labelled-sample message can carry to a node.
MAX_IMAGE_BYTES = BATCH_BYTES

_MAGIC = {b"\xff\xd8\xff": "jpg", b"\x89PNG\r\n\x1a\n": "png"}


@dataclass(frozen=True)
class LabelledFile:
    image: Path
    boxes: list[list[int]]
    source: str  # where it was read: "data.txt:4", or the image for YOLO and COCO


@dataclass
class LabelFileRead:
    samples: list[LabelledFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_labels(path: Path, fmt: str, class_names: Sequence[str]) -> LabelFileRead:
    """The labelled samples of ``path`` (an index file, a YOLO folder, a COCO JSON or a Label
    Studio JSON export).

    Raises ``ValueError``/``FileNotFoundError`` only when nothing at all can be read."""
    path = Path(path)
    if fmt not in LABEL_FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(LABEL_FORMATS)}")
    if fmt == "index":
        return _from_index(path, path.name, len(class_names), line_sources=True)
    with tempfile.TemporaryDirectory(prefix="edgeloop-labels-") as scratch:
        index = Path(scratch) / "data.txt"
        try:
            if fmt == "yolo":
                if path.is_file():  # data.yaml or classes.txt: the folder is what is meant
                    path = path.parent
                report = import_yolo(path, index, class_names, copy_images=False)
            elif fmt == "label-studio":
                report = import_label_studio(path, index, class_names=class_names,
                                             copy_images=False)
            else:
                report = import_coco(path, index, class_names=class_names, copy_images=False)
        except ValueError as exc:  # e.g. a path with whitespace the index cannot hold
            raise ValueError(f"{path}: {exc}") from None
        read = _from_index(index, str(path), len(class_names), line_sources=False)
    read.problems = list(report.problems) + [
        f"{n} boxes of class {name!r} left out: the job has no class of that name"
        for name, n in sorted(report.unknown_classes.items())
    ] + read.problems
    return read


def _from_index(index: Path, shown: str, num_classes: int, line_sources: bool) -> LabelFileRead:
    result = read_index(index, num_classes, check_images=True)
    read = LabelFileRead(problems=[f"{shown}:{p.line_no}: {p.reason}" for p in result.problems])
    for sample in result.samples:
        source = f"{shown}:{sample.line_no}" if line_sources else str(sample.image)
        read.samples.append(LabelledFile(sample.image, sample.boxes.tolist(), source))
    return read


def image_format(data: bytes) -> str | None:
    """``jpg`` or ``png`` from the file's first bytes; None for anything else."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


@dataclass
class Batch:
    samples: list[dict[str, Any]]  # the request's ``args["samples"]``
    images: dict[str, bytes]  # sha256 -> bytes: the request's attachments


def batches(samples: Sequence[LabelledFile], problems: list[str],
            budget: int = BATCH_BYTES) -> Iterator[Batch]:
    """Requests of at most ``budget`` image bytes each; images that cannot travel (not JPEG or
    PNG, too large, unreadable, the same image again) are reported in ``problems``."""
    batch, size = Batch([], {}), 0
    first_source: dict[str, str] = {}
    for sample in samples:
        try:
            data = sample.image.read_bytes()
        except OSError as exc:
            problems.append(f"{sample.source}: cannot read {sample.image}: {exc.strerror or exc}")
            continue
        fmt = image_format(data)
        if fmt is None:
            problems.append(f"{sample.source}: {sample.image.name} is not a JPEG or PNG image; "
                            "only those can be imported")
            continue
        if len(data) > MAX_IMAGE_BYTES:
            problems.append(f"{sample.source}: {sample.image.name} is {len(data)} bytes, over the "
                            f"{MAX_IMAGE_BYTES} byte limit of one message")
            continue
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in first_source:
            problems.append(f"{sample.source}: same image as {first_source[sha256]}; "
                            "the first one's labels are used")
            continue
        first_source[sha256] = sample.source
        if batch.samples and size + len(data) > budget:
            yield batch
            batch, size = Batch([], {}), 0
        batch.samples.append({"sha256": sha256, "format": fmt, "boxes": sample.boxes,
                              "source": sample.source})
        batch.images[sha256] = data
        size += len(data)
    if batch.samples:
        yield batch
