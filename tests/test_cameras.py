"""Cameras per edge node: the settings, the per-camera workers and what the status says of them,
and a real agent with two file cameras and one whose URL does not open, under the real cloud
manager: both good cameras serve and mine, their hard examples reach the cloud with node and
camera, and the broken one shows its reason without stopping the others."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from agent_cloud import agent_config
from running_cloud import api, cloud
from test_cloud_cli import edgeloop
from test_cloud_daemon import JOB, NODE, NS, wait_for
from test_loop_integration import INFERENCE_TASK
from test_real_workers_loop import make_initial_model, seed_manifests_for_workers

from cloud_manager.api import camera_summary
from edge_agent import cameras
from edge_agent import decisions as d
from edge_agent.config import ConfigError, load_config
from edge_agent.daemon import Agent
from protocol import worker_channel as wc
from protocol.messages import CameraStatus, NodeStatus, Task, WorkerSpec


def settings(**values: object) -> dict[str, object]:
    return {"node": "edge-1", "broker": "mqtt://localhost:1883", **values}


# --- settings ------------------------------------------------------------------------------------


def test_cameras_are_urls_or_urls_with_options():
    config = load_config(None, settings(cameras={
        "gate": "rtsp://viewer:secret@10.0.0.5/stream1",
        "crane": {"url": "/videos/crane.mp4", "loop": 1, "realtime": "1"},
        "usb": 0,
    }))
    assert config.camera_parameters() == {
        "gate": {"video_url": "rtsp://viewer:secret@10.0.0.5/stream1"},
        "crane": {"video_url": "/videos/crane.mp4", "loop": "1", "realtime": "1"},
        "usb": {"video_url": "0"},
    }


@pytest.mark.parametrize(("cameras_setting", "message"), [
    ({"gate/1": "rtsp://x"}, "cameras.gate/1.[key]: String should match pattern"),
    ({"gate": {"url": "rtsp://x", "HEM_NAME": "Random"}}, "unknown camera option(s) HEM_NAME"),
    ({"gate": {"loop": "1"}}, "cameras.gate.url: Field required"),
    ({"gate": ""}, "cameras.gate.url: String should have at least 1 character"),
])
def test_a_bad_camera_setting_is_named(cameras_setting, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, settings(cameras=cameras_setting))
    assert message in str(error.value)


# --- worker ids and status ---------------------------------------------------------------------


def test_worker_ids_split_back_and_a_task_reports_its_oldest_version():
    assert cameras.worker_id("t", None) == "t"
    worker = cameras.worker_id("ns-job-infer-0", "gate")
    assert (cameras.task_of(worker), cameras.camera_of(worker)) == ("ns-job-infer-0", "gate")
    assert cameras.camera_of("t") is None
    assert cameras.workers_of("t", ["t@a", "t@b", "u@a", "t"]) == ["t@a", "t@b", "t"]
    assert cameras.serving_by_task({"t@a": 3, "t@b": 2, "u": 5}) == {"t": 2, "u": 5}


def test_camera_statuses_say_version_fps_or_why_not():
    statuses = cameras.camera_statuses(
        ["t@a", "t@b", "t@c", "u"],
        serving={"t@a": 2, "t@c": None, "u": 1},
        fps={"t@a": 24.96, "u": 10.0},
        errors={"t@b": "cannot open video source 'rtsp://nowhere'"},
    )
    assert statuses == {"t": {
        "a": CameraStatus(version=2, serving=True, fps=25.0),
        "b": CameraStatus(error="cannot open video source 'rtsp://nowhere'"),
        "c": CameraStatus(version=None, serving=True),
    }}
    status = NodeStatus(node="edge-1", state="online", boot_id="b", serving={"t": 2},
                        cameras=statuses)
    assert camera_summary(status) == "t: a=2 b=not serving c=initial"
    assert camera_summary(NodeStatus(node="n", state="online", boot_id="b",
                                     serving={"t": 4})) is None


def inference_task(version: int = 1) -> Task:
    return Task(
        task_id="inf", job="ns/job", role="inference", attempt=1, action="start",
        worker=WorkerSpec(script_dir="/code", boot_file="inference.py"),
        env={"EDGELOOP_MODEL_VERSION": str(version)},
    )


def test_decisions_swap_every_camera_and_report_each_one():
    task = inference_task()
    workers = {w: d.WorkerView(task, alive=True, restarts=0) for w in ("inf@a", "inf@b")}
    ctx = d.Context(now=100.0, workers=workers)
    state = d.NodeState("edge-1")
    for worker in workers:
        state = d.handle(state, d.WorkerHello(worker, "1"), ctx).state
    state = d.handle(state, d.WorkerStats("inf@a", wc.Stats(model_version="1", frames=50,
                                                             fps=24.5)), ctx).state
    state = d.handle(state, d.WorkerExited("inf@b", "cannot open video source 'x'"), ctx).state
    [status] = d.handle(state, d.Connected(), ctx).actions
    assert isinstance(status, d.PublishStatus)
    assert status.serving == {"inf": 1}
    assert status.cameras == {"inf": {
        "a": CameraStatus(version=1, serving=True, fps=24.5),
        "b": CameraStatus(error="cannot open video source 'x'"),
    }}

    from edge_agent.deployment import PreparedModel

    v2 = inference_task(2)
    model = PreparedModel(job="ns/job", version=2, path=Path("/m/v2.tflite"), sha256="1" * 64)
    actions = d.handle(state, d.ModelReady(v2, model, True), ctx).actions
    assert [(type(a).__name__, getattr(a, "camera", None)) for a in actions] == [
        ("SendSwap", "a"), ("SendSwap", "b")]
    assert [a.worker for a in actions if isinstance(a, d.SendSwap)] == ["inf@a", "inf@b"]


# --- a real agent with cameras -------------------------------------------------------------------


def random_mining(texts: list[str]) -> list[str]:
    """Every frame is a hard example (an untrained model finds nothing for IBT to doubt), and
    no frame is skipped as a near duplicate of another."""
    out = []
    for text in texts:
        data = json.loads(text)
        if data["kind"] == "IncrementalLearningJob":
            deploy = data["spec"]["deploySpec"]
            deploy["hardExampleMining"] = {
                "name": "Random", "parameters": [{"key": "random_ratio", "value": "1"}]}
            deploy["workerSpec"]["parameters"].append({"key": "he_dedup_distance", "value": "0"})
        out.append(json.dumps(data))
    return out


@pytest.mark.ml
@pytest.mark.broker
@pytest.mark.timeout(240)
async def test_an_agent_runs_every_camera_and_its_hard_examples_carry_node_and_camera(
    broker, tmp_path
):
    from demo.scenes import render_video

    clips = {name: render_video(tmp_path / f"{name}.mp4", [(domain, 1.0)], seed=seed, fps=10,
                                size=(128, 72))
             for name, domain, seed in (("gate", "day", 4), ("crane", "night", 5))}
    initial = make_initial_model(tmp_path / "model")
    config = agent_config(
        broker.url, tmp_path / "agent", node=NODE,
        restart_initial_s=0.2, restart_max_s=0.5,
        cameras={"gate": str(clips["gate"]), "crane": {"url": str(clips["crane"]), "loop": "1"},
                 "broken": str(tmp_path / "no-such-camera.mp4")},
    )
    async with cloud(broker.url, tmp_path / "cloud", read_node_paths=False) as daemon, \
            Agent(config) as agent:
        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in random_mining(seed_manifests_for_workers(tmp_path, initial, clips["gate"])):
            response = await api(broker.url, "apply", body=text)
            assert response.ok, response

        def cameras_in_cloud() -> dict[str, CameraStatus]:
            node = daemon.manager.store.node(NODE)
            return node.status.cameras.get(INFERENCE_TASK, {}) if node else {}

        def two_serve_one_broken() -> bool:
            seen = cameras_in_cloud()
            return (all(seen.get(c, CameraStatus()).serving for c in ("gate", "crane"))
                    and "no-such-camera.mp4 does not exist"
                    in seen.get("broken", CameraStatus()).error)

        await wait_for(two_serve_one_broken, "gate and crane serving, broken with its reason", 120)
        assert set(agent.runner.running) == {f"{INFERENCE_TASK}@{c}"
                                             for c in ("gate", "crane", "broken")}

        def cameras_in_inbox() -> set[tuple[str, str]]:
            examples = daemon.manager.inbox.examples(f"{NS}/{JOB}")
            return {(e["node"], e["sidecar"].get("camera", "")) for e in examples}

        await wait_for(lambda: {(NODE, "gate"), (NODE, "crane")} <= cameras_in_inbox(),
                       "hard examples of both cameras in the cloud", 60)
        assert (NODE, "broken") not in cameras_in_inbox()

        base = ("-n", NS, "--broker", broker.url)
        listed = await asyncio.to_thread(edgeloop, "hardex", "list", JOB, *base, "-o", "json")
        assert listed.returncode == 0, listed.stderr
        assert {(i["node"], i["camera"]) for i in json.loads(listed.stdout)} == {
            (NODE, "gate"), (NODE, "crane")}
        table = await asyncio.to_thread(edgeloop, "hardex", "list", JOB, *base)
        assert "CAMERA" in table.stdout and "crane" in table.stdout

        nodes = await asyncio.to_thread(edgeloop, "get", "nodes", "--broker", broker.url)
        assert nodes.returncode == 0, nodes.stderr
        assert "broken=not serving" in nodes.stdout and "gate=initial" in nodes.stdout

        described = await api(broker.url, "describe", resource="il", name=JOB, namespace=NS)
        [target] = described.data["targets"]
        assert target["cameras"]["gate"]["serving"] and target["cameras"]["crane"]["serving"]
        text = await asyncio.to_thread(edgeloop, "describe", "il", JOB, *base)
        assert text.returncode == 0, text.stderr
        assert "camera broken" in text.stdout and "not serving: VideoSourceError" in text.stdout

        exported = await asyncio.to_thread(edgeloop, "hardex", "export", JOB, *base,
                                           "--out", str(tmp_path / "export"))
        assert exported.returncode == 0, exported.stderr
        assert f"{NODE}/gate:" in exported.stdout and f"{NODE}/crane:" in exported.stdout
        sources = json.loads((tmp_path / "export" / "sources.json").read_text())
        assert {(s["node"], s["camera"]) for s in sources} == {(NODE, "gate"), (NODE, "crane")}


# --- the runner's camera workers, with tiny boot scripts (no TensorFlow) ------------------------

#: Writes what it was started with, then serves (or fails at once on the camera named "broken").
CAMERA_WORKER = """
    import os, signal, sys
    from workers.sdk import WorkerSession

    camera = os.environ.get("EDGELOOP_CAMERA", "")
    with open("runs.txt", "a") as f:
        f.write(f"{os.getpid()} {camera} {os.environ['video_url']} "
                f"{os.environ.get('loop', '-')}\\n")
    if camera == "broken":
        print("cannot open video source", flush=True)
        sys.exit(1)
    session = WorkerSession.from_env(role="inference")
    session.wait_connected(10)
    session.report_stats(frames=1, fps=25.0)
    signal.pause()  # serves until the agent stops it
"""


@pytest.mark.broker
async def test_each_camera_is_its_own_worker_and_the_task_ends_with_its_last(broker, tmp_path):
    import textwrap

    from agent_cloud import FakeCloud
    from test_agent_restarts import gone, runs

    from protocol import topics
    from protocol.messages import DesiredState

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "camera.py").write_text(textwrap.dedent(CAMERA_WORKER))
    config = agent_config(
        broker.url, tmp_path / "state", restart_initial_s=0.2, restart_max_s=0.4,
        cameras={"gate": "rtsp://gate/1", "crane": {"url": "rtsp://crane/1", "loop": "1"},
                 "broken": "rtsp://broken/1"},
    )
    task = Task(task_id="inf", job="default/helmet", role="inference",
                worker=WorkerSpec(script_dir=str(scripts), boot_file="camera.py",
                                  parameters={"video_url": "rtsp://job/ignored", "loop": "0"}),
                env={"EDGELOOP_MODEL_VERSION": "1"})
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        await cloud.wait_for(cloud.statuses)
        desired = topics.desired("edge-1")
        await cloud.client.publish(desired, DesiredState(node="edge-1", generation=1, tasks=[task]))

        def camera_status() -> dict[str, CameraStatus]:
            statuses = [s for s in cloud.statuses() if s.cameras.get("inf")]
            return statuses[-1].cameras["inf"] if statuses else {}

        await cloud.wait_for(lambda: camera_status().get("gate", CameraStatus()).serving
                             and camera_status().get("crane", CameraStatus()).serving
                             and camera_status().get("broken", CameraStatus()).error)
        started = {tuple(r[1:]) for r in runs(scripts)}
        # each camera's URL and options over the job's; the job's video_url is not used
        assert {("gate", "rtsp://gate/1", "0"), ("crane", "rtsp://crane/1", "1")} <= started
        assert ("broken", "rtsp://broken/1", "0") in started
        assert "worker exited with code 1" in camera_status()["broken"].error
        assert camera_status()["gate"] == CameraStatus(version=1, serving=True, fps=25.0)
        assert cloud.statuses()[-1].serving == {"inf": 1}
        assert set(agent.runner.running) == {"inf@gate", "inf@crane", "inf@broken"}
        assert agent.runner.restart_counts()["inf@gate"] == 0
        assert (tmp_path / "state" / "tasks" / "inf" / "attempt-1" / "camera-gate"
                / "worker.log").exists()
        progress = cloud.progress("inf")
        assert [p.seq for p in progress] == sorted({p.seq for p in progress})  # one sequence
        assert any(p.message.startswith("camera broken: worker exited with code 1")
                   for p in progress)

        pids = [int(r[0]) for r in runs(scripts) if r[1] in ("gate", "crane")]
        await cloud.client.publish(desired, DesiredState(node="edge-1", generation=2, tasks=[]))
        final = await cloud.wait_for(
            lambda: [p for p in cloud.progress("inf") if p.state in ("Completed", "Failed")])
        assert len(final) == 1 and final[0].message == "no longer in the desired state"
        assert all([await gone(pid) for pid in pids])
        assert agent.runner.running == {}


def test_a_task_on_several_cameras_is_judged_on_the_cameras_that_serve():
    """The staged rollout reads one health per task: a node's cameras together (the oldest
    version, the slowest FPS, the lowest agreement), leaving out a camera that does not open."""
    task = inference_task(2)
    workers = {w: d.WorkerView(task, alive=True, restarts=0) for w in ("inf@a", "inf@b", "inf@c")}
    ctx = d.Context(now=100.0, workers=workers)
    state = d.NodeState("edge-1")
    for worker, fps, agreement in (("inf@a", 24.0, 0.9), ("inf@b", 12.5, 0.7)):
        stats = wc.Stats(model_version="2", frames=100, fps=fps, hard_examples=3,
                         extra={"shadow_agreement": agreement, "shadow_compared": 10})
        state = d.handle(state, d.WorkerStats(worker, stats), ctx).state
    state = d.handle(state, d.WorkerExited("inf@c", "cannot open video source 'x'"), ctx).state
    [status] = d.handle(state, d.Connected(), ctx).actions
    assert isinstance(status, d.PublishStatus)
    health = status.health["inf"]
    assert (health.version, health.up, health.frames, health.fps, health.agreement,
            health.compared, health.hard_examples) == (2, True, 200, 12.5, 0.7, 20, 6)
    assert set(status.health) == {"inf"}
    assert status.cameras["inf"]["c"].error == "cannot open video source 'x'"


def test_cameras_refusing_the_same_model_name_the_reason_once():
    task = inference_task(1)
    workers = {w: d.WorkerView(task, alive=True, restarts=0) for w in ("inf@a", "inf@b")}
    ctx = d.Context(now=100.0, workers=workers)
    state = d.NodeState("edge-1")
    refused = wc.Swapped(ok=False, version="1", error="model 2 failed on its first frame")
    for worker in workers:
        state = d.handle(state, d.WorkerHello(worker, "1"), ctx).state
        state = d.handle(state, d.WorkerSwapped(worker, refused), ctx).state
    [status] = d.handle(state, d.Connected(), ctx).actions
    assert isinstance(status, d.PublishStatus)
    assert status.health["inf"].error == "model 2 failed on its first frame"


def test_restarts_are_counted_per_task_over_the_cameras_that_served():
    """The cloud reads a task's crashes by task id: the camera workers' restarts add up, but a
    camera that never served a frame (its URL does not open) is not a crashing model."""
    task = inference_task(2)
    workers = {"inf@a": d.WorkerView(task, alive=True, restarts=2),
               "inf@b": d.WorkerView(task, alive=True, restarts=1),
               "inf@broken": d.WorkerView(task, alive=False, restarts=7)}
    ctx = d.Context(now=100.0, workers=workers)
    state = d.NodeState("edge-1")
    for worker in ("inf@a", "inf@b"):
        stats = wc.Stats(model_version="2", frames=10, fps=10.0)
        state = d.handle(state, d.WorkerStats(worker, stats), ctx).state
    state = d.handle(state, d.WorkerExited("inf@a", "RuntimeError: gather index"), ctx).state
    [status] = d.handle(state, d.Connected(), ctx).actions
    assert isinstance(status, d.PublishStatus)
    assert status.restarts == {"inf": 3}
