"""End-to-end inference throughput: TensorFlow vs LiteRT in each precision, side by side.

Each row runs the whole edge pipeline on the same generated 720p video, single process:
decode + resize to 352x640 (reader thread, overlapping the model) -> model -> box decoding +
NMS -> hard-example mining (IBT). FPS counts every frame of the file; none is skipped. The
TensorFlow (Keras) row is the baseline of the ratio column. Goal: >= 120 FPS.

Two ceilings are measured on the same video in the same run: decoding alone, and decoding plus
the resize to the model input (what the reader thread does). No model can run faster than the
second one in this pipeline.

    .venv/bin/python bench/inference.py [--model path/to/model.keras] [--seconds 10]

The model matters: an untrained detector finds no box, so box decoding, NMS and mining cost
nothing. Without ``--model`` it uses a trained base model if one is on disk (the seed-0 base that
``bench/learning.py`` leaves in its work folder, else the demo's cached one), else an untrained
detector, and says so in the table and the JSON. A model trained at another input size runs
with its weights at the product's 352x640 (the detector is fully convolutional).
Writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

RESULTS = ROOT / "bench" / "results"
DEMO_CACHE = ROOT / "demo-workdir" / "cache"
#: The product's model input (the demo's ``input_shape``).
DEPLOY_HW = (352, 640)


def trained_model() -> Path | None:
    """A trained detector on disk: bench/learning.py's seed-0 base, else the demo's newest."""
    from bench.learning import trained_models

    learned = trained_models()
    if learned is not None:
        return learned[0]
    cached = sorted(DEMO_CACHE.glob("base-model-*/model.keras"), key=lambda p: p.stat().st_mtime)
    return cached[-1] if cached else None
GOAL_FPS = 120.0


def make_video(path: Path, seconds: float) -> Path:
    from demo.scenes import render_video

    if not path.exists():
        render_video(
            path, [("day", seconds / 2), ("night", seconds / 2)], seed=11, fps=25, size=(1280, 720)
        )
    return path


def cpu_name() -> str:
    """The CPU model as the kernel names it (``platform`` only knows the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ceilings(video: Path, input_hw: tuple[int, int]) -> dict[str, float]:
    """FPS of decoding alone and of decoding + resizing to the model input: what the video path
    allows before any model runs."""
    import cv2

    from workers.detector import to_model_input

    out = {}
    for name, prepare in (("decode", None), ("decode_resize", True)):
        capture = cv2.VideoCapture(str(video))
        frames, started = 0, time.perf_counter()
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if prepare:
                to_model_input(frame, input_hw)
            frames += 1
        out[f"{name}_fps"] = frames / (time.perf_counter() - started)
        capture.release()
    return out


def run_pipeline(predictor, video: Path) -> dict[str, float]:
    """FPS of decode + predict + mining over the whole file, plus model-only latency."""
    from workers.detector import to_model_input
    from workers.mining import make_miner
    from workers.video import VideoSource

    miner = make_miner("IBT")
    frames = hard = boxes = 0
    input_hw = predictor.spec.input_hw
    # As inference.py does: decode and resize in the reader thread, the model in this one.
    with VideoSource(
        str(video), queue_size=8, prepare=lambda im: to_model_input(im, input_hw)
    ) as source:
        first = source.read()
        assert first is not None
        predictor.predict(first.image, prepared=first.prepared)  # warm caches on a real frame
        started = time.perf_counter()
        for frame in source:
            det = predictor.predict(frame.image, prepared=frame.prepared)
            hard += miner.is_hard(det)
            boxes += len(det)
            frames += 1
        elapsed = time.perf_counter() - started
        assert frames + 1 == source.frames_read, "a frame was read but not processed"
    h, w = predictor.spec.input_hw
    x = np.zeros((1, h, w, 3), np.uint8)
    n = 50
    started = time.perf_counter()
    for _ in range(n):
        predictor.run(x)
    model_ms = (time.perf_counter() - started) / n * 1000
    return {
        "fps": frames / elapsed,
        "frames": frames,
        "model_ms": model_ms,
        "boxes_per_frame": boxes / max(frames, 1),
        "hard_frames": hard,
    }



def representative_frames(video: Path, count: int = 64):
    """The int8 export's calibration set: the first ``count`` frames of ``video`` as the model
    sees them (a callable giving a fresh generator, as export_tflite wants)."""
    from workers.detector import to_model_input

    def frames():
        import cv2

        capture = cv2.VideoCapture(str(video))
        for _ in range(count):
            ok, frame = capture.read()
            if not ok:
                break
            yield to_model_input(frame, DEPLOY_HW)
        capture.release()

    return frames

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help=".keras model to benchmark")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the test video")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="model threads (0: as inference.py, all cores but one)",
    )
    args = parser.parse_args()

    from workers.detector import DetectorSpec, at_input, build_detector, load_detector, spec_of
    from workers.export import PRECISIONS, export_tflite
    from workers.predictor import configure_runtime, inference_threads, load_predictor

    threads = args.threads or inference_threads()
    configure_runtime(threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    model_path = args.model or trained_model()
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-inference-"))
    video = make_video(work / "bench-720p.mp4", args.seconds)
    cpu = cpu_name()
    if model_path is None:
        print("WARNING: no trained model found (run bench/learning.py or the demo first, or pass "
              "--model): benchmarking an UNTRAINED detector, which finds no box")
        model = build_detector(DetectorSpec(DEPLOY_HW, 4), seed=0)
        keras_path = work / "untrained.keras"
        model.save(keras_path)
    else:
        model, keras_path = load_detector(model_path), model_path
        if spec_of(model).input_hw != DEPLOY_HW:
            model = at_input(model, DEPLOY_HW)
            keras_path = work / "model.keras"
            model.save(keras_path)

    representative = representative_frames(video)

    rows = []
    candidates = [("tensorflow", "fp32", keras_path)]
    for precision in PRECISIONS:
        path = export_tflite(model, work / f"model-{precision}.tflite", precision, representative)
        candidates.append(("litert", precision, path))
    for runtime, precision, path in candidates:
        predictor = load_predictor(path, threads=threads)
        predictor.warm()
        result = run_pipeline(predictor, video)
        rows.append(
            {
                "runtime": runtime,
                "precision": precision,
                "size_kib": round(path.stat().st_size / 1024, 1),
                **result,
            }
        )
        print(f"  {runtime:<10} {precision:<13} {result['fps']:7.1f} FPS", flush=True)

    ceiling = ceilings(video, DEPLOY_HW)
    baseline = rows[0]["fps"]
    for row in rows:
        row["ratio_vs_tensorflow"] = row["fps"] / baseline
    best = max(rows[1:], key=lambda r: r["fps"])
    print()
    print(
        f"{'runtime':<11}{'precision':<14}{'FPS':>8}{'x TF':>7}{'model ms':>10}{'boxes/f':>9}{'KiB':>8}"
    )
    for r in rows:
        print(
            f"{r['runtime']:<11}{r['precision']:<14}{r['fps']:>8.1f}{r['ratio_vs_tensorflow']:>7.2f}"
            f"{r['model_ms']:>10.2f}{r['boxes_per_frame']:>9.1f}{r['size_kib']:>8.0f}"
        )
    print(
        f"{'ceiling':<11}{'decode':<14}{ceiling['decode_fps']:>8.1f}\n"
        f"{'ceiling':<11}{'decode+resize':<14}{ceiling['decode_resize_fps']:>8.1f}"
    )
    trained = model_path is not None
    print(f"\nmodel: {model_path if trained else 'UNTRAINED detector (no boxes)'}; CPU: {cpu}, "
          f"{os.cpu_count()} cores; {threads} model thread(s)")
    print(
        f"fastest: litert {best['precision']} at {best['fps']:.1f} FPS (goal >= {GOAL_FPS:.0f}), "
        f"{best['fps'] / ceiling['decode_resize_fps']:.0%} of the decode+resize ceiling"
    )
    out = RESULTS / "inference.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "inference",
                "pipeline": "decode 1280x720 + resize to 352x640 (reader thread) | model + decode/NMS + IBT mining",
                "model": str(model_path) if model_path else "untrained",
                "model_trained": model_path is not None,
                "cpu": cpu,
                "ceilings": ceiling,
                "video_frames": rows[0]["frames"] + 1,
                "cpu_count": os.cpu_count(),
                "threads": threads or os.cpu_count(),
                "rows": rows,
                "fastest": {"precision": best["precision"], "fps": best["fps"]},
                "goal_fps": GOAL_FPS,
                "goal_met": best["fps"] >= GOAL_FPS,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
