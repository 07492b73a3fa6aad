"""The durable hard-example outbox: on-disk store, intake from HE_SAVED_URL, and delivery exactly
once (after dedupe by key) across a broker outage and an agent restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from pathlib import Path

import pytest
from agent_cloud import FakeCloud, agent_config

from edge_agent.daemon import Agent
from edge_agent.hardex_intake import RejectedExample, hard_example_from_files
from edge_agent.outbox import DiskOutbox, OutboxFull
from protocol.messages import HardExample


def save_example(
    folder: Path, index: int, rng: random.Random, *, sidecar: dict | None = None
) -> str:
    """Write one example the way workers.hardex_store does: image first, sidecar last."""
    folder.mkdir(parents=True, exist_ok=True)
    image = rng.randbytes(64) + index.to_bytes(4, "big")
    sha = hashlib.sha256(image).hexdigest()
    stem = f"20260101T000000-f{index:08d}-{sha[:12]}"
    (folder / f"{stem}.jpg").write_bytes(image)
    document = (
        sidecar
        if sidecar is not None
        else {
            "boxes": [[1.0, 2.0, 30.0, 40.0]],
            "scores": [0.4],
            "classes": [1],
            "frame_index": index,
            "image": f"{stem}.jpg",
            "sha256": sha,
        }
    )
    (folder / f"{stem}.json").write_text(json.dumps(document))
    return sha


# --- the store ----------------------------------------------------------------------------------


def test_disk_outbox_keeps_order_and_content_across_instances(tmp_path):
    box = DiskOutbox(tmp_path / "o", quota_bytes=10_000)
    for i in range(5):
        box.put(f"k{i}", f"t/{i}", bytes([i]) * 10)
    assert box.remove("k1") and not box.remove("k1")
    box.put("k3", "t/3", b"replaced")  # same key: replaced in place, order kept
    reopened = DiskOutbox(tmp_path / "o", quota_bytes=10_000)
    assert list(reopened.items()) == [
        ("k0", "t/0", bytes([0]) * 10),
        ("k2", "t/2", bytes([2]) * 10),
        ("k3", "t/3", b"replaced"),
        ("k4", "t/4", bytes([4]) * 10),
    ]
    reopened.put("k5", "t/5", b"new")
    assert [k for k, _, _ in DiskOutbox(tmp_path / "o").items()][-1] == "k5"
    assert reopened.used_bytes == DiskOutbox(tmp_path / "o").used_bytes


def test_disk_outbox_quota_refuses_without_storing(tmp_path):
    box = DiskOutbox(tmp_path / "o", quota_bytes=200)
    box.put("a", "t", b"x" * 100)
    with pytest.raises(OutboxFull, match="quota of 200 bytes"):
        box.put("b", "t", b"x" * 100)
    assert len(box) == 1 and "b" not in box
    assert len(list((tmp_path / "o").glob("*.msg"))) == 1


def test_disk_outbox_sets_aside_unreadable_files(tmp_path):
    box = DiskOutbox(tmp_path / "o")
    box.put("good", "t", b"1")
    (tmp_path / "o" / "000000000099-zzzz.msg").write_bytes(b"garbage without header")
    reopened = DiskOutbox(tmp_path / "o")
    assert [k for k, _, _ in reopened.items()] == ["good"]
    assert (tmp_path / "o" / "corrupt" / "000000000099-zzzz.msg").exists()


# --- building messages --------------------------------------------------------------------------


def test_hard_example_from_files_checks_the_sidecar():
    image = b"\xff\xd8jpeg"
    sha = hashlib.sha256(image).hexdigest()
    good = json.dumps({"boxes": [[0, 0, 5, 5]], "scores": [0.3], "classes": [2], "sha256": sha})
    message = hard_example_from_files("edge-1", "ns/job", good, image, "a.jpg")
    assert message.sha256 == sha and message.sidecar.classes == [2]
    with pytest.raises(RejectedExample, match="not valid JSON"):
        hard_example_from_files("edge-1", "ns/job", "{", image, "a.jpg")
    with pytest.raises(RejectedExample, match="same length"):
        hard_example_from_files("edge-1", "ns/job", '{"boxes": [[0,0,1,1]]}', image, "a.jpg")
    with pytest.raises(RejectedExample, match="does not match"):
        hard_example_from_files(
            "edge-1", "ns/job", json.dumps({"sha256": "0" * 64}), image, "a.jpg"
        )
    with pytest.raises(RejectedExample, match="only .jpg"):
        hard_example_from_files("edge-1", "ns/job", "{}", image, "a.bmp")


# --- over a real broker -------------------------------------------------------------------------


@pytest.mark.broker
async def test_500_hard_examples_survive_a_broker_outage_and_arrive_once(broker, tmp_path):
    rng = random.Random(7)
    he_dir = tmp_path / "hardex"
    config = agent_config(broker.url, tmp_path / "state", hardex_dirs={"default/helmet": he_dir})
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        await cloud.wait_for(cloud.statuses)  # the birth publish is done
        broker.stop()
        while agent.client.connected:
            await asyncio.sleep(0.05)
        expected = {save_example(he_dir, i, rng) for i in range(500)}
        await agent.intake.scan()
        assert len(agent.outbox) == 500  # all durable in the outbox while the broker is down
        assert not list(he_dir.glob("*.json"))
        broker.start()
        await cloud.wait_for(lambda: len(cloud.hardex_deliveries) >= 500, 60)
        await agent.sender.wait_drained(30)
        assert len(agent.outbox) == 0
        statuses = await cloud.wait_for(
            lambda: [s for s in cloud.statuses() if s.outbox_backlog == 0 and s.seq > 1], 10
        )
    assert set(cloud.hardex_deliveries) == expected
    delivered = cloud.of_type(HardExample)
    assert {m.job for m in delivered} == {"default/helmet"}
    assert all(m.node == "edge-1" for m in delivered)
    assert statuses


@pytest.mark.broker
async def test_outbox_and_unscanned_examples_survive_an_agent_restart(broker, tmp_path):
    rng = random.Random(3)
    he_dir = tmp_path / "hardex"
    config = agent_config(broker.url, tmp_path / "state", hardex_dirs={"ns/job": he_dir})
    async with FakeCloud(broker.url, ack_hardex=False) as cloud:
        async with Agent(config) as agent:
            first = {save_example(he_dir, i, rng) for i in range(20)}
            await agent.intake.scan()
            await cloud.wait_for(lambda: len(cloud.hardex_deliveries) >= 20)
            assert len(agent.outbox) == 20  # sent but never acknowledged: kept
        second = {save_example(he_dir, 100 + i, rng) for i in range(10)}  # saved while down
        bad = tmp_path / "bad"
        save_example(bad, 999, rng, sidecar={"boxes": "nonsense"})
        cloud.ack_hardex = True
        restarted = {**config.model_dump(), "hardex_dirs": {"ns/job": he_dir, "ns/other": bad}}
        async with Agent(type(config)(**restarted)) as agent:
            await cloud.wait_for(lambda: set(cloud.hardex_deliveries) >= first | second, 30)
            await agent.sender.wait_drained(30)
            assert len(agent.outbox) == 0
            rejected = tmp_path / "state" / "rejected"
            assert len(list(rejected.glob("*.reason.txt"))) == 1
            assert "boxes" in next(rejected.glob("*.reason.txt")).read_text()
            assert len(list(rejected.glob("*.jpg"))) == 1  # set aside, not deleted
    assert set(cloud.hardex_deliveries) == first | second


@pytest.mark.broker
async def test_full_outbox_leaves_examples_in_their_folder(broker, tmp_path):
    rng = random.Random(5)
    he_dir = tmp_path / "hardex"
    config = agent_config(
        broker.url, tmp_path / "state", hardex_dirs={"ns/job": he_dir}, outbox_quota_mb=0.002
    )
    async with Agent(config) as agent:
        broker.stop()
        await asyncio.sleep(0.2)
        for i in range(40):
            save_example(he_dir, i, rng)
        await agent.intake.scan()
        kept = len(list(he_dir.glob("*.json")))
        assert 0 < len(agent.outbox) < 40
        assert kept + len(agent.outbox) == 40
        assert agent.intake.counters.deferred_full >= 1
