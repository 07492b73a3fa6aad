"""The store, on SQLite and on PostgreSQL alike: its typed rows read a state written before they
were typed, unchanged, and a state directory of the first release opens, upgraded.

The rows below are inserted exactly as the earlier build wrote them (its JSON shapes, through
plain SQL), then read back through :class:`Store` and driven by a :class:`Manager`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import StoreAt

from test_cloud_state_machine import OLD_STATE

from cloud_manager import state_machine as sm
from cloud_manager.manager import Manager
from cloud_manager.database import StoreUnavailable
from cloud_manager.migrations import SCHEMA_VERSION
from cloud_manager.store import DB_NAME, Store, StoreError
from cloud_manager.versions import Artifact, ModelVersion
from protocol import topics
from protocol.manifest_yaml import load_documents
from protocol.messages import DesiredState, JobStatus, NodeStatus, Task, WorkerSpec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"
NS, JOB, NODE = "neptune-test", "helmet-detection-demo", "cloud0"
REF = f"{NS}/{JOB}"
NOW = 1_000_100.0
TASK_ID = OLD_STATE["task"]["task_id"]


#: The schema of the first release, as its store.py created it (version 1 in ``meta``, no
#: migrations): a state directory it left must open, upgraded, in this build.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    manifest TEXT NOT NULL, generation INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS jobs (
    namespace TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT NOT NULL, attempt INTEGER NOT NULL, job TEXT NOT NULL, role TEXT NOT NULL,
    round INTEGER NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL, message TEXT NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (task_id, attempt));
CREATE TABLE IF NOT EXISTS processed (key TEXT PRIMARY KEY, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS model_versions (
    job TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (job, version));
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, boot_id TEXT NOT NULL, status TEXT NOT NULL,
    updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dataset_samples (
    namespace TEXT NOT NULL, name TEXT NOT NULL, samples INTEGER NOT NULL, error TEXT,
    node TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS desired (
    node TEXT PRIMARY KEY, generation INTEGER NOT NULL, content TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
"""


def write_earlier_rows(db: Any) -> None:
    """Every table filled the way the earlier build filled it, through plain SQL (``?``
    placeholders, which both sqlite3 and the store's PostgreSQL connection read)."""
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


def first_release_state_dir(state: Path) -> Path:
    """A state directory as the first release left it: its schema, its rows."""
    state.mkdir(parents=True)
    db = sqlite3.connect(state / DB_NAME)
    db.executescript(FIRST_RELEASE_SCHEMA)
    write_earlier_rows(db)
    db.commit()
    db.close()
    return state


def earlier_store(store_at: StoreAt) -> Store:
    """A store holding rows written the earlier build's way: on SQLite, a first-release file that
    opening upgrades; on PostgreSQL (which had no earlier release), this schema's tables."""
    if store_at.kind == "sqlite":
        first_release_state_dir(store_at.state_dir)
    else:
        fresh = store_at.open()
        with fresh.transaction():
            write_earlier_rows(fresh.db)
    return store_at.open()


def test_rows_written_by_the_earlier_build_read_as_typed_rows(store_at):
    store = earlier_store(store_at)
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


def test_a_manager_on_an_earlier_state_directory_resyncs_what_it_holds(store_at):
    store = earlier_store(store_at)
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


def test_records_written_now_keep_the_earlier_shape(store_at):
    store = store_at.open()
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


def test_a_first_release_state_directory_is_upgraded_on_opening_and_keeps_its_rows(tmp_path):
    state = first_release_state_dir(tmp_path / "state")
    store = Store(state)
    try:
        assert store.schema_version == SCHEMA_VERSION > 1
        indexes = {r["name"] for r in store.db.execute(
            "SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"processed_by_time", "tasks_by_job"} <= indexes
        assert store.db.execute("SELECT count(*) AS n FROM leader_lease").fetchone()["n"] == 0
        assert [r.name for r in store.resources("Dataset", NS)] == ["incremental-dataset"]
        assert store.load_job(NS, JOB) is not None and store.desired(NODE).generation == 3
    finally:
        store.close()
    again = Store(state)  # opening an up-to-date store migrates nothing
    try:
        assert again.schema_version == SCHEMA_VERSION
        assert [t.task_id for t in again.tasks(REF)] == [TASK_ID]
    finally:
        again.close()


def test_a_store_from_a_newer_build_is_refused_not_misread(store_at):
    store = store_at.open()
    with store.transaction():
        store.db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    store.close()
    with pytest.raises(StoreError, match=f"schema {SCHEMA_VERSION + 1}, newer than this build"):
        store_at.open()


def test_the_same_sql_runs_on_both_engines(store_at):
    """The statements whose SQL differs most between the engines: upserts, JSON fields, the
    counts returned by inserts that may do nothing."""
    store = store_at.open()
    with store.transaction():
        assert store.create_namespace("site-a", NOW) is True
        assert store.create_namespace("site-a", NOW) is False
        store.mark_processed_many(["k1", "k2"], NOW)
        store.mark_processed("k1", NOW)
        for seq in (1, 2):
            store.put_node(NodeStatus(node=NODE, state="online", boot_id="b1", seq=seq,
                                      labels={"zone": "a"}, ts=NOW), NOW + seq)
        store.put_dataset_samples(NS, "d", 5, None, NODE, NOW)
        store.put_dataset_samples(NS, "d", 7, "late", NODE, NOW + 1)
        assert store.put_desired(NODE, "{}") == 1 and store.put_desired(NODE, "{}") == 1
        assert store.put_desired(NODE, '{"x": 1}') == 2
    assert store.namespaces() == ["default", "site-a"]
    assert store.processed_among(["k1", "k2", "k3"]) == {"k1", "k2"}
    assert store.node_positions([NODE, "other"]) == {NODE: ("b1", 2, "online")}
    assert store.node_labels() == {NODE: {"zone": "a"}} and store.labels_of("other") is None
    samples = store.dataset_samples(NS, "d")
    assert samples is not None and (samples.samples, samples.error) == (7, "late")
    with store.transaction():
        assert store.forget_processed_before(NOW + 1) == 2
    assert store.processed_among(["k1"]) == set()


def test_a_lost_postgresql_connection_fails_one_unit_of_work_and_the_next_reconnects(postgres):
    store = Store(url=postgres.create_database())
    try:
        pid = store.db.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            # the second argument waits until the server process is gone
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        with pytest.raises(StoreUnavailable), store.transaction():
            store.create_namespace("lost", NOW)
        with store.transaction():
            store.create_namespace("kept", NOW)
        assert store.namespaces() == ["default", "kept"]
    finally:
        store.close()
