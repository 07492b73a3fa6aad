"""Detection metrics: precision/recall/F1 at the operating threshold, and COCO mAP.

Two kinds of numbers answer two questions:

* precision, recall, F1 at ``obj_threshold`` say how the model behaves as deployed. Detections
  are matched one-to-one to ground truth of the same class, greedily by descending score, at
  IoU >= 0.5; unmatched detections are false positives, unmatched ground truth false negatives.
* mAP@0.5 and mAP@0.5:0.95 (pycocotools, area "all", up to 100 detections per image) rank models
  independently of any threshold, so they are computed from detections kept down to a low score.

* ``sedna_precision`` is the precision of Sedna's helmet-detection eval
  (``validate_utils.py`` of its example), kept under its own name because it measures something
  else: a detection is correct when it overlaps *any* ground-truth box of its class at IoU >= 0.5,
  so duplicates of one box all count as correct, and images without ground-truth boxes are
  skipped (their detections count nowhere). One box found twice is 0.5 for ``precision`` and 1.0
  for ``sedna_precision``. Overall it is Sedna's ``all_precisions`` (correct over predicted,
  summed over classes); per class its ``precision`` list. Sedna adds 1e-6 to every count, which
  makes a class with no detections 1.0; here that class is ``None`` and no detections at all is
  0.0, as for ``precision``.

Everything is reported overall and per class (keyed by class name). Precision of a class with
no detections and recall of a class with no ground truth are ``None``, not 0: an absent class
must not look like a failing one.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.mining import Detections
from workers.postprocess import box_iou

MATCH_IOU = 0.5


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0


def match_image(
    det: Detections, gt: np.ndarray, num_classes: int, iou_threshold: float = MATCH_IOU
) -> list[Counts]:
    """One-to-one greedy matching for one image; returns per-class counts.

    ``gt`` is ``(N, 5)`` ``x1, y1, x2, y2, cls`` in the same pixel space as ``det.boxes``.
    """
    gt = np.asarray(gt, dtype=np.float32).reshape(-1, 5)
    counts = [Counts() for _ in range(num_classes)]
    for c in range(num_classes):
        gt_c = gt[gt[:, 4] == c, :4]
        sel = np.nonzero(det.classes == c)[0]
        sel = sel[np.argsort(-det.scores[sel], kind="stable")]
        taken = np.zeros(len(gt_c), dtype=bool)
        for i in sel:
            if len(gt_c):
                ious = box_iou(det.boxes[i], gt_c)
                ious[taken] = -1.0
                best = int(np.argmax(ious))
                if ious[best] >= iou_threshold:
                    taken[best] = True
                    counts[c].tp += 1
                    continue
            counts[c].fp += 1
        counts[c].fn += int((~taken).sum())
    return counts


def sedna_counts(
    det: Detections, gt: np.ndarray, num_classes: int, iou_threshold: float = MATCH_IOU
) -> tuple[list[int], list[int]]:
    """Sedna's helmet-eval counts for one image: (correct, predicted) per class.

    A detection is correct when any ground-truth box of its class overlaps it at IoU >=
    ``iou_threshold``; boxes are not used up, so every duplicate of a found box is correct.
    The caller skips images without ground truth, as Sedna's eval does.
    """
    gt = np.asarray(gt, dtype=np.float32).reshape(-1, 5)
    correct, predicted = [0] * num_classes, [0] * num_classes
    for box, c in zip(det.boxes, det.classes.tolist(), strict=True):
        predicted[c] += 1
        gt_c = gt[gt[:, 4] == c, :4]
        if len(gt_c) and float(box_iou(box, gt_c).max()) >= iou_threshold:
            correct[c] += 1
    return correct, predicted


def _sedna_precisions(
    predictions: Sequence[Detections], ground_truth: Sequence[np.ndarray], num_classes: int,
    obj_threshold: float,
) -> tuple[float, list[float | None]]:
    """Overall and per-class ``sedna_precision`` (see the module docstring)."""
    correct, predicted = [0] * num_classes, [0] * num_classes
    for det, gt in zip(predictions, ground_truth, strict=True):
        if np.asarray(gt).reshape(-1, 5).shape[0] == 0:
            continue  # Sedna skips an index line without boxes
        image_correct, image_predicted = sedna_counts(_above(det, obj_threshold), gt, num_classes)
        for c in range(num_classes):
            correct[c] += image_correct[c]
            predicted[c] += image_predicted[c]
    per_class = [correct[c] / predicted[c] if predicted[c] else None for c in range(num_classes)]
    overall = sum(correct) / sum(predicted) if sum(predicted) else 0.0
    return overall, per_class


def _above(det: Detections, threshold: float) -> Detections:
    keep = det.scores >= threshold
    return Detections(
        boxes=det.boxes[keep],
        scores=det.scores[keep],
        classes=det.classes[keep],
        class_probs=None if det.class_probs is None else det.class_probs[keep],
    )


def coco_map(
    predictions: Sequence[Detections], ground_truth: Sequence[np.ndarray], num_classes: int
) -> dict[str, object]:
    """mAP@0.5 and mAP@0.5:0.95 overall and per class with pycocotools.

    Returns ``{"map50", "map", "per_class": [(map50, map) or (None, None) per class]}``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (det, gt) in enumerate(zip(predictions, ground_truth, strict=True), start=1):
        images.append({"id": image_id})
        for x1, y1, x2, y2, c in np.asarray(gt, dtype=np.float64).reshape(-1, 5):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for (x1, y1, x2, y2), s, c in zip(
            det.boxes.tolist(), det.scores.tolist(), det.classes.tolist()
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": s,
                }
            )
    empty = {"map50": 0.0, "map": 0.0, "per_class": [(None, None)] * num_classes}
    if not annotations:
        return {"map50": None, "map": None, "per_class": [(None, None)] * num_classes}
    if not results:
        return empty

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: [iou thresholds (10), recall points (101), classes, area ranges, max dets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]

    def mean_valid(p: np.ndarray) -> float | None:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else None

    per_class = []
    for c in range(num_classes):
        per_class.append((mean_valid(precision[0, :, c]), mean_valid(precision[:, :, c])))
    # Overall = mean over classes that have ground truth (COCO's definition).
    valid = [pc for pc in per_class if pc[0] is not None]
    map50 = float(np.mean([pc[0] for pc in valid])) if valid else None
    map_all = float(np.mean([pc[1] for pc in valid])) if valid else None
    return {"map50": map50, "map": map_all, "per_class": per_class}


def evaluate(
    predictions: Sequence[Detections],
    ground_truth: Sequence[np.ndarray],
    class_names: Sequence[str],
    obj_threshold: float,
) -> dict[str, object]:
    """All metrics for a set of images, as the JSON-ready dict eval.py reports.

    ``predictions`` should be decoded with a low score threshold (mAP needs the tail);
    precision/recall/F1 use only detections with score >= ``obj_threshold``.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} images")
    k = len(class_names)
    per_class_counts = [Counts() for _ in range(k)]
    for det, gt in zip(predictions, ground_truth, strict=True):
        for c, counts in enumerate(match_image(_above(det, obj_threshold), gt, k)):
            per_class_counts[c].add(counts)
    total = Counts()
    for counts in per_class_counts:
        total.add(counts)
    maps = coco_map(predictions, ground_truth, k)
    sedna_overall, sedna_per_class = _sedna_precisions(
        predictions, ground_truth, k, obj_threshold
    )
    per_class: dict[str, dict[str, object]] = {}
    for c, name in enumerate(class_names):
        counts = per_class_counts[c]
        map50, map_all = maps["per_class"][c]  # type: ignore[index]
        per_class[name] = {
            "precision": counts.precision,
            "sedna_precision": sedna_per_class[c],
            "recall": counts.recall,
            "f1": counts.f1,
            "map50": map50,
            "map": map_all,
            "tp": counts.tp,
            "fp": counts.fp,
            "fn": counts.fn,
        }
    return {
        "precision": total.precision if total.precision is not None else 0.0,
        "sedna_precision": sedna_overall,
        "recall": total.recall if total.recall is not None else 0.0,
        "f1": total.f1 if total.f1 is not None else 0.0,
        "map50": maps["map50"],
        "map": maps["map"],
        "images": len(ground_truth),
        "per_class": per_class,
    }
