"""The inbox keeps hard examples only for jobs that exist, from their deploy node, when the bytes
are an image, and within the per-job and per-node quotas; a node learns of each refusal on its
acknowledgement topic: a full quota holds the example in its outbox, any other cause sets it
aside in its ``rejected`` folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
from agent_cloud import agent_config
from image_files import image_bytes
from running_cloud import cloud
from test_cloud_daemon import JOB, NODE, NS, setup_job, wait_for

from cloud_manager.hardex_admission import SHARE_FLOOR, HardexQuotas, Usage, admit, share_refusal
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


# --- the share of one source (a node's camera) ------------------------------------------------


def test_one_source_holds_at_most_its_share_of_the_examples_waiting_for_labels():
    waiting = {"edge-1/busy": 20, "edge-1/quiet": 4}
    refused = share_refusal("edge-1/busy", waiting, 0.5)
    assert refused is not None and refused.cause == "source_share"
    assert refused.refusal.temporary  # held by the node, sent again later
    assert "edge-1/busy already holds 20 of the job's 24 hard examples waiting for labels" \
        in refused.refusal.reason and "at most 50%" in refused.refusal.reason
    assert share_refusal("edge-1/quiet", waiting, 0.5) is None  # the other camera gets in
    assert share_refusal("edge-2", waiting, 0.5) is None  # so does a new source
    even = {"edge-1/busy": 12, "edge-1/quiet": 12}
    assert share_refusal("edge-1/busy", even, 0.5, floor=0) is None
    assert share_refusal("edge-1/busy", {**even, "edge-1/busy": 13}, 0.5, floor=0) is not None
    # never below an even split: with two sources, a cap of 30% is 50%
    assert share_refusal("edge-1/busy", even, 0.3, floor=0) is None
    # under the floor, the only source, or no cap: never held back
    assert share_refusal("edge-1/busy", {"edge-1/busy": 19, "edge-1/quiet": 1}, 0.5) is None
    assert share_refusal("edge-1/busy", {"edge-1/busy": 5000}, 0.5) is None
    assert share_refusal("edge-1/busy", waiting, 1.0) is None
    assert share_refusal("edge-1/busy", {"edge-1/busy": 3, "edge-1/quiet": 1}, 0.5, floor=2) \
        is not None


def test_max_source_share_is_a_checked_manifest_extension():
    from test_cloud_daemon import seed_manifests

    from protocol.manifests import DEFAULT_MAX_SOURCE_SHARE, IncrementalLearningJob

    [job] = [json.loads(t) for t in seed_manifests(Path("/tmp/x"))
             if json.loads(t)["kind"] == "IncrementalLearningJob"]
    assert IncrementalLearningJob.model_validate(job).spec.deploy_spec.source_share() == \
        DEFAULT_MAX_SOURCE_SHARE == 0.5
    job["spec"]["deploySpec"]["maxSourceShare"] = 0.3
    assert IncrementalLearningJob.model_validate(job).spec.deploy_spec.source_share() == 0.3
    for bad in (0, 1.5):
        job["spec"]["deploySpec"]["maxSourceShare"] = bad
        with pytest.raises(ValueError, match="maxSourceShare"):
            IncrementalLearningJob.model_validate(job)


def camera_example(seed: int, camera: str) -> HardExample:
    image = image_bytes(seed)
    return HardExample(node=NODE, job=JOB_REF, sha256=hashlib.sha256(image).hexdigest(),
                       image=image, image_format="png",
                       sidecar=HardExampleSidecar(frame_index=seed, mining="IBT", camera=camera))


async def test_a_busy_camera_waits_for_labels_while_a_quiet_one_gets_in(broker, tmp_path):
    """The seed's job (default maxSourceShare 0.5): a quiet camera's 3 examples and a busy
    camera's 25 over the broker. The busy camera gets in up to the floor, then waits (held by
    its node); once 10 of its examples are labelled, the held ones get in. None is lost."""
    async with cloud(broker.url, tmp_path / "state") as daemon:
        await setup_job(broker.url, tmp_path)
        inbox = daemon.manager.inbox
        assert inbox is not None
        settings = MqttSettings(url=broker.url, client_id=NODE, backoff_max=0.5)
        async with MqttClient(settings) as client:
            # the pump wakes every resend_after / 2: a held example goes again within 1 s
            sender = ReliableSender(client, topics.ack(NODE), resend_after=2.0,
                                    retry_refused_after=0.5)
            async with sender:
                await client.wait_connected(10)
                quiet = [camera_example(100 + i, "quiet") for i in range(3)]
                busy = [camera_example(200 + i, "busy") for i in range(25)]
                for message in quiet:
                    await sender.send(topics.hardex(NODE), message)
                await wait_for(lambda: sender.stats.acked == 3, "the quiet camera's examples")
                for message in busy:
                    await sender.send(topics.hardex(NODE), message)
                await wait_for(lambda: sender.stats.acked == 3 + SHARE_FLOOR
                               and sender.stats.refused_temporary >= 5, "the busy camera held")
                assert inbox.waiting_by_source(JOB_REF) == {f"{NODE}/quiet": 3,
                                                            f"{NODE}/busy": SHARE_FLOOR}
                for message in busy[:10]:  # labelled, as label import marks them
                    assert inbox.mark_labelled(JOB_REF, message.sha256, "ns/ds", 0.0)
                await wait_for(lambda: sender.stats.acked == 28, "the held examples admitted")
        assert inbox.count(JOB_REF) == 28
        assert daemon.admission is not None and daemon.admission.refused["source_share"] >= 5
