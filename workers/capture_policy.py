"""The capture policy of one camera: which mined frames are saved, and how.

A job's ``capturePolicy`` (:class:`protocol.data_policies.CapturePolicy`) bounds what a camera
adds to the node's store: a fraction of the flagged frames, caps per calendar minute, hour and
day (UTC), overall and per mining reason, and at a cap either ``skip`` the example or ``keep``
it aside (``HE_SAVED_URL/held``) until the cap allows it (:class:`HeldExamples`).

The decisions are pure (:func:`decide`, :func:`record`: functions of the state, the settings,
the time and the frame's mining reason); :class:`CaptureGate` keeps the state and reads the
clock, which is injectable so that tests and the compressed-day benchmark run without sleeping.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from protocol.data_policies import Caps, CaptureSettings
from workers.hardex_store import HardExampleStore, SavedExample

log = logging.getLogger(__name__)

PERIOD_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
HELD_DIR = "held"
#: Release held examples at most this often (seconds of the policy's clock).
RELEASE_EVERY_S = 1.0

Clock = Callable[[], float]


@dataclass
class CaptureState:
    """What the decisions remember: frames flagged, and saves per (scope, period) bucket."""

    flagged: int = 0
    #: (scope, period) -> (bucket number, saves in it); scope "" is overall, else a reason
    buckets: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """``save``, ``sampled-out`` (not in the sampled fraction), or ``cap:<scope/period>``."""

    outcome: str

    @property
    def save(self) -> bool:
        return self.outcome == "save"

    @property
    def capped(self) -> bool:
        return self.outcome.startswith("cap:")


SAVE = Verdict("save")
SAMPLED_OUT = Verdict("sampled-out")


def sampled(flagged: int, rate: float) -> bool:
    """Whether the ``flagged``-th flagged frame (1-based) is in the sampled fraction: the
    frames kept are spread evenly (rate 0.25 keeps the 4th, 8th, ...), so a burst is thinned
    the same way as a trickle and the count after n frames is floor(n * rate)."""
    return math.floor(flagged * rate + 1e-9) > math.floor((flagged - 1) * rate + 1e-9)


def _scopes(settings: CaptureSettings, reason: str) -> list[tuple[str, Caps]]:
    scopes: list[tuple[str, Caps]] = [("", settings)]
    if reason in settings.by_reason:
        scopes.append((reason, settings.by_reason[reason]))
    return scopes


def cap_reached(state: CaptureState, settings: CaptureSettings, now: float,
                reason: str) -> str | None:
    """The first cap one more save of ``reason`` at ``now`` would exceed (``day``,
    ``rule/hour``), or None."""
    for scope, caps in _scopes(settings, reason):
        for period, cap in caps.limits().items():
            bucket = int(now // PERIOD_SECONDS[period])
            number, count = state.buckets.get((scope, period), (bucket, 0))
            if number == bucket and count >= cap:
                return f"{scope}/{period}" if scope else period
    return None


def decide(state: CaptureState, settings: CaptureSettings, now: float, reason: str) -> Verdict:
    """Whether a frame flagged for ``reason`` is saved. Counts the frame as flagged (the
    sampling needs it); the save itself is recorded by :func:`record` once it happened."""
    state.flagged += 1
    if not sampled(state.flagged, settings.sample_rate):
        return SAMPLED_OUT
    cap = cap_reached(state, settings, now, reason)
    return SAVE if cap is None else Verdict(f"cap:{cap}")


def record(state: CaptureState, settings: CaptureSettings, now: float, reason: str) -> None:
    """Count one save of ``reason`` at ``now`` in every bucket it falls in."""
    for scope, caps in _scopes(settings, reason):
        for period in caps.limits():
            bucket = int(now // PERIOD_SECONDS[period])
            number, count = state.buckets.get((scope, period), (bucket, 0))
            state.buckets[(scope, period)] = (bucket, count + 1 if number == bucket else 1)


@dataclass
class CaptureCounters:
    saved: int = 0
    #: why a mined frame was not saved by the policy: ``sampled-out``, ``cap:day``, ...
    skipped: dict[str, int] = field(default_factory=dict)
    held: int = 0  # kept aside at a cap, waiting
    released: int = 0  # held examples saved later

    def as_dict(self) -> dict[str, object]:
        return {"saved": self.saved, "skipped": dict(self.skipped), "held": self.held,
                "released": self.released}


class CaptureGate:
    """The policy of one camera with its state and clock (one inference loop owns it)."""

    def __init__(self, settings: CaptureSettings, clock: Clock = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.state = CaptureState()
        self.counters = CaptureCounters()

    def judge(self, reason: str) -> Verdict:
        verdict = decide(self.state, self.settings, self.clock(), reason)
        if not verdict.save and not (verdict.capped and self.settings.on_cap == "keep"):
            key = verdict.outcome
            self.counters.skipped[key] = self.counters.skipped.get(key, 0) + 1
        return verdict

    def allows(self, reason: str) -> bool:
        """Whether a held example of ``reason`` may be saved now (no sampling: it was sampled)."""
        return cap_reached(self.state, self.settings, self.clock(), reason) is None

    def saved(self, reason: str) -> None:
        record(self.state, self.settings, self.clock(), reason)
        self.counters.saved += 1


def fit_within(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """The image scaled down so that its longest side is at most ``max_side``, and the scale
    (1.0: unchanged; never scaled up)."""
    longest = max(image.shape[:2])
    if max_side is None or longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def example_score(scores: np.ndarray) -> float:
    """How much a mined frame is worth labelling, in [0, 1]: one minus the mean box score (the
    model's doubt), 1 for a frame without boxes (blind-spot mining: the model saw nothing).
    The outbox evicts the lowest first when told to (``outbox_eviction: lowest-score``)."""
    if len(scores) == 0:
        return 1.0
    return round(1.0 - math.fsum(float(s) for s in scores) / len(scores), 4)


@dataclass(frozen=True)
class HeldExample:
    image_path: Path
    sidecar_path: Path
    sha256: str
    reason: str


class HeldExamples:
    """Examples kept aside at a cap under ``HE_SAVED_URL/held`` (which the agent does not
    drain), oldest first; :meth:`release` moves one into ``HE_SAVED_URL`` when the policy
    allows, sidecar last, so the agent only ever sees complete examples."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / HELD_DIR
        self.target = folder
        self.waiting: deque[HeldExample] = deque()
        self._load()

    def add(self, image_path: Path, sidecar_path: Path, sha256: str, reason: str) -> None:
        self.waiting.append(HeldExample(image_path, sidecar_path, sha256, reason))

    def release(self, gate: CaptureGate) -> HeldExample | None:
        """Move the oldest held example whose cap allows it now; None when none may go (or
        the files are gone: the node's retention pruned them)."""
        while self.waiting:
            held = self.waiting[0]
            if not held.sidecar_path.exists():
                self.waiting.popleft()  # pruned by retention, which counted it
                continue
            if not gate.allows(held.reason):
                return None
            self.waiting.popleft()
            try:
                image = self.target / held.image_path.name
                sidecar = self.target / held.sidecar_path.name
                os.replace(held.image_path, image)
                os.replace(held.sidecar_path, sidecar)
            except OSError as exc:
                log.error("cannot release held example %s: %s", held.sidecar_path.name, exc)
                continue
            gate.saved(held.reason)
            gate.counters.released += 1
            return HeldExample(image, sidecar, held.sha256, held.reason)
        return None

    def _load(self) -> None:
        """What an earlier run kept aside waits again, oldest first."""
        if not self.folder.is_dir():
            return
        for sidecar in sorted(self.folder.glob("*.json")):
            try:
                document = json.loads(sidecar.read_text(encoding="utf-8"))
                image = self.folder / str(document["image"])
                self.add(image, sidecar, str(document.get("sha256", "")),
                         str(document.get("mining_reason") or "rule"))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("held example %s is unreadable (%s); left in place", sidecar, exc)


class Capture:
    """The inference loop's side of the policy: judges each mined frame, says where and at
    which size it is saved, keeps aside what a cap holds back and releases it later."""

    def __init__(self, settings: CaptureSettings, folder: Path, clock: Clock = time.time) -> None:
        self.settings = settings
        self.gate = CaptureGate(settings, clock)
        self.held = HeldExamples(folder) if settings.on_cap == "keep" else None
        self._held_store: HardExampleStore | None = None
        self._placing = SAVE
        self._next_release = 0.0

    def place(self, reason: str, image: np.ndarray,
              store: HardExampleStore) -> tuple[HardExampleStore, np.ndarray, float] | None:
        """Where a frame mined for ``reason`` goes (the store, or the held store at a cap),
        the image to save and its scale; None when the policy skips it (counted)."""
        verdict = self.gate.judge(reason)
        if verdict.save:
            target = store
        elif verdict.capped and self.held is not None:
            target = self._held(store)
        else:
            return None
        self._placing = verdict
        resized, scale = fit_within(image, self.settings.max_side)
        return target, resized, scale

    def saved(self, saved: SavedExample, reason: str) -> bool:
        """Note the example :meth:`place` placed was saved; True when it is for the agent
        now, False when it was kept aside."""
        if self._placing.save:
            self.gate.saved(reason)
            return True
        assert self.held is not None
        self.held.add(saved.image_path, saved.sidecar_path, saved.sha256, reason)
        self.gate.counters.held += 1
        return False

    def release_due(self) -> list[HeldExample]:
        """Held examples the caps allow now (looked at about once a second)."""
        if self.held is None or not self.held.waiting:
            return []
        now = self.gate.clock()
        if now < self._next_release:
            return []
        self._next_release = now + RELEASE_EVERY_S
        released = []
        while (example := self.held.release(self.gate)) is not None:
            released.append(example)
        return released

    def counters(self) -> dict[str, object]:
        waiting = len(self.held.waiting) if self.held is not None else 0
        return self.gate.counters.as_dict() | {"held_waiting": waiting}

    def _held(self, store: HardExampleStore) -> HardExampleStore:
        if self._held_store is None:
            assert self.held is not None
            self._held_store = HardExampleStore(
                self.held.folder, store.quota_bytes, store.dedup_distance,
                jpeg_quality=self.settings.jpeg_quality,
            )
        return self._held_store
