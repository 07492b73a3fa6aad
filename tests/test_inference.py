"""The inference loop: video source, hot-swap without losing frames, rollback, bad models,
and the hard-example store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from protocol.messages import HardExampleSidecar
from workers.hardex_store import HardExampleStore, dhash, hamming
from workers.video import VideoSource, VideoSourceError, parse_source

SIZE = (96, 64)  # w, h of the test video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from demo.scenes import render_video

    return render_video(
        tmp_path_factory.mktemp("video") / "clip.mp4", [("day", 3.0)], seed=5, fps=10, size=SIZE
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different tiny LiteRT detectors."""
    from workers.detector import DetectorSpec, build_detector
    from workers.export import export_tflite

    root = tmp_path_factory.mktemp("models")
    spec = DetectorSpec((64, 96), 4)
    return {
        name: export_tflite(build_detector(spec, seed=seed), root / f"{name}.tflite")
        for name, seed in (("v1", 1), ("v2", 2))
    }


def make_loop(models: dict[str, Path], video: Path, **loop_args):
    from workers.hotswap import ModelSlot
    from workers.inference import InferenceLoop
    from workers.predictor import load_predictor

    outcomes: list = []
    first = load_predictor(models["v1"], version="1", threads=1)
    first.warm()
    slot = ModelSlot(
        first,
        lambda path, version: load_predictor(path, version=version, threads=1),
        outcomes.append,
    )
    source = VideoSource(str(video))
    return InferenceLoop(
        slot, source, ["person", "helmet", "helmet-on", "helmet-off"], **loop_args
    ), outcomes


# --- hot-swap ------------------------------------------------------------------------------------


@pytest.mark.ml
def test_hot_swap_loses_no_frame_and_changes_the_version(
    models: dict[str, Path], video: Path
) -> None:
    from edgeloop.checksum import file_sha256

    seen: list[tuple[int, str]] = []
    loop_ref: dict = {}

    def on_detections(frame, det) -> None:
        seen.append((frame.index, loop_ref["loop"].slot.current.version))
        if frame.index == 5:
            loop_ref["loop"].slot.request_swap(models["v2"], "2", file_sha256(models["v2"]))
            loop_ref["loop"].slot.wait_loaders()  # make the swap land mid-stream in this test

    loop, outcomes = make_loop(models, video, on_detections=on_detections)
    loop_ref["loop"] = loop
    stats = loop.run()

    assert stats.frames == loop.source.frames_read == 30  # frames in == frames out
    assert [i for i, _ in seen] == list(range(30))  # in order, none skipped
    assert stats.versions == {"1": 6, "2": 24}
    assert [v for _, v in seen][5:8] == ["1", "2", "2"]  # swapped between frames 5 and 6
    assert len(outcomes) == 1 and outcomes[0].ok and outcomes[0].frame == 6
    assert (outcomes[0].version, outcomes[0].previous) == ("2", "1")
    assert loop.slot.previous is not None and loop.slot.previous.version == "1"  # kept for rollback


@pytest.mark.ml
def test_corrupt_or_mismatched_model_is_refused_and_the_old_one_keeps_serving(
    models: dict[str, Path], video: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "broken.tflite"
    corrupt.write_bytes(models["v2"].read_bytes()[:5000])
    requests = {3: (corrupt, "2", None), 6: (models["v2"], "3", "0" * 64)}

    def on_detections(frame, det) -> None:
        if frame.index in requests:
            path, version, sha = requests[frame.index]
            loop.slot.request_swap(path, version, sha)
            loop.slot.wait_loaders()

    loop, outcomes = make_loop(models, video, on_detections=on_detections)
    stats = loop.run()
    assert stats.frames == 30 and stats.versions == {"1": 30}
    assert [o.ok for o in outcomes] == [False, False]
    assert "broken.tflite" in outcomes[0].error and "cannot load" in outcomes[0].error
    assert "does not match sha256" in outcomes[1].error


@pytest.mark.ml
def test_rollback_is_instant_and_needs_a_previous_model(
    models: dict[str, Path], video: Path
) -> None:
    def on_detections(frame, det) -> None:
        if frame.index == 2:
            loop.slot.request_rollback()  # nothing to roll back to yet
            loop.slot.request_swap(models["v2"], "2")
            loop.slot.wait_loaders()
        if frame.index == 10:
            loop.slot.request_rollback()

    loop, outcomes = make_loop(models, video, on_detections=on_detections)
    stats = loop.run()
    assert stats.frames == 30
    assert stats.versions == {"1": 3 + 19, "2": 8}
    assert not outcomes[0].ok and "no previous model" in outcomes[0].error
    assert [(o.ok, o.version, o.frame) for o in outcomes[1:]] == [(True, "2", 3), (True, "1", 11)]


@pytest.mark.ml
def test_a_new_model_failing_its_first_frame_is_put_back_and_the_frame_still_served(
    models: dict[str, Path], video: Path
) -> None:
    from workers.predictor import Predictor, load_predictor

    class FailsToRun(Predictor):
        warm_before_serving = False  # like LiteRT: its first real frame is its first run

        def run(self, batch):
            raise RuntimeError("tensor arena exhausted")

    def loader(path: Path, version: str) -> Predictor:
        good = load_predictor(path, version=version, threads=1)
        return FailsToRun(path, good.spec, good.settings, version) if version == "bad" else good

    def on_detections(frame, det) -> None:
        if frame.index == 3:
            loop.slot.request_swap(models["v2"], "bad")
            loop.slot.wait_loaders()

    loop, outcomes = make_loop(models, video, on_detections=on_detections)
    loop.slot._loader = loader
    stats = loop.run()
    assert stats.frames == loop.source.frames_read == 30  # the failed frame was served too
    assert stats.versions == {"1": 30}
    assert [(o.ok, o.version, o.frame) for o in outcomes] == [(True, "bad", 4), (False, "1", 4)]
    assert "bad failed on its first frame: tensor arena exhausted" in outcomes[1].error
    assert loop.slot.current.version == "1" and loop.slot.swaps == 0


@pytest.mark.ml
def test_frame_log_names_the_model_of_every_frame_and_retired_models_are_released(
    models: dict[str, Path], video: Path, tmp_path: Path
) -> None:
    import itertools
    import time
    import weakref

    from workers.inference import read_frame_log

    requests = {3: "2", 10: "3"}

    def on_detections(frame, det) -> None:
        if frame.index in requests:
            loop.slot.request_swap(models["v2"], requests[frame.index])
            loop.slot.wait_loaders()

    log_path = tmp_path / "logs" / "frames.jsonl"
    loop, _ = make_loop(models, video, on_detections=on_detections, frame_log=log_path)
    first = weakref.ref(loop.slot.current)
    loop.run()
    records = read_frame_log(log_path)
    assert [r["frame"] for r in records] == list(range(30))
    assert [r["version"] for r in records] == ["1"] * 4 + ["2"] * 7 + ["3"] * 19
    assert all(b["t"] >= a["t"] for a, b in itertools.pairwise(records))
    assert all(r["decoded"] <= r["t"] for r in records)
    assert all(isinstance(r["boxes"], int) and r["boxes"] >= 0 for r in records)
    # Version 1 left "previous" at the second swap; the release thread lets go of it.
    assert loop.slot.previous.version == "2"
    deadline = time.monotonic() + 10
    while first() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first() is None


@pytest.mark.ml
def test_blind_spot_mining_keeps_frames_the_rule_cannot_judge_and_says_why(
    models: dict[str, Path], video: Path, tmp_path: Path
) -> None:
    """A rule that never fires (Threshold 0) leaves blind-spot mining alone to keep frames:
    each saved sidecar names its reason, and the reasons are exactly what the monitor decides
    from the box counts the frame log recorded."""
    from protocol.manifests import BlindSpotMining
    from workers.blind_spot import BlindSpotMonitor
    from workers.inference import read_frame_log
    from workers.mining import make_miner

    settings = BlindSpotMining.model_validate(
        {"emptyFrameEvery": 2, "windowFrames": 4, "baselineFrames": 8, "sampleEvery": 3,
         "minBaseline": 0.0}
    )
    store = HardExampleStore(tmp_path / "he", quota_bytes=64 * 2**20, dedup_distance=0)
    loop, _ = make_loop(
        models, video, miner=make_miner("Threshold", {"threshold": "0"}), store=store,
        blind_spot=BlindSpotMonitor(settings), frame_log=tmp_path / "frames.jsonl",
    )
    stats = loop.run()
    boxes = [r["boxes"] for r in read_frame_log(tmp_path / "frames.jsonl")]
    replay = BlindSpotMonitor(settings)
    expected = {i: reason for i, n in enumerate(boxes) if (reason := replay.observe(n))}
    assert stats.mined == len(expected) and stats.frames == len(boxes) == 30
    assert stats.mined_by_reason == {r: list(expected.values()).count(r)
                                     for r in set(expected.values())}
    saved = [json.loads(p.read_text()) for p in (tmp_path / "he").glob("*.json")]
    assert len(saved) == stats.hard_examples == sum(stats.hard_examples_by_reason.values())
    assert {s["frame_index"]: s["mining_reason"] for s in saved}.items() <= expected.items()
    assert loop.mining_stats()["mining_mode"] == replay.mode


@pytest.mark.ml
def test_capture_policy_thins_caps_and_shrinks_what_the_loop_saves(
    models: dict[str, Path], video: Path, tmp_path: Path
) -> None:
    """Every frame is mined (Random 1.0); the policy keeps one in two, three a minute (the
    clock stands still: one minute), at 48 pixels wide with the boxes scaled alike."""
    from protocol.data_policies import CaptureSettings
    from workers.capture_policy import Capture
    from workers.mining import make_miner

    settings = CaptureSettings.model_validate(
        {"sampleRate": 0.5, "perMinute": 3, "maxSide": 48, "jpegQuality": 60})
    store = HardExampleStore(tmp_path / "he", quota_bytes=64 * 2**20, dedup_distance=0,
                             jpeg_quality=60)
    capture = Capture(settings, tmp_path / "he", clock=lambda: 1_800_000_000.0)
    loop, _ = make_loop(models, video, miner=make_miner("Random", {"random_ratio": "1"}),
                        store=store, capture=capture)
    stats = loop.run()
    saved = [json.loads(p.read_text()) for p in (tmp_path / "he").glob("*.json")]
    counters = loop.mining_stats()["capture"]
    assert stats.mined == 30 and counters["skipped"]["sampled-out"] == 15
    assert 1 <= len(saved) == counters["saved"] == stats.hard_examples <= 3
    assert counters["skipped"]["cap:minute"] == 15 - 3
    assert all((s["width"], s["height"]) == (48, 32) for s in saved)
    assert all(0 <= b[2] <= 48 and 0 <= b[3] <= 32 for s in saved for b in s["boxes"])
    assert all(0.0 <= s["score"] <= 1.0 for s in saved)


@pytest.mark.ml
def test_load_errors_name_the_file(models: dict[str, Path], tmp_path: Path) -> None:
    from workers.predictor import ModelLoadError, load_predictor

    bad = tmp_path / "garbage.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(ModelLoadError, match="garbage.tflite"):
        load_predictor(bad)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_predictor(tmp_path / "nope.keras")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown type"):
        load_predictor(other)


@pytest.mark.ml
def test_a_model_file_is_recognised_by_its_content_whatever_its_name(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """The seed's deploy model is ``/deploy/model.pb``: the served file keeps that name."""
    from workers.predictor import LiteRTPredictor, load_predictor, model_kind

    renamed = tmp_path / "model.pb"
    renamed.write_bytes(models["v1"].read_bytes())
    assert model_kind(renamed) == ".tflite"
    assert isinstance(load_predictor(renamed, threads=1), LiteRTPredictor)
    text = tmp_path / "notes.pb"
    text.write_text("no model here")
    assert model_kind(text) is None


# --- video source ---------------------------------------------------------------------------


def test_video_source_delivers_every_frame_in_order_and_loops(video: Path) -> None:
    with VideoSource(str(video)) as source:
        indices = [f.index for f in source]
        assert indices == list(range(30))
        assert source.read() is None  # the end stays the end
    with VideoSource(str(video), loop=True) as source:
        frames = [source.read() for _ in range(75)]
        assert [f.index for f in frames] == list(range(75)) and source.reopens >= 2
        assert frames[0].image.shape == (64, 96, 3)


def test_a_realtime_file_is_never_delivered_faster_than_its_frame_rate(video: Path) -> None:
    """``realtime=1`` plays a file as a camera would (10 fps here): frame n is never handed over
    before n / fps seconds after the first. A lower bound only, so a slow machine cannot fail it."""
    with VideoSource(str(video), realtime=True) as source:
        assert source.source_fps == pytest.approx(10.0)
        stamps = [f.timestamp for f in source]
    assert len(stamps) == 30
    assert all(t - stamps[0] >= n / 10.0 - 0.01 for n, t in enumerate(stamps))


def test_video_source_close_unblocks_a_reader(video: Path) -> None:
    source = VideoSource(str(video), loop=True)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(iter(source)))
    reader.start()
    source.close()
    reader.join(5)
    assert not reader.is_alive()


def test_video_source_errors() -> None:
    assert parse_source("0") == 0 and parse_source("rtsp://cam/1") == "rtsp://cam/1"
    with pytest.raises(VideoSourceError, match="does not exist"):
        VideoSource("/no/such/clip.mp4")
    with pytest.raises(VideoSourceError, match="empty"):
        parse_source("  ")


# --- hard-example store ------------------------------------------------------------------------


def sidecar(frame_index: int) -> HardExampleSidecar:
    return HardExampleSidecar(
        boxes=[[1, 2, 30, 40]],
        scores=[0.4],
        classes=[3],
        class_names=["a", "b", "c", "d"],
        frame_index=frame_index,
        model_version=2,
        source="cam",
    )


def scene(seed: int) -> np.ndarray:
    from demo.scenes import render_scene

    return render_scene(np.random.default_rng(seed), "day", (160, 90))[0]


def test_store_saves_image_then_sidecar_and_skips_near_duplicates(tmp_path: Path) -> None:
    store = HardExampleStore(tmp_path / "he", quota_bytes=10 * 2**20, dedup_distance=4)
    image = scene(1)
    saved = store.save(image, sidecar(7))
    assert saved is not None
    document = json.loads(saved.sidecar_path.read_text())
    assert document["image"] == saved.image_path.name and document["sha256"] == saved.sha256
    assert document["frame_index"] == 7 and document["model_version"] == 2
    assert cv2.imread(str(saved.image_path)).shape == image.shape

    noisy = np.clip(image.astype(np.int16) + 3, 0, 255).astype(
        np.uint8
    )  # the same view, re-encoded
    assert store.save(noisy, sidecar(8)) is None
    assert store.save(scene(2), sidecar(9)) is not None
    assert (store.counters.saved, store.counters.skipped_duplicate) == (2, 1)
    assert not list((tmp_path / "he").glob(".*.tmp"))


def test_store_quota_refuses_new_examples_and_never_deletes(tmp_path: Path) -> None:
    store = HardExampleStore(tmp_path / "he", quota_bytes=20_000, dedup_distance=0)
    results = [store.save(scene(seed), sidecar(seed)) for seed in range(10)]
    kept = [r for r in results if r is not None]
    assert 0 < len(kept) < 10 and store.counters.skipped_quota == 10 - len(kept)
    assert all(r.image_path.exists() for r in kept)
    # Space freed by the agent (it moved examples away) is noticed.
    for r in kept:
        r.image_path.unlink()
        r.sidecar_path.unlink()
    assert store.save(scene(20), sidecar(20)) is not None


def test_dhash_tells_scenes_apart() -> None:
    a, b = dhash(scene(1)), dhash(scene(2))
    assert hamming(a, a) == 0 and hamming(a, b) > 8
    with pytest.raises(ValueError, match="quota"):
        HardExampleStore("/tmp/x", quota_bytes=0)


# --- end to end through the agent's channel -----------------------------------------------------


ROOT = Path(__file__).resolve().parent.parent
#: The environment ``make test`` builds as an edge box has it: ``pip install 'edgeloop[edge]'``,
#: LiteRT and OpenCV, no TensorFlow.
EDGE_PYTHON = Path(os.environ.get("EDGELOOP_EDGE_PYTHON", ROOT / ".venv-edge" / "bin" / "python"))


def edge_python() -> str:
    """The edge environment's interpreter, after checking that it really has no TensorFlow."""
    if not EDGE_PYTHON.exists():
        pytest.fail(f"{EDGE_PYTHON} is missing: `make test` creates it (make .venv-edge/.installed)")
    probe = subprocess.run(
        [str(EDGE_PYTHON), "-c", "import importlib.util as u; "
         "print(u.find_spec('tensorflow') is None, u.find_spec('keras') is None)"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.split() == ["True", "True"], "the edge environment has TensorFlow or Keras"
    return str(EDGE_PYTHON)


@pytest.mark.ml
@pytest.mark.parametrize("environment", ["full", "edge-without-tensorflow"])
def test_inference_boot_file_swaps_on_the_agents_command(
    models: dict[str, Path], video: Path, tmp_path: Path, environment: str
) -> None:
    """inference.py under a websockets 'agent': swap on command, report it, stop on command;
    in this environment, and in an edge box's (LiteRT + OpenCV, no TensorFlow installed)."""
    from test_sdk import AgentServer

    from protocol import worker_channel as wc
    from protocol import worker_contract as contract
    from edgeloop.checksum import file_sha256

    agent = AgentServer()
    env = {k: v for k, v in os.environ.items() if k not in contract.LOCATION_VARIABLES}
    env |= {
        contract.MODEL_URL: str(models["v1"]),
        contract.MODEL_VERSION: "1",
        contract.CHANNEL: agent.url,
        contract.RESULT: str(tmp_path / "result.json"),
        contract.TASK_ID: "infer-1",
        "video_url": str(video),
        "loop": "1",
        "input_shape": "64,96",
        "threads": "1",
        "frame_log": str(tmp_path / "frames.jsonl"),
        contract.HEM_NAME: "Random",  # mining and saving need OpenCV: the edge extra has it
        "HE_SAVED_URL": str(tmp_path / "he"),
    }
    python = sys.executable if environment == "full" else edge_python()
    proc = subprocess.Popen(
        [python, str(ROOT / "workers" / "inference.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        hello = agent.wait_for(wc.Hello, timeout=60)[0]
        assert (hello.task_id, hello.role) == ("infer-1", "inference")
        agent.wait_for(wc.Stats, timeout=60)  # frames are flowing
        agent.send(
            wc.encode(
                wc.Swap(path=str(models["v2"]), version="2", sha256=file_sha256(models["v2"]))
            )
        )
        swapped = agent.wait_for(wc.Swapped, timeout=60)[0]
        assert swapped.ok and (swapped.version, swapped.previous) == ("2", "1")
        agent.send(wc.encode(wc.Stop()))
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        agent.close()
    assert proc.returncode == 0, output
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "completed" and result["model_version"] == "2"
    assert result["hard_examples"] > 0
    assert len(list((tmp_path / "he").glob("*.jpg"))) == result["hard_examples"]
    # each kept frame says why: Random is the job's rule, blind-spot mining runs beside it (on
    # by default); the result counts them per reason
    reasons = [json.loads(p.read_text())["mining_reason"] for p in (tmp_path / "he").glob("*.json")]
    assert set(reasons) <= {"rule", "empty-frame", "detection-drop"} and "rule" in reasons
    assert result["hard_examples_by_reason"] == {r: reasons.count(r) for r in set(reasons)}
    assert result["mining_mode"] in ("normal", "detection-drop")
    # Frames are numbered from 0 without gaps: version 1 served exactly the frames before the swap.
    assert result["frames_per_version"]["1"] == swapped.frame
    assert result["frames_per_version"]["2"] == result["frames"] - swapped.frame > 0
    from workers.inference import read_frame_log

    versions = [r["version"] for r in read_frame_log(tmp_path / "frames.jsonl")]
    assert versions == ["1"] * swapped.frame + ["2"] * (result["frames"] - swapped.frame)
    assert agent.wait_for(wc.Result)[0].result["frames"] == result["frames"]
