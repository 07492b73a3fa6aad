"""The local websocket channel between the agent and a worker that uses the real worker SDK."""

from __future__ import annotations

import textwrap

import pytest
from agent_cloud import FakeCloud, agent_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from edge_agent.daemon import Agent
from protocol import topics
from protocol import worker_channel as wc
from protocol.messages import HardExample, Task, WorkerSpec

pytestmark = pytest.mark.broker

WORKER = """
    import hashlib, json, os
    from pathlib import Path
    from workers.sdk import WorkerSession

    session = WorkerSession.from_env(role="inference")
    assert session.wait_connected(10), "no channel"
    session.report_progress(0.5, "half way")
    folder = Path(os.environ["HE_SAVED_URL"])
    folder.mkdir(parents=True, exist_ok=True)
    image = b"not really a jpeg"
    sha = hashlib.sha256(image).hexdigest()
    (folder / "a.jpg").write_bytes(image)
    (folder / "a.json").write_text(json.dumps({"image": "a.jpg", "sha256": sha, "frame_index": 7}))
    session.emit_hard_example(folder / "a.jpg", folder / "a.json", sha)
    session.model_version = "3"
    session.report_stats(frames=10, fps=5.0, hard_examples=1)
    session.stop_requested.wait(30)
    session.write_result({"frames": 10, "stopped": session.stop_requested.is_set()})
    session.close()
"""


async def test_worker_talks_to_the_agent_over_the_channel(broker, tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "infer.py").write_text(textwrap.dedent(WORKER))
    # a long scan period: the example must come in through the worker's announcement
    config = agent_config(broker.url, tmp_path / "state", hardex_scan_s=600)
    task = Task(
        task_id="inf",
        job="default/helmet",
        role="inference",
        worker=WorkerSpec(
            script_dir=str(scripts), boot_file="infer.py", parameters={"HE_SAVED_URL": "he"}
        ),
    )
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        await cloud.wait_for(cloud.statuses)
        await cloud.client.publish(topics.task("edge-1", "inf"), task)
        half = await cloud.wait_for(lambda: [p for p in cloud.progress("inf") if p.progress == 0.5])
        assert half[0].message == "half way" and half[0].state == "Running"
        example = (await cloud.wait_for(lambda: cloud.of_type(HardExample)))[0]
        assert example.job == "default/helmet" and example.sidecar.frame_index == 7
        assert not (scripts / "he" / "a.json").exists()
        serving = await cloud.wait_for(
            lambda: [s for s in cloud.statuses() if s.serving.get("inf") == 3]
        )
        assert serving[-1].state == "online"
        assert await agent.channel.send("inf", wc.Stop())
        done = await cloud.wait_for(
            lambda: [p for p in cloud.progress("inf") if p.state in ("Completed", "Failed")]
        )
    assert done[0].state == "Completed", done[0].log_tail
    assert done[0].result == {"frames": 10, "stopped": True}


async def test_channel_refuses_unknown_task_or_secret(broker, tmp_path):
    async with (
        FakeCloud(broker.url) as cloud,
        Agent(agent_config(broker.url, tmp_path / "s")) as agent,
    ):
        await cloud.wait_for(cloud.statuses)  # connected and born: a clean, quick shutdown
        good = agent.channel.url_for("t1")
        async with connect(good) as ws:
            await ws.send(wc.encode(wc.Hello(task_id="t1")))
        for bad in (good.rsplit("/", 1)[0] + "/wrong", good.replace("/t1/", "/t2/")):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(bad):
                    pass
            assert refused.value.response.status_code == 403
