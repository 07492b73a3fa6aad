"""Two ``edgeloop cloud --leader-lease`` processes on one PostgreSQL and one broker: the first
serves, the second stands by; ``kill -9`` of the leader while the job waits for samples, trains,
evaluates or collects the new version, and the standby takes over the lease and the MQTT
session, loses no sample report, starts no task twice and registers the version once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from agent_cloud import agent_config
from running_cloud import api
from scripted_node import ScriptedNode, succeed
from test_cloud_cli import CloudProcess, apply_seed, edgeloop, job_when
from test_cloud_daemon import DATASET, JOB, NODE, NS, stop_cloud_in_stage, wait_for
from test_loop_integration import append_samples
from test_rollout_fleet import INFERENCE_TASK, fleet_manifests

from edge_agent.daemon import Agent

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


class Replica(CloudProcess):
    """A manager that serves only while it holds the lease."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.args.append("--leader-lease")

    def start_standby(self) -> None:
        out = self.log.open("a")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "EDGELOOP_LOG": "INFO"})

    def log_says(self, text: str) -> bool:
        return text in self.log.read_text()


@pytest.fixture
def replicas(broker, postgres, tmp_path) -> Iterator[tuple[Replica, Replica]]:
    url = postgres.create_database()
    first = Replica(broker.url, tmp_path / "state", tmp_path / "first.log", url)
    second = Replica(broker.url, tmp_path / "state", tmp_path / "second.log", url)
    yield first, second
    first.stop()
    second.stop()


async def test_kill_9_of_the_leader_while_the_job_waits_the_standby_takes_over(
        replicas, broker, tmp_path):
    first, second = replicas
    first.start()  # ready: it leads (only a leader connects to the broker)
    second.start_standby()
    await wait_for(lambda: second.log_says("standing by for the leader lease"), timeout=30)
    await asyncio.to_thread(apply_seed, broker.url, tmp_path)
    async with ScriptedNode(broker.url, NODE, succeed(), answer=False) as node:
        await node.report_samples(DATASET, "x", 60)  # below the threshold of 100
        row = await job_when(broker.url, lambda r: r["samples"] == 60)
        assert (row["stage"], row["state"]) == ("Train", "Waiting")
        first.kill()
        killed = time.monotonic()
        await node.report_samples(DATASET, "x", 80)  # accepted by the broker, nobody serving
        await asyncio.to_thread(second.wait_ready, 60)
        takeover_s = time.monotonic() - killed
        print(f"takeover after kill -9: {takeover_s:.1f} s")
        assert not node.tasks  # the new term's resync starts nothing
        row = await job_when(broker.url, lambda r: r["samples"] == 80)  # not lost
        assert (row["stage"], row["state"]) == ("Train", "Waiting")
        await node.report_samples(DATASET, "x", 150)
        await wait_for(lambda: len(node.held) == 1, timeout=30)
        await node.report_samples(DATASET, "x", 151)  # a barrier behind the trigger
        await job_when(broker.url, lambda r: r["samples"] == 151)
        assert len(node.started) == len(set(node.started)) == 1
        assert {(t.role, t.attempt) for t in node.tasks} == {("train", 1)}
    assert second.log_says("leading under epoch 2")


@pytest.mark.parametrize("stage", ["train", "eval", "deploy"])
async def test_kill_9_of_the_leader_in_a_stage_the_standby_finishes_the_round_once(
        replicas, broker, tmp_path, stage):
    first, second = replicas
    first.start()
    second.start_standby()
    await wait_for(lambda: second.log_says("standing by for the leader lease"), timeout=30)
    await asyncio.to_thread(apply_seed, broker.url, tmp_path)
    # hide_paths: the model files must be pulled from the node, as from another machine
    async with ScriptedNode(broker.url, NODE, succeed(), answer=False, hide_paths=True) as node:
        await stop_cloud_in_stage(node, stage, first.kill)
        killed = time.monotonic()
        await node.report_samples(DATASET, "x", 160)  # more samples while nobody serves
        await asyncio.to_thread(second.wait_ready, 60)
        print(f"{stage}: takeover after kill -9: {time.monotonic() - killed:.1f} s")
        if stage == "train":
            await wait_for(lambda: len(node.held) == 2, timeout=30)  # eval sent by the new leader
            await node.play(node.held[-1])
        row = await job_when(broker.url, lambda r: r["round"] == 2)
        assert row["deployed_version"] == 1 and row["stage"] == "Train"
        assert row["samples"] == 160
        # every task key started once, one train and one eval attempt in all
        assert len(node.started) == len(set(node.started)) == 2
        assert {(t.role, t.attempt) for t in node.tasks} == {("train", 1), ("eval", 1)}
    versions = edgeloop("get", "versions", "-n", NS, "-o", "json", "--broker", broker.url)
    assert [v["version"] for v in json.loads(versions.stdout)] == [1]
    assert second.log_says("leading under epoch 2")


def test_a_lease_needs_a_postgresql_store_and_a_store_url_must_be_postgresql(broker, tmp_path):
    no_store = edgeloop("cloud", "--leader-lease", "--state", str(tmp_path / "s"),
                        "--broker", broker.url)
    assert no_store.returncode == 2 and "--store postgresql://" in no_store.stderr
    other = edgeloop("cloud", "--store", "mysql://u:secret@db/x", "--state", str(tmp_path / "s"),
                     "--broker", broker.url)
    assert other.returncode == 1 and "not a postgresql:// URL" in other.stderr
    assert "secret" not in other.stderr


async def rollout_status(url: str) -> dict | None:
    response = await api(url, "rollout", namespace=NS, name=JOB, args={"command": "status"})
    return response.data["rollout"] if response.ok else None


async def rollout_when(url: str, predicate, timeout: float = 90.0) -> dict:
    """The rollout's summary once ``predicate`` holds for it (asked through the API)."""
    async with asyncio.timeout(timeout):
        while True:
            summary = await rollout_status(url)
            if summary is not None and predicate(summary):
                return summary
            await asyncio.sleep(0.2)


@pytest.mark.timeout(300)
async def test_kill_9_of_the_leader_mid_rollout_the_standby_completes_it(replicas, broker,
                                                                           tmp_path):
    """Real agents: cloud0 trains with stand-in workers, edge1 (the canary) and edge2 run the
    stand-in inference worker. The leader dies while the canary bakes version 1; the standby
    resumes the bake from the store and sends the version to edge2, once."""
    first, second = replicas
    manifests = fleet_manifests(tmp_path)
    job = json.loads(manifests[-1])
    job["spec"]["deploySpec"]["rollout"]["bakeSeconds"] = 8  # long enough to die in
    manifests[-1] = json.dumps(job)
    data = tmp_path / "data"
    first.start()
    second.start_standby()
    await wait_for(lambda: second.log_says("standing by for the leader lease"), timeout=30)

    def agent(node: str, **extra) -> Agent:
        return Agent(agent_config(broker.url, tmp_path / node, node=node, check_models=False,
                                  restart_initial_s=0.2, **extra))

    async with agent("cloud0", datasets={DATASET: str(data / "data.txt")}), \
            agent("edge1") as edge1, agent("edge2") as edge2:
        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in manifests:
            response = await api(broker.url, "apply", body=text)
            assert response.ok, response
        for node in (edge1, edge2):
            await wait_for(lambda n=node: INFERENCE_TASK in n.channel.connected_tasks(),
                           f"{node.node}'s inference worker", timeout=60)
        append_samples(data, 0, 10)
        await rollout_when(broker.url, lambda r: r["phase"] == "Canary"
                           and r["bake_until"] is not None)
        assert edge1.serving == {INFERENCE_TASK: 1} and edge2.serving != {INFERENCE_TASK: 1}
        first.kill()
        killed = time.monotonic()
        await asyncio.to_thread(second.wait_ready, 60)
        print(f"mid-rollout: takeover after kill -9: {time.monotonic() - killed:.1f} s")
        done = await rollout_when(broker.url, lambda r: r["phase"] == "Completed")
        assert done["version"] == 1
        await wait_for(lambda: edge1.serving == {INFERENCE_TASK: 1}
                       and edge2.serving == {INFERENCE_TASK: 1}, "both nodes serve version 1")
        described = await api(broker.url, "describe", resource="il", namespace=NS, name=JOB)
        assert [v["version"] for v in described.data["versions"]] == [1]
        assert described.data["status"]["round"] == 2
    assert second.log_says("leading under epoch 2")
