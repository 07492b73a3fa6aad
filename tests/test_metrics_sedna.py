"""``sedna_precision``: Sedna's helmet-eval precision, beside edgeloop's one-to-one ``precision``.

Checked against hand-worked cases and against Sedna's own counting code
(``tests/sedna_scripts/helmet_validate.py``) on random detections.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_metrics import det, gt

from workers.metrics import evaluate, sedna_counts
from workers.mining import Detections

NAMES = ("person", "helmet", "helmet-on", "helmet-off")


def _sedna_module():
    path = Path(__file__).resolve().parent / "sedna_scripts" / "helmet_validate.py"
    spec = importlib.util.spec_from_file_location("sedna_helmet_validate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_box_found_twice_is_half_for_edgeloop_and_whole_for_sedna() -> None:
    truth = [gt([(10, 10, 50, 50, 1)])]
    found = [det([(10, 10, 50, 50, 0.9, 1), (12, 12, 50, 50, 0.8, 1)])]
    metrics = evaluate(found, truth, NAMES, obj_threshold=0.3)
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["sedna_precision"] == pytest.approx(1.0)
    helmet = metrics["per_class"]["helmet"]  # type: ignore[index]
    assert helmet["precision"] == pytest.approx(0.5)
    assert helmet["sedna_precision"] == pytest.approx(1.0)


def test_images_without_boxes_count_for_precision_but_not_for_sedna_precision() -> None:
    truth = [gt([(0, 0, 20, 20, 0)]), gt([])]
    found = [det([(0, 0, 20, 20, 0.9, 0)]), det([(50, 50, 70, 70, 0.9, 0)])]
    metrics = evaluate(found, truth, NAMES, obj_threshold=0.3)
    assert metrics["precision"] == pytest.approx(0.5)  # the box on the empty image is a FP
    assert metrics["sedna_precision"] == pytest.approx(1.0)  # that image is skipped


def test_threshold_wrong_class_and_empty_cases() -> None:
    truth = [gt([(0, 0, 20, 20, 2), (40, 40, 60, 60, 3)])]
    found = [det([(0, 0, 20, 20, 0.9, 3), (40, 40, 60, 60, 0.2, 3), (40, 40, 60, 60, 0.9, 3)])]
    metrics = evaluate(found, truth, NAMES, obj_threshold=0.3)
    per_class = metrics["per_class"]
    # class 3: two detections above the threshold, one overlapping its box
    assert per_class["helmet-off"]["sedna_precision"] == pytest.approx(0.5)  # type: ignore[index]
    assert per_class["person"]["sedna_precision"] is None  # type: ignore[index]
    assert metrics["sedna_precision"] == pytest.approx(0.5)
    nothing = evaluate([det([])], truth, NAMES, obj_threshold=0.3)
    assert nothing["sedna_precision"] == 0.0


def test_sedna_counts_of_one_image() -> None:
    truth = gt([(0, 0, 10, 10, 0), (20, 20, 30, 30, 1)])
    found = det([(0, 0, 10, 10, 0.9, 0), (0, 0, 10, 11, 0.9, 0), (20, 20, 30, 30, 0.9, 0)])
    correct, predicted = sedna_counts(found, truth, 4)
    assert correct == [2, 0, 0, 0]
    assert predicted == [3, 0, 0, 0]


def _random_case(rng: np.random.Generator) -> tuple[Detections, np.ndarray]:
    n_gt = int(rng.integers(0, 4))
    boxes = []
    for _ in range(n_gt):
        x, y = rng.integers(0, 80, size=2)
        w, h = rng.integers(5, 30, size=2)
        boxes.append((x, y, x + w, y + h, int(rng.integers(0, 4))))
    rows = []
    for x1, y1, x2, y2, c in boxes:  # near misses and duplicates of the true boxes
        for _ in range(int(rng.integers(0, 3))):
            jitter = rng.normal(0, 4, size=4)
            rows.append((x1 + jitter[0], y1 + jitter[1], x2 + jitter[2], y2 + jitter[3],
                         0.9, int(rng.choice([c, c, rng.integers(0, 4)]))))
    for _ in range(int(rng.integers(0, 3))):  # plain false positives
        x, y = rng.uniform(0, 80, size=2)
        rows.append((x, y, x + 15, y + 15, 0.9, int(rng.integers(0, 4))))
    return det(rows), gt(boxes)


def test_sedna_precision_agrees_with_sedna_own_code_on_random_images() -> None:
    sedna = _sedna_module()
    rng = np.random.default_rng(7)
    compared = 0
    for _ in range(200):
        cases = [_random_case(rng) for _ in range(int(rng.integers(1, 6)))]
        found, truth = [c[0] for c in cases], [c[1] for c in cases]
        ours = evaluate(found, truth, NAMES, obj_threshold=0.3)
        lines = ["img.jpg" + "".join(f" {x1},{y1},{x2},{y2},{c}" for x1, y1, x2, y2, c in t)
                 for t in truth]
        preds = [(d.classes.tolist(), [[b[1], b[0], b[3], b[2]] for b in d.boxes.tolist()])
                 for d in found]
        precision, _, all_precisions, _ = sedna.validate(lines, preds, NAMES)
        predicted = sum(len(d.boxes) for d, t in zip(found, truth) if len(t))
        if not predicted:
            continue  # Sedna's 1e-6 terms make "no detections" 1.0; edgeloop says 0.0
        compared += 1
        # Sedna adds 1e-6 to each class's counts: agreement to that order.
        assert ours["sedna_precision"] == pytest.approx(all_precisions, abs=1e-5)
        for c, name in enumerate(NAMES):
            mine = ours["per_class"][name]["sedna_precision"]  # type: ignore[index]
            assert mine == pytest.approx(precision[c], abs=1e-5) if mine is not None \
                else precision[c] == pytest.approx(1.0)
    assert compared > 150
