"""The cloud manager's core: turns incoming messages into store updates and outgoing messages.

It knows nothing of MQTT connections (``daemon.py`` wires it to the broker) and reads no clock
of its own (every entry point takes ``now``): each method runs one event, or one batch of sample
reports (:meth:`Manager.on_sample_reports`) or node statuses (:meth:`Manager.on_statuses`),
inside one store transaction and returns the
messages to publish once that transaction has committed. A crash between the commit and the
publish is repaired by :meth:`Manager.resync`, which the daemon runs on every (re)connection: it
re-sends every active task (receivers dedupe by task id + attempt), every node's desired state
and every job's status.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from datetime import timezone, tzinfo
from typing import TypeVar

from cloud_manager import ingest_journal as journal
from cloud_manager import rollout as ro
from cloud_manager import state_machine as sm
from cloud_manager.api import ApiHandler
from cloud_manager.hardex_inbox import HardExampleInbox
from cloud_manager.registry import ModelRegistry, RegistryError
from cloud_manager.sample_batch import DatasetUpdate, coalesce
from cloud_manager.status_batch import Known, Settled, by_node, settle
from cloud_manager.outgoing import Outgoing
from cloud_manager.database import StoreUnavailable
from cloud_manager.store import ResourceRow, SampleCount, Store
from cloud_manager.task_builder import JobInputs, build_inference_task, task_id
from cloud_manager.versions import Artifact
from protocol import topics
from protocol import worker_contract as contract
from protocol.manifest_yaml import parse_manifest
from protocol.manifests import Dataset, IncrementalLearningJob, Manifest, Model
from protocol.targets import targets
from protocol.messages import (
    ApiRequest,
    ApiResponse,
    DesiredState,
    JobStatus,
    NodeStatus,
    SampleReport,
    Task,
    TaskProgress,
)

log = logging.getLogger("edgeloop.cloud")

#: Keys of handled messages are kept this long (far beyond a broker session's redelivery).
PROCESSED_KEYS_KEPT_S = 86400.0
CLEANUP_EVERY_S = 3600.0
#: most journaled ingest events the leader runs in one transaction
JOURNAL_BATCH = 256

M = TypeVar("M", Dataset, Model, IncrementalLearningJob)
P = TypeVar("P")


@dataclass
class SampleIngest:
    """What one batch of sample reports did."""

    #: to publish once the batch has committed
    messages: list[Outgoing] = field(default_factory=list)
    #: reports handled for the first time
    reports: int = 0
    #: reports handled before (a redelivery) or twice in the batch: skipped
    duplicates: int = 0
    #: reports of which some dataset update failed and was rolled back (logged)
    failed: int = 0


@dataclass
class StatusIngest:
    """What one batch of node statuses did."""

    #: to publish once the batch has committed
    messages: list[Outgoing] = field(default_factory=list)
    #: nodes whose newest status was stored
    nodes: int = 0
    #: statuses that said nothing new: a newer one of the same node followed in the batch, or
    #: the stored one is newer (a late redelivery)
    superseded: int = 0
    #: statuses of nodes whose update failed and was rolled back (logged)
    failed: int = 0


class NodeLabels(Mapping[str, Mapping[str, str]]):
    """Node labels from the store, read when asked: a node's alone when it is looked up, every
    node's only when iterated (a fleet's labels take long to read; most events need none)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._one: dict[str, dict[str, str] | None] = {}
        self._all: dict[str, dict[str, str]] | None = None

    def __getitem__(self, node: str) -> Mapping[str, str]:
        if self._all is not None:
            return self._all[node]
        if node not in self._one:
            self._one[node] = self.store.labels_of(node)
        labels = self._one[node]
        if labels is None:
            raise KeyError(node)
        return labels

    def _every(self) -> dict[str, dict[str, str]]:
        if self._all is None:
            self._all = self.store.node_labels()
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._every())

    def __len__(self) -> int:
        return len(self._every())


@dataclass(frozen=True)
class Pull:
    """Files of a job's version to pull from a node into the registry."""

    namespace: str
    name: str
    version: int
    node: str
    artifacts: tuple[Artifact, ...]


def rollout_health(status: NodeStatus, task: str) -> ro.Health | None:
    """What a node's status says about a job's inference worker, as a rollout reads it (None:
    it runs none, or its agent does not report health)."""
    health = status.health.get(task)
    if health is None:
        return None
    return ro.Health(
        version=health.version, up=health.up, restarts=status.worker_restarts.get(task, 0),
        fps=health.fps if health.frames else None, agreement=health.agreement,
        compared=health.compared, shadow=health.shadow,
        hard_rate=round(health.hard_examples / health.frames, 4) if health.frames else None,
        error=health.error)


class Manager:
    def __init__(
        self,
        store: Store,
        *,
        tz: tzinfo = timezone.utc,
        settings: sm.MachineSettings | None = None,
        inbox: HardExampleInbox | None = None,
        registry: ModelRegistry | None = None,
        read_node_paths: bool = True,
        decides: bool = True,
    ) -> None:
        """``read_node_paths`` False: never copy a version's files from the paths a train
        result names, always pull them from the node (a path that exists here may be another
        machine's file of the same name; the sha256 check would catch it, at a copy's cost).

        ``decides`` False: an ingest member of several managers (:mod:`cloud_manager.
        ingest_journal`): it stores what reports say and journals the jobs' events for the
        leader instead of running them."""
        self.store = store
        self.decides = decides
        self.read_node_paths = read_node_paths
        self.inbox = inbox
        self.registry = registry
        self.tz = tz
        self.settings = settings or sm.MachineSettings()
        self.api = ApiHandler(store, self)
        self._pulls: list[Pull] = []
        self._manifests: dict[tuple[str, str, str], tuple[tuple[int, float], Manifest]] = {}
        self._last_cleanup = 0.0

    # -- helpers --

    def online_nodes(self) -> frozenset[str]:
        return self.store.online_nodes()

    def context(self, now: float) -> sm.Context:
        return sm.Context(now, self.online_nodes(), self.tz, self.settings,
                          NodeLabels(self.store))

    def _parsed(self, resource: ResourceRow) -> Manifest:
        """The manifest model of a stored resource, validated once per stored revision (every
        tick looks at every job: validating each time would cost more than the rest)."""
        key = (resource.kind, resource.namespace, resource.name)
        revision = (resource.generation, resource.updated)
        cached = self._manifests.get(key)
        if cached is None or cached[0] != revision:
            cached = (revision, parse_manifest(resource.manifest))
            self._manifests[key] = cached
        return cached[1]

    def manifest(self, kind: type[M], namespace: str, name: str) -> M | None:
        """The applied manifest of a kind, or None when there is none. Asks the store for the
        revision first and reads the document only when it changed since it was parsed (each
        sample report looks up its Dataset: reading and decoding it every time cost more)."""
        return self._manifest_at(kind, namespace, name,
                                 self.store.resource_revision(kind.kind_name, namespace, name))

    def _manifest_at(self, kind: type[M], namespace: str, name: str,
                     revision: tuple[int, float] | None) -> M | None:
        """:meth:`manifest` with the revision already read (a batch reads all of its own in one
        query: :meth:`Store.resource_revisions`)."""
        if revision is None:
            return None
        cached = self._manifests.get((kind.kind_name, namespace, name))
        if cached is not None and cached[0] == revision:
            manifest = cached[1]
        else:
            stored = self.store.get_resource(kind.kind_name, namespace, name)
            if stored is None:
                return None
            manifest = self._parsed(stored)
        if not isinstance(manifest, kind):
            raise TypeError(f"stored {kind.kind_name} {namespace}/{name} parses as a "
                            f"{type(manifest).__name__}")
        return manifest

    def dataset_node(self, namespace: str, name: str) -> str | None:
        """The node holding a Dataset's index (its ``nodeName``); None: not applied."""
        dataset = self.manifest(Dataset, namespace, name)
        return dataset.spec.node_name if dataset else None

    def target_nodes(self, job: str) -> frozenset[str] | None:
        """The nodes a job (``namespace/name``) deploys to, as its state last worked them out;
        None: no such job."""
        namespace, _, name = job.partition("/")
        manifest = self.manifest(IncrementalLearningJob, namespace, name)
        state = self.store.load_job(namespace, name)
        if manifest is None or state is None:
            return None
        if state.placed:
            return frozenset(state.nodes)
        return targets(manifest.spec.deploy_targets(), NodeLabels(self.store))

    def max_source_share(self, job: str) -> float:
        """The share of a job's hard examples waiting for labels one camera may hold
        (``deploySpec.maxSourceShare``); 1 (no cap) for a job that does not exist."""
        namespace, _, name = job.partition("/")
        manifest = self.manifest(IncrementalLearningJob, namespace, name)
        return 1.0 if manifest is None else manifest.spec.deploy_spec.source_share()

    def inputs(self, namespace: str, name: str) -> JobInputs | None:
        """The job's manifest and the resources it references, or None if any is missing."""
        job = self.manifest(IncrementalLearningJob, namespace, name)
        if job is None:
            return None
        spec = job.spec
        dataset = self.manifest(Dataset, namespace, spec.dataset.name)
        initial = self.manifest(Model, namespace, spec.initial_model.name)
        deploy = self.manifest(Model, namespace, spec.deploy_spec.model.name)
        eval_ref = spec.eval_spec.initial_eval_model
        initial_eval = self.manifest(Model, namespace, eval_ref.name) if eval_ref else None
        if dataset is None or initial is None or deploy is None or (eval_ref and initial_eval is None):
            return None
        return JobInputs(job=job, dataset=dataset, initial_model=initial, deploy_model=deploy,
                         initial_eval_model=initial_eval)

    # -- job events --

    def job_event(self, namespace: str, name: str, event: sm.Event, now: float,
                  ctx: sm.Context | None = None) -> list[Outgoing]:
        """Run one event through a job's machine and persist the outcome (inside the caller's
        transaction). ``ctx``: the context when the caller already has it (a batch reads the
        nodes once, not once per job)."""
        if not self.decides:
            self.store.journal_add(namespace, name, journal.encode(event), now)
            return []
        state = self.store.load_job(namespace, name)
        inputs = self.inputs(namespace, name)
        if state is None or inputs is None:
            return []
        ctx = ctx or self.context(now)
        transition = sm.handle(state, inputs, event, ctx)
        new = transition.state
        out: list[Outgoing] = []
        if new.deleted:
            self.store.delete_job(namespace, name)
        elif new != state:
            self.store.save_job(new, now)
        followups: list[sm.Event] = []
        for action in transition.actions:
            if isinstance(action, sm.CollectArtifacts):
                done = self._collect(new, action)
                if done is not None:
                    followups.append(done)
            else:
                out.extend(self._carry_out(new, inputs, action, now))
        # Events the actions answered at once run after this transition's messages are queued,
        # so that the last status published is the newest.
        for event in followups:
            out += self.job_event(namespace, name, event, now, ctx)
        return out

    def _carry_out(self, state: sm.JobState, inputs: JobInputs, action: sm.Action,
                   now: float) -> list[Outgoing]:
        match action:
            case sm.DispatchTask(node=node, task=task):
                self.store.record_task(task, node, "Starting", now)
                return [Outgoing(topics.task(node, task.task_id), task)]
            case sm.StopTask(node=node, task=task):
                self.store.set_task_state(task.task_id, task.attempt, "Failed", now)
                return [Outgoing(topics.task(node, task.task_id), task)]
            case sm.RegisterModel(version=version):
                self.store.add_model_version(state.ref, version, now)
                return []
            case sm.DeployModel(node=node) | sm.RemoveInference(node=node):
                return self.desired_for(node)
            case sm.PublishStatus():
                return [self.status_message(state)]
        return []

    def _collect(self, state: sm.JobState, action: sm.CollectArtifacts) -> sm.Event | None:
        """Get a version's files into the registry: copied at once when this machine can read
        them (same host or shared storage), else pulled from the node by the daemon. Returns the
        answer when it is known now, None when a pull was queued (see :meth:`take_pulls`)."""
        if self.registry is None:
            return sm.ArtifactsCollected(action.version, True)  # nodes read the paths themselves
        record = state.version(action.version)
        missing: list[Artifact] = []
        for artifact in record.artifacts if record else ():
            if self.registry.has(artifact.sha256):
                continue
            if not self.read_node_paths:
                missing.append(artifact)
                continue
            try:
                self.registry.import_file(Path(artifact.path), artifact.sha256, artifact.size)
            except (RegistryError, OSError) as exc:
                log.info("%s version %s: %s is not readable here (%s); pulling it from node %s",
                         state.ref, action.version, artifact.name, exc, action.node)
                missing.append(artifact)
        if not missing:
            self.store.set_collected(state.ref, action.version, True)
            return sm.ArtifactsCollected(action.version, True)
        self._pulls.append(Pull(state.namespace, state.name, action.version, action.node,
                                tuple(missing)))
        return None

    def take_pulls(self) -> list[Pull]:
        """Pulls queued by the events handled so far (the daemon runs them)."""
        pulls, self._pulls = self._pulls, []
        return pulls

    def on_collected(self, pull: Pull, ok: bool, reason: str, now: float) -> list[Outgoing]:
        """The end of a pull: feed it to the job, record it on the version."""
        with self.store.transaction():
            self.store.set_collected(f"{pull.namespace}/{pull.name}", pull.version, ok,
                                     reason or None)
            return self.job_event(pull.namespace, pull.name,
                                  sm.ArtifactsCollected(pull.version, ok, reason), now)

    def status_message(self, state: sm.JobState) -> Outgoing:
        topic = topics.job_status(state.namespace, state.name)
        return Outgoing(topic, JobStatus(**sm.status_fields(state)), retain=True)

    def desired_for(self, node: str) -> list[Outgoing]:
        """Recompute ``node``'s desired state: the inference worker of every job deploying to
        it, serving the version the job means for that node (its deployed version). Published
        only when it changed."""
        tasks: list[Task] = []
        models = []
        labels = self.store.labels_of(node) or {}
        for state in self.store.jobs():
            inputs = self.inputs(state.namespace, state.name)
            if inputs is None or not inputs.job.spec.deploy_targets().may_target(node, labels):
                continue
            target = state.nodes.get(node)
            version = target.desired if target is not None else state.deployed_version
            task = build_inference_task(inputs, state.version(version))
            rollout = inputs.job.spec.deploy_spec.rollout
            if rollout is not None and state.rollout is not None and state.rollout.shadows(node):
                # a canary compares the new version with the one it replaces
                env = {**task.env, contract.SHADOW_EVERY: str(rollout.shadow_every)}
                task = task.model_copy(update={"env": env})
            tasks.append(task)
            models.extend(task.models)
        content = json.dumps({"tasks": [t.model_dump(mode="json") for t in tasks],
                              "models": [m.model_dump(mode="json") for m in models]}, sort_keys=True)
        before = self.store.desired(node)
        generation = self.store.put_desired(node, content)
        if before is not None and before.generation == generation:
            return []
        return [self.desired_message(node)]

    def desired_message(self, node: str) -> Outgoing:
        stored = self.store.desired(node)
        assert stored is not None
        data = json.loads(stored.content)
        message = DesiredState(node=node, generation=stored.generation, tasks=data["tasks"],
                               models=data["models"], ts=0.0)
        return Outgoing(topics.desired(node), message, retain=True)

    # -- incoming messages --

    def on_api(self, request: ApiRequest, now: float) -> tuple[ApiResponse, list[Outgoing]]:
        with self.store.transaction():
            return self.api.handle(request, now)

    def on_status(self, status: NodeStatus, now: float) -> list[Outgoing]:
        return self.on_statuses([status], now).messages

    def on_statuses(self, statuses: Sequence[NodeStatus], now: float) -> StatusIngest:
        """Node statuses that arrived together, in arrival order, in one transaction.

        Each node's newest status is stored once, and its jobs hear of every change of state the
        statuses went through (see :mod:`cloud_manager.status_batch`). A status older than the
        stored one of the same boot (redelivered late) changes nothing, so a redelivered batch
        needs no keys. A node whose update fails is logged, counted and rolled back alone while
        the rest commits; a failure of the store itself rolls the whole batch back and is raised.
        """
        result = StatusIngest()
        with self.store.transaction():
            settled: list[Settled] = []
            groups = by_node(statuses)
            positions = self.store.node_positions(groups)
            for node, group in groups.items():
                position = positions.get(node)
                outcome = settle(Known(*position) if position else None, group)
                if outcome is None:
                    result.superseded += len(group)
                    continue
                result.superseded += outcome.superseded
                settled.append(outcome)
            jobs = [(state.namespace, state.name, self.inputs(state.namespace, state.name),
                     frozenset(state.nodes)) for state in self.store.jobs()]
            result.messages, failed = self._apply_each(
                settled, lambda one: self._apply_status(one, jobs, now),
                lambda one: f"status of node {one.latest.node} (seq {one.latest.seq})")
            result.nodes = len(settled) - len(failed)
            result.failed = sum(1 + one.superseded for one in failed)
            if not self.decides:
                self.store.journal_notify()
        return result

    def _apply_status(self, settled: Settled,
                      jobs: list[tuple[str, str, JobInputs | None, frozenset[str]]],
                      now: float) -> list[Outgoing]:
        """One node's newest status: stored, its changes and what it serves fed to the jobs
        it is (or, by its labels, may become, or was) a target of."""
        status = settled.latest
        self.store.put_node(status, now)
        out: list[Outgoing] = []
        for namespace, name, inputs, nodes in jobs:
            for state in settled.changes:
                out += self.job_event(namespace, name, sm.NodeChanged(status.node, state), now)
            if inputs is None or status.state != "online":
                continue
            deploy = inputs.job.spec.deploy_targets()
            if status.node in nodes or deploy.may_target(status.node, status.labels):
                inference = task_id(namespace, name, 0, "inference")
                serving = status.serving.get(inference)
                out += self.job_event(namespace, name, sm.ServingReported(
                    serving, status.node, rollout_health(status, inference)), now)
        return out

    def on_sample_reports(self, reports: Sequence[SampleReport], now: float) -> SampleIngest:
        """Sample reports that arrived together, in arrival order, in one transaction.

        Reports seen before (redelivered) are skipped by their key, which commits with their
        effects. Several reports of one dataset count as its newest (see
        :mod:`cloud_manager.sample_batch`): one store write and one trigger evaluation per
        dataset and job. A dataset update that fails is logged, counted and rolled back alone
        while the rest of the batch commits; a failure of the store itself
        (:class:`sqlite3.OperationalError`: disk, lock; :class:`StoreUnavailable`: the database
        server) rolls the whole batch back and is raised.
        """
        result = SampleIngest()
        with self.store.transaction():
            fresh: dict[str, SampleReport] = {}
            for report in reports:
                fresh.setdefault(f"samples:{report.key}", report)
            for key in self.store.processed_among(fresh):
                del fresh[key]
            self.store.mark_processed_many(fresh, now)
            result.reports = len(fresh)
            result.duplicates = len(reports) - len(fresh)
            updates = coalesce(fresh.values())
            if updates:
                result.messages, failed = self._apply_updates(updates, now)
                result.failed = len(failed)
                if not self.decides:
                    self.store.journal_notify()
        return result

    def _apply_updates(self, updates: list[DatasetUpdate],
                       now: float) -> tuple[list[Outgoing], set[str]]:
        """Apply a batch's dataset updates (inside its transaction). Returns the messages and
        the keys of the reports that failed."""
        ctx = self.context(now)
        jobs = self._jobs_by_dataset()
        revisions = self.store.resource_revisions(
            Dataset.kind_name, {(update.namespace, update.name) for update in updates})
        # The counts are written together after the updates (on PostgreSQL one round trip
        # for the batch, not one per report); a part that fails takes its own back.
        writes: list[SampleCount] = []

        def apply(update: DatasetUpdate) -> list[Outgoing]:
            mark = len(writes)
            try:
                return self._apply_samples(update, jobs, now, ctx,
                                           revisions.get((update.namespace, update.name)), writes)
            except BaseException:
                del writes[mark:]
                raise

        messages, failed = self._apply_each(
            updates, apply, lambda update: f"samples of dataset {update.dataset} from "
                                           f"{update.node} (reports {', '.join(update.reports)})")
        self.store.put_dataset_samples_many(writes)
        return messages, {key for update in failed for key in update.reports}

    def _apply_each(self, parts: Sequence[P], apply: Callable[[P], list[Outgoing]],
                    describe: Callable[[P], str]) -> tuple[list[Outgoing], list[P]]:
        """Apply the parts of a batch (inside its transaction): all at once, and only when one
        of them fails, again one by one, each in its own savepoint, so that the failing one is
        rolled back alone. Returns the messages and the parts that failed."""
        pulls = len(self._pulls)
        try:
            with self.store.savepoint():
                return [out for part in parts for out in apply(part)], []
        except (sqlite3.OperationalError, StoreUnavailable):
            raise  # the store itself (disk, lock), not one part: the whole batch waits
        except Exception:
            del self._pulls[pulls:]
            log.debug("a part of a batch failed; applying it one part at a time", exc_info=True)
        messages: list[Outgoing] = []
        failed: list[P] = []
        for part in parts:
            pulls = len(self._pulls)
            try:
                with self.store.savepoint():
                    messages += apply(part)
            except (sqlite3.OperationalError, StoreUnavailable):
                raise
            except Exception:
                del self._pulls[pulls:]
                failed.append(part)
                log.exception("%s not applied; the rest of the batch goes on", describe(part))
        return messages, failed

    def _jobs_by_dataset(self) -> dict[tuple[str, str], list[str]]:
        """Names of the jobs learning from each (namespace, dataset name)."""
        index: dict[tuple[str, str], list[str]] = {}
        for state in self.store.jobs():
            inputs = self.inputs(state.namespace, state.name)
            if inputs is not None:
                dataset = (state.namespace, inputs.job.spec.dataset.name)
                index.setdefault(dataset, []).append(state.name)
        return index

    def _apply_samples(self, update: DatasetUpdate, jobs: dict[tuple[str, str], list[str]],
                       now: float, ctx: sm.Context, revision: tuple[int, float] | None,
                       writes: list[SampleCount]) -> list[Outgoing]:
        """One dataset's newest count: stored (appended to ``writes``, which the batch stores
        in one statement), and fed to the jobs learning from it. ``revision``: its Dataset's,
        as the batch read it (None: not applied)."""
        dataset = self._manifest_at(Dataset, update.namespace, update.name, revision)
        owner = dataset.spec.node_name if dataset else None
        if owner is None:
            # Agents report what they hold as soon as they connect, often before the manifests
            # are applied, and again only when the index changes. Keep the count: a job created
            # later starts from it (when the Dataset names this node, see the API's apply).
            if update.entry.error is None:
                writes.append((update.namespace, update.name, update.entry.samples, None,
                               update.node, now))
            log.info("sample report from %s for dataset %s, not applied yet: count kept",
                     update.node, update.dataset)
            return []
        if owner != update.node:
            log.warning("node %s reported dataset %s, which lives on node %s; ignored",
                        update.node, update.dataset, owner)
            return []
        entry = update.entry
        if entry.error is None:
            writes.append((update.namespace, update.name, entry.samples, entry.error, update.node,
                           now))
        event = sm.SamplesReported(entry.samples, entry.error)
        out: list[Outgoing] = []
        for name in jobs.get((update.namespace, update.name), []):
            out += self.job_event(update.namespace, name, event, now, ctx)
        return out

    def on_progress(self, progress: TaskProgress, now: float) -> list[Outgoing]:
        key = f"progress:{progress.key}"
        with self.store.transaction():
            if self.store.processed(key):
                return []
            self.store.mark_processed(key, now)
            event = sm.TaskReported(
                progress.task_id, progress.attempt, progress.seq, progress.state,
                dict(progress.result), [a.model_dump() for a in progress.artifacts],
                progress.message, progress.exit_code,
            )
            out: list[Outgoing] = []
            for state in self.store.jobs():
                if state.task is not None and state.task.task_id == progress.task_id:
                    out += self.job_event(state.namespace, state.name, event, now)
                    if progress.state in ("Running", "Completed", "Failed"):
                        self.store.set_task_state(progress.task_id, progress.attempt,
                                                  progress.state, now)
            return out

    def apply_journal(self, now: float, limit: int = JOURNAL_BATCH) -> tuple[list[Outgoing], int]:
        """Run the oldest ``limit`` events the ingest members journaled through their jobs'
        machines, and delete them, in one transaction (fenced, as every decision of a term).
        Returns the messages and how many rows were taken (``limit``: call again). A row that
        is not an event, or whose job fails on it, is logged and dropped alone."""
        with self.store.transaction():
            rows = self.store.journal(limit)
            if not rows:
                return [], 0
            ctx = self.context(now)

            def run(row: journal.JournalRow) -> list[Outgoing]:
                event = journal.decode(row.event)
                if self._superseded(row.namespace, row.job, event, ctx):
                    return []
                return self.job_event(row.namespace, row.job, event, now, ctx)

            messages, _ = self._apply_each(
                rows, run, lambda row: f"journaled event {row.seq} for job "
                                       f"{row.namespace}/{row.job} ({row.event[:200]})")
            self.store.journal_delete(row.seq for row in rows)
        return messages, len(rows)

    def _superseded(self, namespace: str, job: str, event: journal.JournalEvent,
                    ctx: sm.Context) -> bool:
        """Whether a journaled event says less than the store already does. Two reports of
        one node dealt to two managers may arrive at the leader in the other order (its own at
        once, the member's through the journal): a node's change of state that its stored
        state no longer shows, or a dataset's count other than the stored one, was overtaken
        by a newer report, whose own event the leader runs (or ran)."""
        if isinstance(event, sm.NodeChanged):
            return (event.state == "online") != (event.node in ctx.online_nodes)
        if isinstance(event, sm.SamplesReported) and event.error is None:
            inputs = self.inputs(namespace, job)
            if inputs is None:
                return False
            stored = self.store.dataset_samples(namespace, inputs.job.spec.dataset.name)
            return stored is not None and stored.samples != event.total
        return False

    def tick(self, now: float) -> list[Outgoing]:
        if now - self._last_cleanup >= CLEANUP_EVERY_S:
            # Redeliveries come within the broker session's life; a day of keys is plenty.
            with self.store.transaction():
                self.store.forget_processed_before(now - PROCESSED_KEYS_KEPT_S)
            self._last_cleanup = now
        out: list[Outgoing] = []
        for state in self.store.jobs():
            with self.store.transaction():
                out += self.job_event(state.namespace, state.name, sm.Tick(), now)
        return out

    def resync(self, now: float) -> list[Outgoing]:
        """Everything a reconnected broker (or a restarted manager) must see again."""
        out: list[Outgoing] = []
        for state in self.store.jobs():
            out.append(self.status_message(state))
            task = state.task
            if task is not None and task.state in sm.ACTIVE_TASK_STATES:
                message = self.store.task_message(task.task_id, task.attempt)
                if message is not None:
                    out.append(Outgoing(topics.task(task.node, task.task_id), message))
            if state.pending_version is not None and (state.stage, state.state) == ("Deploy", "Running"):
                inputs = self.inputs(state.namespace, state.name)
                if inputs is not None:
                    action = sm.CollectArtifacts(state.pending_version, inputs.dataset_node)
                    with self.store.transaction():
                        done = self._collect(state, action)
                        if done is not None:
                            out += self.job_event(state.namespace, state.name, done, now)
        for node in self.store.desired_nodes():
            out.append(self.desired_message(node))
        return out

