"""Turn the detector's raw output grid into boxes: peak picking, box decoding, NMS.

Pure numpy and shared by the Keras and the LiteRT paths, so both produce the same boxes from the
same grid. The grid layout is defined in :mod:`workers.detector`.
"""

from __future__ import annotations

import numpy as np

from workers.detector import REG_CHANNELS, STRIDE
from workers.mining import Detections

#: Upper bound on boxes per frame; a construction-site frame has far fewer objects.
MAX_DETECTIONS = 100

_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def find_peaks(heat: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells whose score is >= ``threshold`` and >= their 8 neighbours in the same class.

    This is CenterNet's 3x3 max-pool trick, evaluated only at the few cells above the threshold
    instead of over the whole grid. Returns ``(ys, xs, classes)``.
    """
    ys, xs, cs = np.nonzero(heat >= threshold)
    if len(ys) == 0:
        return ys, xs, cs
    padded = np.pad(heat, ((1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    centre = heat[ys, xs, cs]
    keep = np.ones(len(ys), dtype=bool)
    for dy, dx in _NEIGHBOURS:
        keep &= centre >= padded[ys + 1 + dy, xs + 1 + dx, cs]
    return ys[keep], xs[keep], cs[keep]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` xyxy box against ``(N, 4)`` boxes."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Greedy per-class non-maximum suppression; returns kept indices, best score first."""
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[pos + 1 :]
        rest = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        if len(rest):
            suppressed[rest[box_iou(boxes[i], boxes[rest]) >= iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


def decode(
    grid: np.ndarray,
    obj_threshold: float,
    nms_threshold: float,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int] | None = None,
    max_detections: int = MAX_DETECTIONS,
) -> Detections:
    """Decode one ``(H/4, W/4, K + 4)`` output grid into boxes in frame pixels.

    ``frame_hw`` is the size of the original frame that was resized to ``input_hw``; boxes are
    scaled back to it (defaults to ``input_hw``). ``class_probs`` holds, for each box, the K
    heatmap scores at its centre normalised to sum to 1: what the CrossEntropy miner needs.
    """
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim == 4:
        if grid.shape[0] != 1:
            raise ValueError(f"decode takes one image, got a batch of {grid.shape[0]}")
        grid = grid[0]
    k = grid.shape[-1] - REG_CHANNELS
    if k < 1:
        raise ValueError(f"output grid has {grid.shape[-1]} channels; expected classes + 4")
    heat = grid[..., :k]
    ys, xs, cs = find_peaks(heat, obj_threshold)
    if len(ys) == 0:
        return Detections.empty(k)

    scores = heat[ys, xs, cs]
    if len(scores) > 4 * max_detections:  # bound NMS work on a pathological frame
        top = np.argsort(-scores)[: 4 * max_detections]
        ys, xs, cs, scores = ys[top], xs[top], cs[top], scores[top]
    reg = grid[ys, xs, k:]
    w = np.exp(np.clip(reg[:, 0], -10, 10)) * STRIDE
    h = np.exp(np.clip(reg[:, 1], -10, 10)) * STRIDE
    cx = (xs + reg[:, 2]) * STRIDE
    cy = (ys + reg[:, 3]) * STRIDE

    in_h, in_w = input_hw
    fr_h, fr_w = frame_hw or input_hw
    sx, sy = fr_w / in_w, fr_h / in_h
    boxes = np.stack(
        [(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy], 1
    )
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, fr_w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, fr_h)

    kept = nms(boxes, scores, cs, nms_threshold)[:max_detections]
    probs = heat[ys[kept], xs[kept]]
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-9)
    return Detections(
        boxes=boxes[kept].astype(np.float32),
        scores=scores[kept].astype(np.float32),
        classes=cs[kept].astype(np.int64),
        class_probs=probs.astype(np.float32),
    )
