"""Hard-example mining: which inference results are worth sending back for labelling.

The four rules and their defaults are Sedna's (``hardExampleMining.name`` in a manifest), with
these of its defects fixed:

* ``CrossEntropy`` crashed on a zero probability (``log(0)``) and divided by zero for a single
  class; here ``0 * ln 0 = 0`` and one class means full confidence (never hard).
* ``IBT`` compared a ratio against ``1 - threshold_img`` in floating point, so that for example 3
  low boxes out of 10 with ``threshold_img=0.7`` were *not* hard; the comparison is now exact to
  within 1e-9.
* ``Random`` compared a string against a float when its ratio came from a manifest; parameters
  are now parsed, range-checked (all four lie in [0, 1]) and named in any error, and unknown
  parameter names are rejected instead of silently ignored (a typo would otherwise fall back to
  the default unnoticed).
* Scores and probabilities outside [0, 1] made Sedna silently answer "not hard"; here they are
  rejected when :class:`Detections` is built, so a broken detector shows itself.

Zero detections: ``IBT``, ``CrossEntropy`` and ``Threshold`` answer *not hard* for an image
without detections, as Sedna does (an empty frame carries no confidence signal to judge; a
detector that misses everything is caught by evaluation, not by mining). ``Random`` ignores the
detections and draws as usual.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Tolerance for comparisons of ratios that Sedna made in raw floating point.
_EPS = 1e-9


@dataclass
class Detections:
    """What a detector found in one image.

    ``boxes`` (N, 4) float ``x1, y1, x2, y2``; ``scores`` (N,) in [0, 1]; ``classes`` (N,) int;
    ``class_probs`` (N, K) per-class probabilities of each box, or None when the detector does
    not provide them (only ``CrossEntropy`` needs them).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32)
        self.boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int32).reshape(-1)
        n = len(self.scores)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"Detections.boxes must have shape (N, 4), got {self.boxes.shape}")
        if len(self.boxes) != n or len(self.classes) != n:
            raise ValueError(
                f"Detections: {len(self.boxes)} boxes, {n} scores and {len(self.classes)} classes "
                "must be the same number"
            )
        _check_unit_interval(self.scores, "Detections.scores")
        if self.class_probs is not None:
            probs = np.asarray(self.class_probs, dtype=np.float64)
            if probs.ndim != 2 or probs.shape[0] != n or (n and probs.shape[1] < 1):
                raise ValueError(
                    f"Detections.class_probs must have shape ({n}, K), got {probs.shape}"
                )
            _check_unit_interval(probs, "Detections.class_probs")
            self.class_probs = probs

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, num_classes: int | None = None) -> Detections:
        probs = None if num_classes is None else np.zeros((0, num_classes))
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int32), probs)


def _check_unit_interval(values: np.ndarray, name: str) -> None:
    if values.size and not (np.all(values >= 0.0) and np.all(values <= 1.0)):  # NaN fails both
        bad = values[~((values >= 0.0) & (values <= 1.0))].ravel()[0]
        raise ValueError(f"{name} must lie in [0, 1]; found {float(bad):g}")


# ---------------------------------------------------------------------------------------------
# The formulas, as pure functions


def ibt_is_hard(scores: np.ndarray, threshold_img: float, threshold_box: float) -> bool:
    """IBT: hard when (#boxes with score <= threshold_box) / #boxes >= 1 - threshold_img."""
    n = len(scores)
    if n == 0:
        return False
    low = int(np.count_nonzero(np.asarray(scores) <= threshold_box))
    return low / n >= (1.0 - threshold_img) - _EPS


def cross_entropy_confidence(probs: np.ndarray) -> float:
    """``1 + sum(p ln p) / ln K``: 1 for a one-hot vector, 0 for a uniform one.

    The vector is normalised to sum 1 first, because per-class sigmoid scores (as a heatmap
    detector produces) are not a distribution; a softmax output is left unchanged. All zeros
    counts as uniform (nothing is known), and K = 1 as fully confident.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    k = p.size
    if k <= 1:
        return 1.0
    total = p.sum()
    p = p / total if total > 0 else np.full(k, 1.0 / k)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)  # 0 * ln 0 = 0
    return float(1.0 + plogp.sum() / math.log(k))


def cross_entropy_is_hard(class_probs: np.ndarray, threshold_cross_entropy: float) -> bool:
    """CrossEntropy over an image: hard when ANY box's confidence is below the threshold.

    Sedna applies the formula to one probability vector; a detection image has one per box, and
    a single uncertain box is what makes an image worth labelling.
    """
    return any(
        cross_entropy_confidence(row) < threshold_cross_entropy for row in np.asarray(class_probs)
    )


def threshold_is_hard(scores: np.ndarray, threshold: float) -> bool:
    """Threshold: hard when the mean box score is below the threshold.

    The mean is taken in float64 from a correctly rounded sum: averaged in the detector's
    float32, a mean exactly at the threshold could round below it and count as hard.
    """
    if len(scores) == 0:
        return False
    return math.fsum(float(s) for s in np.asarray(scores).ravel()) / len(scores) < threshold


# ---------------------------------------------------------------------------------------------
# Miners


class Miner(ABC):
    """Decides whether one image's detections make it a hard example."""

    name: str
    parameters: dict[str, float]

    @abstractmethod
    def is_hard(self, det: Detections) -> bool: ...

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.parameters.items())
        return f"{self.name}({args})"


class IBTMiner(Miner):
    name = "IBT"

    def __init__(self, threshold_img: float = 0.5, threshold_box: float = 0.5) -> None:
        self.parameters = {"threshold_img": threshold_img, "threshold_box": threshold_box}

    def is_hard(self, det: Detections) -> bool:
        return ibt_is_hard(
            det.scores, self.parameters["threshold_img"], self.parameters["threshold_box"]
        )


class CrossEntropyMiner(Miner):
    name = "CrossEntropy"

    def __init__(self, threshold_cross_entropy: float = 0.5) -> None:
        self.parameters = {"threshold_cross_entropy": threshold_cross_entropy}

    def is_hard(self, det: Detections) -> bool:
        if len(det) == 0:
            return False
        if det.class_probs is None:
            raise ValueError(
                "CrossEntropy mining needs Detections.class_probs "
                "(per-class probabilities of each box)"
            )
        return cross_entropy_is_hard(det.class_probs, self.parameters["threshold_cross_entropy"])


class ThresholdMiner(Miner):
    name = "Threshold"

    def __init__(self, threshold: float = 0.5) -> None:
        self.parameters = {"threshold": threshold}

    def is_hard(self, det: Detections) -> bool:
        return threshold_is_hard(det.scores, self.parameters["threshold"])


class RandomMiner(Miner):
    name = "Random"

    def __init__(self, random_ratio: float = 0.3, seed: int | None = None) -> None:
        self.parameters = {"random_ratio": random_ratio}
        self._rng = np.random.default_rng(seed)

    def is_hard(self, det: Detections) -> bool:
        return bool(self._rng.uniform(0.0, 1.0) < self.parameters["random_ratio"])


_MINERS: dict[str, type[Miner]] = {
    m.name: m for m in (IBTMiner, CrossEntropyMiner, ThresholdMiner, RandomMiner)
}
MINER_NAMES: tuple[str, ...] = tuple(_MINERS)
# Each rule's parameters with Sedna's defaults; every value must lie in [0, 1].
MINER_DEFAULTS: dict[str, dict[str, float]] = {
    "IBT": {"threshold_img": 0.5, "threshold_box": 0.5},
    "CrossEntropy": {"threshold_cross_entropy": 0.5},
    "Threshold": {"threshold": 0.5},
    "Random": {"random_ratio": 0.3},
}


def _parse_parameter(rule: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"hard example mining {rule}: parameter {key} must be a number, got {value!r}"
        )
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(
            f"hard example mining {rule}: parameter {key}={value!r} is not a number"
        ) from None
    if not 0.0 <= number <= 1.0:  # also rejects NaN
        raise ValueError(
            f"hard example mining {rule}: parameter {key}={value!r} must lie in [0, 1]"
        )
    return number


def make_miner(
    name: str, parameters: Mapping[str, str] | None = None, seed: int | None = None
) -> Miner:
    """Build the miner a manifest names, from its string parameters.

    ``name`` is matched case-insensitively against IBT, CrossEntropy, Threshold, Random; missing
    parameters take Sedna's defaults; ``seed`` makes Random reproducible.
    """
    canonical = {n.lower(): n for n in MINER_NAMES}.get(str(name).strip().lower())
    if canonical is None:
        raise ValueError(
            f"unknown hard example mining rule {name!r}; choose one of {', '.join(MINER_NAMES)}"
        )
    values = dict(MINER_DEFAULTS[canonical])
    for key, value in (parameters or {}).items():
        if key not in values:
            raise ValueError(
                f"hard example mining {canonical}: unknown parameter {key!r}; "
                f"expected {', '.join(MINER_DEFAULTS[canonical])}"
            )
        values[key] = _parse_parameter(canonical, key, value)
    if canonical == "Random":
        return RandomMiner(seed=seed, **values)
    return _MINERS[canonical](**values)
