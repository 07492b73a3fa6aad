"""Two ``edgeloop cloud --leader-lease`` processes on one PostgreSQL and one broker: the first
serves, the second stands by; ``kill -9`` of the leader, and the standby takes over the lease
and the MQTT session, loses no sample report and dispatches the round's task once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from scripted_node import ScriptedNode, succeed
from test_cloud_cli import CloudProcess, apply_seed, job_when
from test_cloud_daemon import DATASET, NODE, wait_for

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
    url = postgres.create_database("failover")
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
