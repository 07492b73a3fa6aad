"""An inference worker is kept running: restarted with backoff when it dies, counted in the node
status, stopped for good by a stop, and never left behind as an orphan.

Real broker, real agent, tiny Python boot scripts as workers (no TensorFlow)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import textwrap
from pathlib import Path

import msgpack
import pytest
from agent_cloud import FakeCloud, agent_config
from mqtt_probe import Probe
from test_agent_downloads import (
    RECORDING_WORKER,
    ChunkServer,
    blob_ref,
    deployed_inference_task,
    served_lines,
)
from test_agent_runner import pid_alive

from edge_agent.config import ConfigError, load_config
from edge_agent.daemon import Agent
from edge_agent.restart_policy import RestartPolicy
from mosquitto.launcher import Broker
from protocol import topics
from protocol.messages import DesiredState, Task, WorkerSpec

#: Kept running; spawns a child so that a dead leader's group can be checked for leftovers.
SERVICE = """
    import os, subprocess, sys, time
    from workers.sdk import WorkerSession

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open("runs.txt", "a") as f:
        f.write(f"{os.getpid()} {child.pid} {os.environ.get('EDGELOOP_MODEL_VERSION')}\\n")
    session = WorkerSession.from_env(role="inference")
    session.wait_connected(10)
    session.report_stats(frames=1, fps=1.0)
    time.sleep(120)
"""

#: An inference worker whose source cannot be opened: it exits at once with "bad input".
NO_SOURCE = """
    import sys
    with open("runs.txt", "a") as f:
        f.write("tried\\n")
    print("cannot open source rtsp://camera.invalid/stream", flush=True)
    sys.exit(2)
"""

FAST_RESTARTS = {"restart_initial_s": 0.2, "restart_max_s": 0.4}


async def gone(pid: int, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if not pid_alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def runs(scripts: Path) -> list[list[str]]:
    path = scripts / "runs.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def inference_task(scripts: Path, boot: str, task_id: str = "inf") -> Task:
    return Task(
        task_id=task_id,
        job="default/helmet",
        role="inference",
        worker=WorkerSpec(script_dir=str(scripts), boot_file=boot),
        env={"EDGELOOP_MODEL_VERSION": "1"},
    )


def retained_status(broker: Broker, node: str = "edge-1") -> dict:
    """The node's retained status as raw msgpack (every field the agent put on the wire)."""
    probe = Probe(broker).connect()
    try:
        probe.subscribe(topics.status(node))
        return msgpack.unpackb(probe.expect(topics.status(node)).payload, raw=False)
    finally:
        probe.close()


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "service.py").write_text(textwrap.dedent(SERVICE))
    (folder / "no_source.py").write_text(textwrap.dedent(NO_SOURCE))
    return folder


# -- the policy (pure) ---------------------------------------------------------------------------


def test_pauses_grow_with_jitter_up_to_the_cap_and_reset_after_a_healthy_run():
    policy = RestartPolicy(initial_s=1.0, maximum_s=8.0, healthy_s=60.0, rng=random.Random(7))
    delays = [policy.next_delay(ran_for_s=0.5) for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    caps = [min(8.0, 2.0**i) for i in range(12)]
    assert all(d <= cap for d, cap in zip(delays, caps, strict=True))
    assert max(delays[6:]) > 2.0  # it did grow
    assert policy.restarts == 12 and policy.streak == 12
    after_healthy = policy.next_delay(ran_for_s=61.0)
    assert after_healthy <= 1.0  # back to the first pause
    assert policy.restarts == 13 and policy.streak == 1


def test_restart_settings_are_checked(tmp_path):
    base = {"node": "edge-1", "broker": "mqtt://127.0.0.1:1883"}
    with pytest.raises(ConfigError, match="restart_initial_s"):
        load_config(None, {**base, "restart_initial_s": 0})
    with pytest.raises(ConfigError, match="restart_initial_s .* restart_max_s"):
        load_config(None, {**base, "restart_initial_s": 30, "restart_max_s": 5})
    policy = load_config(None, {**base, "restart_max_s": 5}).restart_policy()
    assert policy.maximum_s == 5 and policy.restarts == 0


# -- with a real broker and agent ----------------------------------------------------------------


@pytest.mark.broker
async def test_a_killed_inference_worker_is_restarted_and_counted_until_stopped(
    broker, tmp_path, scripts
):
    task = inference_task(scripts, "service.py")
    config = agent_config(broker.url, tmp_path / "state", **FAST_RESTARTS)
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        await cloud.wait_for(cloud.statuses)
        desired = topics.desired("edge-1")
        await cloud.client.publish(desired, DesiredState(node="edge-1", generation=1, tasks=[task]))
        await cloud.wait_for(lambda: [s for s in cloud.statuses() if s.serving.get("inf") == 1])
        [(first, first_child, version)] = runs(scripts)
        assert version == "1"

        os.kill(int(first), signal.SIGKILL)  # the worker dies as an OOM kill would
        await cloud.wait_for(lambda: len(runs(scripts)) == 2 or None)
        second, second_child, _ = runs(scripts)[1]
        assert second != first
        assert await gone(int(first_child))  # the dead worker's group went with it
        assert agent.runner.restart_counts() == {"inf": 1}
        restarted = [p for p in cloud.progress("inf") if "restart 1" in p.message]
        assert restarted and restarted[0].state == "Running"
        assert "code -9" in restarted[0].message
        # the successor says hello with its version: the node serves again
        await cloud.wait_for(
            lambda: (
                [s for s in cloud.statuses() if s.serving.get("inf") == 1]
                and agent.serving == {"inf": 1}
            )
        )

        # a status counts the restart once the successor serves (a status published between
        # the death and the successor's hello says it serves nothing; the next one follows)
        await cloud.wait_for(lambda: [s for s in cloud.statuses()
                                      if s.worker_restarts == {"inf": 1}
                                      and s.serving == {"inf": 1}], timeout=60)
        status = await asyncio.to_thread(retained_status, broker)  # what a restarted cloud reads
        assert status["worker_restarts"] == {"inf": 1}
        assert status["serving"] == {"inf": 1}

        # a desired state without the task stops it for good
        await cloud.client.publish(desired, DesiredState(node="edge-1", generation=2, tasks=[]))
        stopped = await cloud.wait_for(
            lambda: [p for p in cloud.progress("inf") if p.state == "Failed"]
        )
        assert stopped[0].message == "no longer in the desired state"
        assert await gone(int(second)) and await gone(int(second_child))
        await asyncio.sleep(1.0)  # longer than any restart pause here
        assert len(runs(scripts)) == 2
        assert "inf" not in agent.runner.running
        assert agent.runner.restart_counts() == {}


@pytest.mark.broker
async def test_a_worker_failing_at_start_backs_off_and_a_stop_ends_it(broker, tmp_path, scripts):
    """An unreadable source makes the worker exit at once, again and again: the agent keeps
    trying with pauses (not a busy loop), and a stop during a pause ends it for good."""
    config = agent_config(broker.url, tmp_path / "state", **FAST_RESTARTS)
    task = inference_task(scripts, "no_source.py", "cam")
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        await cloud.wait_for(cloud.statuses)
        await cloud.client.publish(topics.task("edge-1", "cam"), task)
        await cloud.wait_for(lambda: len(runs(scripts)) >= 4 or None)
        assert agent.runner.restart_counts()["cam"] >= 3
        retries = [p for p in cloud.progress("cam") if "restart" in p.message]
        assert retries and all(p.state == "Running" for p in retries)
        assert "code 2" in retries[0].message
        assert not [p for p in cloud.progress("cam") if p.state in ("Completed", "Failed")]

        stop = task.model_copy(update={"action": "stop", "worker": None})
        await cloud.client.publish(topics.task("edge-1", "cam"), stop)
        stopped = await cloud.wait_for(
            lambda: [p for p in cloud.progress("cam") if p.state == "Failed"]
        )
        tries = len(runs(scripts))
        await asyncio.sleep(1.0)
        assert len(runs(scripts)) == tries  # no restart after the stop
    assert stopped[0].message == "stopped on request"
    assert "cannot open source" in stopped[0].log_tail


@pytest.mark.broker
async def test_shutdown_leaves_no_worker_behind_even_between_restarts(broker, tmp_path, scripts):
    config = agent_config(broker.url, tmp_path / "state", restart_initial_s=30, restart_max_s=30)
    async with FakeCloud(broker.url) as cloud:
        async with Agent(config) as agent:
            await cloud.wait_for(cloud.statuses)
            for task_id in ("a", "b"):
                task = inference_task(scripts, "service.py", task_id)
                await cloud.client.publish(topics.task("edge-1", task_id), task)
            await cloud.wait_for(lambda: len(runs(scripts)) == 2 or None)
            await cloud.wait_for(lambda: len(agent.serving) == 2 or None)
            leader_a = agent.runner.running["a"].process
            assert leader_a is not None
            os.kill(leader_a.pid, signal.SIGKILL)  # "a" now waits 15-30 s for its restart
            await cloud.wait_for(lambda: agent.runner.restart_counts().get("a") == 1 or None)
        # leaving the agent: both stopped at once, the waiting one not restarted
        pids = [int(pid) for run in runs(scripts) for pid in run[:2]]
        for pid in pids:
            assert await gone(pid, 5.0), f"process {pid} outlived the agent"

        def finals() -> dict[str, str]:
            return {
                p.task_id: p.message
                for p in cloud.progress("a") + cloud.progress("b")
                if p.state == "Failed"
            }

        assert await cloud.wait_for(lambda: len(finals()) == 2 and finals()) == {
            "a": "stopped: the agent is shutting down",
            "b": "stopped: the agent is shutting down",
        }
    assert len(runs(scripts)) == 2


@pytest.mark.broker
async def test_a_version_deployed_while_the_worker_awaits_its_restart_is_the_one_it_loads(
    broker, tmp_path, scripts
):
    """No swap can reach a dead worker and no second copy is started: the pending restart
    simply starts it with the new version (the same attempt, so the restart count goes on)."""
    (scripts / "infer.py").write_text(textwrap.dedent(RECORDING_WORKER))
    v1, v2 = b"model version one", b"model version two"
    refs = {1: blob_ref("model.tflite", v1), 2: blob_ref("model.tflite", v2)}

    def task(version: int) -> Task:
        return deployed_inference_task(scripts, tmp_path / "serving", version, refs[version])

    def served() -> list[list[str]]:
        return served_lines(scripts)

    # a pause long enough for the download, which first waits 3 s for a fan-out that this
    # stand-in cloud never sends, then pulls the chunks
    config = agent_config(broker.url, tmp_path / "state", restart_initial_s=12, restart_max_s=12,
                          check_models=False)  # stand-in workers never load these bytes
    async with (
        FakeCloud(broker.url) as cloud,
        ChunkServer(broker.url, {refs[1].sha256: v1, refs[2].sha256: v2}),
        Agent(config) as agent,
    ):
        await cloud.wait_for(cloud.statuses)
        desired = topics.desired("edge-1")
        await cloud.client.publish(
            desired, DesiredState(node="edge-1", generation=1, tasks=[task(1)])
        )
        await cloud.wait_for(lambda: agent.serving == {"inf": 1} or None)
        [(_, pid, _, _)] = served()
        os.kill(int(pid), signal.SIGKILL)
        await cloud.wait_for(lambda: agent.runner.restart_counts() == {"inf": 1} or None)
        await cloud.client.publish(  # during the 6-12 s pause
            desired, DesiredState(node="edge-1", generation=2, tasks=[task(2)])
        )
        await cloud.wait_for(lambda: agent.serving == {"inf": 2} or None)
        assert served()[1][0] == "start" and served()[1][2:] == ["2", refs[2].sha256]
        assert len(served()) == 2 and agent.runner.restart_counts() == {"inf": 1}
        assert not [p for p in cloud.progress("inf") if p.state in ("Completed", "Failed")]
