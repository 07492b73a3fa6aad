"""The SIMULATED ANNOTATOR of the demo: it labels hard examples from the generator's ground truth.

In production a person labels the hard examples in the cloud's inbox with an annotation tool and
adds them to the Dataset's ``data.txt``. The demo has no person, but it has the truth: the
camera plays videos rendered by ``demo.scenes.render_video``, whose ground truth is known for
every frame. A hard example carries the worker's frame index, which does not match the video
file's frame numbers once the video went through RTSP, looping and reconnections; so each
example image is matched to the nearest frame of the videos played (small grayscale
thumbnails, L2 distance), and that frame's boxes become its label.

Pure matching logic (:func:`thumbnail`, :class:`FrameIndex`, :func:`scale_boxes`) is separate
from the file handling (:class:`SimulatedAnnotator`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Thumbnail (width, height): small enough that codec noise averages out, big enough that
#: walking people move it from one frame to the next.
THUMB_SIZE = (48, 27)
#: RMS grey-level distance (0..255) above which an image is not a frame of any known video.
MAX_DISTANCE = 25.0


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A BGR or grey image as a flat float32 vector of its small grayscale version."""
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(image, THUMB_SIZE, interpolation=cv2.INTER_AREA)
    return small.astype(np.float32).ravel()


@dataclass(frozen=True)
class Match:
    domain: str  # the key the video was added under (its domain, unless a domain has several)
    frame: int
    #: RMS grey-level difference between the example and the frame's thumbnails
    distance: float


@dataclass
class FrameIndex:
    """The thumbnails of every frame of some videos, searchable by nearest neighbour."""

    thumbs: np.ndarray = field(default_factory=lambda: np.zeros((0, THUMB_SIZE[0] * THUMB_SIZE[1]),
                                                                np.float32))
    #: per row: (domain, frame number in its video)
    keys: list[tuple[str, int]] = field(default_factory=list)

    def add(self, domain: str, thumbs: Sequence[np.ndarray]) -> None:
        """Add one video's frame thumbnails, frame 0 first."""
        if not len(thumbs):
            return
        # Keys first, then the array: a reader in another thread that still sees the old array
        # only finds rows whose keys exist (the demo adds videos while it labels).
        self.keys += [(domain, i) for i in range(len(thumbs))]
        self.thumbs = np.concatenate([self.thumbs, np.stack(thumbs).astype(np.float32)])

    def __len__(self) -> int:
        return len(self.keys)

    def nearest(self, thumb: np.ndarray) -> Match:
        """The closest frame to ``thumb`` (L2); raises ValueError when the index is empty."""
        thumbs = self.thumbs
        if not len(thumbs):
            raise ValueError("no video frames to match against")
        diff = thumbs - thumb.astype(np.float32)[None, :]
        d2 = np.einsum("ij,ij->i", diff, diff)
        best = int(np.argmin(d2))
        domain, frame = self.keys[best]
        return Match(domain, frame, float(np.sqrt(d2[best] / thumb.size)))


def video_thumbnails(video: Path) -> list[np.ndarray]:
    """Thumbnails of every frame of a video file, in order."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {video}")
    thumbs = []
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            thumbs.append(thumbnail(image))
    finally:
        capture.release()
    if not thumbs:
        raise ValueError(f"video {video} has no frames")
    return thumbs


def scale_boxes(boxes: np.ndarray, source_wh: tuple[int, int], target_wh: tuple[int, int]) -> np.ndarray:
    """Boxes ``x1,y1,x2,y2,cls`` in pixels of ``source_wh`` moved to pixels of ``target_wh``."""
    boxes = np.asarray(boxes, np.int32).reshape(-1, 5).copy()
    if tuple(source_wh) == tuple(target_wh) or not len(boxes):
        return boxes
    sx = target_wh[0] / source_wh[0]
    sy = target_wh[1] / source_wh[1]
    scaled = boxes.astype(np.float64)
    scaled[:, [0, 2]] *= sx
    scaled[:, [1, 3]] *= sy
    scaled[:, 0:4] = np.round(scaled[:, 0:4])
    scaled[:, [0, 2]] = np.clip(scaled[:, [0, 2]], 0, target_wh[0] - 1)
    scaled[:, [1, 3]] = np.clip(scaled[:, [1, 3]], 0, target_wh[1] - 1)
    return scaled.astype(np.int32)


#: Why the simulated annotator refuses an example, by the start of its reason: it labels only
#: frames it finds in the videos it knows, where a person would label any.
REFUSAL_KINDS = (
    ("cannot read", "image unreadable"),
    ("no video frame within", "frame not found in the camera's videos"),
    ("no ground truth", "no ground truth for its frame"),
)


def refusal_kind(reason: str) -> str:
    """A short, countable name for a refusal reason."""
    for prefix, kind in REFUSAL_KINDS:
        if reason.startswith(prefix):
            return kind
    return "unreadable sidecar"


@dataclass(frozen=True)
class Labelled:
    """One hard example labelled (or refused) by the simulated annotator."""

    sha256: str
    image: Path | None  # the copy beside the dataset index, None when refused
    domain: str | None
    frame: int | None
    distance: float | None
    boxes: int
    refused: str | None = None
    time: float = 0.0  # the frame's capture time, from the sidecar
    #: why edge0 mined it (the sidecar's mining_reason: rule, empty-frame, detection-drop)
    reason: str = ""


@dataclass
class SimulatedAnnotator:
    """Labels the examples in a job's inbox folder and appends them to a dataset index.

    ``videos`` maps a domain to (video file, ground-truth file); call :meth:`add_video` when
    the camera starts playing a new one. Each example is handled once: the record of what was
    labelled goes to ``journal`` (JSON lines), which also survives a restart of the demo.
    """

    inbox: Path
    index: Path
    journal: Path
    max_distance: float = MAX_DISTANCE
    frames: FrameIndex = field(default_factory=FrameIndex)
    truth: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: video key -> its domain
    domain_of: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    labelled: list[Labelled] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                if line.strip():
                    self.done.add(json.loads(line)["sha256"])

    def add_video(self, domain: str, video: Path, ground_truth: Path, key: str | None = None) -> None:
        """Match examples against ``video`` too; ``key`` names it when a domain has several."""
        import cv2

        from demo.scenes import load_ground_truth

        key = key or domain
        if key in self.truth:
            return
        capture = cv2.VideoCapture(str(video))
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        capture.release()
        self.domain_of[key] = domain
        self.truth[key] = load_ground_truth(ground_truth)
        self.sizes[key] = size
        self.frames.add(key, video_thumbnails(video))  # last: matching may start now

    def pending(self) -> list[Path]:
        """Sidecars in the inbox not handled yet, oldest name first."""
        if not self.inbox.is_dir():
            return []
        return [p for p in sorted(self.inbox.glob("*.json")) if p.stem not in self.done]

    def label_one(self, sidecar: Path) -> tuple[Labelled, object | None]:
        """Label one example: (record, the dataset Sample or None when refused)."""
        import cv2

        from protocol.dataset_index import Sample

        meta = json.loads(sidecar.read_text())
        sha = meta.get("sha256") or sidecar.stem
        capture_time = float(meta.get("sidecar", {}).get("time") or 0.0)
        reason = str(meta.get("sidecar", {}).get("mining_reason") or "")
        image_path = sidecar.with_name(meta.get("image") or f"{sha}.jpg")
        image = cv2.imread(str(image_path))
        if image is None:
            return Labelled(sha, None, None, None, None, 0, f"cannot read {image_path.name}",
                            capture_time, reason), None
        match = self.frames.nearest(thumbnail(image))
        if match.distance > self.max_distance:
            return Labelled(sha, None, None, None, match.distance, 0,
                            f"no video frame within {self.max_distance} (nearest "
                            f"{match.distance:.1f})", capture_time, reason), None
        key, domain = match.domain, self.domain_of[match.domain]
        boxes = self.truth[key].get(match.frame)
        if boxes is None:
            return Labelled(sha, None, domain, match.frame, match.distance, 0,
                            f"no ground truth for frame {match.frame} of {key}",
                            capture_time, reason), None
        height, width = image.shape[:2]
        boxes = scale_boxes(boxes, self.sizes[key], (width, height))
        target = self.index.parent / "images" / f"he-{sha[:16]}{image_path.suffix}"
        return (Labelled(sha, target, domain, match.frame, match.distance, len(boxes),
                         None, capture_time, reason),
                (image_path, Sample(image=target, boxes=boxes)))

    def run_once(self) -> list[Labelled]:
        """Label every pending example; copy the images beside the index, then append the
        labels in one write, then journal them. Returns what this pass did."""
        from protocol.dataset_index import append_samples

        records: list[Labelled] = []
        samples = []
        for sidecar in self.pending():
            try:
                record, item = self.label_one(sidecar)
            except (OSError, ValueError, KeyError) as exc:
                record, item = Labelled(sidecar.stem, None, None, None, None, 0, str(exc)), None
            if item is not None:
                source, sample = item
                sample.image.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, sample.image)
                samples.append(sample)
            records.append(record)
        if not records:
            return []
        append_samples(self.index, samples)
        self._journal(records)
        self.labelled += records
        return records

    def _journal(self, records: Iterable[Labelled]) -> None:
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a", encoding="utf-8") as f:
            for r in records:
                self.done.add(r.sha256)
                f.write(json.dumps({
                    "sha256": r.sha256, "image": str(r.image) if r.image else None,
                    "domain": r.domain, "frame": r.frame,
                    "distance": None if r.distance is None else round(r.distance, 2),
                    "boxes": r.boxes, "refused": r.refused, "time": r.time, "reason": r.reason,
                }) + "\n")

    def counts(self) -> dict[str, int]:
        """Labelled examples per domain (refused ones under ``refused``)."""
        out: dict[str, int] = {}
        for r in self.labelled:
            key = r.domain if r.refused is None else "refused"
            out[key or "refused"] = out.get(key or "refused", 0) + 1
        return out

    def refusals(self) -> dict[str, int]:
        """Refused examples per kind of reason (:func:`refusal_kind`)."""
        out: dict[str, int] = {}
        for r in self.labelled:
            if r.refused is not None:
                kind = refusal_kind(r.refused)
                out[kind] = out.get(kind, 0) + 1
        return out
