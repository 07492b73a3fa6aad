"""The inbox keeps hard examples only for jobs that exist, from their deploy node, when the bytes
are an image, and within the per-job and per-node quotas; a node learns of each refusal on its
acknowledgement topic: a full quota holds the example in its outbox, any other cause sets it
aside in its ``rejected`` folder."""

from __future__ import annotations

import hashlib

import msgpack
import numpy as np
import pytest
from agent_cloud import agent_config
from image_files import image_bytes
from running_cloud import cloud
from test_cloud_daemon import JOB, NODE, NS, setup_job, wait_for

from cloud_manager.hardex_admission import HardexQuotas, Usage, admit
from edge_agent.daemon import Agent
from edgeloop.mqtt import MqttClient, MqttSettings
from edgeloop.reliable import ReliableSender
from protocol import topics
from protocol.codec import decode, encode
from protocol.image_format import image_problem, sniff
from protocol.messages import Ack, HardExample, HardExampleSidecar, Refusal
from workers.hardex_store import HardExampleStore

JOB_REF = f"{NS}/{JOB}"


def example(image: bytes, *, node: str = NODE, job: str = JOB_REF, fmt: str = "png",
            frame: int = 0) -> HardExample:
    return HardExample(node=node, job=job, sha256=hashlib.sha256(image).hexdigest(), image=image,
                       image_format=fmt,  # type: ignore[arg-type]
                       sidecar=HardExampleSidecar(boxes=[[1, 2, 3, 4]], scores=[0.4], classes=[3],
                                                  frame_index=frame, mining="IBT"))


# --- the decision ---------------------------------------------------------------------------------


def test_image_format_knows_real_images_from_other_bytes():
    png, jpg = image_bytes(1, ".png"), image_bytes(1, ".jpg")
    assert (sniff(png), sniff(jpg), sniff(b"GIF89a")) == ("png", "jpg", None)
    assert image_problem(png, "png") is None and image_problem(jpg, "jpg") is None
    assert "neither PNG nor JPEG" in image_problem(b"\0" * 1000)
    assert "bytes are PNG but image_format says jpg" in image_problem(png, "jpg")
    assert "not a valid PNG" in image_problem(png[: len(png) // 2])
    assert "not a valid JPG" in image_problem(jpg[: len(jpg) - 10])
    corrupt = bytearray(png)
    corrupt[40] ^= 0xFF
    assert "bad CRC" in image_problem(bytes(corrupt))
    # magic bytes alone are not an image
    assert image_problem(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8) is not None


def test_admit_names_what_is_wrong_and_whether_it_may_pass_later():
    quotas = HardexQuotas(job_bytes=10_000, job_count=3, node_bytes=20_000, node_count=5)
    good = example(image_bytes(2))
    size = len(good.image)
    assert admit(good, {NODE}, Usage(), Usage(), quotas) is None

    def refused(ex=good, deploy=frozenset({NODE}), job=Usage(), node=Usage()):
        decision = admit(ex, deploy, job, node, quotas)
        assert decision is not None
        return decision.cause, decision.refusal.temporary, decision.refusal.reason

    assert refused(deploy=None) == ("no_job", False, f"job {JOB_REF} does not exist")
    cause, temporary, reason = refused(deploy={"edge-9"})
    assert (cause, temporary) == ("not_deploy_node", False) and "deploys to node edge-9" in reason
    assert refused(example(b"not an image at all"))[:2] == ("bad_image", False)
    assert refused(example(image_bytes(3, ".jpg"), fmt="png"))[:2] == ("bad_image", False)
    cause, temporary, reason = refused(job=Usage(100, 3))
    assert (cause, temporary) == ("job_quota", True) and f"job {JOB_REF} is full" in reason
    assert refused(job=Usage(10_000 - size + 1, 0))[:2] == ("job_quota", True)
    assert admit(good, {NODE}, Usage(10_000 - size, 2), Usage(), quotas) is None
    assert refused(node=Usage(0, 5))[:2] == ("node_quota", True)
    assert refused(node=Usage(20_000, 0))[:2] == ("node_quota", True)


def test_an_ack_may_refuse_keys_and_older_acks_still_decode():
    topic = topics.ack(NODE)
    old = {"v": 1, "node": NODE, "keys": ["a"], "ts": 1.0}
    assert decode(topic, msgpack.packb(old)) == Ack(node=NODE, keys=["a"], ts=1.0)
    refusing = Ack(node=NODE, refused={"b": Refusal(reason="full", temporary=True)})
    again = decode(topic, encode(refusing))
    assert isinstance(again, Ack) and again.refused["b"].temporary and again.keys == []
    assert refusing.key != Ack(node=NODE, keys=["b"]).key
    with pytest.raises(ValueError, match="at least one key"):
        Ack(node=NODE)


# --- over a real broker ---------------------------------------------------------------------------


async def test_refusals_reach_the_sender_and_nothing_is_stored(broker, tmp_path):
    quotas = HardexQuotas(job_count=2)
    async with cloud(broker.url, tmp_path / "state", hardex_quotas=quotas) as daemon:
        await setup_job(broker.url, tmp_path)
        set_aside: dict[str, Refusal] = {}

        def on_refused(key: str, refusal: Refusal) -> bool:
            set_aside[key] = refusal
            return sender.store.remove(key)

        settings = MqttSettings(url=broker.url, client_id=NODE, backoff_max=0.5)
        async with MqttClient(settings) as client:
            # no resend by timeout in this test: each message reaches the cloud once
            sender = ReliableSender(client, topics.ack(NODE), resend_after=120,
                                    retry_refused_after=3600, on_refused=on_refused)
            async with sender:
                await client.wait_connected(10)
                ghost = example(image_bytes(10), job="ghost-ns/ghost-job-1")
                junk = example(b"\x89PNG\r\n\x1a\n" + b"\0" * 5000)
                kept = [example(image_bytes(20 + i), frame=i) for i in range(3)]
                for message in (ghost, junk, *kept):
                    await sender.send(topics.hardex(NODE), message)
                await wait_for(lambda: sender.stats.acked == 2 and len(set_aside) == 2
                               and sender.stats.refused_temporary == 1, "acks and refusals")
                assert len(sender.store) == 1  # the third kept one waits for room, held
                assert "ghost-ns/ghost-job-1 does not exist" in set_aside[ghost.key].reason
                assert "not a valid PNG" in set_aside[junk.key].reason
                assert not any(r.temporary for r in set_aside.values())
                # a redelivery of a stored example is acknowledged although the quota is full
                await sender.send(topics.hardex(NODE), kept[0])
                await wait_for(lambda: sender.stats.acked == 3, "the repeat acknowledged")
        inbox = daemon.manager.inbox
        assert inbox is not None and inbox.count(JOB_REF) == 2
        assert not (tmp_path / "state" / "hardex" / "ghost-ns").exists()
        assert daemon.admission is not None
        assert daemon.admission.refused == {"no_job": 1, "bad_image": 1, "job_quota": 1}


async def test_an_agent_sets_aside_what_the_cloud_refuses_for_good(broker, tmp_path):
    """A real agent whose worker saved examples for a job the cloud does not know: they leave
    the outbox for the ``rejected`` folder with the reason, counted; none is deleted."""
    folder = tmp_path / "he"
    store = HardExampleStore(folder, quota_bytes=2**20)
    frames = [np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)
              for i in range(2)]
    for i, frame in enumerate(frames):
        store.save(frame, HardExampleSidecar(boxes=[[1, 1, 9, 9]], scores=[0.3], classes=[1],
                                             frame_index=i, mining="IBT", width=50, height=40))
    async with cloud(broker.url, tmp_path / "state"):
        config = agent_config(broker.url, tmp_path / "agent", node=NODE,
                              hardex_dirs={"ghost-ns/ghost-job-1": folder})
        async with Agent(config) as agent:
            await wait_for(lambda: agent.outbox.rejected == 2 and len(agent.outbox) == 0,
                           "both examples set aside", timeout=30)
            assert agent.sender.stats.refused_permanent == 2
    rejected = tmp_path / "agent" / "rejected"
    reasons = sorted(p.read_text() for p in rejected.glob("*.reason.txt"))
    assert len(reasons) == 2 and all("ghost-ns/ghost-job-1 does not exist" in r for r in reasons)
    assert len(list(rejected.glob("*.msg"))) == 2
    assert not list((tmp_path / "agent" / "outbox").glob("*.msg"))
