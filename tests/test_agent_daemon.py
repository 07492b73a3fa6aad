"""``edgeloop agent`` as a process: birth and last will, clean SIGTERM, bad settings."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from agent_cloud import FakeCloud
from running_cloud import cloud
from test_cloud_daemon import wait_for

from edge_agent.config import ConfigError, load_config, parse_mapping
from protocol import topics
from protocol.messages import Task, WorkerSpec


def start_agent(url: str, state: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeloop",
            "agent",
            "--node",
            "edge-9",
            "--broker",
            url,
            "--state",
            str(state),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.broker
async def test_sigterm_says_offline_stops_workers_and_keeps_the_outbox(broker, tmp_path):
    script = tmp_path / "w" / "forever.py"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent("""
        import time
        print("up", flush=True)
        time.sleep(120)
    """)
    )
    (tmp_path / "state" / "outbox").mkdir(parents=True)
    leftover = tmp_path / "state" / "outbox" / "000000000000-aaaa.msg"
    leftover.write_bytes(b'{"key": "k", "topic": "edgeloop/v1/node/edge-9/hardex"}\npayload')
    async with FakeCloud(broker.url, ack_hardex=False) as cloud:
        agent = start_agent(broker.url, tmp_path / "state")
        try:
            online = await cloud.wait_for(
                lambda: [s for s in cloud.statuses() if s.state == "online"]
            )
            assert online[0].outbox_backlog == 1
            task = Task(
                task_id="inf",
                job="ns/job",
                role="inference",
                worker=WorkerSpec(script_dir=str(script.parent), boot_file="forever.py"),
            )
            await cloud.client.publish(topics.task("edge-9", "inf"), task)
            await cloud.wait_for(lambda: [p for p in cloud.progress("inf") if p.state == "Running"])
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(20) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
        offline = await cloud.wait_for(
            lambda: [s for s in cloud.statuses() if s.state == "offline"]
        )
        stopped = [p for p in cloud.progress("inf") if p.state == "Failed"]
    assert offline[-1].boot_id == online[0].boot_id
    assert stopped and "shutting down" in stopped[0].message
    assert not [s for s in cloud.statuses() if s.state == "lost"]  # a clean goodbye: no will
    assert leftover.exists()  # the unacknowledged message is still there for the next run


@pytest.mark.broker
async def test_a_killed_agent_is_reported_lost_by_its_will(broker, tmp_path):
    async with FakeCloud(broker.url) as cloud:
        agent = start_agent(broker.url, tmp_path / "state")
        try:
            online = await cloud.wait_for(
                lambda: [s for s in cloud.statuses() if s.state == "online"]
            )
            agent.kill()
            agent.wait(10)
            lost = await cloud.wait_for(lambda: [s for s in cloud.statuses() if s.state == "lost"])
        finally:
            if agent.poll() is None:
                agent.kill()
    assert lost[0].boot_id == online[0].boot_id


async def test_the_cloud_manager_takes_a_killed_agent_offline(broker, tmp_path):
    """The will carries the seq of the connection it was set on, older than the statuses since:
    the cloud still applies it."""
    async with cloud(broker.url, tmp_path / "cloud") as daemon:
        agent = start_agent(broker.url, tmp_path / "state")
        try:
            await wait_for(lambda: "edge-9" in daemon.manager.online_nodes(), "the agent online")
            agent.kill()
            agent.wait(10)
            await wait_for(lambda: "edge-9" not in daemon.manager.online_nodes(),
                           "the agent's will taking it offline in the cloud")
            node = daemon.manager.store.node("edge-9")
            assert node is not None and node.status.state == "lost"
        finally:
            if agent.poll() is None:
                agent.kill()


def test_bad_settings_are_named(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeloop",
            "agent",
            "--node",
            "bad name!",
            "--broker",
            "mqtt://x",
            "--state",
            str(tmp_path),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "node" in result.stderr
    with pytest.raises(ConfigError, match="namespace/name=/path"):
        parse_mapping(["nopath"], "--dataset")
    config_file = tmp_path / "agent.yaml"
    config_file.write_text("node: edge-1\nbroker: mqtt://h:1883\ndatasets: {not-a-ref: /x}\n")
    with pytest.raises(ConfigError, match="datasets"):
        load_config(config_file, {})
    config_file.write_text("node: edge-1\nbroker: mqtt://h:1883\ncert: /c.pem\n")
    with pytest.raises(ConfigError, match="cert and key"):
        load_config(config_file, {})
    config_file.write_text("node: edge-1\ndatasets: {ns/a: /a.txt}\n")
    merged = load_config(config_file, {"broker": "mqtt://h:1", "datasets": {"ns/b": "/b.txt"}})
    assert set(merged.datasets) == {"ns/a", "ns/b"} and merged.broker == "mqtt://h:1"


@pytest.mark.broker
async def test_a_restarted_agent_closes_the_tasks_its_killed_predecessor_left(broker, tmp_path):
    scripts = tmp_path / "w"
    scripts.mkdir()
    (scripts / "forever.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(120)\n")
    task = Task(
        task_id="train-1",
        job="ns/job",
        role="train",
        worker=WorkerSpec(script_dir=str(scripts), boot_file="forever.py"),
    )
    async with FakeCloud(broker.url) as cloud:
        first = start_agent(broker.url, tmp_path / "state")
        second = None
        try:
            await cloud.wait_for(lambda: [s for s in cloud.statuses() if s.state == "online"])
            await cloud.client.publish(topics.task("edge-9", "train-1"), task)
            await cloud.wait_for(
                lambda: [p for p in cloud.progress("train-1") if p.state == "Running"]
            )
            pid_file = tmp_path / "state" / "tasks" / "train-1" / "attempt-1" / "worker.pid"
            worker_pid = int(pid_file.read_text().split()[0])
            first.kill()  # the agent dies; its worker, in its own process group, does not
            first.wait(10)
            assert Path(f"/proc/{worker_pid}").exists()
            second = start_agent(broker.url, tmp_path / "state")
            closed = await cloud.wait_for(
                lambda: [p for p in cloud.progress("train-1") if p.state == "Failed"]
            )
            await cloud.client.publish(topics.task("edge-9", "train-1"), task)  # redelivered
            again = await cloud.wait_for(
                lambda: len([p for p in cloud.progress("train-1") if p.state == "Failed"]) >= 2
            )
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
    assert "agent stopped while the task ran" in closed[0].message
    assert "worker was stopped" in closed[0].message
    assert "up" in closed[0].log_tail
    assert not Path(f"/proc/{worker_pid}").exists()
    assert again
    runs = [p for p in cloud.progress("train-1") if p.state == "Starting"]
    assert len(runs) == 1  # the redelivered Task did not start it again
