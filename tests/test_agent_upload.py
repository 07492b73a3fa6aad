"""The cloud pulls trained models from the agent (``artifact/pull`` -> ``artifact/push``): the
files a train result listed, by sha256, across an agent restart; anything else is refused.
Also: the node status says which version an inference worker serves from its first hello."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
from agent_cloud import FakeCloud, agent_config

from cloud_manager.artifact_pull import ArtifactPuller, PullError
from cloud_manager.registry import ModelRegistry
from edge_agent.daemon import Agent
from edgeloop.mqtt import MqttClient, MqttSettings
from protocol import topics
from protocol.messages import Task, WorkerSpec

pytestmark = pytest.mark.broker

CHUNK = 64 * 1024

TRAIN_PY = """
    import hashlib, json, os
    from pathlib import Path

    out = Path(os.environ["MODEL_URL"])
    out.mkdir(parents=True, exist_ok=True)
    data = bytes(range(256)) * 1000  # 256000 bytes: 4 chunks of 64 KiB
    (out / "model.tflite").write_bytes(data)
    artifact = {"name": "model.tflite", "path": str(out / "model.tflite"), "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}
    Path(os.environ["EDGELOOP_RESULT"]).write_text(json.dumps({"artifacts": [artifact]}))
"""


async def train_once(cloud: FakeCloud, tmp: Path) -> dict:
    task = Task(task_id="job-r1-train", job="ns/job", role="train",
                worker=WorkerSpec(script_dir=str(tmp / "code"), boot_file="train.py"),
                env={"MODEL_URL": str(tmp / "out" / "1")})
    await cloud.wait_for(lambda: [s for s in cloud.statuses() if s.state == "online"])
    await cloud.client.publish(topics.task("edge-1", task.task_id), task)
    done = await cloud.wait_for(lambda: [p for p in cloud.progress(task.task_id)
                                         if p.state == "Completed"])
    return done[0].result["artifacts"][0]


async def test_the_cloud_pulls_what_the_node_trained_and_nothing_else(broker, tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    registry = ModelRegistry(tmp_path / "registry")
    client = MqttClient(MqttSettings(url=broker.url, client_id="puller", backoff_max=0.5))
    puller = ArtifactPuller(client, registry, chunk_timeout=2, attempts=2, chunk_size=CHUNK)
    config = agent_config(broker.url, tmp_path / "state")
    async with client, FakeCloud(broker.url) as cloud:
        await client.wait_connected(10)
        async with Agent(config):
            artifact = await train_once(cloud, tmp_path)
            with pytest.raises(PullError, match="no such file on this node"):
                await puller.pull("edge-1", "other", "ab" * 32, 10)
        # a restarted agent still serves what it trained before
        async with Agent(config):
            await cloud.wait_for(lambda: len([s for s in cloud.statuses()
                                              if s.state == "online"]) >= 2)
            path = await puller.pull("edge-1", "model.tflite", artifact["sha256"],
                                     artifact["size"])
            assert path.read_bytes() == Path(artifact["path"]).read_bytes()
            assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact["sha256"]

            # the file changed on the node since: refused, not sent as the trained model
            Path(artifact["path"]).write_bytes(b"x" * artifact["size"])
            registry.path(artifact["sha256"]).unlink()
            with pytest.raises(PullError, match="changed since it was trained"):
                await puller.pull("edge-1", "model.tflite", artifact["sha256"], artifact["size"])


INFERENCE_PY = """
    import time
    from workers import sdk

    sdk.session("inference")
    while True:
        time.sleep(0.1)
"""


async def test_the_status_names_the_version_an_inference_worker_starts_with(broker, tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(textwrap.dedent(INFERENCE_PY))
    task = Task(task_id="job-inference", job="ns/job", role="inference",
                worker=WorkerSpec(script_dir=str(tmp_path / "code"), boot_file="inference.py"),
                env={"EDGELOOP_MODEL_VERSION": "3"})
    async with FakeCloud(broker.url) as cloud, Agent(agent_config(broker.url, tmp_path / "s")):
        await cloud.wait_for(lambda: [s for s in cloud.statuses() if s.state == "online"])
        await cloud.client.publish(topics.task("edge-1", task.task_id), task)
        serving = await cloud.wait_for(lambda: [s.serving for s in cloud.statuses() if s.serving])
    assert serving[0] == {"job-inference": 3}
