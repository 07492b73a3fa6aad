"""The edge agent runs worker processes for Task messages and reports them, over a real broker,
with tiny real Python scripts as workers (no TensorFlow)."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from pathlib import Path

import pytest
from agent_cloud import FakeCloud, agent_config

from edge_agent.daemon import Agent
from edge_agent.runner import TaskSetupError, worker_environment
from protocol import topics
from protocol import worker_contract as contract
from protocol.messages import DesiredState, Task, WorkerSpec

pytestmark = pytest.mark.broker

SCRIPTS = {
    "ok.py": """
        import json, os
        with open("runs.txt", "a") as f:
            f.write(os.environ["EDGELOOP_TASK_ID"] + "\\n")
        print("training on", os.environ["TRAIN_DATASET_URL"])
        result = {"batch_size": os.environ["batch_size"], "task": os.environ["EDGELOOP_TASK_ID"],
                  "metrics": {"precision": 0.5}}
        with open(os.environ["EDGELOOP_RESULT"], "w") as f:
            json.dump(result, f)
    """,
    "fail.py": """
        import sys
        print("line one")
        print("something broke", file=sys.stderr)
        sys.exit(3)
    """,
    "bad_result.py": """
        import os
        open(os.environ["EDGELOOP_RESULT"], "w").write("{not json")
    """,
    "sleeper.py": """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open("child.pid", "w") as f:
            f.write(str(child.pid))
        with open("runs.txt", "a") as f:
            f.write("sleeper\\n")
        print("serving", flush=True)
        time.sleep(120)
    """,
}


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name, body in SCRIPTS.items():
        (folder / name).write_text(textwrap.dedent(body))
    return folder


def make_task(scripts: Path, boot: str, task_id: str = "t1", **fields) -> Task:
    values = {
        "task_id": task_id,
        "job": "default/helmet",
        "role": "train",
        "worker": WorkerSpec(
            script_dir=str(scripts), boot_file=boot, parameters={"batch_size": "8"}
        ),
        "env": {"TRAIN_DATASET_URL": "/data/train.txt"},
    }
    values.update(fields)
    return Task(**values)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is as good as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def final(cloud: FakeCloud, task_id: str):
    return [p for p in cloud.progress(task_id) if p.state in ("Completed", "Failed")]


async def test_birth_status_is_retained_with_capabilities(broker, tmp_path):
    async with Agent(agent_config(broker.url, tmp_path / "state")) as agent:
        await agent.client.wait_connected(10)
        async with FakeCloud(broker.url) as cloud:  # joins late: sees the retained status
            statuses = await cloud.wait_for(cloud.statuses)
    status = statuses[0]
    assert status.state == "online"
    assert status.boot_id == agent.identity.boot_id
    assert status.capabilities["cpus"] >= 1
    assert status.capabilities["tensorflow"]
    assert status.agent_version


async def test_task_runs_once_with_contract_environment_and_result(broker, tmp_path, scripts):
    async with (
        FakeCloud(broker.url) as cloud,
        Agent(agent_config(broker.url, tmp_path / "s")) as agent,
    ):
        await agent.client.wait_connected(10)
        task = make_task(scripts, "ok.py")
        await cloud.client.publish(topics.task("edge-1", "t1"), task)
        await cloud.client.publish(topics.task("edge-1", "t1"), task)  # a duplicate
        done = await cloud.wait_for(lambda: final(cloud, "t1"))
        await cloud.client.publish(topics.task("edge-1", "t1"), task)  # a late duplicate
        await cloud.wait_for(lambda: len(final(cloud, "t1")) >= 2)
    states = [p.state for p in cloud.progress("t1")]
    assert states[:3] == ["Starting", "Running", "Completed"]
    report = done[0]
    assert report.exit_code == 0
    assert report.result == {"batch_size": "8", "task": "t1", "metrics": {"precision": 0.5}}
    assert "training on /data/train.txt" in report.log_tail
    assert (scripts / "runs.txt").read_text().splitlines() == ["t1"]  # one process only
    assert final(cloud, "t1")[1] == report  # the late duplicate got the same answer again
    log = tmp_path / "s" / "tasks" / "t1" / "attempt-1" / "worker.log"
    assert "training on" in log.read_text()


async def test_failing_worker_reports_exit_code_and_log_tail(broker, tmp_path, scripts):
    async with (
        FakeCloud(broker.url) as cloud,
        Agent(agent_config(broker.url, tmp_path / "s")) as agent,
    ):
        await agent.client.wait_connected(10)
        await cloud.client.publish(
            topics.task("edge-1", "bad"), make_task(scripts, "fail.py", "bad")
        )
        await cloud.client.publish(
            topics.task("edge-1", "junk"), make_task(scripts, "bad_result.py", "junk")
        )
        await cloud.client.publish(
            topics.task("edge-1", "none"), make_task(scripts, "missing.py", "none")
        )
        bad = (await cloud.wait_for(lambda: final(cloud, "bad")))[0]
        junk = (await cloud.wait_for(lambda: final(cloud, "junk")))[0]
        none = (await cloud.wait_for(lambda: final(cloud, "none")))[0]
    assert bad.state == "Failed" and bad.exit_code == 3
    assert "something broke" in bad.log_tail and "line one" in bad.log_tail
    assert "code 3" in bad.message
    assert junk.state == "Failed" and "not valid JSON" in junk.message
    assert none.state == "Failed" and "missing.py not found" in none.message


async def test_stop_and_timeout_kill_the_whole_process_group(broker, tmp_path, scripts):
    async with (
        FakeCloud(broker.url) as cloud,
        Agent(agent_config(broker.url, tmp_path / "s")) as agent,
    ):
        await agent.client.wait_connected(10)
        task = make_task(scripts, "sleeper.py", "inf", role="inference")
        await cloud.client.publish(topics.task("edge-1", "inf"), task)
        await cloud.wait_for(lambda: (scripts / "child.pid").exists() or None, 10)
        await asyncio.sleep(0.2)
        child = int((scripts / "child.pid").read_text())
        assert pid_alive(child)
        stop = task.model_copy(update={"action": "stop", "worker": None})
        await cloud.client.publish(topics.task("edge-1", "inf"), stop)
        stopped = (await cloud.wait_for(lambda: final(cloud, "inf")))[0]
        for _ in range(50):
            if not pid_alive(child):
                break
            await asyncio.sleep(0.1)
        assert not pid_alive(child)
        assert stopped.state == "Failed" and stopped.message == "stopped on request"

        (scripts / "child.pid").unlink()
        slow = make_task(scripts, "sleeper.py", "slow", timeout_s=1.0)
        await cloud.client.publish(topics.task("edge-1", "slow"), slow)
        timed_out = (await cloud.wait_for(lambda: final(cloud, "slow")))[0]
    assert timed_out.state == "Failed" and "timed out after 1 s" in timed_out.message
    assert "serving" in timed_out.log_tail


async def test_desired_state_applies_by_generation_across_reconnects(broker, tmp_path, scripts):
    task = make_task(scripts, "sleeper.py", "serve", role="inference")
    desired = DesiredState(node="edge-1", generation=3, tasks=[task])
    async with FakeCloud(broker.url) as cloud:
        await cloud.client.publish(topics.desired("edge-1"), desired, retain=True)
        async with Agent(agent_config(broker.url, tmp_path / "s")) as agent:
            await cloud.wait_for(
                lambda: [p for p in cloud.progress("serve") if p.state == "Running"]
            )
            broker.restart()  # the retained desired state arrives again on reconnection
            await cloud.wait_for(lambda: len(cloud.statuses()) >= 2 or None, 20)
            await cloud.wait_for(lambda: agent.client.stats.connects >= 2 or None, 20)
            await asyncio.sleep(0.5)
            assert agent.applied_generation == 3
            assert (scripts / "runs.txt").read_text().splitlines() == ["sleeper"]

            older = DesiredState(node="edge-1", generation=2, tasks=[])
            await cloud.client.publish(topics.desired("edge-1"), older, retain=True)
            await asyncio.sleep(0.5)
            assert "serve" in agent.runner.running  # an older generation changes nothing

            await cloud.client.publish(
                topics.desired("edge-1"), DesiredState(node="edge-1", generation=4), retain=True
            )
            stopped = (await cloud.wait_for(lambda: final(cloud, "serve")))[0]
            assert stopped.message == "no longer in the desired state"
            # the generation counts as applied once all its stops are done, just after this report
            await cloud.wait_for(lambda: agent.applied_generation == 4 or None, 5)


def test_worker_environment_layers_parameters_env_and_contract(tmp_path):
    task = Task(
        task_id="t",
        job="ns/j",
        role="train",
        worker=WorkerSpec(script_dir="/x", boot_file="b.py", parameters={"epochs": "3"}),
        env={"MODEL_URL": "/out", contract.TASK_ID: "spoofed"},
    )
    env = worker_environment(task, tmp_path / "r.json", "ws://127.0.0.1:1/t")
    assert env["epochs"] == "3" and env["MODEL_URL"] == "/out"
    assert env[contract.TASK_ID] == "t"  # the contract's own variables win
    assert env[contract.RESULT] == str(tmp_path / "r.json")
    assert env[contract.CHANNEL] == "ws://127.0.0.1:1/t"
    clash = task.model_copy(
        update={
            "worker": WorkerSpec(script_dir="/x", boot_file="b.py", parameters={"MODEL_URL": "x"})
        }
    )
    with pytest.raises(TaskSetupError, match="MODEL_URL"):
        worker_environment(clash, tmp_path / "r.json", None)
    assert json.dumps(env)  # plain strings only
