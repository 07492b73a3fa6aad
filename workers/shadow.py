"""Shadow comparison: on a rollout's canary, the model a swap replaced keeps running beside the
new one on a sample of frames, and the worker reports how much the two agree.

A new version can pass every metric of its eval and still fail on this camera: a detector whose
detections collapse, a model exported wrong. The cloud cannot see the camera, so the canary
measures it: one frame in ``every`` (after a swap that asked for it) goes through the previous
model too, still loaded for instant rollback (:mod:`workers.hotswap`), and the two box sets are
matched one-to-one at IoU 0.5, same class (:func:`workers.metrics.match_image`, with the previous
model's boxes in the place of the ground truth). Agreement is the F1 of those matches pooled
over the compared frames: 1.0 when both models see the same boxes (nothing at all included),
0.0 when one sees nothing of what the other does.

The tracker also measures the FPS of the version serving now, without the time the comparison
takes: the loop's own FPS averages over the whole run, so a slower new version would hide behind
the earlier frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from workers.metrics import Counts, match_image
from workers.mining import Detections
from workers.predictor import Predictor


def agreement_counts(new: Detections, previous: Detections) -> Counts:
    """One frame's matches of the new model's boxes against the previous model's."""
    reference = np.concatenate(
        [previous.boxes, previous.classes.reshape(-1, 1).astype(np.float32)], axis=1)
    classes = max(int(new.classes.max(initial=-1)), int(previous.classes.max(initial=-1))) + 1
    total = Counts()
    for counts in match_image(new, reference, classes):
        total.add(counts)
    return total


def agreement(counts: Counts) -> float:
    """F1 of pooled matches; 1.0 when neither model saw anything."""
    denominator = 2 * counts.tp + counts.fp + counts.fn
    return 2 * counts.tp / denominator if denominator else 1.0


@dataclass
class _VersionClock:
    version: str
    frames: int = 0
    started: float = 0.0
    #: seconds spent running the previous model: not the serving version's time
    shadow_s: float = 0.0


class ShadowComparison:
    """Per worker: the comparison after a swap that asked for one, and the serving version's FPS.

    ``observe`` runs in the inference loop after each frame's prediction; ``stats`` goes into
    the loop's periodic stats report (``version_fps``, ``shadow_agreement``,
    ``shadow_compared``).
    """

    def __init__(self) -> None:
        self.every = 0
        #: the comparison of the version serving now: one frame in this many (0: none)
        self._active = 0
        self._counts = Counts()
        self._compared = 0
        self._errors = 0
        #: whether the comparison of the serving version has a previous model to run
        self._running = False
        self._clock: _VersionClock | None = None

    def request(self, every: int) -> None:
        """The next swap compares its model with the one it replaces on one frame in ``every``
        (0: no comparison). Safe from the channel's thread: the loop reads it at the swap."""
        self.every = max(0, every)

    def observe(self, frame_index: int, image: np.ndarray, prepared: np.ndarray | None,
                det: Detections, version: str, previous: Predictor | None) -> None:
        """Count the frame for ``version``; compare with ``previous`` (a loaded predictor, or
        None) when this frame is sampled."""
        clock = self._clock
        now = time.monotonic()
        if clock is None or clock.version != version:
            # a new version serves: its own FPS and, if asked for, its own comparison
            self._clock = clock = _VersionClock(version, started=now)
            self._counts, self._compared, self._errors = Counts(), 0, 0
            self._active = self.every
            self._running = False
            self.every = 0
        clock.frames += 1
        every = self._active
        if not every or previous is None:
            return
        self._running = True
        if frame_index % every:
            return
        began = time.monotonic()
        try:
            shadow = previous.predict(image, prepared=prepared)
        except Exception:  # the previous model failing says nothing about the new one
            self._errors += 1
            return
        finally:
            clock.shadow_s += time.monotonic() - began
        self._counts.add(agreement_counts(det, shadow))
        self._compared += 1

    def stats(self) -> dict[str, float | int | None]:
        clock = self._clock
        out: dict[str, float | int | None] = {}
        if clock is not None:
            elapsed = time.monotonic() - clock.started - clock.shadow_s
            out["version_fps"] = round(clock.frames / elapsed, 2) if elapsed > 0 else 0.0
        if self._running:
            out["shadow_active"] = True
            out["shadow_compared"] = self._compared
        if self._compared:
            out["shadow_agreement"] = round(agreement(self._counts), 4)
            out["shadow_compared"] = self._compared
        return out
