"""Hot-swap while processing a stream: frames lost, and the longest inter-frame gap around each
swap compared with the median gap of the same run.

The inference loop (workers.inference.InferenceLoop) runs a LiteRT model on a looping 720p
file; at fixed frames it is asked to swap to another model, roll back, and swap again. Loading
and warming happen in a background thread while frames keep flowing. Goals: 0 frames lost,
longest gap during a swap <= 2x the median gap.

    .venv/bin/python bench/swap_in_process.py [--frames 600]

Uses the two models left by bench/learning.py when present (base and its incremental round),
else two untrained detectors. Writes bench/results/swap_in_process.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

RESULTS = ROOT / "bench" / "results"
LEARNED = RESULTS / "learning-models"
GOAL_GAP_RATIO = 2.0


def models(work: Path, precision: str) -> tuple[Path, Path, str]:
    """Two LiteRT models in ``precision`` (int8 calibrates on generated scenes)."""
    from workers.detector import DetectorSpec, build_detector, load_detector
    from workers.export import export_tflite
    from workers.synth import render_scene

    a, b = LEARNED / "base" / "model.keras", LEARNED / "replay" / "model.keras"
    if a.exists() and b.exists():
        keras_models, kind = [load_detector(a), load_detector(b)], "trained (bench/learning.py)"
    else:
        spec = DetectorSpec((352, 640), 4)
        keras_models, kind = (
            [build_detector(spec, seed=1), build_detector(spec, seed=2)],
            "untrained",
        )

    def calibration():
        rng = np.random.default_rng(0)
        for _ in range(32):
            yield render_scene(rng, "day", (640, 352))[0]

    paths = [
        export_tflite(m, work / f"{n}.tflite", precision, calibration)
        for m, n in zip(keras_models, "ab")
    ]
    return paths[0], paths[1], f"{kind}, {precision}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="model threads (0: as inference.py, all cores but one)",
    )
    parser.add_argument("--precision", default="int8", help="LiteRT precision of the models")
    args = parser.parse_args()

    from workers.export import file_sha256
    from workers.hotswap import ModelSlot
    from workers.inference import InferenceLoop
    from workers.mining import make_miner
    from workers.predictor import configure_runtime, inference_threads, load_predictor
    from workers.synth import render_video
    from workers.video import VideoSource

    threads = args.threads or inference_threads()
    configure_runtime(threads)
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-swap-"))
    video = render_video(work / "swap-720p.mp4", [("day", 4.0)], seed=12, fps=25, size=(1280, 720))
    path_a, path_b, kind = models(work, args.precision)

    outcomes = []
    first = load_predictor(path_a, version="1", threads=threads)
    first.warm()
    slot = ModelSlot(
        first, lambda p, v: load_predictor(p, version=v, threads=threads), outcomes.append
    )
    # Requests at fixed frames: swap to B, roll back to A, swap to B again (a fresh load).
    plan = {
        args.frames // 6: ("swap", path_b, "2"),
        args.frames // 2: ("rollback", None, None),
        2 * args.frames // 3: ("swap", path_b, "3"),
    }
    requested_at: dict[str, int] = {}
    indices: list[int] = []

    def on_detections(frame, det) -> None:
        indices.append(frame.index)
        action = plan.get(frame.index)
        if action is None:
            return
        kind_, path, version = action
        if kind_ == "swap":
            slot.request_swap(path, version, file_sha256(path))
            requested_at[version] = frame.index
        else:
            slot.request_rollback()
            requested_at["rollback"] = frame.index

    from workers.detector import to_model_input

    input_hw = first.spec.input_hw
    source = VideoSource(
        str(video), loop=True, queue_size=8, prepare=lambda im: to_model_input(im, input_hw)
    )
    loop = InferenceLoop(
        slot,
        source,
        ["person", "helmet", "helmet-on", "helmet-off"],
        miner=make_miner("IBT"),
        max_frames=args.frames,
        record_times=True,
        on_detections=on_detections,
    )
    stats = loop.run()
    source.close()

    times = np.asarray(stats.frame_times)
    gaps = np.diff(times) * 1000  # gap i is between frame i and i+1, in ms
    median = float(np.median(gaps))
    # A frame is lost when its index never reached the model (indices count every frame read).
    lost = len(set(range(indices[-1] + 1)) - set(indices)) if indices else 0
    events = []
    for outcome, key in zip(outcomes, ["2", "rollback", "3"]):
        start = requested_at.get(key)
        end = outcome.frame if outcome.ok and outcome.frame is not None else start
        window = gaps[start : end + 2] if start is not None else np.array([0.0])
        events.append(
            {
                "event": "rollback" if key == "rollback" else f"swap to version {key}",
                "ok": outcome.ok,
                "requested_at_frame": start,
                "served_from_frame": outcome.frame,
                "frames_while_loading": (outcome.frame - start)
                if outcome.ok and start is not None
                else None,
                "max_gap_ms": float(window.max()),
                "gap_ratio_vs_median": float(window.max() / median),
            }
        )
    worst = max(e["gap_ratio_vs_median"] for e in events)
    # Control: the same statistic over windows of the same length that contain no swap, to tell
    # a swap's cost from the machine's own jitter.
    width = max(2, max((e["frames_while_loading"] or 1) + 2 for e in events))
    busy = set()
    for e in events:
        if e["requested_at_frame"] is not None:
            busy.update(range(e["requested_at_frame"] - width, e["requested_at_frame"] + width + 8))
    control = [
        gaps[i : i + width].max() / median
        for i in range(0, len(gaps) - width, width)
        if not busy & set(range(i, i + width))
    ]
    control_p50, control_p95 = (float(np.percentile(control, q)) for q in (50, 95))
    print(
        f"model: {kind}; frames processed {stats.frames}, read {source.frames_read}, "
        f"fps {stats.fps:.1f}, versions {stats.versions}"
    )
    print(
        f"median inter-frame gap {median:.2f} ms, p99 {np.percentile(gaps, 99):.2f} ms, "
        f"max {gaps.max():.2f} ms (whole run)"
    )
    print(
        f"\n{'event':<20}{'ok':>4}{'req@':>7}{'from':>7}{'frames':>8}{'max gap ms':>12}{'x median':>10}"
    )
    for e in events:
        print(
            f"{e['event']:<20}{e['ok']!s:>4}{e['requested_at_frame']!s:>7}"
            f"{e['served_from_frame']!s:>7}{e['frames_while_loading']!s:>8}"
            f"{e['max_gap_ms']:>12.2f}{e['gap_ratio_vs_median']:>10.2f}"
        )
    print(
        f"control: max gap in {width}-frame windows without a swap = {control_p50:.2f}x median "
        f"(p50), {control_p95:.2f}x (p95)"
    )
    print(
        f"\nframes lost: {int(lost)} (goal 0); worst gap ratio {worst:.2f} (goal <= {GOAL_GAP_RATIO})"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "swap_in_process.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "swap_in_process",
                "models": kind,
                "threads": threads,
                "frames_processed": stats.frames,
                "frames_lost": int(lost),
                "fps": stats.fps,
                "frames_per_version": stats.versions,
                "median_gap_ms": median,
                "p99_gap_ms": float(np.percentile(gaps, 99)),
                "events": events,
                "worst_gap_ratio": worst,
                "control_window_frames": width,
                "control_gap_ratio_p50": control_p50,
                "control_gap_ratio_p95": control_p95,
                "goal_gap_ratio": GOAL_GAP_RATIO,
                "goal_met": int(lost) == 0 and worst <= GOAL_GAP_RATIO,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
