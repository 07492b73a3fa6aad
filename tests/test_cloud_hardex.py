"""The hard-example inbox over a real broker: every example a node sends reliably is stored once,
durably, and acknowledged; repeats are recognised by content. ``edgeloop hardex list|export``
show and write what a real agent uploaded."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from agent_cloud import agent_config
from image_files import image_bytes
from running_cloud import cloud
from test_cloud_cli import edgeloop
from test_cloud_daemon import JOB, NODE, NS, setup_job, wait_for

from cloud_manager.hardex_inbox import HardExampleInbox
from edge_agent.daemon import Agent
from edgeloop.mqtt import MqttClient, MqttSettings
from edgeloop.reliable import ReliableSender
from protocol import topics
from protocol.messages import HardExample, HardExampleSidecar
from protocol.dataset_index import read_index
from workers.hardex_store import HardExampleStore
from protocol.label_formats import import_coco

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

JOB_REF = f"{NS}/{JOB}"


def example(i: int, node: str = "edge-1", job: str = "default/helmet",
            image: bytes | None = None) -> HardExample:
    image = image or f"not really a jpeg {i}".encode()
    return HardExample(node=node, job=job, sha256=hashlib.sha256(image).hexdigest(), image=image,
                       sidecar=HardExampleSidecar(boxes=[[1, 2, 3, 4]], scores=[0.4], classes=[3],
                                                  frame_index=i, mining="IBT"))


def test_store_is_idempotent_and_keeps_the_sidecar(tmp_path):
    inbox = HardExampleInbox(tmp_path)
    first = inbox.store(example(1))
    again = inbox.store(example(1))
    assert first.new and not again.new
    (meta,) = list(inbox.examples("default/helmet"))
    assert meta["node"] == "edge-1" and meta["sidecar"]["mining"] == "IBT"
    assert first.path.read_bytes() == b"not really a jpeg 1"
    assert not list(tmp_path.rglob("*.tmp"))


async def test_reliable_upload_is_stored_once_and_acknowledged(broker, tmp_path):
    images = [image_bytes(i, ".jpg") for i in range(60)]
    async with cloud(broker.url, tmp_path / "state") as daemon:
        await setup_job(broker.url, tmp_path)  # examples are kept for a job, from its deploy node
        settings = MqttSettings(url=broker.url, client_id=NODE, backoff_max=0.5)
        async with MqttClient(settings) as client:
            sender = ReliableSender(client, topics.ack(NODE), resend_after=1.0)
            async with sender:
                await client.wait_connected(10)
                for i in range(60):
                    await sender.send(topics.hardex(NODE), example(i, NODE, JOB_REF, images[i]))
                for i in range(10):  # the same frames again
                    await sender.send(topics.hardex(NODE), example(i, NODE, JOB_REF, images[i]))
                await sender.wait_drained(30)
        inbox = daemon.manager.inbox
        assert inbox is not None and inbox.count(JOB_REF) == 60


# --- edgeloop hardex list / export, from an inbox filled by a real agent ---------------------


#: Why the node kept each of :func:`frames`: by the rule, or by blind-spot mining.
REASONS = ("rule", "empty-frame", "detection-drop")


def frames() -> list[tuple[np.ndarray, HardExampleSidecar]]:
    """Three frames as an inference worker saves them; the last one is large (random noise
    barely compresses), so that its export arrives in several pieces."""
    rng = np.random.default_rng(7)
    out = []
    for i, (h, w) in enumerate([(48, 64), (60, 80), (900, 1200)]):
        frame = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        sidecar = HardExampleSidecar(
            # box 1 fits; box 2 sticks out of the frame (clipped); box 3's class is unknown
            boxes=[[2.4, 3.6, 20.0, 30.2], [10, 10, w + 50, h + 50], [1, 1, 5, 5]],
            scores=[0.41, 0.35, 0.3], classes=[2, 3, 9], model_version=i + 1, frame_index=i,
            mining="IBT", mining_reason=REASONS[i], width=w, height=h)
        out.append((frame, sidecar))
    return out



async def fill_inbox_through_an_agent(url: str, tmp: Path, daemon) -> list[str]:
    """Hard examples saved by the worker-side store, taken and sent by a real agent."""
    folder = tmp / "hardex-out"
    store = HardExampleStore(folder, quota_bytes=64 * 2**20)
    config = agent_config(url, tmp / "agent", node=NODE, hardex_dirs={JOB_REF: folder})
    saved = [store.save(frame, sidecar) for frame, sidecar in frames()]
    async with Agent(config):
        await wait_for(lambda: daemon.manager.inbox.count(JOB_REF) == len(saved), timeout=30)
    return [s.sha256 for s in saved if s is not None]


async def test_list_and_export_round_trip(broker, tmp_path):
    async with cloud(broker.url, tmp_path / "state") as daemon:
        await setup_job(broker.url, tmp_path)
        ids = await fill_inbox_through_an_agent(broker.url, tmp_path, daemon)
        assert len(ids) == 3
        base = ("-n", NS, "--broker", broker.url)

        listed = await asyncio.to_thread(edgeloop, "hardex", "list", JOB, *base, "-o", "json")
        assert listed.returncode == 0, listed.stderr
        items = json.loads(listed.stdout)
        assert sorted(i["id"] for i in items) == sorted(ids)
        assert {(i["node"], i["boxes"], i["labelled"]) for i in items} == {(NODE, 3, False)}
        assert sorted(i["model_version"] for i in items) == [1, 2, 3]
        assert sorted(i["reason"] for i in items) == sorted(REASONS)
        table = await asyncio.to_thread(edgeloop, "hardex", "list", JOB, *base)
        assert table.returncode == 0, table.stderr
        assert "LABELLED" in table.stdout and ids[0][:12] in table.stdout
        assert "REASON" in table.stdout and "detection-drop" in table.stdout

        out = tmp_path / "export"
        exported = await asyncio.to_thread(edgeloop, "hardex", "export", JOB, *base,
                                           "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        assert "3 hard examples, 6 proposed boxes" in exported.stdout
        assert "class 9 is not one of the job's 4 classes" in exported.stderr
        coco_out = tmp_path / "export-coco"
        exported = await asyncio.to_thread(edgeloop, "hardex", "export", JOB, *base,
                                           "--out", str(coco_out), "--format", "coco")
        assert exported.returncode == 0, exported.stderr

        missing = await asyncio.to_thread(edgeloop, "hardex", "list", "nope", *base)
        assert missing.returncode == 1 and "not found" in missing.stderr

    # the images are the bytes the node sent; the boxes are the model's, in the frame
    index = read_index(out / "data.txt")
    assert not index.problems
    by_sha = {hashlib.sha256(s.image.read_bytes()).hexdigest(): s for s in index.samples}
    assert sorted(by_sha) == sorted(ids)
    sizes = {(h, w) for frame, _ in frames() for h, w in [frame.shape[:2]]}
    for sample in index.samples:
        assert sample.image.parent == out / "images"
        first, clipped = sample.boxes.tolist()
        assert first == [2, 4, 20, 30, 2]
        assert (clipped[3], clipped[2]) in sizes and clipped[4] == 3
    # the COCO export carries the same boxes: its reader turns it back into the same index
    import_coco(coco_out / "annotations.json", tmp_path / "reread" / "data.txt")
    reread = read_index(tmp_path / "reread" / "data.txt")
    assert sorted(s.boxes.tolist() for s in reread.samples) == \
        sorted(s.boxes.tolist() for s in index.samples)
    scores = [a["score"] for a in json.loads((coco_out / "annotations.json").read_text())["annotations"]]
    assert sorted(scores) == [0.35] * 3 + [0.41] * 3
