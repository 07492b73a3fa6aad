"""What the shadow comparison of a rollout's canary costs: inference FPS with the previous model
run beside the new one on one frame in N, against the same loop without a comparison.

The inference loop (workers.inference.InferenceLoop) reads a looping generated video flat out
and serves LiteRT model ``b``, swapped in over ``a`` before the first frame; with
``--every N`` the swap asks for the comparison (workers.shadow), so ``a`` also runs on every
Nth frame and the two box sets are matched. Configurations alternate within each run so the
machine's drift hits them alike; the table gives the median FPS of each and its ratio to the
baseline (no comparison) of the same run, and the FPS the worker reports for the serving
version (``version_fps``, the comparison's time left out: what a rollout's ``maxFpsDrop``
judges).

    .venv/bin/python bench/shadow.py [--runs 3] [--frames 400] [--every 0,10,5]

Writes bench/results/shadow.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
CLASS_NAMES = ["person", "helmet", "helmet-on", "helmet-off"]
INPUT_HW = (192, 320)


def models(work: Path) -> tuple[Path, Path]:
    """Two untrained LiteRT detectors of the same shape (the cost does not depend on weights)."""
    from workers.detector import DetectorSpec, build_detector
    from workers.export import export_tflite

    spec = DetectorSpec(INPUT_HW, len(CLASS_NAMES))
    return (export_tflite(build_detector(spec, seed=1), work / "a.tflite"),
            export_tflite(build_detector(spec, seed=2), work / "b.tflite"))


def one(a: Path, b: Path, video: Path, every: int, frames: int) -> dict[str, float | int]:
    """One loop of ``frames`` frames serving ``b`` (``a`` beside it on one frame in ``every``)."""
    from edgeloop.checksum import file_sha256
    from workers.detector import to_model_input
    from workers.hotswap import ModelSlot
    from workers.inference import InferenceLoop
    from workers.predictor import load_predictor
    from workers.shadow import ShadowComparison
    from workers.video import VideoSource

    first = load_predictor(a, version="1", threads=1)
    first.warm()
    slot = ModelSlot(first, lambda path, version: load_predictor(path, version=version,
                                                                 threads=1), lambda _: None)
    shadow = ShadowComparison()
    shadow.request(every)
    slot.request_swap(b, "2", file_sha256(b))
    slot.wait_loaders()  # version 2 serves from the first frame
    source = VideoSource(str(video), loop=True,
                         prepare=lambda image: to_model_input(image, INPUT_HW))
    loop = InferenceLoop(slot, source, CLASS_NAMES, max_frames=frames, shadow=shadow)
    stats = loop.run()
    source.close()
    report = shadow.stats()
    return {"every": every, "frames": stats.frames, "fps": round(stats.fps, 2),
            "version_fps": float(report.get("version_fps") or 0.0),
            "compared": int(report.get("shadow_compared") or 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--every", default="0,10,5",
                        help="comma-separated N; 0 is the baseline, no comparison")
    args = parser.parse_args()
    everies = [int(x) for x in args.every.split(",")]
    if 0 not in everies:
        everies.insert(0, 0)
    from demo.scenes import render_video

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        a, b = models(work)
        video = render_video(work / "clip.mp4", [("day", 4.0)], seed=3, fps=25,
                             size=(INPUT_HW[1], INPUT_HW[0]))
        runs: list[list[dict[str, float | int]]] = []
        for run in range(args.runs):
            order = everies if run % 2 == 0 else list(reversed(everies))
            runs.append([one(a, b, video, every, args.frames) for every in order])
    table = []
    for every in everies:
        rows = [next(r for r in run if r["every"] == every) for run in runs]
        base = [next(r for r in run if r["every"] == 0) for run in runs]
        table.append({
            "every": every,
            "fps": statistics.median(float(r["fps"]) for r in rows),
            "version_fps": statistics.median(float(r["version_fps"]) for r in rows),
            # each run's ratio to its own baseline, then the median
            "ratio_to_baseline": round(statistics.median(
                float(r["fps"]) / float(b["fps"]) for r, b in zip(rows, base)), 3),
            "compared": statistics.median(int(r["compared"]) for r in rows),
        })
    print(f"shadow comparison cost, {args.frames} frames per loop, {args.runs} runs, "
          f"input {INPUT_HW[1]}x{INPUT_HW[0]}, LiteRT, 1 thread")
    print(f"{'comparison':>14} {'FPS':>8} {'ratio':>7} {'version FPS':>12} {'compared':>9}")
    for row in table:
        name = "none" if row["every"] == 0 else f"1 in {row['every']}"
        print(f"{name:>14} {row['fps']:>8.1f} {row['ratio_to_baseline']:>7.3f} "
              f"{row['version_fps']:>12.1f} {row['compared']:>9}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "shadow.json"
    out.write_text(json.dumps({"frames": args.frames, "runs": runs, "table": table}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
