"""Importing labelled data from YOLO, COCO and Label Studio layouts into the seed's index format.

Teams rarely start from nothing: they have a YOLO export from a labelling tool or a COCO JSON.
Both are converted into a ``data.txt`` plus images beside it. Source classes are matched to
the job's class names by name (case and ``_``/space vs ``-`` ignored, or an explicit
``source=target`` map); boxes of classes with no match are left out and counted per name, so an
import never silently changes what a class means.

Images are copied under ``<index folder>/images/`` by default so that the index is
self-contained and relative; images already under the index folder are referenced in place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from protocol.classes import CLASS_NAMES
from protocol.dataset_index import Sample, append_samples, image_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class ImportReport:
    """What an import wrote and what it had to leave out (and why)."""

    index: Path
    samples: int = 0
    boxes: int = 0
    negatives: int = 0
    unknown_classes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.samples} samples ({self.negatives} without boxes), "
            f"{self.boxes} boxes -> {self.index}"
        )
        if self.unknown_classes:
            unknown = ", ".join(
                f"{name} ({n} boxes)" for name, n in sorted(self.unknown_classes.items())
            )
            text += f"\nleft out, no matching class name: {unknown}"
        if self.problems:
            text += f"\n{len(self.problems)} problems"
        return text


# ---------------------------------------------------------------------------------------------
# Pure conversions


def normalise_class_name(name: str) -> str:
    return "-".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())


def parse_name_map(pairs: Sequence[str]) -> dict[str, str]:
    """``["head=helmet-off", "hat=helmet-on"]`` -> mapping; bad pairs are named in the error."""
    result: dict[str, str] = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"class map entry {pair!r} must look like source=target")
        result[source.strip()] = target.strip()
    return result


def build_class_mapping(
    source_names: Mapping[int, str],
    target_names: Sequence[str],
    name_map: Mapping[str, str] | None = None,
) -> tuple[dict[int, int], dict[int, str]]:
    """Map source class ids onto indexes of ``target_names``.

    Returns (source id -> target index, unmatched source id -> its name).
    """
    targets = {normalise_class_name(n): i for i, n in enumerate(target_names)}
    explicit = {normalise_class_name(k): v for k, v in (name_map or {}).items()}
    for source, target in explicit.items():
        if normalise_class_name(target) not in targets:
            raise ValueError(
                f"class map {source}={target}: {target!r} is not one of {', '.join(target_names)}"
            )
    mapping: dict[int, int] = {}
    unmatched: dict[int, str] = {}
    for source_id, name in source_names.items():
        key = normalise_class_name(name)
        target = explicit.get(key, name)
        index = targets.get(normalise_class_name(target))
        if index is None:
            unmatched[source_id] = name
        else:
            mapping[source_id] = index
    return mapping, unmatched


def corners_in_image(
    x1: float, y1: float, x2: float, y2: float, width: int, height: int
) -> list[int] | None:
    """Round float corners to integer pixels clipped to the image; None if no area is left."""
    ix1, iy1 = max(0, int(round(x1))), max(0, int(round(y1)))
    ix2, iy2 = min(width, int(round(x2))), min(height, int(round(y2)))
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    return [ix1, iy1, ix2, iy2]


def yolo_box(line: str, width: int, height: int) -> tuple[int, list[int] | None]:
    """One YOLO label line ``cls cx cy w h`` (normalised) -> (source class, corners or None)."""
    parts = line.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 values 'class cx cy w h', got {len(parts)}")
    try:
        cls = int(parts[0])
        cx, cy, w, h = (float(v) for v in parts[1:])
    except ValueError:
        raise ValueError(f"not numbers: {line.strip()!r}") from None
    if not all(np.isfinite((cx, cy, w, h))) or w <= 0 or h <= 0:
        raise ValueError(f"box has no area or is not finite: {line.strip()!r}")
    box = corners_in_image(
        (cx - w / 2) * width,
        (cy - h / 2) * height,
        (cx + w / 2) * width,
        (cy + h / 2) * height,
        width,
        height,
    )
    return cls, box


# ---------------------------------------------------------------------------------------------
# Shared writing


class _Writer:
    """Collects samples, placing images beside the index, and writes the index once at the end."""

    def __init__(self, out_index: Path, copy_images: bool, append: bool, overwrite: bool) -> None:
        self.index = Path(out_index).absolute()
        self.base = self.index.parent
        if self.index.exists() and not (append or overwrite):
            raise FileExistsError(f"{self.index} exists; pass append or overwrite to change it")
        self.copy_images = copy_images
        self.append = append
        self.samples: list[Sample] = []

    def place(self, image: Path, relative: Path) -> Path:
        image = image.absolute()
        if not self.copy_images or image.is_relative_to(self.base):
            return image
        if relative.is_absolute() or ".." in relative.parts:
            relative = Path(relative.name)  # never write outside images/
        dest = self.base / "images" / relative
        if dest.exists() and dest.stat().st_size == image.stat().st_size:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(image, dest)  # same filesystem: no copy needed
        except OSError:
            shutil.copy2(image, dest)
        return dest

    def finish(self, report: ImportReport) -> ImportReport:
        self.base.mkdir(parents=True, exist_ok=True)
        if not self.append and self.index.exists():
            self.index.unlink()
        append_samples(self.index, self.samples)
        if not self.index.exists():
            self.index.touch()
        report.samples = len(self.samples)
        report.boxes = sum(len(s.boxes) for s in self.samples)
        report.negatives = sum(1 for s in self.samples if len(s.boxes) == 0)
        return report


def _sample(image: Path, boxes: list[list[int]]) -> Sample:
    return Sample(image=image, boxes=np.asarray(boxes, np.int32).reshape(-1, 5))


# ---------------------------------------------------------------------------------------------
# YOLO


def read_yolo_class_names(src: Path) -> dict[int, str] | None:
    """Class names from ``classes.txt`` / ``obj.names``, or ``names`` in ``data.yaml``."""
    for name in ("classes.txt", "obj.names"):
        path = src / name
        if path.is_file():
            names = [
                line.strip()
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
            return dict(enumerate(names))
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        path = src / name
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML: {exc}") from None
            listed = data.get("names") if isinstance(data, dict) else None
            if isinstance(listed, list):
                return {i: str(n) for i, n in enumerate(listed)}
            if isinstance(listed, dict):
                try:
                    return {int(k): str(v) for k, v in listed.items()}
                except ValueError:
                    raise ValueError(f"{path}: names keys must be class numbers") from None
            raise ValueError(f"{path}: has no 'names' list")
    return None


def _yolo_pairs(src: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(image, label file, image path relative to the images root) for either YOLO layout."""
    images_root = src / "images"
    if images_root.is_dir():
        labels_root = src / "labels"
        for image in sorted(images_root.rglob("*")):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                rel = image.relative_to(images_root)
                yield image, (labels_root / rel).with_suffix(".txt"), rel
    else:  # flat: images and their .txt side by side
        for image in sorted(src.rglob("*")):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                rel = image.relative_to(src)
                yield image, image.with_suffix(".txt"), rel


def import_yolo(
    src: Path,
    out_index: Path,
    class_names: Sequence[str] = CLASS_NAMES,
    source_classes: Sequence[str] | None = None,
    name_map: Mapping[str, str] | None = None,
    copy_images: bool = True,
    append: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Convert a YOLO dataset (``images/`` + ``labels/``, or images and ``.txt`` side by side).

    An image without a label file is a negative sample, as YOLO tools treat it.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"YOLO source folder not found: {src}")
    names = dict(enumerate(source_classes)) if source_classes else read_yolo_class_names(src)
    if not names:
        raise ValueError(
            f"{src}: no class names; pass them or add classes.txt or data.yaml with 'names'"
        )
    mapping, unmatched = build_class_mapping(names, class_names, name_map)
    writer = _Writer(out_index, copy_images, append, overwrite)
    report = ImportReport(index=writer.index)
    for image, label_file, rel in _yolo_pairs(src):
        size = image_size(image)
        if size is None:
            report.problems.append(f"{image}: unreadable image, skipped")
            continue
        width, height = size
        boxes: list[list[int]] = []
        lines = (
            label_file.read_text(encoding="utf-8", errors="replace").splitlines()
            if label_file.is_file()
            else []
        )
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                cls, box = yolo_box(line, width, height)
            except ValueError as exc:
                report.problems.append(f"{label_file}:{line_no}: {exc}")
                continue
            if cls not in names:
                report.problems.append(
                    f"{label_file}:{line_no}: class {cls} has no name (only {len(names)} names)"
                )
                continue
            if cls in unmatched:
                report.unknown_classes[unmatched[cls]] += 1
                continue
            if box is None:
                report.problems.append(f"{label_file}:{line_no}: box lies outside the image")
                continue
            boxes.append([*box, mapping[cls]])
        writer.samples.append(_sample(writer.place(image, rel), boxes))
    return writer.finish(report)


# ---------------------------------------------------------------------------------------------
# COCO


class _CocoImage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int
    file_name: str
    width: int | None = None
    height: int | None = None


class _CocoAnnotation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image_id: int
    category_id: int
    bbox: list[float]
    iscrowd: int = 0


class _CocoCategory(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int
    name: str


class _CocoFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    images: list[_CocoImage]
    annotations: list[_CocoAnnotation] = []
    categories: list[_CocoCategory]


def load_coco(path: Path) -> _CocoFile:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    try:
        return _CocoFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: not a COCO detection file: {where}: {first['msg']}") from None


def import_coco(
    annotations: Path,
    out_index: Path,
    images_dir: Path | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    name_map: Mapping[str, str] | None = None,
    copy_images: bool = True,
    append: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Convert a COCO detection JSON; ``file_name`` is resolved against ``images_dir``.

    ``images_dir`` defaults to the JSON's folder. Crowd regions (``iscrowd=1``) are not objects
    one can box one by one, so they are left out and reported.
    """
    coco = load_coco(Path(annotations))
    root = Path(images_dir) if images_dir is not None else Path(annotations).parent
    names = {c.id: c.name for c in coco.categories}
    mapping, unmatched = build_class_mapping(names, class_names, name_map)
    writer = _Writer(out_index, copy_images, append, overwrite)
    report = ImportReport(index=writer.index)
    by_image: dict[int, list[_CocoAnnotation]] = {}
    for ann in coco.annotations:
        by_image.setdefault(ann.image_id, []).append(ann)
    known_ids = {im.id for im in coco.images}
    orphans = sum(len(v) for k, v in by_image.items() if k not in known_ids)
    if orphans:
        report.problems.append(f"{orphans} annotations refer to image ids not in 'images'")
    crowd = 0
    for entry in coco.images:
        image = root / entry.file_name
        size = image_size(image)
        if size is None:
            report.problems.append(f"{image}: missing or unreadable image, skipped")
            continue
        width, height = size
        if entry.width and entry.height and (entry.width, entry.height) != (width, height):
            report.problems.append(
                f"{image}: JSON says {entry.width}x{entry.height} but the file is "
                f"{width}x{height}; using the file"
            )
        boxes: list[list[int]] = []
        for ann in by_image.get(entry.id, []):
            if ann.iscrowd:
                crowd += 1
                continue
            if ann.category_id not in names:
                report.problems.append(
                    f"{image}: annotation with unknown category id {ann.category_id}"
                )
                continue
            if ann.category_id in unmatched:
                report.unknown_classes[unmatched[ann.category_id]] += 1
                continue
            if len(ann.bbox) != 4:
                report.problems.append(f"{image}: bbox {ann.bbox} does not have 4 values")
                continue
            x, y, w, h = ann.bbox
            box = corners_in_image(x, y, x + w, y + h, width, height) if w > 0 and h > 0 else None
            if box is None:
                report.problems.append(f"{image}: bbox {ann.bbox} has no area inside the image")
                continue
            boxes.append([*box, mapping[ann.category_id]])
        writer.samples.append(_sample(writer.place(image, Path(entry.file_name)), boxes))
    if crowd:
        report.problems.append(f"{crowd} crowd annotations (iscrowd=1) left out")
    return writer.finish(report)


def write_coco(
    path: Path,
    samples: Sequence[Sample],
    class_names: Sequence[str],
    scores: Sequence[Sequence[float]] | None = None,
) -> int:
    """Write samples as a COCO detection JSON that :func:`import_coco` reads back; return the
    number of annotations.

    ``file_name`` is relative to the JSON's folder when the image is under it; ``bbox`` is
    ``[x, y, w, h]``; category ids are ``1..N`` in ``class_names`` order (0 is background to
    several tools). ``scores`` (one list per sample, one score per box) marks the boxes as model
    proposals, as annotation tools that take pre-annotations expect. The file is written under a
    temporary name and renamed, so a reader never sees half of it.
    """
    path = Path(path).absolute()
    base = path.parent
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for image_id, sample in enumerate(samples, start=1):
        size = image_size(sample.image)
        if size is None:
            raise ValueError(f"{sample.image}: missing or unreadable image")
        image = Path(os.path.abspath(sample.image))
        name = image.relative_to(base).as_posix() if image.is_relative_to(base) else str(image)
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        box_scores = scores[image_id - 1] if scores is not None else None
        for i, (x1, y1, x2, y2, cls) in enumerate(sample.boxes.tolist()):
            if not 0 <= cls < len(class_names):
                raise ValueError(f"{sample.image}: box {i + 1}: class {cls} has no name")
            annotation = {
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            }
            if box_scores is not None:
                annotation["score"] = float(box_scores[i])
            annotations.append(annotation)
    document = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
    }
    base.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return len(annotations)


# ---------------------------------------------------------------------------------------------
# Label Studio
#
# Tasks are ``{"data": {"image": ...}, "predictions": [...], "annotations": [...]}``; a box is a
# ``rectanglelabels`` result whose ``value`` holds ``x``, ``y``, ``width``, ``height`` in percent
# of the image and the class name in ``rectanglelabels``. Export writes the model's boxes as
# ``predictions`` (pre-annotations a person corrects); import reads the newest ``annotations``
# entry that was not cancelled.

LABEL_STUDIO_FROM, LABEL_STUDIO_TO = "label", "image"
#: Label Studio prefixes uploaded files with 8 hex digits and a dash.
_UPLOAD_PREFIX_LEN = 9


def write_label_studio(
    path: Path,
    samples: Sequence[Sample],
    class_names: Sequence[str],
    scores: Sequence[Sequence[float]] | None = None,
) -> int:
    """Write samples as Label Studio tasks with their boxes as predictions; return the number of
    boxes. ``data.image`` is the image's path relative to the JSON's folder (as Label Studio's
    local-files storage serves it when pointed at that folder)."""
    path = Path(path).absolute()
    base = path.parent
    tasks: list[dict[str, object]] = []
    count = 0
    for i, sample in enumerate(samples):
        size = image_size(sample.image)
        if size is None:
            raise ValueError(f"{sample.image}: missing or unreadable image")
        width, height = size
        image = Path(os.path.abspath(sample.image))
        name = image.relative_to(base).as_posix() if image.is_relative_to(base) else str(image)
        box_scores = scores[i] if scores is not None else None
        results = []
        for j, (x1, y1, x2, y2, cls) in enumerate(sample.boxes.tolist()):
            if not 0 <= cls < len(class_names):
                raise ValueError(f"{sample.image}: box {j + 1}: class {cls} has no name")
            result: dict[str, object] = {
                "id": f"p{i + 1}-{j + 1}", "type": "rectanglelabels",
                "from_name": LABEL_STUDIO_FROM, "to_name": LABEL_STUDIO_TO,
                "original_width": width, "original_height": height, "image_rotation": 0,
                "value": {"x": 100 * x1 / width, "y": 100 * y1 / height,
                          "width": 100 * (x2 - x1) / width, "height": 100 * (y2 - y1) / height,
                          "rotation": 0, "rectanglelabels": [class_names[cls]]},
            }
            if box_scores is not None:
                result["score"] = float(box_scores[j])
            results.append(result)
        count += len(results)
        prediction: dict[str, object] = {"model_version": "edgeloop", "result": results}
        if box_scores:
            prediction["score"] = float(min(box_scores))
        tasks.append({"data": {"image": name}, "predictions": [prediction]})
    base.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(tasks, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return count


def _label_studio_image(reference: str, root: Path) -> Path | None:
    """The file a task's ``data.image`` names: a path relative to the JSON's folder, a
    local-files URL (``/data/local-files/?d=...``) or an upload (``/data/upload/1/ab12cd34-x.jpg``),
    looked for beside the JSON and in its ``images/`` folder."""
    parts = urlsplit(reference)
    local = parse_qs(parts.query).get("d")
    written = Path(local[0] if local else parts.path)
    name = written.name
    candidates = [root / written] if not written.is_absolute() else [written]
    for folder in (root / "images", root):
        candidates.append(folder / name)
        if len(name) > _UPLOAD_PREFIX_LEN and name[_UPLOAD_PREFIX_LEN - 1] == "-":
            candidates.append(folder / name[_UPLOAD_PREFIX_LEN:])
    return next((c for c in candidates if c.is_file()), None)


def import_label_studio(
    path: Path,
    out_index: Path,
    class_names: Sequence[str] = CLASS_NAMES,
    name_map: Mapping[str, str] | None = None,
    copy_images: bool = True,
    append: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Convert a Label Studio JSON export (a list of tasks) of ``rectanglelabels`` boxes.

    A task without a (not cancelled) annotation is not labelled yet: it is left out and
    reported, never read as an image without objects. An annotation with no boxes is one."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Label Studio export not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: not a Label Studio JSON export (expected a list of tasks)")
    root = Path(path).parent
    writer = _Writer(out_index, copy_images, append, overwrite)
    report = ImportReport(index=writer.index)
    for i, task in enumerate(tasks, start=1):
        read = _label_studio_task(task, i, root, class_names, name_map, report)
        if read is not None:
            image, boxes, relative = read
            writer.samples.append(_sample(writer.place(image, relative), boxes))
    return writer.finish(report)


def _label_studio_task(
    task: object, number: int, root: Path, class_names: Sequence[str],
    name_map: Mapping[str, str] | None, report: ImportReport,
) -> tuple[Path, list[list[int]], Path] | None:
    where = f"task {number}"
    data = task.get("data") if isinstance(task, dict) else None
    reference = data.get("image") if isinstance(data, dict) else None
    if not isinstance(task, dict) or not isinstance(reference, str):
        report.problems.append(f"{where}: no data.image; skipped")
        return None
    where = f"task {task.get('id', number)} ({Path(urlsplit(reference).path).name or reference})"
    done = [a for a in task.get("annotations") or []
            if isinstance(a, dict) and not a.get("was_cancelled")]
    if not done:
        report.problems.append(f"{where}: not annotated yet; skipped")
        return None
    image = _label_studio_image(reference, root)
    size = image_size(image) if image is not None else None
    if image is None or size is None:
        report.problems.append(f"{where}: image {reference} not found beside the export; skipped")
        return None
    width, height = size
    boxes: list[list[int]] = []
    for j, result in enumerate(done[-1].get("result") or [], start=1):
        value = result.get("value") if isinstance(result, dict) else None
        if not isinstance(result, dict) or result.get("type") != "rectanglelabels" \
                or not isinstance(value, dict):
            continue  # other controls (choices, text) say nothing about boxes
        box = _label_studio_box(value, width, height, class_names, name_map, report)
        if isinstance(box, str):
            report.problems.append(f"{where}: box {j}: {box}")
        elif box is not None:
            boxes.append(box)
    return image, boxes, Path(image.name)


def _label_studio_box(
    value: dict[str, object], width: int, height: int, class_names: Sequence[str],
    name_map: Mapping[str, str] | None, report: ImportReport,
) -> list[int] | str | None:
    """The box as ``x1,y1,x2,y2,cls``; a reason when it cannot be one; None for a class the job
    does not have (counted by name)."""
    labels = value.get("rectanglelabels")
    if not isinstance(labels, list) or len(labels) != 1:
        return f"expected one label, got {labels!r}"
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))  # type: ignore[arg-type]
        rotation = float(value.get("rotation") or 0)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return "x, y, width and height must be numbers"
    if rotation % 360:
        return f"rotated by {rotation:g} degrees; the index holds upright boxes only"
    mapping, unmatched = build_class_mapping({0: str(labels[0])}, class_names, name_map)
    if unmatched:
        report.unknown_classes[str(labels[0])] += 1
        return None
    corners = corners_in_image(x * width / 100, y * height / 100, (x + w) * width / 100,
                               (y + h) * height / 100, width, height) if w > 0 and h > 0 else None
    if corners is None:
        return f"no area inside the {width}x{height} image"
    return [*corners, mapping[0]]
