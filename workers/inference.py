"""Inference boot file: detect on a video source, mine hard examples, hot-swap models.

Run by the edge agent as ``python inference.py`` with the worker contract in the environment
(docs/workers.md), or by hand: ``python workers/inference.py --help``.

Reads ``video_url`` (RTSP URL, file, camera index; ``loop=1`` restarts a file), runs the model of
``MODEL_URL`` on every frame it reads, saves hard examples (``HEM_NAME``/``HEM_PARAMETERS``, and
blind-spot mining, ``EDGELOOP_BLIND_SPOT``: :mod:`workers.blind_spot`) under ``HE_SAVED_URL`` and
tells the agent about them, and swaps models on the agent's ``swap`` and
``rollback`` messages without losing a frame. With ``frame_log`` it records which model served
each frame, and when (:class:`FrameLog`). The loop itself (:class:`InferenceLoop`) is importable
for benchmarks and tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: keep this folder's module names off sys.path
    sys.path[:] = [
        p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
    ]

import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import worker_channel as wc
from protocol import worker_contract as contract
from protocol.manifests import BlindSpotMining
from protocol.messages import HardExampleSidecar
from workers import sdk
from workers.blind_spot import RULE, BlindSpotMonitor, MiningReason
from workers.capture_policy import Capture, example_score
from workers.hardex_store import JPEG_QUALITY, HardExampleStore
from workers.hotswap import ModelSlot, SwapOutcome
from workers.mining import Detections, Miner
from workers.shadow import ShadowComparison
from workers.video import Frame, VideoSource, check_source

log = logging.getLogger("edgeloop.inference")

DESCRIPTION = "Detect on video_url with MODEL_URL, mine hard examples into HE_SAVED_URL"
STATS_INTERVAL_S = 1.0
#: Python's thread switch interval while the loop runs (default 5 ms, longer than a frame):
#: after the model call, which releases the GIL, the loop waits at most this long for it while
#: the decode or model-loading thread runs Python.
SWITCH_INTERVAL_S = 0.001


def wire_version(version: str | None) -> int | None:
    """The wire carries integer model versions; anything else (a file stem) is unknown there."""
    return int(version) if version and version.isdigit() else None


@dataclass
class LoopStats:
    frames: int = 0
    hard_examples: int = 0
    mined: int = 0  # judged hard, saved or not
    mined_by_reason: dict[str, int] = field(default_factory=dict)
    hard_examples_by_reason: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)  # model version -> frames it served
    frame_times: list[float] | None = None  # monotonic time after each frame, when recorded

    @property
    def fps(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.frames / elapsed if self.frames and elapsed > 0 else 0.0


class FrameLog:
    """One JSON line per processed frame: index, times, model version, box count.

    The record behind "which model served each frame" plots and swap-gap benchmarks (format in
    docs/workers.md, "Frame log"). Lines are kept in memory and written by :meth:`flush`, which
    the loop calls about once a second, so a frame costs one string format, not a write.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lines: list[str] = []
        self._version: str | None = None
        self._version_json = "null"

    def add(
        self, frame_index: int, decoded: float, served: float, version: str, boxes: int
    ) -> None:
        """``decoded``: wall time the frame left the decoder; ``served``: when the model answered."""
        if version != self._version:
            self._version, self._version_json = version, json.dumps(version)
        self._lines.append(
            f'{{"frame":{frame_index},"t":{served:.6f},"decoded":{decoded:.6f},'
            f'"version":{self._version_json},"boxes":{boxes}}}\n'
        )

    def flush(self) -> None:
        if self._lines:
            self._file.write("".join(self._lines))
            self._lines.clear()
            self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


def read_frame_log(path: Path | str) -> list[dict[str, Any]]:
    """The records of a frame log, in order (a torn last line, from a crash, is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class InferenceLoop:
    """Frames in, detections out, one model call per frame, never a frame skipped."""

    def __init__(
        self,
        slot: ModelSlot,
        source: VideoSource,
        class_names: Sequence[str],
        session: sdk.WorkerSession | None = None,
        miner: Miner | None = None,
        store: HardExampleStore | None = None,
        max_frames: int = 0,
        record_times: bool = False,
        on_detections: Callable[[Frame, Detections], None] | None = None,
        frame_log: Path | str | None = None,
        blind_spot: BlindSpotMonitor | None = None,
        shadow: ShadowComparison | None = None,
        capture: Capture | None = None,
        camera: str = "",
    ):
        self.slot = slot
        self.source = source
        self.class_names = list(class_names)
        self.session = session
        self.miner = miner
        self.store = store
        self.max_frames = max_frames
        self.on_detections = on_detections
        self.frame_log_path = Path(frame_log) if frame_log else None
        self.blind_spot = blind_spot
        self.shadow = shadow
        self.capture = capture
        self.camera = camera  # the agent's name for the stream (EDGELOOP_CAMERA), for sidecars
        self.stats = LoopStats(frame_times=[] if record_times else None)

    def stop(self) -> None:
        """End the loop after the current frame (safe from any thread)."""
        self.source.close()

    def run(self) -> LoopStats:
        frame_log = FrameLog(self.frame_log_path) if self.frame_log_path else None
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, SWITCH_INTERVAL_S))
        try:
            return self._run(frame_log)
        finally:
            sys.setswitchinterval(switch_interval)
            if frame_log is not None:
                frame_log.close()

    def _run(self, frame_log: FrameLog | None) -> LoopStats:
        stats = self.stats
        stats.started = time.monotonic()
        next_report = stats.started + STATS_INTERVAL_S
        for frame in self.source:
            model = self.slot.for_frame(frame.index)
            try:
                det = model.predict(frame.image, prepared=frame.prepared)
            except Exception as exc:
                if not self.slot.reject(model, str(exc), frame.index):
                    raise
                model = self.slot.current  # the previous model, which served before
                det = model.predict(frame.image, prepared=frame.prepared)
            if self.shadow is not None:
                previous = self.slot.previous if model is self.slot.current else None
                self.shadow.observe(frame.index, frame.image, frame.prepared, det, model.version,
                                    previous)
            if frame_log is not None:
                frame_log.add(
                    frame.index, frame.timestamp, time.time(), model.version, len(det.scores)
                )
            stats.frames += 1
            stats.versions[model.version] = stats.versions.get(model.version, 0) + 1
            reason = self._mining_reason(det, frame.index)
            if reason is not None:
                stats.mined += 1
                _count(stats.mined_by_reason, reason)
                self._save_hard_example(frame, det, model.version, reason)
            if self.capture is not None:
                for held in self.capture.release_due():
                    if self.session is not None:
                        self.session.emit_hard_example(
                            held.image_path, held.sidecar_path, held.sha256
                        )
            if self.on_detections is not None:
                self.on_detections(frame, det)
            now = time.monotonic()
            if stats.frame_times is not None:
                stats.frame_times.append(now)
            if self.session is not None and self.session.wants_frame():
                self.session.send_frame(
                    frame.image,
                    det.boxes,
                    det.scores,
                    det.classes,
                    self.class_names,
                    stats.fps,
                    frame.index,
                )
            if now >= next_report:
                next_report = now + STATS_INTERVAL_S
                if frame_log is not None:
                    frame_log.flush()
                if self.session is not None:
                    self._report_stats()
            if self.max_frames and stats.frames >= self.max_frames:
                break
        stats.finished = time.monotonic()
        if self.source.error:
            raise RuntimeError(self.source.error)
        return stats

    def _mining_reason(self, det: Detections, frame_index: int) -> MiningReason | None:
        """Why this frame is a hard example: the confidence rule first, else blind-spot mining
        (which sees every frame, to keep its detection rate)."""
        spot = None
        if self.blind_spot is not None:
            before = self.blind_spot.mode
            spot = self.blind_spot.observe(len(det))
            if self.blind_spot.mode != before:
                self._log_mode_change(frame_index)
        if self.miner is not None and self.miner.is_hard(det):
            return RULE
        return spot

    def _log_mode_change(self, frame_index: int) -> None:
        monitor = self.blind_spot
        assert monitor is not None
        if monitor.mode == "detection-drop":
            log.warning(
                "frame %d: detections fell to %.2f per frame against this node's baseline of "
                "%.2f: the model may be blind to what the camera shows now; sampling one frame "
                "in %d as hard examples (detection-drop) until the rate recovers",
                frame_index, monitor.recent_rate or 0.0, monitor.baseline or 0.0,
                monitor.settings.sample_every,
            )
        else:
            log.info(
                "frame %d: detections back to %.2f per frame (baseline %.2f): mining by the "
                "rule again", frame_index, monitor.recent_rate or 0.0, monitor.baseline or 0.0,
            )

    def _save_hard_example(
        self, frame: Frame, det: Detections, version: str, reason: MiningReason
    ) -> None:
        if self.store is None:
            return
        store, image, scale = self.store, frame.image, 1.0
        if self.capture is not None:  # the job's capture policy: sampling, caps, size
            placed = self.capture.place(reason, frame.image, self.store)
            if placed is None:
                return
            store, image, scale = placed
        h, w = image.shape[:2]
        sidecar = HardExampleSidecar(
            boxes=[[round(float(v) * scale, 1) for v in box] for box in det.boxes],
            scores=[round(float(s), 4) for s in det.scores],
            classes=[int(c) for c in det.classes],
            class_names=self.class_names,
            model_version=wire_version(version),
            frame_index=frame.index,
            time=frame.timestamp,
            source=self.source.url,
            camera=self.camera,
            mining=repr(self.miner) if self.miner is not None else "",
            mining_reason=reason,
            width=w,
            height=h,
            score=example_score(det.scores),
        )
        saved = store.save(image, sidecar)
        if saved is None or (self.capture is not None and not self.capture.saved(saved, reason)):
            return
        self.stats.hard_examples += 1
        _count(self.stats.hard_examples_by_reason, reason)
        if self.session is not None:
            self.session.emit_hard_example(saved.image_path, saved.sidecar_path, saved.sha256)

    def _report_stats(self) -> None:
        assert self.session is not None
        counters = self.store.counters if self.store is not None else None
        self.session.report_stats(
            self.stats.frames,
            self.stats.fps,
            self.stats.hard_examples,
            mined=self.stats.mined,
            skipped_duplicate=counters.skipped_duplicate if counters else 0,
            skipped_quota=counters.skipped_quota if counters else 0,
            source_frames_read=self.source.frames_read,
            **self.mining_stats(),
            **(self.shadow.stats() if self.shadow is not None else {}),
        )

    def mining_stats(self) -> dict[str, Any]:
        """What the node reports about why it sampled: per reason, and the drop mode."""
        out: dict[str, Any] = {
            "mined_by_reason": dict(self.stats.mined_by_reason),
            "hard_examples_by_reason": dict(self.stats.hard_examples_by_reason),
        }
        if self.capture is not None:
            out["capture"] = self.capture.counters()
        monitor = self.blind_spot
        if monitor is not None:
            rate, baseline = monitor.recent_rate, monitor.baseline
            out |= {
                "mining_mode": monitor.mode,
                "detection_drops": monitor.drops,
                "detections_per_frame": None if rate is None else round(rate, 3),
                "detections_baseline": None if baseline is None else round(baseline, 3),
            }
        return out


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def run_inference(params: sdk.Parameters, session: sdk.WorkerSession) -> dict[str, Any]:
    from workers.detector import to_model_input
    from workers.mining import make_miner
    from workers.predictor import (
        DecodeSettings,
        configure_runtime,
        inference_threads,
        load_predictor,
    )

    env = params.env
    if not env.model_url:
        raise sdk.ParameterError(f"{contract.MODEL_URL} (model file to serve) is required")
    video_url = params.get("video_url")
    if not video_url:
        raise sdk.ParameterError("video_url is required (rtsp:// URL, video file or camera index)")
    check_source(video_url)
    class_names = params.class_names
    settings = DecodeSettings(params.obj_threshold, params.nms_threshold)
    threads = params.threads or inference_threads()
    miner = make_miner(env.hem_name, env.hem_parameters) if env.hem_name else None
    blind_spot = blind_spot_monitor(env, miner)
    he_dir = params.get("HE_SAVED_URL")
    if miner is not None and not he_dir:
        raise sdk.ParameterError(
            f"{contract.HEM_NAME} is set but HE_SAVED_URL (where to save) is not"
        )
    store = None
    capture = capture_of(params)
    if he_dir:
        store = HardExampleStore(
            he_dir,
            quota_bytes=int(params.float("he_quota_mb", minimum=0.001) * 2**20),
            dedup_distance=params.int("he_dedup_distance", minimum=0),
            jpeg_quality=capture.settings.jpeg_quality if capture else JPEG_QUALITY,
        )
    configure_runtime(threads)
    version = env.model_version or Path(env.model_url).stem
    predictor = load_predictor(env.model_url, settings, version=version, threads=threads)
    if predictor.spec.num_classes != len(class_names):
        raise ValueError(
            f"model {env.model_url} predicts {predictor.spec.num_classes} classes "
            f"but class_names lists {len(class_names)}"
        )
    predictor.warm()
    session.model_version = version

    def on_swap_result(outcome: SwapOutcome) -> None:
        session.report_swapped(
            outcome.ok, outcome.version, outcome.previous, outcome.error, outcome.frame
        )
        session.model_version = outcome.version  # also after a refused model: what serves now

    def loader(path: Path, new_version: str):
        return load_predictor(path, settings, version=new_version, threads=threads)

    slot = ModelSlot(predictor, loader, on_swap_result)
    input_hw = predictor.spec.input_hw
    source = VideoSource(
        video_url,
        loop=params.bool("loop"),
        realtime=params.bool("realtime"),
        prepare=lambda image: to_model_input(image, input_hw),
    )
    loop = InferenceLoop(
        slot,
        source,
        class_names,
        session,
        miner,
        store,
        max_frames=params.int("max_frames", minimum=0),
        frame_log=params.get("frame_log"),
        blind_spot=blind_spot,
        shadow=(shadow := ShadowComparison()),
        capture=capture,
        camera=env.camera or "",
    )

    def on_swap(message: wc.Swap) -> None:
        shadow.request(message.shadow_every)  # a canary compares the new model with this one
        slot.request_swap(message.path, message.version, message.sha256)

    session.subscribe("swap", on_swap)
    session.subscribe("rollback", lambda m: slot.request_rollback())
    session.subscribe("stop", lambda m: loop.stop())
    if session.stop_requested.is_set():
        loop.stop()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    log.info(
        "serving model %s on %s (mining: %s; blind-spot mining: %s)",
        version, video_url, miner, blind_spot.settings if blind_spot else "off",
    )
    try:
        stats = loop.run()
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        source.close()
    counters = store.counters if store is not None else None
    return {
        "frames": stats.frames,
        "fps": round(stats.fps, 2),
        "duration_s": round(stats.finished - stats.started, 2),
        "hard_examples": stats.hard_examples,
        "mined": stats.mined,
        **loop.mining_stats(),
        "skipped_duplicate": counters.skipped_duplicate if counters else 0,
        "skipped_quota": counters.skipped_quota if counters else 0,
        "model_version": slot.current.version,
        "frames_per_version": stats.versions,
        "swaps": slot.swaps,
        "source": video_url,
        "parameters": params.as_dict(),
    }


def capture_of(params: sdk.Parameters) -> Capture | None:
    """The job's capture policy for this worker's camera (``EDGELOOP_CAMERA``; none: the
    node's one camera), or None when the job sets none: every mined frame is saved."""
    try:
        policy = contract.parse_capture_policy(params.get(contract.CAPTURE_POLICY) or "")
    except ValueError as exc:
        raise sdk.ParameterError(str(exc)) from None
    he_dir = params.get("HE_SAVED_URL")
    if policy is None or not he_dir:
        return None
    settings = policy.for_camera(params.get(contract.CAMERA) or "")
    return Capture(settings, Path(he_dir))


def blind_spot_monitor(
    env: contract.WorkerEnvironment, miner: Miner | None
) -> BlindSpotMonitor | None:
    """Blind-spot mining beside the rule: the job's settings, its defaults when the job mines
    but names none (``EDGELOOP_BLIND_SPOT`` unset), nothing when nothing is mined."""
    if miner is None:
        return None
    settings = env.blind_spot or BlindSpotMining()
    return BlindSpotMonitor(settings) if settings.enabled else None


def main(argv: list[str] | None = None) -> int:
    return sdk.run("inference", run_inference, DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
