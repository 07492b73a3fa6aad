"""The cloud manager's durable state: one SQLite file under ``--state DIR``.

The store is the truth (the broker is not a database): namespaces, applied manifests with their
generation, each job's state machine state and condition history, the tasks sent, the keys of
messages already handled (so a redelivered message changes nothing), model versions, what nodes
last said, and the generation of each node's desired state.

Incoming events are handled inside :meth:`Store.transaction`: one event, or a batch of sample
reports that arrived together (group commit: one commit, one fsync, for the whole batch). An
event's effects and its message key commit together or not at all, so a crash at any point either
redoes the event after restart (the broker redelivers what was not acknowledged, and nothing is
acknowledged before its commit) or finds it already done. Inside a batch, :meth:`Store.savepoint`
lets one failing part roll back alone. WAL mode keeps readers (the API) from blocking the writer;
``synchronous=FULL`` makes every commit durable before the message is acknowledged, which costs
one fsync per batch, not per message.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloud_manager.state_machine import JobState

DB_NAME = "cloud.sqlite3"
SCHEMA_VERSION = 1
DEFAULT_NAMESPACE = "default"
#: well under SQLite's limit on bound parameters in one statement
_KEYS_PER_QUERY = 500

_SCHEMA = """
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
"""


class StoreError(RuntimeError):
    """The state directory cannot be used (unwritable, or written by a newer version)."""


class Store:
    def __init__(self, state_dir: Path) -> None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.path = state_dir / DB_NAME
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"state directory {state_dir}: {exc}") from None
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row["value"]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema {row['value']}, newer than this build's")
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the current transaction that an exception rolls back alone (the exception
        still propagates); the rest of the transaction goes on and commits."""
        if not self._depth:
            raise RuntimeError("a savepoint needs an open transaction")
        self.db.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO part")
            self.db.execute("RELEASE part")
            raise
        else:
            self.db.execute("RELEASE part")

    # -- dedupe --

    def processed(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM processed WHERE key=?", (key,)).fetchone() is not None

    def processed_among(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` were handled already: one query per few hundred keys."""
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            part = keys[start:start + _KEYS_PER_QUERY]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT key FROM processed WHERE key IN ({marks})", part)
            found.update(r["key"] for r in rows)
        return found

    def mark_processed(self, key: str, now: float | None = None) -> None:
        self.db.execute("INSERT OR IGNORE INTO processed VALUES (?, ?)", (key, now or time.time()))

    def mark_processed_many(self, keys: Iterable[str], now: float) -> None:
        self.db.executemany("INSERT OR IGNORE INTO processed VALUES (?, ?)",
                            ((key, now) for key in keys))

    def forget_processed_before(self, cutoff: float) -> int:
        return self.db.execute("DELETE FROM processed WHERE time < ?", (cutoff,)).rowcount

    # -- namespaces --

    def namespace_exists(self, name: str) -> bool:
        if name == DEFAULT_NAMESPACE:
            return True
        return self.db.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone() is not None

    def create_namespace(self, name: str, now: float) -> bool:
        """True when created, False when it already existed."""
        return self.db.execute(
            "INSERT OR IGNORE INTO namespaces VALUES (?, ?)", (name, now)
        ).rowcount == 1

    def namespaces(self) -> list[str]:
        rows = self.db.execute("SELECT name FROM namespaces ORDER BY name").fetchall()
        return sorted({DEFAULT_NAMESPACE, *(r["name"] for r in rows)})

    # -- resources --

    def get_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT * FROM resources WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name)
        ).fetchone()
        return _resource(row) if row else None

    def put_resource(self, kind: str, namespace: str, name: str, manifest: dict[str, Any],
                     now: float) -> str:
        """Store a manifest; returns ``created``, ``configured`` or ``unchanged``."""
        text = json.dumps(manifest, sort_keys=True)
        row = self.db.execute(
            "SELECT manifest, generation FROM resources WHERE kind=? AND namespace=? AND name=?",
            (kind, namespace, name),
        ).fetchone()
        if row is None:
            self.db.execute("INSERT INTO resources VALUES (?, ?, ?, ?, 1, ?, ?)",
                            (kind, namespace, name, text, now, now))
            return "created"
        if row["manifest"] == text:
            return "unchanged"
        self.db.execute(
            "UPDATE resources SET manifest=?, generation=?, updated=? WHERE kind=? AND namespace=? "
            "AND name=?", (text, row["generation"] + 1, now, kind, namespace, name))
        return "configured"

    def delete_resource(self, kind: str, namespace: str, name: str) -> bool:
        return self.db.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?",
                               (kind, namespace, name)).rowcount == 1

    def resources(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace is None:
            rows = self.db.execute("SELECT * FROM resources WHERE kind=? ORDER BY namespace, name",
                                   (kind,)).fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM resources WHERE kind=? AND namespace=? ORDER BY name", (kind, namespace)
            ).fetchall()
        return [_resource(r) for r in rows]

    # -- jobs --

    def load_job(self, namespace: str, name: str) -> JobState | None:
        row = self.db.execute("SELECT state FROM jobs WHERE namespace=? AND name=?",
                              (namespace, name)).fetchone()
        return JobState.from_dict(json.loads(row["state"])) if row else None

    def save_job(self, state: JobState, now: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
                        (state.namespace, state.name, json.dumps(state.to_dict()), now))

    def delete_job(self, namespace: str, name: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE namespace=? AND name=?", (namespace, name))

    def jobs(self) -> list[JobState]:
        rows = self.db.execute("SELECT state FROM jobs ORDER BY namespace, name").fetchall()
        return [JobState.from_dict(json.loads(r["state"])) for r in rows]

    # -- tasks --

    def record_task(self, task: dict[str, Any], node: str, state: str, now: float) -> None:
        """Remember a task message as sent (``task`` is the Task's JSON form)."""
        self.db.execute(
            "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task["task_id"], task["attempt"], task["job"], task["role"], task["round"], node,
             state, json.dumps(task), now))

    def set_task_state(self, task_id: str, attempt: int, state: str, now: float) -> None:
        self.db.execute("UPDATE tasks SET state=?, updated=? WHERE task_id=? AND attempt=?",
                        (state, now, task_id, attempt))

    def tasks(self, job: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM tasks" + (" WHERE job=?" if job else "") + " ORDER BY updated"
        rows = self.db.execute(query, (job,) if job else ()).fetchall()
        return [{k: r[k] for k in r.keys() if k != "message"} | {"message": json.loads(r["message"])}
                for r in rows]

    # -- model versions --

    def add_model_version(self, job: str, record: dict[str, Any], now: float) -> None:
        self.db.execute("INSERT OR IGNORE INTO model_versions VALUES (?, ?, ?, ?)",
                        (job, record["version"], json.dumps(record), now))

    def update_model_version(self, job: str, version: int, fields: dict[str, Any]) -> None:
        row = self.db.execute("SELECT record FROM model_versions WHERE job=? AND version=?",
                              (job, version)).fetchone()
        if row is not None:
            record = json.loads(row["record"]) | fields
            self.db.execute("UPDATE model_versions SET record=? WHERE job=? AND version=?",
                            (json.dumps(record), job, version))

    def model_versions(self, job: str | None = None) -> list[dict[str, Any]]:
        if job:
            rows = self.db.execute("SELECT * FROM model_versions WHERE job=? ORDER BY version",
                                   (job,)).fetchall()
        else:
            rows = self.db.execute("SELECT * FROM model_versions ORDER BY job, version").fetchall()
        return [{"job": r["job"]} | json.loads(r["record"]) for r in rows]

    # -- nodes --

    def put_node(self, name: str, state: str, boot_id: str, status: dict[str, Any], now: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?)",
                        (name, state, boot_id, json.dumps(status), now))

    def nodes(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM nodes ORDER BY name").fetchall()
        return [{"name": r["name"], "state": r["state"], "boot_id": r["boot_id"],
                 "updated": r["updated"], "status": json.loads(r["status"])} for r in rows]

    # -- dataset sample counts, as last reported --

    def put_dataset_samples(self, namespace: str, name: str, samples: int, error: str | None,
                            node: str, now: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO dataset_samples VALUES (?, ?, ?, ?, ?, ?)",
                        (namespace, name, samples, error, node, now))

    def dataset_samples(self, namespace: str, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM dataset_samples WHERE namespace=? AND name=?",
                              (namespace, name)).fetchone()
        return dict(row) if row else None

    # -- desired state --

    def desired(self, node: str) -> tuple[int, str] | None:
        row = self.db.execute("SELECT generation, content FROM desired WHERE node=?", (node,)).fetchone()
        return (row["generation"], row["content"]) if row else None

    def put_desired(self, node: str, content: str) -> int:
        """Store a node's desired content; the generation grows only when it changed."""
        current = self.desired(node)
        if current is not None and current[1] == content:
            return current[0]
        generation = (current[0] if current else 0) + 1
        self.db.execute("INSERT OR REPLACE INTO desired VALUES (?, ?, ?)", (node, generation, content))
        return generation

    def desired_nodes(self) -> list[str]:
        return [r["node"] for r in self.db.execute("SELECT node FROM desired ORDER BY node")]


def _resource(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "kind": row["kind"],
        "namespace": row["namespace"],
        "name": row["name"],
        "manifest": json.loads(row["manifest"]),
        "generation": row["generation"],
        "created": row["created"],
        "updated": row["updated"],
    }
