"""Hard-example mining rules against hand-computed cases, including Sedna's edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.mining import (
    MINER_NAMES,
    Detections,
    cross_entropy_confidence,
    make_miner,
)


def dets(scores, probs=None) -> Detections:
    n = len(scores)
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (n, 1))
    return Detections(boxes, np.array(scores, np.float32), np.zeros(n, np.int32), probs)


# (parameters, scores, expected, why)
IBT_CASES = [
    ({}, [0.9, 0.8], False, "no low box"),
    ({}, [0.4, 0.9], True, "1/2 low >= 1 - 0.5"),
    ({}, [0.5, 0.9], True, "a score equal to threshold_box counts as low"),
    ({}, [0.51, 0.9, 0.2], False, "1/3 low < 0.5"),
    ({}, [], False, "zero detections: not hard (as Sedna)"),
    (
        {"threshold_img": "0.7"},
        [0.1] * 3 + [0.9] * 7,
        True,
        "0.3 >= 1 - 0.7; Sedna's float compare said no",
    ),
    ({"threshold_img": "0.7"}, [0.1] * 2 + [0.9] * 8, False, "0.2 < 0.3"),
    ({"threshold_img": "0"}, [0.1, 0.2], True, "all low needed, all low"),
    ({"threshold_img": "0"}, [0.1, 0.6], False, "all low needed, one high"),
    ({"threshold_img": "1"}, [0.99], True, "any image with a detection"),
    ({"threshold_box": "0.95"}, [0.9, 0.99], True, "stricter box threshold"),
]


@pytest.mark.parametrize(("params", "scores", "expected", "why"), IBT_CASES)
def test_ibt(params, scores, expected, why):
    assert make_miner("IBT", params).is_hard(dets(scores)) is expected, why


def plogp(*p: float) -> float:
    return sum(x * math.log(x) for x in p if x > 0)


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        ([1.0, 0.0, 0.0, 0.0], 1.0),  # Sedna: math domain error on log(0)
        ([0.25] * 4, 0.0),
        ([0.5, 0.5], 0.0),
        ([0.7, 0.1, 0.1, 0.1], 1 + plogp(0.7, 0.1, 0.1, 0.1) / math.log(4)),  # 0.3216
        ([0.9, 0.1], 1 + plogp(0.9, 0.1) / math.log(2)),  # 0.5310
        ([1.0], 1.0),  # Sedna: division by ln 1 = 0
        ([0.9, 0.9], 0.0),  # per-class sigmoid scores: normalised to [0.5, 0.5]
        ([0.0, 0.0, 0.0], 0.0),  # nothing known: as uncertain as it gets
    ],
)
def test_cross_entropy_confidence(probs, expected):
    assert cross_entropy_confidence(np.array(probs)) == pytest.approx(expected, abs=1e-9)


def test_hand_computed_values_are_what_the_table_says():
    assert 1 + plogp(0.7, 0.1, 0.1, 0.1) / math.log(4) == pytest.approx(0.32161, abs=1e-4)
    assert 1 + plogp(0.9, 0.1) / math.log(2) == pytest.approx(0.53100, abs=1e-4)


# (parameters, class_probs per box, expected)
CE_CASES = [
    ({}, [[0.7, 0.1, 0.1, 0.1]], True),
    ({"threshold_cross_entropy": "0.3"}, [[0.7, 0.1, 0.1, 0.1]], False),
    ({}, [[0.9, 0.1]], False),
    ({}, [[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], True),  # ANY box uncertain -> hard
    ({}, [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], False),
    ({}, [[1.0]], False),
    ({"threshold_cross_entropy": "0"}, [[0.5, 0.5]], False),  # confidence 0 is not < 0
]


@pytest.mark.parametrize(("params", "probs", "expected"), CE_CASES)
def test_cross_entropy(params, probs, expected):
    det = dets([0.9] * len(probs), np.array(probs))
    assert make_miner("CrossEntropy", params).is_hard(det) is expected


def test_cross_entropy_zero_detections_and_missing_probs():
    miner = make_miner("CrossEntropy")
    assert miner.is_hard(Detections.empty(4)) is False
    assert miner.is_hard(Detections.empty()) is False
    with pytest.raises(ValueError, match="needs Detections.class_probs"):
        miner.is_hard(dets([0.5]))


@pytest.mark.parametrize(
    ("params", "scores", "expected"),
    [
        ({}, [0.6, 0.3], True),  # mean 0.45
        ({}, [0.5], False),  # 0.5 is not < 0.5
        ({}, [0.9, 0.2], False),  # mean 0.55
        ({"threshold": "0.6"}, [0.9, 0.2], True),
        ({}, [], False),  # zero detections: not hard (as Sedna)
    ],
)
def test_threshold(params, scores, expected):
    assert make_miner("Threshold", params).is_hard(dets(scores)) is expected


def test_threshold_mean_exactly_at_the_threshold_is_not_hard():
    """float32 scores whose exact mean is the threshold; averaged in float32 it rounds below."""
    scores = np.array([0.3422967195510864, 0.6553511619567871, 0.9352690577507019,
                       0.6848100423812866, 0.36730140447616577, 0.9107583165168762,
                       0.8276242017745972, 0.8551837801933289], dtype=np.float32)
    threshold = 0.6973243355751038
    assert float(np.mean(scores)) < threshold  # the float32 mean slips below
    assert math.fsum(float(s) for s in scores) == threshold * len(scores)  # exactly at it
    miner = make_miner("Threshold", {"threshold": repr(threshold)})
    assert miner.is_hard(dets(scores.tolist())) is False


def test_random_is_seedable_and_matches_its_ratio():
    a = make_miner("Random", {"random_ratio": "0.3"}, seed=5)
    b = make_miner("Random", {"random_ratio": "0.3"}, seed=5)
    draws_a = [a.is_hard(Detections.empty()) for _ in range(4000)]
    draws_b = [b.is_hard(dets([0.9])) for _ in range(4000)]  # detections do not matter
    assert draws_a == draws_b
    assert abs(np.mean(draws_a) - 0.3) < 0.03
    assert not any(
        make_miner("Random", {"random_ratio": "0"}, seed=1).is_hard(dets([])) for _ in range(200)
    )
    assert all(
        make_miner("Random", {"random_ratio": "1"}, seed=1).is_hard(dets([])) for _ in range(200)
    )


def test_defaults_and_names():
    assert MINER_NAMES == ("IBT", "CrossEntropy", "Threshold", "Random")
    assert make_miner("IBT").parameters == {"threshold_img": 0.5, "threshold_box": 0.5}
    assert make_miner("crossentropy").parameters == {"threshold_cross_entropy": 0.5}
    assert make_miner(" threshold ").parameters == {"threshold": 0.5}
    assert make_miner("RANDOM").parameters == {"random_ratio": 0.3}
    assert make_miner("IBT", {"threshold_box": 0.25}).parameters["threshold_box"] == 0.25
    assert repr(make_miner("Threshold", {"threshold": " 0.4 "})) == "Threshold(threshold=0.4)"


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (
            "Entropy",
            None,
            "unknown hard example mining rule 'Entropy'; choose one of IBT, CrossEntropy, Threshold, Random",
        ),
        ("IBT", {"threshold_img": "abc"}, "IBT: parameter threshold_img='abc' is not a number"),
        ("IBT", {"threshold_box": "1.5"}, "IBT: parameter threshold_box='1.5' must lie in [0, 1]"),
        ("Threshold", {"threshold": "nan"}, "parameter threshold='nan' must lie in [0, 1]"),
        ("Random", {"random_ratio": True}, "parameter random_ratio must be a number"),
        (
            "IBT",
            {"threshold_imge": "0.4"},
            "unknown parameter 'threshold_imge'; expected threshold_img, threshold_box",
        ),
        ("CrossEntropy", {"threshold": "0.4"}, "expected threshold_cross_entropy"),
    ],
)
def test_bad_manifest_values_are_named(name, params, message):
    with pytest.raises(ValueError) as info:
        make_miner(name, params)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": [1.2]}, "Detections.scores must lie in [0, 1]; found 1.2"),
        ({"scores": [float("nan")]}, "Detections.scores must lie in [0, 1]"),
        ({"scores": [0.5], "probs": [[0.5, -0.1]]}, "Detections.class_probs must lie in [0, 1]"),
        ({"scores": [0.5], "probs": [[0.5], [0.5]]}, "class_probs must have shape (1, K)"),
    ],
)
def test_detections_validation(kwargs, message):
    probs = None if "probs" not in kwargs else np.array(kwargs["probs"])
    with pytest.raises(ValueError) as info:
        dets(kwargs["scores"], probs)
    assert message in str(info.value)


def test_detections_length_mismatch():
    with pytest.raises(ValueError, match="must be the same number"):
        Detections(np.zeros((2, 4)), np.array([0.5]), np.array([0]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        Detections(np.zeros((1, 5)), np.array([0.5]), np.array([0]))
