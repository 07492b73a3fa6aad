"""A camera at 25 FPS for a simulated day, compressed in time: does a daily cap hold, how much of
the link budget is used, and what mining and encoding cost per frame.

Each frame gets synthetic detections (about ``--flag-percent`` of frames are hard for IBT), is
mined by the real miner and judged by the real capture policy (``perDay`` cap, JPEG quality,
longest side); what the policy saves goes through the real hard-example store (dHash,
JPEG encoding, files) and then waits for the upload policy's decisions (night window,
bytes per second and per day) as the agent's sender would look every 2.5 s. Time is the
frame's own (index / FPS), so a day runs as fast as the CPU allows and nothing sleeps.

The baseline row is today's behaviour on the same frames: every flagged frame saved full size
at JPEG quality 95 (near-duplicate suppression only), over the first ``--baseline-minutes``
simulated minutes (it saves thousands of images per hour); the ratio column is the CPU per
frame against it.

    .venv/bin/python bench/upload_policy.py [--hours 24] [--per-day 300]

Writes bench/results/upload_policy.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.upload_policy import Ledger, charge, hold_reason, roll
from protocol.data_policies import CaptureSettings, UploadPolicy
from protocol.messages import HardExampleSidecar
from workers.capture_policy import Capture, example_score
from workers.hardex_store import HardExampleStore
from workers.mining import Detections, make_miner

RESULTS = ROOT / "bench" / "results"
START = 1_796_083_200.0  # 2026-12-01T00:00:00Z: the simulated day starts at midnight UTC
SENDER_PASS_S = 2.5  # how often the agent's sender looks at the outbox


class SimClock:
    """The frames' own time: the capture policy reads it, the camera loop moves it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Row:
    frames: int = 0
    flagged: int = 0
    saved: int = 0
    saved_bytes: int = 0
    mining_cpu_s: float = 0.0
    capture_cpu_s: float = 0.0  # policy, resize, JPEG encoding, dHash, files
    saved_per_day: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def per_frame_us(self) -> dict[str, float]:
        return {"mining_us": 1e6 * self.mining_cpu_s / max(1, self.frames),
                "capture_us": 1e6 * self.capture_cpu_s / max(1, self.frames),
                "total_us": 1e6 * (self.mining_cpu_s + self.capture_cpu_s) / max(1, self.frames)}


FRAME_HW = (720, 1280)
BOXES = np.array([[10, 10, 200, 300], [300, 40, 420, 380], [500, 60, 620, 340]], np.float32)
CLASSES = np.array([1, 2, 3], np.int32)
CHUNK = 100_000


class Scenes:
    """Camera frames: a fixed sensor noise over a scene that changes from frame to frame, so
    that near-duplicate suppression (dHash) keeps them as it would a busy site."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.noise = rng.integers(0, 24, (*FRAME_HW, 3), np.uint8)
        self.idle = self.frame()

    def frame(self) -> np.ndarray:
        h, w = FRAME_HW
        layout = cv2.resize(self.rng.integers(0, 230, (8, 9, 3), np.uint8), (w, h))
        return cv2.add(layout, self.noise)

    def frame_for(self, capture: Capture | None) -> np.ndarray:
        """A new frame when it will be saved; the same idle one when the policy will skip it
        (making a frame is the camera's work, and 25 a second of them would dominate the
        run). With sampleRate 1 and no per-reason caps, ``allows`` is the policy's answer."""
        if capture is None or capture.gate.allows("rule"):
            return self.frame()
        return self.idle


def frame_scores(rng: np.random.Generator, count: int, flag_percent: float) -> np.ndarray:
    """Three box scores per frame, drawn ahead in bulk; a hard frame's are low (IBT with its
    defaults flags it)."""
    hard = rng.random(count) < flag_percent / 100
    return np.where(hard[:, None], rng.uniform(0.1, 0.45, (count, 3)),
                    rng.uniform(0.6, 0.99, (count, 3)))


def run_camera(frames: int, fps: float, flag_percent: float, folder: Path,
               capture: Capture | None, jpeg_quality: int,
               clock: SimClock | None = None) -> tuple[Row, list[tuple[float, int]]]:
    """Mine and save ``frames`` frames; returns the row and (time, bytes) of each saved one."""
    rng = np.random.default_rng(0)
    scenes = Scenes(rng)
    miner = make_miner("IBT")
    store = HardExampleStore(folder, quota_bytes=2**40, dedup_distance=4,
                             jpeg_quality=jpeg_quality)
    row, saved = Row(), []
    for index in range(frames):
        if index % CHUNK == 0:
            scores = frame_scores(rng, CHUNK, flag_percent)
        now = START + index / fps
        if clock is not None:
            clock.now = now
        t0 = time.process_time()
        det = Detections(BOXES, scores[index % CHUNK], CLASSES)  # the detector's output
        hard = miner.is_hard(det)
        t1 = time.process_time()
        row.mining_cpu_s += t1 - t0
        row.frames += 1
        if not hard:
            continue
        row.flagged += 1
        image = scenes.frame_for(capture)  # the camera's frame: not the node's cost
        t1 = time.process_time()
        size = _save(store, capture, image, det, index, now)
        row.capture_cpu_s += time.process_time() - t1
        if size:
            row.saved += 1
            row.saved_bytes += size
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            row.saved_per_day[day] = row.saved_per_day.get(day, 0) + 1
            saved.append((now, size))
    if capture is not None:
        row.skipped = dict(capture.gate.counters.skipped)
    return row, saved


def _save(store: HardExampleStore, capture: Capture | None, image: np.ndarray,
          det: Detections, index: int, now: float) -> int:
    target, scale = store, 1.0
    if capture is not None:
        placed = capture.place("rule", image, store)
        if placed is None:
            return 0
        target, image, scale = placed
    sidecar = HardExampleSidecar(
        boxes=[[float(v) * scale for v in box] for box in det.boxes],
        scores=[float(s) for s in det.scores], classes=[int(c) for c in det.classes],
        frame_index=index, time=now, mining_reason="rule",
        width=image.shape[1], height=image.shape[0], score=example_score(det.scores))
    example = target.save(image, sidecar)
    if example is None or (capture is not None and not capture.saved(example, "rule")):
        return 0
    return example.image_path.stat().st_size + example.sidecar_path.stat().st_size


def run_uploads(saved: list[tuple[float, int]], policy: UploadPolicy,
                end: float) -> dict[str, object]:
    """The sender's passes every 2.5 s over the simulated span, with the policy's decisions."""
    ledger = Ledger()
    waiting = list(saved)
    sent: list[tuple[float, int]] = []
    now = START
    while now <= end + 86400 and (waiting or now <= end):
        roll(ledger, policy, now)
        while waiting and waiting[0][0] <= now:
            if hold_reason(ledger, policy, now, waiting[0][1]) is not None:
                break
            charge(ledger, policy, waiting[0][1])
            sent.append((now, waiting.pop(0)[1]))
        now += SENDER_PASS_S
    per_day: dict[str, int] = {}
    for t, size in sent:
        day = time.strftime("%Y-%m-%d", time.gmtime(t))
        per_day[day] = per_day.get(day, 0) + size
    outside = [t for t, _ in sent
               if not (time.gmtime(t).tm_hour >= 22 or time.gmtime(t).tm_hour < 6)]
    return {"sent": len(sent), "sent_bytes": sum(s for _, s in sent), "left_waiting": len(waiting),
            "bytes_per_day_used": per_day, "bytes_per_day_budget": policy.bytes_per_day,
            "sent_outside_window": len(outside)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--per-day", type=int, default=300)
    parser.add_argument("--flag-percent", type=float, default=5.0)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--jpeg-quality", type=int, default=80)
    parser.add_argument("--day-budget-mb", type=float, default=5.0)
    parser.add_argument("--bytes-per-second", type=int, default=20_000)
    parser.add_argument("--baseline-minutes", type=float, default=2.0)
    args = parser.parse_args()
    frames = int(args.hours * 3600 * args.fps)
    settings = CaptureSettings.model_validate({"perDay": args.per_day, "maxSide": args.max_side,
                                               "jpegQuality": args.jpeg_quality})
    upload = UploadPolicy(windows=["22:00-06:00"], bytes_per_second=args.bytes_per_second,
                          bytes_per_day=int(args.day_budget_mb * 1e6))
    with tempfile.TemporaryDirectory() as tmp:
        base_frames = int(args.baseline_minutes * 60 * args.fps)
        baseline, _ = run_camera(base_frames, args.fps, args.flag_percent, Path(tmp) / "base",
                                 None, 95)
        clock = SimClock()
        capture = Capture(settings, Path(tmp) / "policy", clock=clock)
        policy_row, saved = run_camera(frames, args.fps, args.flag_percent, Path(tmp) / "policy",
                                       capture, args.jpeg_quality, clock)
    uploads = run_uploads(saved, upload, START + args.hours * 3600)
    rows = {"today: every flagged frame, full size, q95 (baseline)": baseline,
            f"capture policy: perDay {args.per_day}, maxSide {args.max_side}, "
            f"q{args.jpeg_quality}": policy_row}
    base_cost = baseline.per_frame_us()["total_us"]
    print(f"{args.hours:g} h at {args.fps:g} FPS ({frames} frames), {args.flag_percent:g} % "
          "flagged by IBT; baseline over the first "
          f"{args.baseline_minutes:g} min")
    print(f"{'row':58} {'frames':>8} {'saved':>6} {'KB/img':>7} {'mine us':>8} "
          f"{'save us':>8} {'x CPU':>6}")
    out_rows = {}
    for name, row in rows.items():
        cost = row.per_frame_us()
        ratio = cost["total_us"] / base_cost
        print(f"{name:58} {row.frames:8d} {row.saved:6d} "
              f"{row.saved_bytes / max(1, row.saved) / 1e3:7.1f} {cost['mining_us']:8.1f} "
              f"{cost['capture_us']:8.1f} {ratio:6.2f}")
        out_rows[name] = {**row.__dict__, **cost, "cpu_ratio_vs_baseline": ratio}
    cap_held = all(n <= args.per_day + 1 for n in policy_row.saved_per_day.values())
    print(f"saved per day {policy_row.saved_per_day} against perDay {args.per_day}: "
          f"{'holds' if cap_held else 'BROKEN'} (within one image)")
    print(f"skipped by rule: {policy_row.skipped}")
    used: dict[str, int] = uploads["bytes_per_day_used"]  # type: ignore[assignment]
    largest = max((size for _, size in saved), default=0)
    budget = upload.bytes_per_day or 0
    budget_held = all(n <= budget + largest for n in used.values())
    uploads["budget_held_within_one_image"] = budget_held
    print(f"uploads: {uploads['sent']} sent ({uploads['sent_bytes'] / 1e6:.2f} MB), "
          f"{uploads['left_waiting']} left waiting, "
          f"{uploads['sent_outside_window']} outside the 22:00-06:00 window")
    for day, n in sorted(used.items()):
        print(f"  {day}: {n / 1e6:.2f} MB of the {budget / 1e6:.2f} MB daily budget "
              f"({100 * n / budget:.0f} %)")
    print(f"daily byte budget {'holds' if budget_held else 'BROKEN'} (within one image)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "upload_policy.json"
    out.write_text(json.dumps({
        "arguments": vars(args), "rows": out_rows, "cap_held_within_one_image": cap_held,
        "uploads": uploads,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
