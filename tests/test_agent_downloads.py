"""Model downloads by chunks (verified, resumable) and the hot-swap of a running worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import textwrap
from collections import Counter
from pathlib import Path
from typing import Self

import pytest
from agent_cloud import FakeCloud, agent_config

from edge_agent.daemon import Agent
from edge_agent.downloads import ArtifactDownloader, DownloadError, chunk_count
from edgeloop.mqtt import Delivery, MqttClient, MqttSettings
from protocol import topics
from protocol.messages import (
    MAX_CHUNK_BYTES,
    ArtifactRef,
    Chunk,
    ChunkRequest,
    DesiredState,
    ModelRef,
    Task,
    WorkerSpec,
)
from protocol.topics import Kind

pytestmark = pytest.mark.broker

CHUNK = 64 * 1024


class ChunkServer:
    """The cloud's side of downloads, with faults on demand."""

    def __init__(self, url: str, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.client = MqttClient(MqttSettings(url=url, client_id="chunk-server", backoff_max=0.5))
        self.client.subscribe(topics.node_filter(Kind.ARTIFACT_REQUEST), self._on_request)
        self.requests: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()
        self.answer_limit: int | None = None
        self.corrupt = False
        self.refuse: str | None = None

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        await self.client.wait_connected(10)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()

    async def _on_request(self, delivery: Delivery) -> None:
        request = delivery.message
        assert isinstance(request, ChunkRequest)
        self.requests[request.index] += 1
        if self.answer_limit is not None:
            if self.answer_limit <= 0:
                return
            self.answer_limit -= 1
        blob = self.blobs[request.sha256]
        start = request.index * request.chunk_size
        data = blob[start : start + request.chunk_size]
        if self.corrupt and request.index == 0:
            data = bytes([data[0] ^ 1]) + data[1:]
        total = -(-len(blob) // request.chunk_size)
        chunk = Chunk(
            node=request.node,
            sha256=request.sha256,
            index=request.index,
            total=total,
            size=len(blob),
            data=b"" if self.refuse else data,
            error=self.refuse,
        )
        self.answered[request.index] += 1
        await self.client.publish(topics.node_topic(Kind.ARTIFACT_CHUNK, request.node), chunk)


def blob_ref(name: str, data: bytes) -> ArtifactRef:
    return ArtifactRef(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def deployed_inference_task(scripts: Path, serving: Path, version: int, ref: ArtifactRef) -> Task:
    """The deploy task ``inf`` running ``scripts/infer.py`` with model ``version`` (``ref``)."""
    return Task(
        task_id="inf",
        job="default/helmet",
        role="inference",
        worker=WorkerSpec(script_dir=str(scripts), boot_file="infer.py"),
        env={"MODEL_URL": str(serving / "model.tflite"), "EDGELOOP_MODEL_VERSION": str(version)},
        models=[ModelRef(job="default/helmet", version=version, artifacts=[ref])],
    )


def served_lines(scripts: Path) -> list[list[str]]:
    """What RECORDING_WORKER wrote to ``served.txt``, one split line per model it served."""
    path = scripts / "served.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def test_download_resumes_after_an_interruption_and_verifies(broker, tmp_path):
    data = random.Random(1).randbytes(5 * CHUNK + 123)  # 6 chunks
    ref = blob_ref("model.tflite", data)
    client = MqttClient(MqttSettings(url=broker.url, client_id="edge-1", backoff_max=0.5))
    downloader = ArtifactDownloader(
        client,
        "edge-1",
        tmp_path / "artifacts",
        window=2,
        chunk_timeout=0.5,
        attempts=2,
        chunk_size=CHUNK,
    )
    async with client, ChunkServer(broker.url, {ref.sha256: data}) as server:
        await client.wait_connected(10)
        server.answer_limit = 3
        with pytest.raises(DownloadError, match="resumes from here"):
            await downloader.fetch(ref)
        assert (tmp_path / "artifacts" / f"{ref.sha256}.have").exists()
        server.answer_limit = None
        before = Counter(server.requests)
        path = await downloader.fetch(ref)
        again = Counter(server.requests) - before
    assert path.read_bytes() == data
    assert not list((tmp_path / "artifacts").glob("*.part"))
    assert sum(again.values()) == 3  # only the three chunks it did not have
    assert await downloader.fetch(ref) == path  # content-addressed: no new download


async def test_corrupt_or_refused_downloads_are_errors(broker, tmp_path):
    data = random.Random(2).randbytes(2 * CHUNK)
    ref = blob_ref("model.tflite", data)
    client = MqttClient(MqttSettings(url=broker.url, client_id="edge-1", backoff_max=0.5))
    downloader = ArtifactDownloader(client, "edge-1", tmp_path / "a", chunk_size=CHUNK)
    async with client, ChunkServer(broker.url, {ref.sha256: data}) as server:
        await client.wait_connected(10)
        server.corrupt = True
        with pytest.raises(DownloadError, match="expected " + ref.sha256):
            await downloader.fetch(ref)
        assert not list((tmp_path / "a").iterdir())  # nothing unverified is kept
        server.corrupt, server.refuse = False, "unknown artifact"
        with pytest.raises(DownloadError, match="cannot serve it: unknown artifact"):
            await downloader.fetch(ref)


SWAPPING_WORKER = """
    import os
    from workers.sdk import WorkerSession

    with open("runs.txt", "a") as f:
        f.write(open(os.environ["MODEL_URL"], "rb").read().decode() + "\\n")
    session = WorkerSession.from_env(role="inference")
    assert session.wait_connected(10)

    def on_swap(message):
        served = open(message.path, "rb").read().decode()
        session.report_swapped(True, message.version, session.model_version)
        with open("swaps.txt", "a") as f:
            f.write(f"{message.version} {served}\\n")

    session.subscribe("swap", on_swap)
    session.report_stats(frames=1, fps=1.0)
    session.stop_requested.wait(60)
    session.close()
"""


async def test_new_model_version_is_downloaded_and_hot_swapped(broker, tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "infer.py").write_text(textwrap.dedent(SWAPPING_WORKER))
    v1, v2 = b"model version one", b"model version two"
    refs = {1: blob_ref("model.tflite", v1), 2: blob_ref("model.tflite", v2)}

    def task(version: int) -> Task:
        return deployed_inference_task(scripts, tmp_path / "serving", version, refs[version])

    blobs = {refs[1].sha256: v1, refs[2].sha256: v2}
    async with (
        FakeCloud(broker.url) as cloud,
        ChunkServer(broker.url, blobs),
        Agent(agent_config(broker.url, tmp_path / "state", check_models=False)) as agent,
    ):
        await cloud.wait_for(cloud.statuses)
        desired = topics.desired("edge-1")
        await cloud.client.publish(
            desired, DesiredState(node="edge-1", generation=1, tasks=[task(1)])
        )
        await cloud.wait_for(lambda: [s for s in cloud.statuses() if s.serving.get("inf") == 1])
        await cloud.client.publish(
            desired, DesiredState(node="edge-1", generation=2, tasks=[task(2)])
        )
        await cloud.wait_for(lambda: [s for s in cloud.statuses() if s.serving.get("inf") == 2])
        assert (scripts / "swaps.txt").read_text().splitlines() == ["2 model version two"]
        assert (scripts / "runs.txt").read_text().splitlines() == [
            "model version one"
        ]  # no restart
        assert (tmp_path / "serving" / "model.tflite").read_bytes() == v2  # for a later restart
        versions = tmp_path / "state" / "models" / "default" / "helmet"
        assert (versions / "v1" / "model.tflite").read_bytes() == v1  # kept for rollback
        assert agent.runner.running["inf"].task.models[0].version == 2


RECORDING_WORKER = """
    import hashlib, os
    from workers.sdk import WorkerSession

    def record(what, version, path):
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        with open("served.txt", "a") as f:
            f.write(f"{what} {os.getpid()} {version} {digest}\\n")

    record("start", os.environ["EDGELOOP_MODEL_VERSION"], os.environ["MODEL_URL"])
    session = WorkerSession.from_env(role="inference")
    assert session.wait_connected(10)

    def on_swap(message):
        record("swap", message.version, message.path)
        session.report_swapped(True, message.version, session.model_version)

    session.subscribe("swap", on_swap)
    session.report_stats(frames=1, fps=1.0)
    session.stop_requested.wait(120)
    session.close()
"""


async def test_broker_killed_mid_download_the_download_resumes_and_the_model_is_swapped(
    broker, tmp_path
):
    """The broker dies (SIGKILL) after a few chunks of a new version arrived and comes back on
    the same port: the agent reconnects by itself, asks only for the chunks it lacks, verifies
    the file and hot-swaps it into the running worker; a worker restarted later loads it too."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "infer.py").write_text(textwrap.dedent(RECORDING_WORKER))
    v1 = b"model version one"
    v2 = random.Random(3).randbytes(5 * MAX_CHUNK_BYTES + 77)
    refs = {1: blob_ref("model.tflite", v1), 2: blob_ref("model.tflite", v2)}
    total = chunk_count(len(v2))
    assert total == 6

    def task(version: int) -> Task:
        return deployed_inference_task(scripts, tmp_path / "serving", version, refs[version])

    def served() -> list[list[str]]:
        return served_lines(scripts)

    def serving(version: int):
        return lambda: [s for s in cloud.statuses() if s.serving.get("inf") == version]

    state = tmp_path / "state"
    have_file = state / "artifacts" / f"{refs[2].sha256}.have"
    config = agent_config(
        broker.url, state, download_chunk_timeout_s=2.0, restart_initial_s=0.2, restart_max_s=0.4,
        check_models=False,  # stand-in workers never load these bytes
    )
    blobs = {refs[1].sha256: v1, refs[2].sha256: v2}
    async with (
        FakeCloud(broker.url) as cloud,
        ChunkServer(broker.url, blobs) as server,
        Agent(config) as agent,
    ):
        await cloud.wait_for(cloud.statuses)
        desired = topics.desired("edge-1")
        await cloud.client.publish(
            desired, DesiredState(node="edge-1", generation=1, tasks=[task(1)])
        )
        await cloud.wait_for(serving(1))
        [(_, pid, _, _)] = served()

        server.requests.clear()
        server.answered.clear()
        server.answer_limit = 3  # then silence, as if the broker were already dying
        await cloud.client.publish(
            desired, DesiredState(node="edge-1", generation=2, tasks=[task(2)])
        )
        await cloud.wait_for(
            lambda: have_file.exists() and len(json.loads(have_file.read_text())) == 3
        )
        arrived = set(json.loads(have_file.read_text()))

        await asyncio.to_thread(broker.kill)
        server.answer_limit = None
        await asyncio.sleep(0.3)  # the agent notices it is cut off
        await asyncio.to_thread(broker.restart)  # same port, no retained state kept

        await cloud.wait_for(serving(2), timeout=30)
        assert agent.client.stats.connects >= 2  # it reconnected by itself
        assert served() == [
            ["start", pid, "1", refs[1].sha256],
            ["swap", pid, "2", refs[2].sha256],  # same process: hot-swapped
        ]
        assert all(server.requests[i] == 1 for i in arrived)  # chunks it had: not asked again
        assert set(server.answered) == set(range(total))
        assert sum(server.answered[i] for i in arrived) == len(arrived)
        assert (state / "artifacts" / refs[2].sha256).read_bytes() == v2
        assert not have_file.exists() and not list((state / "artifacts").glob("*.part"))

        # a worker that dies later comes back with the version deployed last
        os.kill(int(pid), signal.SIGKILL)
        await cloud.wait_for(lambda: len(served()) == 3 or None)
        restarted = served()[2]
        assert restarted[0] == "start" and restarted[1] != pid
        assert restarted[2:] == ["2", refs[2].sha256]
        await cloud.wait_for(lambda: agent.serving == {"inf": 2} or None)
        assert agent.runner.restart_counts() == {"inf": 1}
