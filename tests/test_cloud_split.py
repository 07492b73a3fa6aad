"""Two ``edgeloop cloud --leader-lease`` processes on one PostgreSQL and one broker share the
ingest and the API's reads: every report lands in the store once whichever manager took it,
both take some, the leader alone decides (the round triggers once), and a standby killed with
``kill -9`` mid-ingest loses nothing: the leader adopts its ingest session."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from running_cloud import api
from image_files import image_bytes
from scripted_node import ScriptedNode, succeed
from test_cloud_cli import apply_seed, edgeloop, job_when
from test_cloud_daemon import DATASET, JOB, NODE, NS, wait_for
from test_cloud_hardex import example
from test_cloud_failover import Replica, replicas  # noqa: F401  (the fixture)

from cloud_manager.database import StoreUnavailable
from cloud_manager.ingest_split import (
    GIVE_UP_MARGIN_S,
    MEMBER_TTL_S,
    IngestMembers,
    IngestSplit,
)
from cloud_manager.hardex_inbox import INBOX_DIR, HardExampleInbox
from cloud_manager.store import Store
from edgeloop.mqtt import MqttClient, MqttSettings
from edgeloop.reliable import ReliableSender
from protocol import topics
from protocol.messages import ApiRequest

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

#: nodes beside the dataset's own, each reporting a dataset of its own (not applied: its count
#: is kept) as fast as it can
OTHERS = [f"site-{i}" for i in range(4)]
REPORTS_EACH = 25
SESSION_CONNECTED = re.compile(r"ingest session (\S+) connected")
INGESTED = re.compile(r"session (\S+) ingested (\d+) sample reports \((\d+) duplicates\)")


def sessions_connected(replica: Replica) -> set[str]:
    return set(SESSION_CONNECTED.findall(replica.log.read_text()))


async def both_ingesting(first: Replica, second: Replica) -> None:
    """Until the leader's and the standby's ingest sessions are connected (the leader's own
    session, its first, says so as ``cloud manager connected``)."""
    first.start()
    second.start_standby()
    await wait_for(lambda: sessions_connected(first) and sessions_connected(second),
                   "both managers' ingest sessions connected", timeout=30)


def ingested(replica: Replica) -> tuple[int, int]:
    """Sample reports and duplicates its sessions said they ingested when they ended."""
    found = INGESTED.findall(replica.log.read_text())
    return sum(int(n) for _, n, _ in found), sum(int(d) for _, _, d in found)


def processed(url: str, keys: list[str]) -> set[str]:
    store = Store(url=url)
    try:
        return store.processed_among(keys)
    finally:
        store.close()


async def flood(nodes: list[ScriptedNode]) -> list[str]:
    """Every node sends :data:`REPORTS_EACH` sample reports; returns their store keys."""
    keys = []
    for i in range(REPORTS_EACH):
        for node in nodes:
            await node.report_samples(f"{NS}/{node.node}-data", "x", i + 1)
            keys.append(f"samples:{node.node}/{node.boot_id}/{node._seq}")
    return keys


async def test_two_managers_share_the_ingest_the_leader_decides_once(replicas, broker, postgres,
                                                                     tmp_path):
    first, second = replicas
    await both_ingesting(first, second)
    await asyncio.to_thread(apply_seed, broker.url, tmp_path)
    url = first.args[first.args.index("--store") + 1]
    async with ScriptedNode(broker.url, NODE, succeed(), answer=False) as owner:
        others = [await ScriptedNode(broker.url, name).__aenter__() for name in OTHERS]
        try:
            keys = await flood(others)
            await owner.report_samples(DATASET, "x", 60)
            keys.append(f"samples:{owner.node}/{owner.boot_id}/{owner._seq}")
            await wait_for(lambda: processed(url, keys) == set(keys), "every report stored",
                           timeout=60)
            row = await job_when(broker.url, lambda r: r["samples"] == 60)
            assert (row["stage"], row["state"]) == ("Train", "Waiting")
            await owner.report_samples(DATASET, "x", 150)  # the trigger, wherever it lands
            await wait_for(lambda: len(owner.held) == 1, "the train task", timeout=30)
            await owner.report_samples(DATASET, "x", 151)
            await job_when(broker.url, lambda r: r["samples"] == 151)
            assert len(owner.started) == len(set(owner.started)) == 1
            nodes = edgeloop("get", "nodes", "-o", "json", "--broker", broker.url)
            assert {NODE, *OTHERS} <= {n["name"] for n in json.loads(nodes.stdout)}
        finally:
            for node in others:
                await node.__aexit__(None, None, None)
    first.stop()
    second.stop()
    (by_first, dup_first), (by_second, dup_second) = ingested(first), ingested(second)
    print(f"sample reports ingested: leader {by_first}, standby {by_second}")
    assert by_first > 0 and by_second > 0  # both took a share
    assert by_first + by_second == len(keys) + 2 and dup_first == dup_second == 0


async def test_kill_9_of_the_standby_mid_ingest_loses_nothing(replicas, broker, tmp_path):
    first, second = replicas
    await both_ingesting(first, second)
    url = first.args[first.args.index("--store") + 1]
    (standby_session,) = sessions_connected(second)
    nodes = [await ScriptedNode(broker.url, name).__aenter__() for name in OTHERS]
    try:
        keys = await flood(nodes)
        second.kill()  # some of its share taken, some not acknowledged, more dealt to it
        killed = time.monotonic()
        keys += await flood(nodes)
        await wait_for(lambda: first.log_says(f"adopting the ingest session {standby_session}"),
                       "the leader adopts the dead standby's session", timeout=30)
        print(f"standby's ingest session adopted {time.monotonic() - killed:.1f} s after kill -9")
        await wait_for(lambda: processed(url, keys) == set(keys), "every report stored",
                       timeout=60)
    finally:
        for node in nodes:
            await node.__aexit__(None, None, None)
    first.stop()
    assert ingested(first)[0] > 0


async def test_any_manager_answers_reads_writes_reach_the_leader(replicas, broker, tmp_path):
    first, second = replicas
    await both_ingesting(first, second)
    await asyncio.to_thread(apply_seed, broker.url, tmp_path)  # writes: all taken
    for _ in range(12):
        response = await api(broker.url, "get", resource="il", namespace=NS)
        assert response.ok, response
    for i in range(3):
        response = await api(broker.url, "create_namespace", name=f"more-{i}")
        assert response.code == 201, response
    assert "api get" in second.log.read_text()  # the standby answered some reads
    assert "api create_namespace" not in second.log.read_text()


def test_an_ingest_session_refuses_a_write_naming_the_leader() -> None:
    split = IngestSplit("g", True, "manager-b", lambda: "manager-a")
    write = ApiRequest(request_id="r1", verb="apply", body="{}")
    refusal = split.refusal(write)
    assert refusal is not None and refusal.code == 503 and not refusal.ok
    assert "manager-a" in refusal.message and "apply" in refusal.message
    assert split.refusal(ApiRequest(request_id="r2", verb="get", resource="il")) is None
    assert IngestSplit("g", False, "manager-a", lambda: "manager-a").refusal(write) is None


async def test_a_status_retained_before_any_manager_ran_reaches_the_leader(replicas, broker):
    """The broker sends no retained message to a shared subscription: a node that announced
    itself before any manager's session existed is read from the retained statuses by the
    leader's first sweep of the node topics."""
    first, second = replicas
    async with ScriptedNode(broker.url, "early-node"):
        await both_ingesting(first, second)

        def listed() -> bool:
            nodes = edgeloop("get", "nodes", "-o", "json", "--broker", broker.url)
            return any(n["name"] == "early-node" and n["state"] == "online"
                       for n in json.loads(nodes.stdout or "[]"))

        await wait_for(listed, "the early node listed online", timeout=30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_ingest_sessions_are_held_adopted_and_handed_back(tmp_path):
    """Each manager holds an ingest session of its own; the leader adopts one nobody renews;
    a manager that starts takes an adopted one back before it makes a new one; a manager that
    cannot renew its rows gives its sessions up before they expire."""
    clock, served = Clock(), []

    async def serve(client_id: str, stop: asyncio.Event) -> None:
        served.append(client_id)
        await stop.wait()

    def manager(name: str) -> IngestMembers:
        return IngestMembers(Store(tmp_path / "state"), name, "cloud", serve, clock)

    a, b = manager("a"), manager("b")
    a.tick(leading=True)
    b.tick(leading=False)
    assert (a.held, b.held) == (["cloud-ingest-1"], ["cloud-ingest-2"])
    clock.now += MEMBER_TTL_S + 1  # b stops renewing (killed)
    a.tick(leading=True)
    assert a.held == ["cloud-ingest-1", "cloud-ingest-2"]  # adopted
    c = manager("c")
    c.tick(leading=False)
    assert c.held == ["cloud-ingest-2"]  # the adopted one, not a third
    a.tick(leading=True)
    assert a.held == ["cloud-ingest-1"]  # handed back
    await asyncio.sleep(0)
    assert served == ["cloud-ingest-1", "cloud-ingest-2", "cloud-ingest-2", "cloud-ingest-2"]

    def unavailable(*args: object) -> bool:
        raise StoreUnavailable("the database is gone")

    for method in ("renew_member", "ingest_members", "claim_member"):  # the database is down
        setattr(c.store, method, unavailable)
    stop = asyncio.Event()
    runner = asyncio.create_task(c.run(lambda: False, stop, asyncio.Lock(), tick_s=0.01))
    await asyncio.sleep(0.05)
    assert c.held == ["cloud-ingest-2"]  # not yet: the row still holds
    clock.now += MEMBER_TTL_S - GIVE_UP_MARGIN_S + 0.5
    await wait_for(lambda: not c.held, "c gives its session up")
    stop.set()
    await runner
    for one in (a, b):  # stopped: each ends the sessions it serves
        await one.run(lambda: False, stop, asyncio.Lock())
        assert one.held == []
    for one in (a, b, c):
        one.store.close()


@pytest.mark.parametrize("killed", ["standby", "leader"])
async def test_hard_examples_shared_by_two_managers_survive_a_kill_9(replicas, broker, tmp_path,
                                                                     killed):
    """A node's hard examples go to either manager; each is acknowledged once stored in the
    inbox (``--state DIR``, shared). One manager dies mid-upload: what it had not acknowledged
    the node sends again, or the survivor gets from the sessions it takes over (the leader's
    own, by lease, or an adopted ingest session); all are stored, once."""
    first, second = replicas
    await both_ingesting(first, second)
    await asyncio.to_thread(apply_seed, broker.url, tmp_path)  # kept for a job, from its node
    job = f"{NS}/{JOB}"
    images = [image_bytes(i, ".jpg") for i in range(40)]
    settings = MqttSettings(url=broker.url, client_id=NODE, backoff_max=0.5)
    async with MqttClient(settings) as client:
        sender = ReliableSender(client, topics.ack(NODE), resend_after=1.0)
        async with sender:
            await client.wait_connected(10)
            for i in range(40):
                await sender.send(topics.hardex(NODE), example(i, NODE, job, images[i]))
                if i == 20:
                    (second if killed == "standby" else first).kill()
            await sender.wait_drained(60)
    inbox = HardExampleInbox(tmp_path / "state" / INBOX_DIR)
    assert inbox.count(job) == 40
