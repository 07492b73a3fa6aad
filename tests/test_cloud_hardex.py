"""The hard-example inbox over a real broker: every example a node sends reliably is stored once,
durably, and acknowledged; repeats are recognised by content."""

from __future__ import annotations

import hashlib

import pytest
from running_cloud import cloud

from cloud_manager.hardex_inbox import HardExampleInbox
from edgeloop.mqtt import MqttClient, MqttSettings
from edgeloop.reliable import ReliableSender
from protocol import topics
from protocol.messages import HardExample, HardExampleSidecar

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def example(i: int, node: str = "edge-1", job: str = "default/helmet") -> HardExample:
    image = f"not really a jpeg {i}".encode()
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
    async with cloud(broker.url, tmp_path / "state") as daemon:
        settings = MqttSettings(url=broker.url, client_id="edge-1", backoff_max=0.5)
        async with MqttClient(settings) as client:
            sender = ReliableSender(client, topics.ack("edge-1"), resend_after=1.0)
            async with sender:
                await client.wait_connected(10)
                for i in range(60):
                    await sender.send(topics.hardex("edge-1"), example(i))
                for i in range(10):  # the same frames again
                    await sender.send(topics.hardex("edge-1"), example(i))
                await sender.wait_drained(30)
        inbox = daemon.manager.inbox
        assert inbox is not None and inbox.count("default/helmet") == 60
