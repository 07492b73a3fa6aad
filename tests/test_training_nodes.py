"""Training on several nodes: a real broker, the cloud manager and two real agents with
stand-in workers. Job A trains where its Dataset is (node-a); job B, written in the pod-template
form, names node-b for its train, eval and deploy stages while its data is counted on node-a.
Each job's tasks go to its own node only, and while node-b is offline job B waits for it and
``describe il`` says so."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from agent_cloud import agent_config
from running_cloud import api, cloud, job_state
from test_cloud_cli import edgeloop
from test_cloud_daemon import NS, seed_manifests, wait_for
from test_loop_integration import append_samples, write_boot_files

from cloud_manager.daemon import CloudDaemon
from cloud_manager.task_builder import task_id
from edge_agent.daemon import Agent

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

THRESHOLD = 5
STAGES = {"trainSpec": "train-worker", "evalSpec": "eval-worker", "deploySpec": "infer-worker"}


def job_manifests(tmp: Path, name: str, node: str) -> list[str]:
    """The seed's manifests for job ``name`` under ``tmp`` (its own data, code, output, deploy
    file), its resources renamed after it, its dataset counted and its model deployed on
    ``node``."""
    code = tmp / "code"
    write_boot_files(code)
    (tmp / "data").mkdir()
    (tmp / "data" / "data.txt").write_text("")
    dataset, initial, deploy = f"{name}-data", f"{name}-initial", f"{name}-deploy"
    renamed = []
    for text in seed_manifests(tmp, THRESHOLD, script_dir=code):
        data = json.loads(text)
        spec = data["spec"]
        if data["kind"] == "Dataset":
            data["metadata"]["name"], spec["nodeName"] = dataset, node
        elif data["kind"] == "Model":
            data["metadata"]["name"] = initial if spec["url"].endswith("base_model") else deploy
        else:
            data["metadata"]["name"] = name
            spec["dataset"]["name"], spec["initialModel"]["name"] = dataset, initial
            spec["deploySpec"]["model"]["name"] = deploy
            spec["nodeName"] = spec["deploySpec"]["nodeName"] = node
        renamed.append(data)
    return [json.dumps(d) for d in renamed]


def place_stages(job_text: str, node: str) -> str:
    """The job in the pod-template form, every stage's ``template.spec.nodeName`` ``node``."""
    data = json.loads(job_text)
    spec = data["spec"]
    spec.pop("nodeName")
    for stage, container in STAGES.items():
        worker = spec[stage].pop("workerSpec")
        spec[stage].pop("nodeName", None)
        spec[stage]["template"] = {"spec": {"nodeName": node, "containers": [{
            "name": container, "image": "helmet:stand-in",
            "command": ["python"], "args": [worker["scriptBootFile"]],
            "workingDir": worker["scriptDir"],
            "env": [{"name": p["key"], "value": p["value"]} for p in worker["parameters"]],
        }]}}
    return json.dumps(data)


def task_dirs(agent_state: Path) -> set[str]:
    """The tasks a node ran (each leaves its folder)."""
    return {p.name for p in (agent_state / "tasks").iterdir()}


def reason(daemon: CloudDaemon, job: str) -> str:
    return job_state(daemon, NS, job).conditions[-1].reason


async def test_each_job_trains_on_its_own_node_and_waits_for_it(broker, tmp_path):
    a_files = job_manifests(tmp_path / "a", "job-a", "node-a")
    b_files = job_manifests(tmp_path / "b", "job-b", "node-a")
    b_files[-1] = place_stages(b_files[-1], "node-b")
    datasets = {f"{NS}/{job}-data": str(tmp_path / job[-1] / "data" / "data.txt")
                for job in ("job-a", "job-b")}
    config_a = agent_config(broker.url, tmp_path / "agent-a", node="node-a", datasets=datasets,
                            check_models=False)
    config_b = agent_config(broker.url, tmp_path / "agent-b", node="node-b", check_models=False)
    async with cloud(broker.url, tmp_path / "cloud", read_node_paths=False) as daemon:
        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in a_files + b_files:
            response = await api(broker.url, "apply", body=text)
            assert response.ok, response
        async with Agent(config_a):
            await wait_for(lambda: "node-a" in daemon.manager.online_nodes(), "node-a online")
            append_samples(tmp_path / "a" / "data", 0, 10)
            append_samples(tmp_path / "b" / "data", 0, 10)
            await wait_for(lambda: job_state(daemon, NS, "job-a").deployed_version == 1,
                           "job-a round 1 deployed on node-a")
            # job B's data is counted on node-a, but its training node is not there
            waiting = "waiting for node node-b to be online"
            await wait_for(lambda: reason(daemon, "job-b") == waiting, "job-b waiting for node-b")
            assert job_state(daemon, NS, "job-b").stage == "Train"
            described = await asyncio.to_thread(
                edgeloop, "describe", "il", "job-b", "-n", NS, "--broker", broker.url)
            assert described.returncode == 0, described.stderr
            assert waiting in " ".join(described.stdout.split())

            async with Agent(config_b):
                await wait_for(lambda: job_state(daemon, NS, "job-b").deployed_version == 1,
                               "job-b round 1 trained, evaluated and deployed on node-b", 60)
                version = next(v for v in daemon.manager.store.model_versions(f"{NS}/job-b")
                               if v.version == 1)
                assert version.collected is True  # pulled from node-b, where train wrote it

    def tasks(job: str) -> set[str]:
        return {task_id(NS, job, 1, "train"), task_id(NS, job, 1, "eval"),
                task_id(NS, job, 0, "inference")}

    # each node ran its job's tasks and nothing of the other job
    assert task_dirs(tmp_path / "agent-a") == tasks("job-a")
    assert task_dirs(tmp_path / "agent-b") == tasks("job-b")
    # the round's indexes were written by the node that trained, from the shared dataset
    assert (tmp_path / "b" / "output" / "1" / "train.txt").read_text()
