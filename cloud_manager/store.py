"""The cloud manager's durable state: one SQLite file under ``--state DIR`` (the default), or a
PostgreSQL database (``--store postgresql://...``) that outlives the machine.

The store is the truth (the broker is not a database): namespaces, applied manifests with their
generation, each job's state machine state and condition history, the tasks sent, the keys of
messages already handled (so a redelivered message changes nothing), model versions, what nodes
last said, and the generation of each node's desired state.

Incoming events are handled inside :meth:`Store.transaction`: one event, or a batch of sample
reports that arrived together (group commit: one commit, one fsync, for the whole batch). An
event's effects and its message key commit together or not at all, so a crash at any point either
redoes the event after restart (the broker redelivers what was not acknowledged, and nothing is
acknowledged before its commit) or finds it already done. Inside a batch, :meth:`Store.savepoint`
lets one failing part roll back alone. SQLite runs in WAL mode, which keeps readers (the API) from
blocking the writer, with ``synchronous=FULL``, which makes every commit durable before the
message is acknowledged (one fsync per batch, not per message); PostgreSQL's commit is durable
by default. :meth:`Store.committing_later` lets the daemon run a batch's commit in a worker
thread, off its event loop.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cloud_manager.database import (
    POSTGRESQL,
    SQLITE,
    Connection,
    StoreUnavailable,
    is_postgresql_url,
    open_sqlite,
    redacted,
)
from cloud_manager.ingest_journal import CHANNEL as JOURNAL_CHANNEL
from cloud_manager.ingest_journal import JournalRow
from cloud_manager.leadership import Lease
from cloud_manager.migrations import SchemaTooNew, migrate
from cloud_manager.state_machine import JobState
from cloud_manager.versions import ModelVersion
from protocol.messages import NodeStatus, Task, TaskRole, TaskState

DB_NAME = "cloud.sqlite3"
DEFAULT_NAMESPACE = "default"
#: the lease row of the managers that share this store
LEASE = "cloud-manager"
#: well under SQLite's limit on bound parameters in one statement
_KEYS_PER_QUERY = 500


class NotLeader(RuntimeError):
    """A decision was taken under an epoch of the lease that is no longer the current one."""


class StoreError(RuntimeError):
    """The state directory cannot be used (unwritable, or written by a newer version)."""


#: What storing a manifest did.
PutOutcome = Literal["created", "configured", "unchanged"]


@dataclass(frozen=True)
class ResourceRow:
    """An applied manifest. ``manifest`` is the JSON document as applied (aliases, only the
    fields that were set): the store keeps what the user wrote, the manager parses it."""

    kind: str
    namespace: str
    name: str
    manifest: dict[str, Any]
    #: 1 when created, one more on every change
    generation: int
    created: float
    updated: float


@dataclass(frozen=True)
class TaskRow:
    """A task message sent to a node, one row per attempt (its message: :meth:`Store.task_message`)."""

    task_id: str
    attempt: int
    #: ``namespace/name`` of the job
    job: str
    role: TaskRole
    round: int
    node: str
    state: TaskState
    updated: float


@dataclass(frozen=True)
class JobVersion:
    """A registered model version with the job (``namespace/name``) it belongs to."""

    job: str
    model: ModelVersion


@dataclass(frozen=True)
class NodeRow:
    """What a node last said about itself."""

    name: str
    state: str
    boot_id: str
    updated: float
    status: NodeStatus


#: a dataset's count to store: namespace, name, samples, error, reporting node, time
SampleCount = tuple[str, str, int, str | None, str, float]


@dataclass(frozen=True)
class SampleCountRow:
    """A dataset's labelled sample count, as its node last reported it."""

    namespace: str
    name: str
    samples: int
    #: why the index could not be read (the count is then the last good one, or 0)
    error: str | None
    node: str
    updated: float


@dataclass(frozen=True)
class MemberRow:
    """One manager's ingest session on the broker (its MQTT client id) and who serves it."""

    client_id: str
    holder: str
    #: held by the leader for a manager that stopped renewing it (see
    #: :mod:`cloud_manager.ingest_members`): a manager that starts takes it first
    adopted: bool
    expires: float


@dataclass(frozen=True)
class DesiredRow:
    """A node's desired state as published: the JSON ``content`` and its ``generation``."""

    generation: int
    content: str


class Store:
    """The manager's state in SQLite (``Store(state_dir)``: one file in the directory) or in
    PostgreSQL (``Store(url="postgresql://...")``). Both read and write through the same SQL
    (:mod:`cloud_manager.database`); the schema is brought up to date on opening
    (:mod:`cloud_manager.migrations`)."""

    def __init__(self, state_dir: Path | None = None, *, url: str | None = None) -> None:
        if (state_dir is None) == (url is None):
            raise ValueError("a store is a state directory or a database URL, one of the two")
        self.db: Connection
        if url is not None:
            if not is_postgresql_url(url):
                raise StoreError(f"{redacted(url)}: not a postgresql:// URL")
            self.dialect = POSTGRESQL
            self.location = redacted(url)
            self.path: Path | None = None
            self.db = _open_postgresql(url)
        else:
            assert state_dir is not None
            self.dialect = SQLITE
            self.path = state_dir / DB_NAME
            self.location = str(self.path)
            try:
                state_dir.mkdir(parents=True, exist_ok=True)
                self.db = open_sqlite(self.path)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"state directory {state_dir}: {exc}") from None
        try:
            migrate(self.db, self.dialect)
        except SchemaTooNew as exc:
            self.db.close()
            raise StoreError(f"{self.location} has {exc}") from None
        except (sqlite3.Error, StoreUnavailable) as exc:
            self.db.close()
            raise StoreError(f"{self.location}: {exc}") from None
        self._depth = 0
        #: node -> (stored status text, its parse), see :meth:`_node`
        self._statuses: dict[str, tuple[str, NodeStatus]] = {}
        #: when set, every transaction first checks that the leader lease is still at this
        #: epoch (:meth:`fence`): the writes of a manager that serves under a lease
        self.epoch: int | None = None
        #: transactions end without their commit, left to :meth:`commit_pending`
        self._defer = False
        #: held while :meth:`commit_pending` runs (in a worker thread): :meth:`close` waits
        self._committing = threading.Lock()
        #: a transaction that ended waits for :meth:`commit_pending`
        self._uncommitted = False

    @property
    def schema_version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return int(row["value"])

    def close(self) -> None:
        with self._committing:  # a commit running in a worker thread ends first
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
        if self._uncommitted:
            raise RuntimeError("the last transaction still waits for its commit")
        self.db.execute(self.dialect.begin)
        self._depth = 1
        try:
            if self.epoch is not None:
                self.fence(self.epoch)
            yield
        except BaseException:
            self._rollback()
            raise
        else:
            if self._defer:
                self._uncommitted = True
            else:
                self.db.execute("COMMIT")
        finally:
            self._depth = 0

    def _rollback(self) -> None:
        """End a failed transaction; a server already gone has ended it on its side."""
        try:
            self.db.execute("ROLLBACK")
        except StoreUnavailable:
            pass

    @contextmanager
    def committing_later(self) -> Iterator[None]:
        """A transaction that ends inside this block does not commit: :meth:`commit_pending`
        does, possibly in another thread, so that the commit's fsync (most of a batch's time
        in the store) does not hold up the caller's event loop. Until then the caller keeps
        every other use of the store away (the daemon's lock)."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    @property
    def commit_due(self) -> bool:
        """A transaction ended under :meth:`committing_later` and waits for its commit."""
        return self._uncommitted

    def commit_pending(self) -> None:
        """Commit the transaction :meth:`committing_later` left open, if any; when the commit
        fails it is rolled back and the error raised (nothing of it stays)."""
        if not self._uncommitted:
            return
        with self._committing:
            self._commit_now()

    def _commit_now(self) -> None:
        try:
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self._rollback()
            raise
        finally:
            self._uncommitted = False

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
            self.db.execute("ROLLBACK TO SAVEPOINT part")
            self.db.execute("RELEASE SAVEPOINT part")
            raise
        else:
            self.db.execute("RELEASE SAVEPOINT part")

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
        self.db.execute("INSERT INTO processed VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                        (key, now or time.time()))

    def mark_processed_many(self, keys: Iterable[str], now: float) -> None:
        self.db.executemany("INSERT INTO processed VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
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
            "INSERT INTO namespaces VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, now)
        ).rowcount == 1

    def namespaces(self) -> list[str]:
        rows = self.db.execute("SELECT name FROM namespaces ORDER BY name").fetchall()
        return sorted({DEFAULT_NAMESPACE, *(r["name"] for r in rows)})

    # -- resources --

    def get_resource(self, kind: str, namespace: str, name: str) -> ResourceRow | None:
        row = self.db.execute(
            "SELECT * FROM resources WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name)
        ).fetchone()
        return _resource(row) if row else None

    def resource_revision(self, kind: str, namespace: str, name: str) -> tuple[int, float] | None:
        """A stored manifest's (generation, updated), without reading the document: enough to
        tell whether a parse made earlier still holds."""
        row = self.db.execute(
            "SELECT generation, updated FROM resources WHERE kind=? AND namespace=? AND name=?",
            (kind, namespace, name)).fetchone()
        return (row["generation"], row["updated"]) if row else None

    def resource_revisions(self, kind: str, keys: Iterable[tuple[str, str]]
                           ) -> dict[tuple[str, str], tuple[int, float]]:
        """:meth:`resource_revision` of each stored ``(namespace, name)`` of ``keys``, in one
        query per namespace and few hundred names (a batch of sample reports names a Dataset
        per report)."""
        names: dict[str, list[str]] = {}
        for namespace, name in keys:
            names.setdefault(namespace, []).append(name)
        found: dict[tuple[str, str], tuple[int, float]] = {}
        for namespace, group in names.items():
            for start in range(0, len(group), _KEYS_PER_QUERY):
                part = group[start:start + _KEYS_PER_QUERY]
                marks = ",".join("?" * len(part))
                rows = self.db.execute(
                    "SELECT name, generation, updated FROM resources WHERE kind=? AND namespace=? "
                    f"AND name IN ({marks})", (kind, namespace, *part))
                found.update(((namespace, r["name"]), (r["generation"], r["updated"])) for r in rows)
        return found

    def put_resource(self, kind: str, namespace: str, name: str, manifest: dict[str, Any],
                     now: float) -> PutOutcome:
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

    def resources(self, kind: str, namespace: str | None = None) -> list[ResourceRow]:
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
        self.db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?) ON CONFLICT (namespace, name) "
                        "DO UPDATE SET state=excluded.state, updated=excluded.updated",
                        (state.namespace, state.name, json.dumps(state.to_dict()), now))

    def delete_job(self, namespace: str, name: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE namespace=? AND name=?", (namespace, name))

    def jobs(self) -> list[JobState]:
        rows = self.db.execute("SELECT state FROM jobs ORDER BY namespace, name").fetchall()
        return [JobState.from_dict(json.loads(r["state"])) for r in rows]

    # -- tasks --

    def record_task(self, task: Task, node: str, state: TaskState, now: float) -> None:
        """Remember a task message as sent."""
        self.db.execute(
            "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, attempt) "
            "DO UPDATE SET job=excluded.job, role=excluded.role, round=excluded.round, "
            "node=excluded.node, state=excluded.state, message=excluded.message, "
            "updated=excluded.updated",
            (task.task_id, task.attempt, task.job, task.role, task.round, node, state,
             json.dumps(task.model_dump(mode="json")), now))

    def set_task_state(self, task_id: str, attempt: int, state: TaskState, now: float) -> None:
        self.db.execute("UPDATE tasks SET state=?, updated=? WHERE task_id=? AND attempt=?",
                        (state, now, task_id, attempt))

    def tasks(self, job: str | None = None) -> list[TaskRow]:
        query = ("SELECT task_id, attempt, job, role, round, node, state, updated FROM tasks"
                 + (" WHERE job=?" if job else "") + " ORDER BY updated")
        rows = self.db.execute(query, (job,) if job else ()).fetchall()
        return [TaskRow(**r) for r in rows]

    def task_message(self, task_id: str, attempt: int) -> Task | None:
        """The message of one attempt of a task, as it was sent."""
        row = self.db.execute("SELECT message FROM tasks WHERE task_id=? AND attempt=?",
                              (task_id, attempt)).fetchone()
        return Task.model_validate_json(row["message"]) if row else None

    # -- model versions --

    def add_model_version(self, job: str, version: ModelVersion, now: float) -> None:
        self.db.execute("INSERT INTO model_versions VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (job, version) DO NOTHING",
                        (job, version.version, json.dumps(version.to_dict()), now))

    def set_collected(self, job: str, version: int, ok: bool, error: str | None = None) -> None:
        """Record whether the files of a version reached the registry (``error``: why not)."""
        row = self.db.execute("SELECT record FROM model_versions WHERE job=? AND version=?",
                              (job, version)).fetchone()
        if row is not None:
            record = json.loads(row["record"]) | {"collected": ok, "collect_error": error}
            self.db.execute("UPDATE model_versions SET record=? WHERE job=? AND version=?",
                            (json.dumps(record), job, version))

    def model_versions(self, job: str) -> list[ModelVersion]:
        """The registered versions of ``job`` (``namespace/name``), oldest first."""
        rows = self.db.execute("SELECT record FROM model_versions WHERE job=? ORDER BY version",
                               (job,)).fetchall()
        return [ModelVersion.from_dict(json.loads(r["record"])) for r in rows]

    def every_model_version(self) -> list[JobVersion]:
        rows = self.db.execute("SELECT job, record FROM model_versions ORDER BY job, version")
        return [JobVersion(r["job"], ModelVersion.from_dict(json.loads(r["record"]))) for r in rows]

    # -- nodes --

    def put_node(self, status: NodeStatus, now: float) -> None:
        # pydantic's own JSON: a third of the cost of json.dumps over model_dump, once per
        # status of a backlog; read back by model_validate_json and the dialect's JSON field
        # read alike. An upsert changes the row in place; a replace deletes and inserts it
        self.db.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                        "SET state=excluded.state, boot_id=excluded.boot_id, "
                        "status=excluded.status, updated=excluded.updated",
                        (status.node, status.state, status.boot_id, status.model_dump_json(), now))

    def node(self, name: str) -> NodeRow | None:
        row = self.db.execute("SELECT * FROM nodes WHERE name=?", (name,)).fetchone()
        return self._node(row) if row else None

    def node_positions(self, names: Iterable[str]) -> dict[str, tuple[str, int, str]]:
        """Boot id, seq and state of each of ``names`` the store knows: what a batch of statuses
        is compared with, read in one query per few hundred names without parsing the statuses."""
        names = list(names)
        found: dict[str, tuple[str, int, str]] = {}
        for start in range(0, len(names), _KEYS_PER_QUERY):
            part = names[start:start + _KEYS_PER_QUERY]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT name, boot_id, COALESCE({self.dialect.json_field('status', 'seq')}, '0') "
                f"AS seq, state FROM nodes WHERE name IN ({marks})", part)
            found.update((r["name"], (r["boot_id"], int(r["seq"]), r["state"])) for r in rows)
        return found

    def nodes(self) -> list[NodeRow]:
        return [self._node(r) for r in self.db.execute("SELECT * FROM nodes ORDER BY name")]

    def _node(self, row: Any) -> NodeRow:
        """A stored node, its status parsed once per change: ``get nodes``, asked again and
        again during a backlog, would otherwise validate every node's status each time."""
        text = row["status"]
        cached = self._statuses.get(row["name"])
        if cached is None or cached[0] != text:
            cached = (text, NodeStatus.model_validate_json(text))
            self._statuses[row["name"]] = cached
        return NodeRow(name=row["name"], state=row["state"], boot_id=row["boot_id"],
                       updated=row["updated"], status=cached[1])

    def node_labels(self) -> dict[str, dict[str, str]]:
        """Every known node's labels, as its last status declared them (what job selectors
        match), read without parsing whole statuses."""
        rows = self.db.execute(
            f"SELECT name, {self.dialect.json_field('status', 'labels')} AS labels FROM nodes "
            "ORDER BY name")
        return {r["name"]: json.loads(r["labels"]) if r["labels"] else {} for r in rows}

    def labels_of(self, node: str) -> dict[str, str] | None:
        """One node's labels; None when the node never reported."""
        row = self.db.execute(f"SELECT {self.dialect.json_field('status', 'labels')} AS labels "
                              "FROM nodes WHERE name=?", (node,)).fetchone()
        if row is None:
            return None
        return json.loads(row["labels"]) if row["labels"] else {}

    def online_nodes(self) -> frozenset[str]:
        """Names of the nodes whose last status says online (every event asks: no JSON read)."""
        rows = self.db.execute("SELECT name FROM nodes WHERE state='online'")
        return frozenset(r["name"] for r in rows)

    # -- dataset sample counts, as last reported --

    def put_dataset_samples(self, namespace: str, name: str, samples: int, error: str | None,
                            node: str, now: float) -> None:
        self.put_dataset_samples_many([(namespace, name, samples, error, node, now)])

    def put_dataset_samples_many(self, rows: Iterable[SampleCount]) -> None:
        """Several counts in one statement, in order (a later row of one dataset wins): one
        round trip to PostgreSQL for a batch of reports."""
        self.db.executemany("INSERT INTO dataset_samples VALUES (?, ?, ?, ?, ?, ?) "
                            "ON CONFLICT (namespace, name) DO UPDATE SET samples=excluded.samples, "
                            "error=excluded.error, node=excluded.node, updated=excluded.updated",
                            rows)

    def dataset_samples(self, namespace: str, name: str) -> SampleCountRow | None:
        row = self.db.execute(
            "SELECT namespace, name, samples, error, node, updated FROM dataset_samples "
            "WHERE namespace=? AND name=?", (namespace, name)).fetchone()
        return SampleCountRow(**row) if row else None

    # -- desired state --

    def desired(self, node: str) -> DesiredRow | None:
        row = self.db.execute("SELECT generation, content FROM desired WHERE node=?", (node,)).fetchone()
        return DesiredRow(row["generation"], row["content"]) if row else None

    def put_desired(self, node: str, content: str) -> int:
        """Store a node's desired content; the generation grows only when it changed."""
        current = self.desired(node)
        if current is not None and current.content == content:
            return current.generation
        generation = (current.generation if current else 0) + 1
        self.db.execute("INSERT INTO desired VALUES (?, ?, ?) ON CONFLICT (node) DO UPDATE "
                        "SET generation=excluded.generation, content=excluded.content",
                        (node, generation, content))
        return generation

    def desired_nodes(self) -> list[str]:
        return [r["node"] for r in self.db.execute("SELECT node FROM desired ORDER BY node")]

    # -- the leader lease (cloud_manager.leadership decides; these are its conditional writes) --

    def lease(self, name: str = LEASE) -> Lease | None:
        row = self.db.execute("SELECT holder, epoch, expires FROM leader_lease WHERE name=?",
                              (name,)).fetchone()
        return Lease(row["holder"], row["epoch"], row["expires"]) if row else None

    def claim_lease(self, holder: str, seen_epoch: int | None, expires: float,
                    name: str = LEASE) -> bool:
        """Take the lease if its epoch is still ``seen_epoch`` (None: if nobody ever held it),
        with the next epoch: of several managers claiming at once, one gets it."""
        if seen_epoch is None:
            return self.db.execute(
                "INSERT INTO leader_lease VALUES (?, ?, 1, ?) ON CONFLICT (name) DO NOTHING",
                (name, holder, expires)).rowcount == 1
        return self.db.execute(
            "UPDATE leader_lease SET holder=?, epoch=epoch + 1, expires=? WHERE name=? AND epoch=?",
            (holder, expires, name, seen_epoch)).rowcount == 1

    def renew_lease(self, holder: str, epoch: int, expires: float, name: str = LEASE) -> bool:
        return self.db.execute(
            "UPDATE leader_lease SET expires=? WHERE name=? AND holder=? AND epoch=?",
            (expires, name, holder, epoch)).rowcount == 1

    def fence(self, epoch: int, name: str = LEASE) -> None:
        """Inside a decision's transaction: raise :class:`NotLeader` unless ``epoch`` is the
        lease's current one. The row stays locked until the transaction ends, so a claim by
        another manager waits for this decision to commit and the next one sees its epoch."""
        if not self._depth:
            raise RuntimeError("a fence needs an open transaction")
        row = self.db.execute(f"SELECT epoch FROM leader_lease WHERE name=?"
                              f"{self.dialect.lock_shared}", (name,)).fetchone()
        if row is None or row["epoch"] != epoch:
            current = row["epoch"] if row else None
            raise NotLeader(f"decision under epoch {epoch}; the lease is at epoch {current}")

    # -- several managers: the ingest journal, the share group, the ingest members' sessions --

    def journal_add(self, namespace: str, job: str, event: str, now: float) -> None:
        """An ingest event for the leader (see :mod:`cloud_manager.ingest_journal`)."""
        self.db.execute("INSERT INTO ingest_journal (namespace, job, event, time) "
                        "VALUES (?, ?, ?, ?)", (namespace, job, event, now))

    def journal_notify(self) -> None:
        """Wake the leader's journal listener when this transaction commits (PostgreSQL
        delivers a notification at the commit, and folds repeats within one transaction)."""
        if self.dialect is POSTGRESQL:
            self.db.execute("SELECT pg_notify(?, '')", (JOURNAL_CHANNEL,))

    def journal(self, limit: int) -> list[JournalRow]:
        """The oldest ``limit`` journal rows, in the order they were written."""
        rows = self.db.execute("SELECT seq, namespace, job, event FROM ingest_journal "
                               "ORDER BY seq LIMIT ?", (limit,))
        return [JournalRow(r["seq"], r["namespace"], r["job"], r["event"]) for r in rows]

    def journal_delete(self, seqs: Iterable[int]) -> None:
        self.db.executemany("DELETE FROM ingest_journal WHERE seq=?", ((seq,) for seq in seqs))

    def share_group(self) -> str:
        """The managers' shared-subscription group name: made once, at random, kept here and
        nowhere a node can read it (a node that joined the group would be dealt reports the
        broker's ACL then drops, see docs/scaling.md)."""
        self.db.execute("INSERT INTO meta VALUES ('share_group', ?) ON CONFLICT (key) DO NOTHING",
                        (f"edgeloop-{secrets.token_hex(16)}",))
        row = self.db.execute("SELECT value FROM meta WHERE key='share_group'").fetchone()
        return str(row["value"])

    def ingest_members(self) -> list[MemberRow]:
        rows = self.db.execute("SELECT client_id, holder, adopted, expires FROM ingest_members "
                               "ORDER BY client_id")
        return [MemberRow(r["client_id"], r["holder"], bool(r["adopted"]), r["expires"])
                for r in rows]

    def claim_member(self, seen: MemberRow | None, client_id: str, holder: str, adopted: bool,
                     expires: float) -> bool:
        """Hold the ingest session ``client_id`` if its row is still as ``seen`` (None: if
        there is none): of several managers claiming one, one gets it."""
        if seen is None:
            return self.db.execute(
                "INSERT INTO ingest_members VALUES (?, ?, ?, ?) ON CONFLICT (client_id) DO NOTHING",
                (client_id, holder, int(adopted), expires)).rowcount == 1
        return self.db.execute(
            "UPDATE ingest_members SET holder=?, adopted=?, expires=? WHERE client_id=? AND "
            "holder=? AND expires=?",
            (holder, int(adopted), expires, client_id, seen.holder, seen.expires)).rowcount == 1

    def renew_member(self, client_id: str, holder: str, expires: float) -> bool:
        return self.db.execute(
            "UPDATE ingest_members SET expires=? WHERE client_id=? AND holder=?",
            (expires, client_id, holder)).rowcount == 1


def _open_postgresql(url: str) -> Connection:
    from cloud_manager.database import PostgresConnection

    try:
        return PostgresConnection(url)
    except ImportError:
        raise StoreError("a PostgreSQL store needs psycopg: pip install 'edgeloop[postgresql]'"
                         ) from None
    except StoreUnavailable as exc:
        raise StoreError(str(exc)) from None


def _resource(row: Any) -> ResourceRow:
    return ResourceRow(
        kind=row["kind"],
        namespace=row["namespace"],
        name=row["name"],
        manifest=json.loads(row["manifest"]),
        generation=row["generation"],
        created=row["created"],
        updated=row["updated"],
    )

