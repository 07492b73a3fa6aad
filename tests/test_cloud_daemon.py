"""The cloud manager over a real broker, driven by a scripted node: the seed's manifests run
Train -> Eval -> Deploy for three rounds; the API answers; a restarted manager resumes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import running_cloud
import yaml
from running_cloud import api, cloud
from scripted_node import ScriptedNode, succeed

from cloud_manager import state_machine as sm
from cloud_manager.daemon import TEXT_REPLY_TOPIC, CloudDaemon
from edgeloop.mqtt import MqttClient, MqttSettings
from protocol import topics
from protocol.messages import ApiResponse, JobStatus

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"
NS, JOB, NODE = "neptune-test", "helmet-detection-demo", "cloud0"
DATASET = f"{NS}/incremental-dataset"


def seed_manifests(
    tmp: Path,
    threshold: int = 100,
    *,
    script_dir: Path | None = None,
    initial_model: Path | None = None,
    parameters: dict[str, dict[str, str]] | None = None,
    deploy_gate: float | None = None,
) -> list[str]:
    """The seed's four manifests with every path moved under ``tmp``, no timer window, a lower
    threshold. Runs with workers add their ``script_dir``, the ``initial_model`` file, worker
    ``parameters`` per stage (``trainSpec``, ``evalSpec``, ``deploySpec``) and may replace the
    deploy gate by ``precision_delta >= deploy_gate``."""
    texts = []
    for name in ("dataset.yaml", "initial-model.yaml", "deploy-model.yaml", "job.yaml"):
        data = yaml.safe_load((EXAMPLES / name).read_text())
        spec = data["spec"]
        if data["kind"] == "Dataset":
            spec["url"] = str(tmp / "data" / "data.txt")
        elif name == "deploy-model.yaml":
            spec["url"] = str(tmp / "deploy" / "model.tflite")
        elif name == "initial-model.yaml":
            spec["url"] = str(initial_model or tmp / spec["url"].lstrip("/"))
        else:
            spec["outputDir"] = str(tmp / "output")
            trigger = spec["trainSpec"]["trigger"]
            trigger.pop("timer")
            trigger["condition"]["threshold"] = threshold
            if deploy_gate is not None:
                spec["deploySpec"]["trigger"]["condition"].update(
                    operator=">=", threshold=deploy_gate
                )
            for stage in ("trainSpec", "evalSpec", "deploySpec"):
                worker = spec[stage]["workerSpec"]
                if script_dir is not None:
                    worker["scriptDir"] = str(script_dir)
                set_parameters(worker, (parameters or {}).get(stage, {}))
            set_parameters(spec["deploySpec"]["workerSpec"], {"HE_SAVED_URL": str(tmp / "he")})
        texts.append(json.dumps(data))
    return texts


def set_parameters(worker_spec: dict, values: dict[str, str]) -> None:
    """Set ``values`` in a workerSpec's ``parameters`` list, replacing a key already there."""
    parameters = worker_spec.setdefault("parameters", [])
    for key, value in values.items():
        for parameter in parameters:
            if parameter["key"] == key:
                parameter["value"] = value
                break
        else:
            parameters.append({"key": key, "value": value})


async def wait_for(predicate: Callable[[], object], what: str = "", timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; a timeout fails the test naming ``what`` it waited for."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what or predicate}") from None


async def stop_cloud_in_stage(node: ScriptedNode, stage: str, stop: Callable[[], None]) -> None:
    """Take the seed job's first round to ``stage`` (``train`` or ``eval``: that task running;
    ``deploy``: the version's files being collected) and ``stop`` the cloud there. The node then
    finishes its task while nobody serves (for ``deploy``: answers the pulls again)."""
    await node.report_samples(DATASET, "x", 150)
    await wait_for(lambda: len(node.held) == 1, timeout=30)
    if stage in ("eval", "deploy"):
        await node.play(node.held[0])
        await wait_for(lambda: len(node.held) == 2, timeout=30)
    if stage == "deploy":  # stopped while collecting the files: the node does not push yet
        node.answer_pulls = False
        await node.play(node.held[-1])
        await wait_for(lambda: node.pulls > 0, timeout=30)
        stop()
        node.answer_pulls = True
    else:
        stop()
        await node.play(node.held[-1])


def job_state(daemon: CloudDaemon) -> sm.JobState:
    return running_cloud.job_state(daemon, NS, JOB)


async def setup_job(url: str, tmp: Path, threshold: int = 100) -> None:
    assert (await api(url, "create_namespace", name=NS)).code == 201
    for text in seed_manifests(tmp, threshold):
        response = await api(url, "apply", body=text)
        assert response.ok, response


async def test_three_rounds_over_the_broker(broker, tmp_path):
    async with cloud(broker.url, tmp_path / "state") as daemon, \
            ScriptedNode(broker.url, NODE, succeed(lambda r: 0.6 + 0.1 * r)) as node:
        await setup_job(broker.url, tmp_path)
        await wait_for(lambda: NODE in daemon.manager.online_nodes())
        url = str(tmp_path / "data" / "data.txt")

        for round_no, total in ((1, 150), (2, 300), (3, 450)):
            await node.report_samples(DATASET, url, total)
            await wait_for(lambda r=round_no: job_state(daemon).round == r + 1, what=f"round {round_no}")
            assert job_state(daemon).deployed_version == round_no
        state = job_state(daemon)
        assert (state.stage, state.state) == ("Train", "Waiting")
        roles = [(t.role, t.round) for t in node.tasks]
        assert roles == [("train", 1), ("eval", 1), ("train", 2), ("eval", 2), ("train", 3), ("eval", 3)]
        # round 2 trained on the samples added since round 1 only, from the deployed model
        train2 = node.tasks[2]
        split = json.loads(train2.env["EDGELOOP_SPLIT"])
        assert (split["start"], split["end"]) == (150, 300)
        assert train2.env["BASE_MODEL_URL"].endswith("/output/1/model.keras")
        # the deploy node's desired state serves version 3
        await wait_for(lambda: node.desired and node.desired[-1].models
                       and node.desired[-1].models[0].version == 3)
        await wait_for(lambda: job_state(daemon).serving_version == 3)
        inference = node.desired[-1].tasks[0]
        assert inference.role == "inference" and inference.env["HEM_NAME"] == "IBT"

        # the API shows it
        got = await api(broker.url, "get", resource="il", namespace=NS)
        (row,) = got.data["items"]
        assert row["name"] == JOB and row["round"] == 4 and row["deployed_version"] == 3
        described = await api(broker.url, "describe", resource="jobs", namespace=NS, name=JOB)
        stages = [(c["stage"], c["state"], c["round"]) for c in described.data["status"]["conditions"]]
        assert ("Deploy", "Completed", 3) in stages
        assert [v["version"] for v in described.data["versions"]] == [1, 2, 3]
        nodes = await api(broker.url, "get", resource="nodes")
        assert [n["state"] for n in nodes.data["items"]] == ["online"]

        # rollback: the deploy node is pointed back at version 2
        back = await api(broker.url, "rollback", namespace=NS, name=JOB)
        assert back.ok and back.data == {"deployed_version": 2}
        await wait_for(lambda: node.desired[-1].models[0].version == 2)
        wrong = await api(broker.url, "rollback", namespace=NS, name=JOB, args={"version": 9})
        assert wrong.code == 409 and "no model version 9" in wrong.message


async def test_retained_job_status_is_published(broker, tmp_path):
    seen: list[JobStatus] = []
    async with cloud(broker.url, tmp_path / "state"):
        await setup_job(broker.url, tmp_path)
        async with MqttClient(MqttSettings(url=broker.url, client_id="dash", session_expiry=0)) as dash:
            async def on_status(delivery):
                seen.append(delivery.message)

            dash.subscribe(topics.job_status(NS, JOB), on_status)
            await dash.wait_connected(10)
            await wait_for(lambda: bool(seen))
    assert seen[-1].stage == "Train" and seen[-1].state == "Waiting"
    assert "waiting for the train trigger" in seen[-1].conditions[-1].reason


async def test_api_errors_are_clear(broker, tmp_path):
    async with cloud(broker.url, tmp_path / "state"):
        texts = seed_manifests(tmp_path)
        missing_ns = await api(broker.url, "apply", body=texts[0])
        assert not missing_ns.ok and "edgeloop create namespace neptune-test" in missing_ns.errors[0]
        assert (await api(broker.url, "create_namespace", name=NS)).ok
        missing_ref = await api(broker.url, "apply", body=texts[3])
        assert not missing_ref.ok and any("Dataset neptune-test/incremental-dataset" in e
                                          for e in missing_ref.errors)
        bad = await api(broker.url, "apply", body=texts[0].replace('"txt"', '"csv"'))
        assert not bad.ok and any("spec.format" in e for e in bad.errors)
        for text in texts:
            assert (await api(broker.url, "apply", body=text)).ok
        again = await api(broker.url, "apply", body=texts[3])
        assert again.message == "unchanged"
        in_use = await api(broker.url, "delete", resource="datasets", namespace=NS,
                           name="incremental-dataset")
        assert in_use.code == 409 and JOB in in_use.message
        unknown = await api(broker.url, "get", resource="pods")
        assert unknown.code == 400 and "unknown resource type" in unknown.message
        gone = await api(broker.url, "describe", resource="il", namespace=NS, name="nope")
        assert gone.code == 404
        assert (await api(broker.url, "delete", resource="il", namespace=NS, name=JOB)).ok
        assert (await api(broker.url, "get", resource="il", namespace=NS)).data["items"] == []


async def test_plain_text_apply_answers_on_the_text_reply_topic(broker, tmp_path, mqtt_probe):
    probe = mqtt_probe(broker).connect()
    probe.subscribe(TEXT_REPLY_TOPIC)
    async with cloud(broker.url, tmp_path / "state"):
        text = (EXAMPLES / "initial-model.yaml").read_text().replace("neptune-test", "default")
        await asyncio.to_thread(probe.publish, topics.api_request("apply"), text.encode())
        message = await asyncio.to_thread(probe.expect, TEXT_REPLY_TOPIC)
    from protocol.codec import decode

    response = decode(TEXT_REPLY_TOPIC, message.payload)
    assert isinstance(response, ApiResponse) and response.ok and response.message == "created"


async def test_pause_holds_the_round_and_resume_starts_it(broker, tmp_path):
    async with cloud(broker.url, tmp_path / "state") as daemon, ScriptedNode(broker.url, NODE) as node:
        await setup_job(broker.url, tmp_path)
        assert (await api(broker.url, "pause", namespace=NS, name=JOB)).ok
        await wait_for(lambda: NODE in daemon.manager.online_nodes())
        await node.report_samples(DATASET, "x", 500)
        await wait_for(lambda: job_state(daemon).samples == 500)
        await asyncio.sleep(0.3)
        assert node.tasks == [] and job_state(daemon).paused
        assert (await api(broker.url, "resume", namespace=NS, name=JOB)).ok
        await wait_for(lambda: job_state(daemon).deployed_version == 1)


async def test_restarted_manager_resumes_and_nothing_runs_twice(broker, tmp_path, store_at):
    state_dir = tmp_path / "state"
    node = ScriptedNode(broker.url, NODE, answer=False)  # takes tasks, answers later
    async with node:
        async with cloud(broker.url, state_dir, store_url=store_at.url) as daemon:
            await setup_job(broker.url, tmp_path)
            await wait_for(lambda: NODE in daemon.manager.online_nodes())
            await node.report_samples(DATASET, "x", 200)
            await wait_for(lambda: len(node.tasks) == 1)
            assert job_state(daemon).stage == "Train"
        # manager down; the node finishes training meanwhile (its message waits in the
        # manager's persistent session)
        node.answer = True
        train = node.tasks[0]
        await node.play(train)
        async with cloud(broker.url, state_dir, store_url=store_at.url) as daemon:
            await wait_for(lambda: job_state(daemon).deployed_version == 1)
            state = job_state(daemon)
            assert (state.stage, state.state, state.round) == ("Train", "Waiting", 2)
    started = [k for k in node.started]
    assert len(started) == len(set(started))
    trains = {(t.task_id, t.attempt) for t in node.tasks if t.role == "train"}
    assert len(trains) == 1  # the resync re-sent the same task key; no second attempt


async def test_a_deeply_nested_manifest_is_a_400_naming_the_nesting(broker, tmp_path):
    deep = "{a: " * 5000 + "}" * 5000
    async with cloud(broker.url, tmp_path / "state"):
        response = await api(broker.url, "apply", body=deep)
    assert response.code == 400, response
    assert any("nested more than 64 levels deep" in e for e in response.errors), response
