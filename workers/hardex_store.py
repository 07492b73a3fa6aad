"""Hard examples on disk: the raw frame (JPEG q95, or the capture policy's quality) and a JSON sidecar under ``HE_SAVED_URL``.

Files are named ``<UTC time>-f<frame>-<sha256[:12]>.jpg`` / ``.json``. The image is written first
and the sidecar last, each through a temporary name and a rename, so a ``.json`` file always
means a complete example: that is what the edge agent's outbox and annotators look for.

Two guards keep a long-running camera from filling the disk with the same picture:

* near-duplicate suppression: a 64-bit difference hash (dHash) of each saved frame is kept for
  the last :data:`DEDUP_WINDOW` saves; a frame within ``dedup_distance`` bits of one of them is
  skipped (a static camera mines the same scene over and over);
* a size quota: the store never deletes anything (saved examples may not have been uploaded
  yet); once the folder holds ``quota_bytes`` it refuses new examples until space is freed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeloop.durable import write_atomically
from protocol.messages import HardExampleSidecar

log = logging.getLogger(__name__)

JPEG_QUALITY = 95
DEDUP_WINDOW = 256
#: Re-measure the folder after this many saves, as the agent moves examples away meanwhile.
RESCAN_EVERY = 50


def dhash(image_bgr: np.ndarray) -> int:
    """64-bit difference hash: sign of horizontal gradients on a 9x8 grey thumbnail.

    Robust to compression, noise and small brightness changes, cheap (one resize), and
    comparable with a Hamming distance.
    """
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if image_bgr.ndim == 3 else image_bgr
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass(frozen=True)
class SavedExample:
    image_path: Path
    sidecar_path: Path
    sha256: str


@dataclass
class StoreCounters:
    saved: int = 0
    skipped_duplicate: int = 0
    skipped_quota: int = 0
    failed: int = 0


def folder_bytes(root: Path) -> int:
    total = 0
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


class HardExampleStore:
    """Saves hard examples under ``root``; not thread-safe (one inference loop owns it)."""

    def __init__(self, root: Path | str, quota_bytes: int, dedup_distance: int = 4,
                 jpeg_quality: int = JPEG_QUALITY):
        if quota_bytes <= 0:
            raise ValueError(f"hard-example quota must be > 0 bytes, got {quota_bytes}")
        if dedup_distance < 0:
            raise ValueError(f"he_dedup_distance must be >= 0, got {dedup_distance}")
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"HE_SAVED_URL {self.root}: cannot create the folder: {exc}") from exc
        self.quota_bytes = quota_bytes
        self.dedup_distance = dedup_distance
        self.jpeg_quality = jpeg_quality
        self.counters = StoreCounters()
        self._recent: deque[int] = deque(maxlen=DEDUP_WINDOW)
        self._used = folder_bytes(self.root)
        self._since_scan = 0

    def is_near_duplicate(self, frame_hash: int) -> bool:
        return any(hamming(frame_hash, h) <= self.dedup_distance for h in self._recent)

    def save(self, frame_bgr: np.ndarray, sidecar: HardExampleSidecar) -> SavedExample | None:
        """Save one example; None when skipped (near-duplicate, quota) or on a disk error.

        A disk error is logged and counted, never raised: losing one hard example must not stop
        the inference loop.
        """
        frame_hash = dhash(frame_bgr)
        if self.is_near_duplicate(frame_hash):
            self.counters.skipped_duplicate += 1
            return None
        ok, encoded = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            self.counters.failed += 1
            log.error("cannot encode hard example of frame %d as JPEG", sidecar.frame_index)
            return None
        jpeg = encoded.tobytes()
        if self._since_scan >= RESCAN_EVERY or self._used + len(jpeg) > self.quota_bytes:
            self._used = folder_bytes(self.root)
            self._since_scan = 0
        if self._used + len(jpeg) > self.quota_bytes:
            if self.counters.skipped_quota == 0:
                log.warning(
                    "HE_SAVED_URL %s is at its quota of %d MiB; new hard examples are skipped",
                    self.root,
                    self.quota_bytes // 2**20,
                )
            self.counters.skipped_quota += 1
            return None
        sha = hashlib.sha256(jpeg).hexdigest()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(sidecar.time))
        stem = f"{stamp}-f{sidecar.frame_index:08d}-{sha[:12]}"
        image_path = self.root / f"{stem}.jpg"
        sidecar_path = self.root / f"{stem}.json"
        document = sidecar.model_dump(mode="json") | {"image": image_path.name, "sha256": sha}
        body = json.dumps(document, indent=1).encode()
        try:
            write_atomically(image_path, jpeg)
            write_atomically(sidecar_path, body)
        except OSError as exc:
            self.counters.failed += 1
            log.error("cannot save hard example %s: %s", image_path, exc)
            image_path.unlink(missing_ok=True)
            return None
        self._recent.append(frame_hash)
        self._used += len(jpeg) + len(body)
        self._since_scan += 1
        self.counters.saved += 1
        return SavedExample(image_path, sidecar_path, sha)
