"""Blind-spot mining: hard examples where the model no longer sees anything. Pure, no I/O.

Confidence-based rules (IBT, CrossEntropy, Threshold; :mod:`workers.mining`) judge the boxes a
model drew; a frame without boxes carries no confidence to judge, so they never flag it. Yet a
domain shift (night, fog, new helmet colours) often shows exactly so: the model stops detecting.
Mining by confidence cannot find what the model no longer sees, so two cheap guards run beside
the rule on every frame:

* ``empty-frame``: a small sampling floor on frames without detections, one in
  ``empty_frame_every`` of them, so a scene the model is blind to is never entirely absent from
  the hard examples;
* ``detection-drop``: the node compares its recent detection rate (mean boxes per frame over the
  last ``window_frames``) with its own longer baseline (an exponential average over about
  ``baseline_frames``); when the recent rate falls below ``drop_ratio`` of the baseline, mining
  switches to uniform sampling, one frame in ``sample_every``, whatever the boxes. The baseline
  is frozen while the drop lasts (the blindness must not become the new normal) and the node
  returns to normal only once the recent rate is back to ``recover_ratio`` of it and the drop
  has lasted ``min_drop_frames`` (hysteresis: shots that vary in how much they show must not
  flip the mode every few seconds).
  A baseline under ``min_baseline`` never triggers a drop: a model on a scene that never had
  much to detect would otherwise flip in and out on noise.

:class:`BlindSpotMonitor` takes one frame's box count and answers the reason to sample it, or
None; the inference loop asks the confidence rule first (reason :data:`RULE`). The settings come
from the job's ``deploySpec.blindSpotMining`` (:class:`protocol.manifests.BlindSpotMining`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from protocol.manifests import BlindSpotMining

MiningReason = Literal["rule", "empty-frame", "detection-drop"]
#: The confidence rule of ``hardExampleMining`` judged the frame hard.
RULE: MiningReason = "rule"
EMPTY_FRAME: MiningReason = "empty-frame"
DETECTION_DROP: MiningReason = "detection-drop"
MINING_REASONS: tuple[MiningReason, ...] = (RULE, EMPTY_FRAME, DETECTION_DROP)

Mode = Literal["normal", "detection-drop"]


@dataclass
class BlindSpotMonitor:
    """Per-frame state of blind-spot mining; feed every frame to :meth:`observe`, in order."""

    settings: BlindSpotMining = field(default_factory=BlindSpotMining)
    mode: Mode = "normal"
    #: exponential average of boxes per frame, None until the first window is full
    baseline: float | None = None
    #: frames without boxes since the last empty-frame sample
    empty_since_sample: int = 0
    #: frames seen since the drop began (uniform sampling counts from the first)
    drop_frames: int = 0
    #: how many times the node entered detection-drop mode
    drops: int = 0
    _window: deque[int] = field(default_factory=deque, repr=False)
    _window_sum: int = 0

    @property
    def recent_rate(self) -> float | None:
        """Mean boxes per frame over the short window; None until it is full."""
        if len(self._window) < self.settings.window_frames:
            return None
        return self._window_sum / len(self._window)

    def observe(self, boxes: int) -> MiningReason | None:
        """Account for one frame with ``boxes`` detections; the reason to sample it, or None."""
        if not self.settings.enabled:
            return None
        self._push(boxes)
        self._update_mode()
        if self.mode == "detection-drop":
            self.drop_frames += 1
            if (self.drop_frames - 1) % self.settings.sample_every == 0:
                return DETECTION_DROP
            return None
        return self._empty_floor(boxes)

    def _push(self, boxes: int) -> None:
        self._window.append(boxes)
        self._window_sum += boxes
        if len(self._window) > self.settings.window_frames:
            self._window_sum -= self._window.popleft()

    def _update_mode(self) -> None:
        recent = self.recent_rate
        if recent is None:
            return
        if self.baseline is None:
            self.baseline = recent
            return
        if self.mode == "normal":
            if self.baseline >= self.settings.min_baseline and (
                recent < self.settings.drop_ratio * self.baseline
            ):
                self.mode, self.drop_frames = "detection-drop", 0
                self.drops += 1
                return
            alpha = 1.0 / self.settings.baseline_frames
            self.baseline += alpha * (self._window[-1] - self.baseline)
        elif (
            self.drop_frames >= self.settings.min_drop_frames
            and recent >= self.settings.recover_ratio * self.baseline
        ):
            self.mode = "normal"
            self.empty_since_sample = 0

    def _empty_floor(self, boxes: int) -> MiningReason | None:
        every = self.settings.empty_frame_every
        if boxes or not every:
            return None
        self.empty_since_sample += 1
        if self.empty_since_sample >= every:
            self.empty_since_sample = 0
            return EMPTY_FRAME
        return None
