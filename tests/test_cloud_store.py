"""The store's typed rows read a state directory written before they were typed, unchanged.

The rows below are inserted exactly as the earlier build wrote them (its JSON shapes, through
plain SQL), then read back through :class:`Store` and driven by a :class:`Manager`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from test_cloud_state_machine import OLD_STATE

from cloud_manager import state_machine as sm
from cloud_manager.manager import Manager
from cloud_manager.store import DB_NAME, Store
from cloud_manager.versions import Artifact, ModelVersion
from protocol import topics
from protocol.manifest_yaml import load_documents
from protocol.messages import DesiredState, JobStatus, NodeStatus, Task, WorkerSpec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"
NS, JOB, NODE = "neptune-test", "helmet-detection-demo", "cloud0"
REF = f"{NS}/{JOB}"
NOW = 1_000_100.0
TASK_ID = OLD_STATE["task"]["task_id"]


def old_state_dir(state: Path) -> Path:
    """A state directory with every table filled the way the earlier build filled it."""
    Store(state).close()  # the schema, which has not changed
    db = sqlite3.connect(state / DB_NAME)
    text = "\n---\n".join((EXAMPLES / f).read_text() for f in
                          ("dataset.yaml", "initial-model.yaml", "deploy-model.yaml", "job.yaml"))
    for m in load_documents(text):
        kind, ns, name = m.key
        body = m.model_dump(mode="json", by_alias=True, exclude_unset=True)
        db.execute("INSERT INTO resources VALUES (?, ?, ?, ?, 1, ?, ?)",
                   (kind, ns, name, json.dumps(body, sort_keys=True), NOW, NOW))
    db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?)", (NS, JOB, json.dumps(OLD_STATE), NOW))
    task = Task(task_id=TASK_ID, job=REF, role="eval", round=2, ts=NOW,
                worker=WorkerSpec(script_dir="/code", boot_file="eval.py"))
    db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (TASK_ID, 1, REF, "eval", 2, NODE, "Starting",
                json.dumps(task.model_dump(mode="json")), NOW))
    # a version whose collection ended (old update_model_version merged {"collected": True})
    record = OLD_STATE["versions"][0] | {"collected": True}
    db.execute("INSERT INTO model_versions VALUES (?, ?, ?, ?)", (REF, 1, json.dumps(record), NOW))
    status = NodeStatus(node=NODE, state="online", boot_id="b1", seq=4, agent_version="0.1",
                        serving={"t": 1}, ts=NOW)
    db.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?)",
               (NODE, "online", "b1", json.dumps(status.model_dump(mode="json")), NOW))
    db.execute("INSERT INTO dataset_samples VALUES (?, ?, ?, ?, ?, ?)",
               (NS, "incremental-dataset", 2, None, NODE, NOW))
    db.execute("INSERT INTO desired VALUES (?, ?, ?)",
               (NODE, 3, json.dumps({"tasks": [], "models": []}, sort_keys=True)))
    db.commit()
    db.close()
    return state


def test_rows_written_by_the_earlier_build_read_as_typed_rows(tmp_path):
    store = Store(old_state_dir(tmp_path / "state"))
    try:
        (resource,) = store.resources("Dataset", NS)
        assert (resource.name, resource.generation) == ("incremental-dataset", 1)
        assert resource.manifest["spec"]["nodeName"] == NODE
        (task,) = store.tasks(REF)
        assert (task.task_id, task.attempt, task.role, task.state) == (TASK_ID, 1, "eval", "Starting")
        message = store.task_message(TASK_ID, 1)
        assert message is not None and message.task_id == TASK_ID and message.round == 2
        (version,) = store.model_versions(REF)
        assert version.collected is True and version.collect_error is None
        assert version.artifacts[0] == Artifact("model.tflite", "ab" * 32, 10,
                                                "/output/1/model.tflite")
        assert [(v.job, v.model) for v in store.every_model_version()] == [(REF, version)]
        node = store.node(NODE)
        assert node is not None and node.status.seq == 4 and node.status.serving == {"t": 1}
        assert store.online_nodes() == frozenset({NODE})
        samples = store.dataset_samples(NS, "incremental-dataset")
        assert samples is not None and (samples.samples, samples.node) == (2, NODE)
        desired = store.desired(NODE)
        assert desired is not None and desired.generation == 3
        state = store.load_job(NS, JOB)
        assert state is not None and state.deployed() == ModelVersion.from_dict(
            OLD_STATE["versions"][0])
    finally:
        store.close()


def test_a_manager_on_an_earlier_state_directory_resyncs_what_it_holds(tmp_path):
    store = Store(old_state_dir(tmp_path / "state"))
    try:
        manager = Manager(store)
        inputs = manager.inputs(NS, JOB)
        assert inputs is not None and inputs.dataset_node == NODE
        out = manager.resync(NOW)
        by_topic = {o.topic: o.message for o in out}
        status = by_topic[topics.job_status(NS, JOB)]
        assert isinstance(status, JobStatus) and (status.stage, status.round) == ("Eval", 2)
        resent = by_topic[topics.task(NODE, TASK_ID)]
        assert isinstance(resent, Task) and resent.role == "eval"
        desired = by_topic[topics.desired(NODE)]
        assert isinstance(desired, DesiredState) and desired.generation == 3
    finally:
        store.close()


def test_records_written_now_keep_the_earlier_shape(tmp_path):
    store = Store(tmp_path / "state")
    try:
        version = ModelVersion.from_dict(OLD_STATE["versions"][0])
        with store.transaction():
            store.add_model_version(REF, version, NOW)
            store.set_collected(REF, 1, False, "no such file on this node")
        raw = store.db.execute("SELECT record FROM model_versions").fetchone()["record"]
        record = json.loads(raw)
        assert {k: record[k] for k in OLD_STATE["versions"][0]} == OLD_STATE["versions"][0]
        assert (record["collected"], record["collect_error"]) == (False, "no such file on this node")
        (again,) = store.model_versions(REF)
        assert again.collected is False and again.metrics == version.metrics
        state = sm.JobState.from_dict(OLD_STATE)
        with store.transaction():
            store.save_job(state, NOW)
        saved = json.loads(store.db.execute("SELECT state FROM jobs").fetchone()["state"])
        assert {k: saved[k] for k in OLD_STATE if k != "versions"} == {
            k: v for k, v in OLD_STATE.items() if k != "versions"}
    finally:
        store.close()
