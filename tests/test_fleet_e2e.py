"""Staged rollout with real parts: a real broker, the cloud manager and four real agents whose
inference side is the real ``workers/inference.py`` serving real LiteRT models on tiny generated
file videos (cloud0 trains with stand-in workers that hand out prepared models, one per round:
training is not what this proves).

The fleet: edge1, the canary, with two file cameras (its health is the worst of the two, and a
rollback must turn both back), edge2 and edge3 with one camera each: four cameras. The versions:

* v1 "good": the initial model's weights, so its detections agree with the initial model's on
  every frame; it reaches all four cameras;
* v2 "collapse": a valid detector whose heatmap bias is so low that nothing passes the
  threshold: the canary's real shadow comparison finds agreement 0 and the rollout fails;
* v3 "unreadable": a valid LiteRT model (it passes the agent's model check) whose output the
  postprocess cannot read: the worker refuses it on its first frame and serves v1 on;
* v4 "corrupt": a truncated file, discarded by the canary's model check before any worker sees
  it;
* v5 "crash": a detector-shaped model that serves one frame and fails every frame after: the
  worker really dies, and again at each restart with it.

Each bad version stops at the canary, which goes back to v1 by itself, is marked failed with its
reason, and edge2 and edge3 never download it. The rollout timeline is printed (``pytest -s``).
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_cloud import agent_config
from running_cloud import api, cloud
from test_cloud_daemon import DATASET, JOB, NS, job_state, seed_manifests, wait_for
from test_loop_integration import EVAL_PY, append_samples
from test_real_workers_loop import CLASS_NAMES, INPUT_SHAPE, SCRIPTS

from model_files import truncated

from cloud_manager.task_builder import task_id
from edge_agent.daemon import Agent

pytestmark = [
    pytest.mark.ml,
    pytest.mark.broker,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

INFERENCE_TASK = task_id(NS, JOB, 0, "inference")
EDGES = ("edge1", "edge2", "edge3")
CANARY_CAMERAS = ("gate", "crane")

#: The stand-in training worker: round n hands out the prepared ``models/n.tflite``.
TRAIN_PY = """
import hashlib, json, os, shutil
from pathlib import Path

counter = Path("rounds.txt")
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
out = Path(os.environ["MODEL_URL"])
out.mkdir(parents=True, exist_ok=True)
shutil.copyfile(f"models/{n}.tflite", out / "model.tflite")
(out / "model.keras").write_bytes(b"not used by inference")
artifacts = [{"name": p.name, "path": str(p), "size": p.stat().st_size,
              "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in (out / "model.keras", out / "model.tflite")]
Path(os.environ["EDGELOOP_RESULT"]).write_text(json.dumps({"artifacts": artifacts}))
"""


def detector_tflite(path: Path, heat_bias: float) -> Path:
    """A tiny detector whose heatmap bias is ``heat_bias`` on every class: high, it sees
    persons all over a frame; very low, nothing passes the threshold."""
    import numpy as np

    from workers.detector import DetectorSpec, build_detector
    from workers.export import export_tflite

    model = build_detector(DetectorSpec(tuple(int(v) for v in INPUT_SHAPE.split(",")), 4), seed=1)
    heat = model.get_layer("heatmap")
    kernel, bias = heat.get_weights()
    heat.set_weights([kernel, np.full_like(bias, heat_bias)])
    return export_tflite(model, path)


def unreadable_tflite(path: Path) -> Path:
    """A valid LiteRT model with a detector's input whose output is a flat vector, not the
    ``(H/4, W/4, classes + 4)`` grid the postprocess reads."""
    import keras

    from workers.export import export_tflite

    h, w = (int(v) for v in INPUT_SHAPE.split(","))
    image = keras.Input((h, w, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return export_tflite(keras.Model(image, keras.layers.Dense(9)(x)), path)


def failing_from_second_frame_tflite(path: Path) -> Path:
    """A detector-shaped LiteRT model with a frame counter (a resource variable) that reads
    out of bounds from its second invoke on: it loads, passes the agent's model check, serves
    its first frame, then fails every frame, which the worker cannot survive."""
    import tensorflow as tf

    h, w = (int(v) for v in INPUT_SHAPE.split(","))
    grid = [1, h // 4, w // 4, 4 + 4]

    class Counting(tf.Module):
        def __init__(self) -> None:
            self.count = tf.Variable(0, dtype=tf.int32)

        @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32)])
        def __call__(self, image: tf.Tensor) -> tf.Tensor:
            self.count.assign_add(1)
            table = tf.zeros(grid[1:])[None]
            return tf.gather(table, self.count - 1)[None] + 0.0 * tf.reduce_mean(image)

    module = Counting()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module)
    converter.experimental_enable_resource_variables = True
    path.write_bytes(converter.convert())
    return path


def prepare_code(tmp_path: Path) -> tuple[Path, Path]:
    """The boot files (real inference, stand-in train and eval) and the models of each round;
    returns the code folder and the initial model."""
    code = tmp_path / "code"
    (code / "models").mkdir(parents=True)
    shutil.copyfile(SCRIPTS / "inference.py", code / "inference.py")
    (code / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (code / "eval.py").write_text(textwrap.dedent(EVAL_PY))
    initial = detector_tflite(tmp_path / "model" / "base_model.tflite", 4.0)
    shutil.copyfile(initial, code / "models" / "1.tflite")  # good: the same detections
    detector_tflite(code / "models" / "2.tflite", -30.0)  # collapse: no detections at all
    unreadable_tflite(code / "models" / "3.tflite")
    (code / "models" / "4.tflite").write_bytes(truncated(initial.read_bytes()))
    failing_from_second_frame_tflite(code / "models" / "5.tflite")
    return code, initial


def fleet_manifests(tmp_path: Path, code: Path, initial: Path, video: Path) -> list[str]:
    parameters = {
        "deploySpec": {"class_names": CLASS_NAMES, "input_shape": INPUT_SHAPE, "loop": "1",
                       "realtime": "1", "threads": "1", "video_url": str(video)},
    }
    manifests = seed_manifests(tmp_path, 5, script_dir=code, initial_model=initial,
                               parameters=parameters)
    job = json.loads(manifests[-1])
    deploy = job["spec"]["deploySpec"]
    del deploy["nodeName"]
    deploy["nodeNames"] = list(EDGES)
    deploy["rollout"] = {"canary": 1, "bakeSeconds": 1, "waveSize": 1, "shadowEvery": 2,
                         "healthTimeoutSeconds": 90}
    manifests[-1] = json.dumps(job)
    return manifests


def version_dir(tmp_path: Path, node: str, version: int) -> Path:
    return tmp_path / node / "models" / NS / JOB / f"v{version}"


@dataclass
class Timeline:
    """What happened when, seen from the test: rollout phases and each camera's version."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    last: dict[str, object] = field(default_factory=dict)

    def see(self, key: str, value: object) -> None:
        if self.last.get(key, "-") != value:
            self.last[key] = value
            self.lines.append(f"{time.monotonic() - self.started:7.1f} s  {key}: {value}")

    def text(self) -> str:
        return "\n".join(self.lines)


async def test_real_workers_a_good_version_reaches_four_cameras_bad_ones_stop_at_the_canary(
        broker, tmp_path):
    from demo.scenes import render_video

    code, initial = prepare_code(tmp_path)
    clips = {name: render_video(tmp_path / f"{name}.mp4", [(domain, 1.0)], seed=seed, fps=10,
                                size=(128, 72))
             for name, domain, seed in (("job", "day", 4), ("gate", "day", 5),
                                        ("crane", "night", 6))}
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.txt").write_text("")
    timeline = Timeline()

    def agent(node: str, **extra) -> Agent:
        return Agent(agent_config(broker.url, tmp_path / node, node=node,
                                  restart_initial_s=0.2, restart_max_s=0.5, **extra))

    cameras = {c: str(clips[c]) for c in CANARY_CAMERAS}
    async with cloud(broker.url, tmp_path / "cloud", read_node_paths=False) as daemon, \
            agent("cloud0", datasets={DATASET: str(data / "data.txt")}, check_models=False), \
            agent("edge1", cameras=cameras) as edge1, agent("edge2") as edge2, \
            agent("edge3") as edge3:
        edges = {"edge1": edge1, "edge2": edge2, "edge3": edge3}

        def camera_versions() -> dict[str, int | None]:
            """Each camera's serving version as the agents report it."""
            out: dict[str, int | None] = {}
            for name, node in edges.items():
                for worker in node.runner.running:
                    camera = worker.partition("@")[2]
                    out[f"{name}/{camera}" if camera else name] = node.serving.get(worker)
            return out

        def observe() -> bool:
            rollout = job_state(daemon).rollout
            if rollout is not None:
                timeline.see("rollout", f"v{rollout.version} {rollout.phase}"
                             + (f" ({rollout.reason})" if rollout.reason else ""))
            for camera, version in camera_versions().items():
                timeline.see(camera, f"v{version}" if version is not None else "starting")
            return True

        async def until(predicate, what: str, timeout: float = 90.0) -> None:
            await wait_for(lambda: observe() and predicate(), what, timeout)

        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in fleet_manifests(tmp_path, code, initial, clips["job"]):
            response = await api(broker.url, "apply", body=text)
            assert response.ok, response
        four = {"edge1/gate", "edge1/crane", "edge2", "edge3"}
        await until(lambda: set(camera_versions()) == four
                    and all(n.worker_stats.get(w) and n.worker_stats[w].frames > 0
                            for n in edges.values() for w in n.runner.running),
                    "four cameras serving the initial model", 120)
        timeline.see("fleet", "four cameras serve the initial model")

        def rollout_phase() -> str | None:
            rollout = job_state(daemon).rollout
            return rollout.phase if rollout is not None else None

        # v1: the canary compares it with the initial model (the same detections), then waves
        append_samples(data, 0, 10)
        await until(lambda: rollout_phase() == "Completed", "version 1 rolled out", 120)
        await until(lambda: camera_versions() == dict.fromkeys(four, 1),
                    "all four cameras serve version 1")
        conditions = [c.reason for c in job_state(daemon).conditions]
        assert any(r.startswith("canary passed: node edge1") and "agreement 1.00" in r
                   for r in conditions), conditions
        status = daemon.manager.store.node("edge1").status
        assert {c: s.version for c, s in status.cameras[INFERENCE_TASK].items()} == {
            "gate": 1, "crane": 1}
        for node in ("edge2", "edge3"):
            assert daemon.manager.store.node(node).status.serving == {INFERENCE_TASK: 1}

        # v2: its detections collapse; the canary's shadow comparison fails it
        append_samples(data, 10, 10)
        await until(lambda: 2 in job_state(daemon).failed_versions, "version 2 fails")
        reason = job_state(daemon).failed_versions[2]
        assert reason.startswith("canary node edge1: agreement with the previous version 0.00 "
                                 "< minAgreement 0.6"), reason
        await until(lambda: camera_versions() == dict.fromkeys(four, 1),
                    "edge1's cameras back on version 1")
        assert job_state(daemon).deployed_version == 1

        # v3: the worker cannot read its output; it refuses it and serves version 1 on
        append_samples(data, 20, 10)
        await until(lambda: 3 in job_state(daemon).failed_versions, "version 3 fails")
        reason = job_state(daemon).failed_versions[3]
        assert reason.startswith("node edge1 could not load model version 3"), reason
        await until(lambda: camera_versions() == dict.fromkeys(four, 1),
                    "edge1's cameras serve version 1 again")

        # v4: a corrupt file; the agent's model check discards it before any worker sees it
        append_samples(data, 30, 10)
        await until(lambda: 4 in job_state(daemon).failed_versions, "version 4 fails")
        reason = job_state(daemon).failed_versions[4]
        assert reason.startswith("node edge1 could not load model version 4: model not "
                                 "available: "), reason
        assert "was discarded: LiteRT cannot load it" in reason
        assert camera_versions() == dict.fromkeys(four, 1)
        assert not (version_dir(tmp_path, "edge1", 4) / "model.tflite").exists()

        # v5: it serves one frame, then fails every frame: the worker crashes, and again at each
        # restart with it; the canary goes back to version 1 by itself
        append_samples(data, 40, 10)
        await until(lambda: 5 in job_state(daemon).failed_versions, "version 5 fails")
        reason = job_state(daemon).failed_versions[5]
        assert reason.startswith("node edge1 serving model version 5: its inference worker "
                                 "crashed"), reason
        await until(lambda: camera_versions() == dict.fromkeys(four, 1),
                    "edge1's cameras serve version 1 after the crashes")

        # the rest of the fleet never received any of them
        for version in (2, 3, 5):
            assert (version_dir(tmp_path, "edge1", version) / "model.tflite").exists()
        for version in (2, 3, 4, 5):
            for node in ("edge2", "edge3"):
                assert not version_dir(tmp_path, node, version).exists()
        for node in (edge2, edge3):
            assert node.runner.restart_counts() == dict.fromkeys(node.runner.running, 0)
        described = await api(broker.url, "describe", resource="il", namespace=NS, name=JOB)
        rows = {r["version"]: r["rollout"] for r in described.data["versions"]}
        assert rows[1] == "" and rows[2].startswith("canary node edge1: agreement")
        assert rows[3].startswith("node edge1 could not load model version 3")
        assert rows[4].startswith("node edge1 could not load model version 4")
        assert rows[5].startswith("node edge1 serving model version 5: its inference worker")
        assert described.data["rollout"]["phase"] == "Failed"
        observe()
        print("\nrollout timeline (seconds since the agents started):\n" + timeline.text())
