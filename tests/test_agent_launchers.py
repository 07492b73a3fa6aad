"""Workers started through the launcher seam (edge_agent.launchers): the ``command`` launcher
through a real wrapper script, and a launcher class loaded by import path, over a real broker
with tiny Python workers."""

from __future__ import annotations

import json
import stat
import textwrap
from pathlib import Path

import pytest
from agent_cloud import FakeCloud, agent_config
from test_agent_runner import final, make_task, pid_alive, scripts  # noqa: F401 (fixture)

from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.daemon import Agent
from edge_agent.launchers import (
    CommandLauncher,
    LauncherError,
    LaunchSpec,
    ProcessLauncher,
    make_launcher,
)
from edge_agent.runner import PID_NAME
from protocol import topics
from protocol import worker_contract as contract
from protocol.messages import Task, WorkerSpec

WRAPPER = """\
    #!/bin/sh
    # records that it ran, with its arguments and the env file it was given, then becomes the
    # worker (exec: the worker's exit code is the wrapper's)
    env_file="$1"; shift
    {{
      echo "task=$EDGELOOP_TASK_ID"
      echo "argv=$*"
      echo "env_file_task=$(grep '^EDGELOOP_TASK_ID=' "$env_file")"
    }} >> {record}
    exec "$@"
"""


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    path = tmp_path / "wrap.sh"
    path.write_text(textwrap.dedent(WRAPPER.format(record=tmp_path / "wrapped.txt")))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def spec(tmp_path: Path, **env: str) -> LaunchSpec:
    task = Task(task_id="t1", job="default/helmet", role="train", attempt=2,
                worker=WorkerSpec(script_dir=str(tmp_path), boot_file="ok.py"))
    return LaunchSpec(worker_id="t1", task=task, command=("python", "-u", "/w/ok.py"),
                      cwd=tmp_path, env=env, directory=tmp_path, log_path=tmp_path / "log")


def test_command_template_expands_the_command_and_the_task(tmp_path):
    launcher = CommandLauncher(["docker", "run", "--env-file", "{env_file}",
                                "--name", "{task_id}-{attempt}", "{command}"])
    argv = launcher.argv(spec(tmp_path, A="1", B="x=y"))
    assert argv == ["docker", "run", "--env-file", str(tmp_path / "worker.env"),
                    "--name", "t1-2", "python", "-u", "/w/ok.py"]
    assert (tmp_path / "worker.env").read_text() == "A=1\nB=x=y\n"
    with pytest.raises(LauncherError, match="line break"):
        launcher.argv(spec(tmp_path, A="two\nlines"))


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"launcher": "command"}, "launcher_command: required"),
        ({"launcher": "command", "launcher_command": ["nice"]}, "'{command}'"),
        ({"launcher": "command", "launcher_command": ["{nodes}", "{command}"]}, "{nodes}"),
        ({"launcher_command": ["nice", "{command}"]}, "only used when launcher is 'command'"),
        ({"launcher_options": {"a": 1}}, "only used by a launcher class"),
        ({"launcher": "kubernetes"}, "launcher"),
        ({"launcher": "no_such_module:Launcher"}, "cannot load 'no_such_module:Launcher'"),
        ({"launcher": "launcher_classes:RecordingLauncher"}, "launcher_options do not fit"),
        ({"launcher": "launcher_classes:RemoteHandle"}, "not a class with a start(spec) method"),
    ],
)
def test_launcher_settings_are_checked_before_the_agent_starts(tmp_path, settings, complaint):
    overrides = {"node": "edge-1", "broker": "mqtt://localhost:1883", **settings}
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert complaint in str(error.value)


def test_default_launcher_is_a_local_process():
    config = AgentConfig(node="edge-1", broker="mqtt://localhost:1883")
    assert type(config.make_launcher()) is ProcessLauncher
    assert type(make_launcher("command", ["nice", "{command}"])) is CommandLauncher


@pytest.mark.broker
async def test_command_launcher_runs_workers_through_the_wrapper(broker, tmp_path, scripts,
                                                                 wrapper):
    config = agent_config(broker.url, tmp_path / "s", launcher="command",
                          launcher_command=["/bin/sh", str(wrapper), "{env_file}", "{command}"])
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        await agent.client.wait_connected(10)
        await cloud.client.publish(topics.task("edge-1", "t1"), make_task(scripts, "ok.py"))
        done = (await cloud.wait_for(lambda: final(cloud, "t1")))[0]

        serve = make_task(scripts, "sleeper.py", "inf", role="inference")
        await cloud.client.publish(topics.task("edge-1", "inf"), serve)
        await cloud.wait_for(lambda: (scripts / "child.pid").exists() or None, 10)
        child = await cloud.wait_for(lambda: (scripts / "child.pid").read_text() or None)
        await cloud.client.publish(topics.task("edge-1", "inf"),
                                   serve.model_copy(update={"action": "stop", "worker": None}))
        stopped = (await cloud.wait_for(lambda: final(cloud, "inf")))[0]
        await cloud.wait_for(lambda: not pid_alive(int(child)) or None, 10)
    assert done.state == "Completed" and done.result["task"] == "t1"
    record = (tmp_path / "wrapped.txt").read_text().splitlines()
    assert record[0] == "task=t1" and record[1].endswith(f" -u {scripts / 'ok.py'}")
    assert record[2] == "env_file_task=EDGELOOP_TASK_ID=t1"
    assert "task=inf" in record
    # the wrapper exec'd the worker: a stop reaches the worker's process group through it
    assert stopped.state == "Failed" and stopped.message == "stopped on request"


@pytest.mark.broker
async def test_a_launcher_class_named_in_the_settings_runs_the_workers(broker, tmp_path,
                                                                        scripts):
    record = tmp_path / "launches.jsonl"
    config = load_config(None, {
        "node": "edge-1", "broker": broker.url, "state_dir": str(tmp_path / "s"),
        "live_view_port": 0, "stop_grace_s": 2.0,
        "launcher": "launcher_classes:RecordingLauncher",
        "launcher_options": {"record": str(record)},
    })
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        await agent.client.wait_connected(10)
        await cloud.client.publish(topics.task("edge-1", "t1"), make_task(scripts, "ok.py"))
        done = (await cloud.wait_for(lambda: final(cloud, "t1")))[0]

        serve = make_task(scripts, "sleeper.py", "inf", role="inference")
        await cloud.client.publish(topics.task("edge-1", "inf"), serve)
        await cloud.wait_for(lambda: (scripts / "child.pid").exists() or None, 10)
        await cloud.client.publish(topics.task("edge-1", "inf"),
                                   serve.model_copy(update={"action": "stop", "worker": None}))
        stopped = (await cloud.wait_for(lambda: final(cloud, "inf")))[0]
    assert done.state == "Completed"
    assert done.result == {"batch_size": "8", "task": "t1", "metrics": {"precision": 0.5}}
    launches = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(launch["worker"], launch["role"]) for launch in launches] == [
        ("t1", "train"), ("inf", "inference")]
    env = launches[0]["env"]
    assert env[contract.TASK_ID] == "t1" and env["TRAIN_DATASET_URL"] == "/data/train.txt"
    assert env[contract.RESULT] == str(Path(launches[0]["directory"]) / "result.json")
    assert "PATH" not in env  # the contract's variables only, none of the agent's own
    assert not (Path(launches[0]["directory"]) / PID_NAME).exists()  # no local process to record
    assert stopped.state == "Failed" and stopped.message == "stopped on request"


@pytest.mark.broker
async def test_a_failing_launcher_class_fails_the_task_with_its_error(broker, tmp_path, scripts):
    config = load_config(None, {
        "node": "edge-1", "broker": broker.url, "state_dir": str(tmp_path / "s"),
        "live_view_port": 0, "launcher": "launcher_classes:FailingLauncher",
    })
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        await agent.client.wait_connected(10)
        await cloud.client.publish(topics.task("edge-1", "t1"), make_task(scripts, "ok.py"))
        failed = (await cloud.wait_for(lambda: final(cloud, "t1")))[0]
        assert agent.runner.running == {}  # nothing left behind; the agent goes on
    assert failed.state == "Failed"
    assert failed.message == ("cannot start the worker: the launcher failed: RuntimeError: "
                              "quota exceeded for t1")
