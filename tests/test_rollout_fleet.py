"""Staged rollout end to end: a real broker, the cloud manager and three real agents (cloud0
trains with stand-in workers; edge1 and edge2 run a stand-in inference worker that reports its
health as the real one does). A canary of one node: a good version reaches both nodes; a version
whose detections collapse (shadow agreement too low) and one that crashes the worker stop at the
canary, roll back, and edge2 never downloads them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from agent_cloud import agent_config
from running_cloud import api, cloud
from test_cloud_daemon import DATASET, JOB, NS, job_state, seed_manifests, wait_for
from test_loop_integration import append_samples, write_boot_files

from cloud_manager.task_builder import task_id
from edge_agent.daemon import Agent

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

INFERENCE_TASK = task_id(NS, JOB, 0, "inference")

#: The stand-in inference worker: swaps at once, reports stats five times a second with the
#: serving version's FPS and, on a canary's swap, a shadow comparison whose agreement
#: ``behaviour.json`` sets per version ("collapse": 0.1, else 0.95); a "crash" version kills
#: the worker, at the swap and at every start with it.
INFERENCE_PY = """
import json, os, signal, sys, time
from pathlib import Path
from workers import sdk

behaviour = json.loads(Path("behaviour.json").read_text())
state = {"version": os.environ.get("EDGELOOP_MODEL_VERSION"), "shadow": 0, "compared": 0}
if behaviour.get(state["version"]) == "crash":
    sys.exit(1)
session = sdk.session("inference")
session.model_version = state["version"]

def on_swap(message):
    if behaviour.get(message.version) == "crash":
        os._exit(1)
    previous = session.model_version
    state.update(version=message.version, shadow=message.shadow_every, compared=0)
    session.model_version = message.version
    session.report_swapped(True, message.version, previous)

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sdk.on_swap(on_swap)
frames = 0
while True:
    time.sleep(0.2)
    frames += 2
    extra = {"version_fps": 10.0}
    if state["shadow"]:
        state["compared"] += 1
        agreement = 0.1 if behaviour.get(state["version"]) == "collapse" else 0.95
        extra |= {"shadow_active": True, "shadow_compared": state["compared"],
                  "shadow_agreement": agreement}
    session.report_stats(frames, 10.0, 0, **extra)
"""


def fleet_manifests(tmp_path: Path) -> list[str]:
    code = tmp_path / "code"
    write_boot_files(code)
    (code / "inference.py").write_text(textwrap.dedent(INFERENCE_PY))
    (code / "behaviour.json").write_text(json.dumps({"2": "collapse", "3": "crash"}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.txt").write_text("")
    manifests = seed_manifests(tmp_path, 5, script_dir=code)
    job = json.loads(manifests[-1])
    deploy = job["spec"]["deploySpec"]
    del deploy["nodeName"]
    deploy["nodeNames"] = ["edge1", "edge2"]
    deploy["rollout"] = {"canary": 1, "bakeSeconds": 1, "waveSize": 1,
                         "healthTimeoutSeconds": 60}
    manifests[-1] = json.dumps(job)
    return manifests


def version_dir(tmp_path: Path, node: str, version: int) -> Path:
    return tmp_path / node / "models" / NS / JOB / f"v{version}"


async def test_a_canary_of_one_node_lets_a_good_version_through_and_stops_bad_ones(
        broker, tmp_path):
    manifests = fleet_manifests(tmp_path)
    data = tmp_path / "data"

    def agent(node: str, **extra) -> Agent:
        return Agent(agent_config(broker.url, tmp_path / node, node=node, check_models=False,
                                  restart_initial_s=0.2, **extra))

    async with cloud(broker.url, tmp_path / "cloud", read_node_paths=False) as daemon, \
            agent("cloud0", datasets={DATASET: str(data / "data.txt")}), \
            agent("edge1") as edge1, agent("edge2") as edge2:
        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in manifests:
            response = await api(broker.url, "apply", body=text)
            assert response.ok, response
        for node in (edge1, edge2):
            await wait_for(lambda n=node: INFERENCE_TASK in n.channel.connected_tasks(),
                           f"{node.node}'s inference worker")

        def rollout_phase() -> str | None:
            rollout = job_state(daemon).rollout
            return rollout.phase if rollout is not None else None

        # version 1: the canary edge1 compares it (agreement 0.95), then edge2 gets it
        append_samples(data, 0, 10)
        await wait_for(lambda: rollout_phase() == "Completed", "version 1 rolled out")
        await wait_for(lambda: edge1.serving == {INFERENCE_TASK: 1}
                       and edge2.serving == {INFERENCE_TASK: 1}, "both nodes serve version 1")
        conditions = [c.reason for c in job_state(daemon).conditions]
        assert any(r.startswith("canary passed: node edge1") and "agreement 0.95" in r
                   for r in conditions), conditions
        status = await api(broker.url, "rollout", namespace=NS, name=JOB,
                           args={"command": "status"})
        assert status.ok and status.data["rollout"]["phase"] == "Completed"

        # version 2: its detections collapse on the canary; it goes back to version 1
        append_samples(data, 10, 10)
        await wait_for(lambda: 2 in job_state(daemon).failed_versions, "version 2 fails")
        reason = job_state(daemon).failed_versions[2]
        assert reason.startswith("canary node edge1: agreement with the previous version 0.10 "
                                 "< minAgreement 0.6"), reason
        await wait_for(lambda: edge1.serving == {INFERENCE_TASK: 1}, "edge1 back on version 1")
        assert job_state(daemon).deployed_version == 1

        # version 3: the worker dies loading it; the canary goes back to version 1 by itself
        append_samples(data, 20, 10)
        await wait_for(lambda: 3 in job_state(daemon).failed_versions, "version 3 fails")
        assert "its inference worker crashed" in job_state(daemon).failed_versions[3]
        await wait_for(lambda: edge1.serving == {INFERENCE_TASK: 1},
                       "edge1 serves version 1 again")

        # the rest of the fleet never received either
        assert edge2.serving == {INFERENCE_TASK: 1}
        assert version_dir(tmp_path, "edge1", 2).exists()
        assert not version_dir(tmp_path, "edge2", 2).exists()
        assert not version_dir(tmp_path, "edge2", 3).exists()
        described = await api(broker.url, "describe", resource="il", namespace=NS, name=JOB)
        rows = {r["version"]: r["rollout"] for r in described.data["versions"]}
        assert rows[1] == "" and rows[2].startswith("canary node edge1: agreement")
        assert described.data["rollout"]["phase"] == "Failed"
        refused = await api(broker.url, "rollout", namespace=NS, name=JOB,
                            args={"command": "pause"})
        assert refused.code == 409 and "has no rollout in progress (the last one: Failed)" in \
            refused.message, refused
