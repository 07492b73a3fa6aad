"""``edgeloop hardex export``: a job's hard examples as files an annotation tool opens.

``OUT/images/<sha256>.<jpg|png>`` holds the frames (exactly the bytes the node sent, so a label
imported back for that file finds its hard example by sha256), and beside them the model's boxes
as proposals to correct: ``OUT/data.txt`` in the seed's index format (``index``), or
``OUT/annotations.json`` in COCO (``coco``, with each box's score), or ``OUT/tasks.json`` as
Label Studio tasks with the boxes as predictions (``label-studio``). Each is written by the one
writer of its format (``protocol.dataset_index.append_samples``,
``protocol.label_formats.write_coco``, ``write_label_studio``) and ``edgeloop label import``
reads it back (for Label Studio: the JSON export of the corrected tasks). ``OUT/sources.json``
says where each image comes from (node, camera, model version, why it was kept), which none of
the three formats has a field for.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol.dataset_index import Sample, append_samples, image_size
from protocol.label_formats import corners_in_image, write_coco, write_label_studio

EXPORT_FORMATS = ("index", "coco", "label-studio")
INDEX_NAME = "data.txt"
COCO_NAME = "annotations.json"
LABEL_STUDIO_NAME = "tasks.json"
_FILE_NAMES = {"index": INDEX_NAME, "coco": COCO_NAME, "label-studio": LABEL_STUDIO_NAME}
IMAGES_DIR = "images"
SOURCES_NAME = "sources.json"


@dataclass
class ExportResult:
    path: Path  # data.txt, annotations.json or tasks.json
    images: int = 0
    boxes: int = 0
    #: boxes left out, and why (a class the job does not know, no area inside the frame)
    dropped: list[str] = field(default_factory=list)
    #: images per ``node/camera`` (``node`` alone for a node without cameras)
    sources: Counter[str] = field(default_factory=Counter)


def image_path(out: Path, item: dict[str, Any]) -> Path:
    """Where an example's image goes in the export (its inbox name: ``<sha256>.<ext>``)."""
    return out / IMAGES_DIR / Path(item["image"]).name


def proposals(item: dict[str, Any], width: int, height: int, num_classes: int
              ) -> tuple[list[list[int]], list[float], list[str]]:
    """The model's boxes of an example as integer ``x1,y1,x2,y2,cls`` inside the frame, their
    scores, and a reason for each box left out."""
    sidecar = item.get("sidecar") or {}
    boxes, scores, dropped = [], [], []
    for i, (box, score, cls) in enumerate(zip(sidecar.get("boxes") or [], sidecar.get("scores") or [],
                                              sidecar.get("classes") or [], strict=False), start=1):
        if not 0 <= int(cls) < num_classes:
            dropped.append(f"{item['id'][:12]} box {i}: class {cls} is not one of the job's "
                           f"{num_classes} classes")
            continue
        x1, y1, x2, y2 = box
        corners = corners_in_image(x1, y1, x2, y2, width, height)
        if corners is None:
            dropped.append(f"{item['id'][:12]} box {i}: no area inside the {width}x{height} frame")
            continue
        boxes.append([*corners, int(cls)])
        scores.append(float(score))
    return boxes, scores, dropped


def source_of(item: dict[str, Any]) -> dict[str, Any]:
    """Where one exported image comes from."""
    sidecar = item.get("sidecar") or {}
    return {"image": f"{IMAGES_DIR}/{Path(item['image']).name}", "sha256": item["id"],
            "node": item.get("node", ""), "camera": sidecar.get("camera", ""),
            "model_version": sidecar.get("model_version"),
            "reason": sidecar.get("mining_reason", ""), "time": sidecar.get("time")}


def write_sources(out: Path, items: Sequence[dict[str, Any]], result: ExportResult) -> None:
    sources = [source_of(item) for item in items]
    result.sources.update("/".join(filter(None, (s["node"], s["camera"]))) for s in sources)
    tmp = out / f".{SOURCES_NAME}.tmp"
    tmp.write_text(json.dumps(sources, indent=1), encoding="utf-8")
    os.replace(tmp, out / SOURCES_NAME)


def write_export(out: Path, items: Sequence[dict[str, Any]], fmt: str,
                 class_names: Sequence[str]) -> ExportResult:
    """Write the pre-annotations of ``items``, whose images are already under ``out/images``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out).absolute()
    result = ExportResult(path=out / _FILE_NAMES[fmt])
    samples, all_scores = [], []
    for item in items:
        image = image_path(out, item)
        size = image_size(image)
        if size is None:
            raise ValueError(f"{image}: missing or unreadable image")
        boxes, scores, dropped = proposals(item, size[0], size[1], len(class_names))
        samples.append(Sample(image=image, boxes=np.asarray(boxes, np.int32)))
        all_scores.append(scores)
        result.dropped += dropped
        result.boxes += len(boxes)
    result.images = len(samples)
    write_sources(out, items, result)
    if fmt == "coco":
        write_coco(result.path, samples, class_names, all_scores)
    elif fmt == "label-studio":
        write_label_studio(result.path, samples, class_names, all_scores)
    else:
        # A fresh index every export: written aside, then renamed over the old one.
        tmp = result.path.with_name(f".{INDEX_NAME}.tmp")
        tmp.unlink(missing_ok=True)
        append_samples(tmp, samples)
        tmp.touch()
        os.replace(tmp, result.path)
    return result
