"""Precision/recall/F1 matching and COCO mAP, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from workers.metrics import Counts, coco_map, evaluate, match_image
from workers.mining import Detections

NAMES = ("person", "helmet", "helmet-on", "helmet-off")


def det(rows: list[tuple[float, float, float, float, float, int]]) -> Detections:
    """Detections from (x1, y1, x2, y2, score, cls) rows."""
    if not rows:
        return Detections.empty(4)
    a = np.asarray(rows, dtype=np.float64)
    return Detections(a[:, :4], a[:, 4], a[:, 5].astype(int))


def gt(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.int32).reshape(-1, 5)


def test_one_to_one_matching_counts_a_duplicate_as_false_positive() -> None:
    truth = gt([(10, 10, 50, 50, 3)])
    found = det([(10, 10, 50, 50, 0.9, 3), (11, 11, 50, 50, 0.8, 3)])
    counts = match_image(found, truth, 4)
    assert (counts[3].tp, counts[3].fp, counts[3].fn) == (1, 1, 0)


def test_matching_is_greedy_by_score_not_by_order() -> None:
    truth = gt([(0, 0, 10, 10, 0)])
    # The lower-scored box comes first and overlaps better; the higher-scored one still wins.
    found = det([(0, 0, 10, 10, 0.5, 0), (0, 0, 10, 14, 0.9, 0)])
    counts = match_image(found, truth, 4)
    assert (counts[0].tp, counts[0].fp) == (1, 1)


def test_wrong_class_or_low_iou_is_not_a_match() -> None:
    truth = gt([(0, 0, 10, 10, 2), (100, 100, 120, 120, 3)])
    found = det([(0, 0, 10, 10, 0.9, 3), (100, 100, 140, 140, 0.9, 3)])  # IoU 0.25 for the second
    counts = match_image(found, truth, 4)
    assert (counts[2].tp, counts[2].fn) == (0, 1)
    assert (counts[3].tp, counts[3].fp, counts[3].fn) == (0, 2, 1)


def test_counts_ratios_and_undefined_cases() -> None:
    c = Counts(tp=3, fp=1, fn=2)
    assert c.precision == pytest.approx(0.75)
    assert c.recall == pytest.approx(0.6)
    assert c.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert Counts(fn=2).precision is None
    assert Counts(fp=2).recall is None


def test_evaluate_uses_obj_threshold_for_precision_and_recall_only() -> None:
    truth = [gt([(0, 0, 20, 20, 3), (40, 40, 60, 60, 2)])]
    found = [det([(0, 0, 20, 20, 0.9, 3), (40, 40, 60, 60, 0.2, 2), (80, 80, 90, 90, 0.6, 1)])]
    m = evaluate(found, truth, NAMES, obj_threshold=0.5)
    # At 0.5: helmet-off TP, helmet FP, helmet-on FN (its detection scores 0.2).
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["per_class"]["helmet-on"]["recall"] == 0.0
    # mAP sees the 0.2 detection: both ground-truth classes are found perfectly.
    assert m["per_class"]["helmet-on"]["map50"] == pytest.approx(1.0)
    assert m["map50"] == pytest.approx(1.0)
    # No ground truth of "helmet" and "person": their AP is undefined, not zero.
    assert m["per_class"]["helmet"]["map50"] is None
    assert m["per_class"]["person"]["recall"] is None
    assert set(m["per_class"]) == set(NAMES)


def test_map_of_a_half_found_class() -> None:
    truth = [gt([(0, 0, 20, 20, 0)]), gt([(0, 0, 20, 20, 0)])]
    found = [det([(0, 0, 20, 20, 0.9, 0)]), det([])]
    m = coco_map(found, truth, 4)
    # Recall reaches 0.5 at precision 1: COCO's 101-point AP is 51/101.
    assert m["per_class"][0][0] == pytest.approx(51 / 101)


def test_map_at_higher_iou_penalises_loose_boxes() -> None:
    truth = [gt([(0, 0, 100, 100, 1)])]
    loose = [det([(0, 0, 100, 70, 0.9, 1)])]  # IoU 0.7
    m = coco_map(loose, truth, 4)
    assert m["map50"] == pytest.approx(1.0)
    # Matched at IoU 0.50..0.70 (5 of 10 thresholds).
    assert m["map"] == pytest.approx(0.5)


def test_no_detections_at_all() -> None:
    m = evaluate([det([])], [gt([(0, 0, 10, 10, 0)])], NAMES, 0.3)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["map50"] == 0.0


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="predictions"):
        evaluate([det([])], [], NAMES, 0.3)
