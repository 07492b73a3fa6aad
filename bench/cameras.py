"""Cameras per edge box: N 720p 25 FPS cameras as N worker processes, or as one process.

Each run plays N file cameras (the same generated 720p video, delivered at its own 25 FPS as a
camera would: ``realtime=1``) through the real inference pipeline (decode + resize in a reader
thread, LiteRT int8 model of the default detector, box decoding, IBT mining with blind-spot
mining beside it, hard examples saved), with mining on, in one of two designs:

- ``processes``: N ``workers/inference.py`` processes, one per camera, as the agent runs them
  (one worker per camera);
- ``threads``: one process running N streams, each with its own video source and its own LiteRT
  interpreter in its own thread (a multi-stream worker, prototyped here).

For each run it reports the CPU seconds spent per second of video per stream (measured from
``/proc`` over the steady part of the run, start-up excluded), the FPS each stream achieved and
the frames a live camera would have dropped (the frames it produced while a stream fell behind
its 25 FPS). Ratios are against the one-camera run of the ``processes`` design in the same run.

    .venv/bin/python bench/cameras.py [--model path/to/model.keras] [--counts 1,2,3,4]

Without ``--model`` it uses a trained base model if one is on disk (as bench/inference.py), else
an untrained detector (which finds no box, so box decoding and mining cost nothing), and says
so. Writes bench/results/cameras.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RESULTS = ROOT / "bench" / "results"
FPS = 25
#: A stream "carries" its camera when it keeps this share of the camera's frame rate.
KEEPS_UP = 0.96
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuSampler:
    """Samples the CPU time of some processes every 0.2 s, in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.samples: dict[int, list[tuple[float, float]]] = {pid: [] for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for pid, samples in self.samples.items():
                value = cpu_seconds(pid)
                if value is not None:
                    samples.append((now, value))
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def used(self, start: float, end: float) -> float:
        """CPU seconds all the processes used between two wall-clock times."""
        total = 0.0
        for samples in self.samples.values():
            inside = [s for s in samples if start <= s[0] <= end]
            if len(inside) >= 2:
                (t0, c0), (t1, c1) = inside[0], inside[-1]
                total += (c1 - c0) * (end - start) / max(t1 - t0, 1e-9)
        return total


def read_log(path: Path) -> list[float]:
    from workers.inference import read_frame_log

    return [r["t"] for r in read_frame_log(path)] if path.exists() else []


def analyse(times: list[list[float]], sampler: CpuSampler, n: int) -> dict[str, Any]:
    """The steady window (every stream running, first second and last half second left out):
    CPU per stream per second of video, FPS per stream, and frames a live camera would drop."""
    if any(len(t) < 2 for t in times):
        return {"error": "a stream served fewer than 2 frames"}
    start = max(t[0] for t in times) + 1.0
    end = min(t[-1] for t in times) - 0.5
    if end - start < 2.0:
        return {"error": f"steady window of {end - start:.1f} s is too short; give --seconds"}
    window = end - start
    frames = [sum(1 for x in t if start <= x <= end) for t in times]
    cpu = sampler.used(start, end)
    video_s = sum(frames) / FPS  # seconds of video the streams got through in the window
    dropped = []
    for t in times:
        produced = round((t[-1] - t[0]) * FPS) + 1
        dropped.append(max(0, produced - len(t)))
    fps = [f / window for f in frames]
    return {
        "streams": n,
        "window_s": round(window, 2),
        "cpu_cores": round(cpu / window, 3),
        "cpu_s_per_video_s_per_stream": round(cpu / video_s, 4) if video_s else None,
        "fps_per_stream": [round(f, 2) for f in fps],
        "fps_min": round(min(fps), 2),
        "frames_per_stream": [len(t) for t in times],
        "dropped_per_stream": dropped,
        "dropped_share": round(sum(dropped) / max(1, sum(dropped) + sum(map(len, times))), 4),
    }


def worker_env(model: Path, video: Path, run_dir: Path, i: int) -> dict[str, str]:
    return {
        **os.environ,
        "MODEL_URL": str(model),
        "video_url": str(video),
        "realtime": "1",
        "HEM_NAME": "IBT",
        "HE_SAVED_URL": str(run_dir / f"hardex-{i}"),
        "frame_log": str(run_dir / f"frames-{i}.jsonl"),
        "EDGELOOP_CAMERA": f"cam{i}",
        "EDGELOOP_RESULT": str(run_dir / f"result-{i}.json"),
        "PYTHONPATH": str(ROOT),
    }


def run_design(design: str, n: int, model: Path, video: Path, work: Path) -> dict[str, Any]:
    run_dir = work / f"{design}-{n}"
    run_dir.mkdir()
    logs = []
    processes = []
    if design == "processes":
        for i in range(n):
            log = (run_dir / f"worker-{i}.log").open("wb")
            logs.append(log)
            processes.append(subprocess.Popen(
                [sys.executable, str(ROOT / "workers" / "inference.py")],
                env=worker_env(model, video, run_dir, i), stdout=log, stderr=subprocess.STDOUT,
            ))
    else:
        log = (run_dir / "streams.log").open("wb")
        logs.append(log)
        processes.append(subprocess.Popen(
            [sys.executable, __file__, "--serve-streams", str(n), "--tflite", str(model),
             "--video", str(video), "--run-dir", str(run_dir)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
        ))
    sampler = CpuSampler([p.pid for p in processes])
    codes = [p.wait() for p in processes]
    sampler.stop()
    for log in logs:
        log.close()
    if any(codes):
        return {"streams": n, "error": f"exit codes {codes}; see {run_dir}"}
    times = [read_log(run_dir / f"frames-{i}.jsonl") for i in range(n)]
    result = analyse(times, sampler, n)
    result["hard_examples"] = sum(
        len(list((run_dir / f"hardex-{i}").glob("*.json"))) for i in range(n)
    )
    return result


def serve_streams(n: int, tflite: Path, video: Path, run_dir: Path) -> int:
    """The multi-stream prototype: n streams in one process, one thread and one interpreter
    each, the same pipeline as inference.py (model slot, miner, blind-spot, store)."""
    from protocol.manifests import BlindSpotMining
    from workers.blind_spot import BlindSpotMonitor
    from workers.detector import to_model_input
    from workers.hardex_store import HardExampleStore
    from workers.hotswap import ModelSlot
    from workers.inference import InferenceLoop
    from workers.mining import make_miner
    from workers.predictor import configure_runtime, inference_threads, load_predictor
    from workers.video import VideoSource

    threads = inference_threads()
    configure_runtime(threads)
    loops = []
    for i in range(n):
        predictor = load_predictor(tflite, threads=threads)
        predictor.warm()
        hw = predictor.spec.input_hw
        source = VideoSource(str(video), realtime=True,
                             prepare=lambda image, hw=hw: to_model_input(image, hw))
        loops.append(InferenceLoop(
            ModelSlot(predictor, lambda p, v: load_predictor(p, version=v), lambda o: None),
            source, ["person", "helmet", "helmet-on", "helmet-off"], None, make_miner("IBT"),
            HardExampleStore(run_dir / f"hardex-{i}", quota_bytes=2**30),
            frame_log=run_dir / f"frames-{i}.jsonl",
            blind_spot=BlindSpotMonitor(BlindSpotMining()), camera=f"cam{i}",
        ))
    workers = [threading.Thread(target=loop.run) for loop in loops]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return 0


def export_int8(model_path: Path | None, video: Path, work: Path) -> tuple[Path, str]:
    from inference import trained_model

    from workers.detector import DetectorSpec, at_input, build_detector, load_detector
    from workers.export import export_tflite

    model_path = model_path or trained_model()
    if model_path is None:
        print("WARNING: no trained model found (pass --model): an UNTRAINED detector, which "
              "finds no box")
        model, kind = build_detector(DetectorSpec((352, 640), 4), seed=0), "untrained"
    else:
        model, kind = at_input(load_detector(model_path), (352, 640)), f"trained ({model_path})"

    from inference import representative_frames

    representative = representative_frames(video)
    return export_tflite(model, work / "model-int8.tflite", "int8", representative), kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help=".keras model (default: trained)")
    parser.add_argument("--counts", default="1,2,3,4", help="cameras per run")
    parser.add_argument("--designs", default="processes,threads")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the video")
    parser.add_argument("--serve-streams", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tflite", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_streams:
        return serve_streams(args.serve_streams, args.tflite, args.video, args.run_dir)

    from inference import cpu_name
    from demo.scenes import render_video

    counts = [int(c) for c in args.counts.split(",")]
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-cameras-"))
    video = render_video(work / "camera-720p.mp4", [("day", args.seconds / 2),
                                                    ("night", args.seconds / 2)],
                         seed=13, fps=FPS, size=(1280, 720))
    model, kind = export_int8(args.model, video, work)
    rows = []
    for n in counts:  # designs interleaved, so that a noisy minute hits both
        for design in designs:
            result = {"design": design, **run_design(design, n, model, video, work)}
            rows.append(result)
            print(f"  {design:<10} {n} camera(s): " + (result.get("error") or (
                f"{result['cpu_s_per_video_s_per_stream']:.3f} CPU s per video s per stream, "
                f"min {result['fps_min']:.1f} FPS, dropped {sum(result['dropped_per_stream'])}")),
                flush=True)
    report(rows, counts, designs, kind, cpu_name(), work)
    return 0


def report(rows: list[dict[str, Any]], counts: list[int], designs: list[str], kind: str,
           cpu: str, work: Path) -> None:
    base = next((r for r in rows if r["design"] == "processes" and r["streams"] == 1
                 and "error" not in r), None)
    base_cost = base["cpu_s_per_video_s_per_stream"] if base else None
    print(f"\nmodel: default detector, {kind}, LiteRT int8; CPU: {cpu}, {os.cpu_count()} cores")
    print(f"{'design':<10} {'cams':>4} {'CPU s/video s/stream':>21} {'x 1 cam':>8} "
          f"{'CPU cores':>9} {'FPS/stream (min)':>17} {'dropped':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['design']:<10} {r['streams']:>4}  {r['error']}")
            continue
        cost = r["cpu_s_per_video_s_per_stream"]
        r["ratio_vs_one_camera_process"] = round(cost / base_cost, 3) if base_cost else None
        print(f"{r['design']:<10} {r['streams']:>4} {cost:>21.3f} "
              f"{r['ratio_vs_one_camera_process'] or 0:>8.2f} {r['cpu_cores']:>9.2f} "
              f"{r['fps_min']:>17.1f} {r['dropped_share']:>8.1%}")
    carried = {}
    for design in designs:
        ok = [r["streams"] for r in rows if r["design"] == design and "error" not in r
              and r["fps_min"] >= KEEPS_UP * FPS and r["dropped_share"] <= 0.01]
        carried[design] = max(ok, default=0)
        print(f"{design}: carries {carried[design]} camera(s) at 720p {FPS} FPS with mining on "
              f"(every stream >= {KEEPS_UP * FPS:.0f} FPS, <= 1% dropped)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "cameras.json"
    out.write_text(json.dumps({"model": kind, "cpu": cpu, "cores": os.cpu_count(),
                               "camera_fps": FPS, "rows": rows, "carried": carried,
                               "work": str(work)}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
