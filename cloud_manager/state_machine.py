"""The incremental-learning job as a state machine: Train -> Eval -> Deploy, round after round. Pure.

``handle(state, inputs, event, ctx)`` returns the job's next state and the actions the daemon
must carry out (send a task, stop one, register and deploy a model version, publish the status).
Nothing here does I/O, reads the clock or draws random numbers: the time comes in ``ctx.now``,
so every path is testable and a replay of the same events gives the same result.

States follow Sedna: each stage (Train, Eval, Deploy) is Waiting, Ready, Starting, Running,
Completed or Failed, and the job's history is an append-only list of conditions with a time and
a reason. A round:

1. Train/Waiting until the train trigger holds (checked on every sample report and every
   ``checkPeriodSeconds``), then Train/Ready -> Starting (task sent to the dataset's node; it
   waits in Ready while the node is offline or the job is paused) -> Running -> Completed.
2. Eval the same way, on the candidate and the serving model.
3. If the deploy trigger holds: the candidate becomes model version N, Deploy/Running while its
   files are collected into the registry, then Deploy/Completed (or Deploy/Failed if they never
   arrive: the serving version stays); either way the next round begins at once in Train/Waiting and the train trigger is evaluated
   immediately with the samples that arrived meanwhile (rounds 2, 3, ... never stall).

Targets: the job deploys to a set of nodes (:func:`protocol.targets.targets` of the manifest's
deploy side and the nodes' labels in ``ctx.node_labels``), each with the version it should
serve and the one it says it serves (:class:`NodeTarget`). The set is looked at again whenever
a node, its labels or the manifest change: a node that joins (or whose labels come to match)
gets the job's serving version, a node that stops matching loses its inference task, and a
selector that matches no node is a condition of the job, never a stop.

Staged rollout: with ``deploySpec.rollout`` a version (deployed or rolled back to) reaches the
targets through :mod:`cloud_manager.rollout`, canaries first; the machine feeds it the nodes'
health (in :class:`ServingReported`), ticks, joins and leaves and the ``rollout`` commands, and
carries out what it decides. The rollout runs beside the rounds (the next round starts at once);
one that fails puts the previous version back as the deployed one and marks its version failed.

Failures: a task that fails, times out or whose node goes offline is retried with exponential
backoff up to ``max_attempts`` (an exit code 2, bad input, is not retried). When attempts run out
the stage is Failed with the reason and the job waits there until new samples arrive, the
manifest changes or the user resumes it; a new round then starts.

Events are idempotent: task reports are matched on task id + attempt and applied only when their
``seq`` is higher than the last one seen, so duplicates and stale reorderings change nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import timezone, tzinfo
from typing import Any, Literal, get_args

from protocol import worker_contract as contract
from protocol.messages import Task, TaskRole, TaskState
from protocol.targets import DeployTargets, targets

from cloud_manager import rollout as ro
from cloud_manager import triggers
from cloud_manager.task_builder import (
    JobInputs,
    build_eval_task,
    build_train_task,
    earlier_rounds,
    round_dir,
    sample_split,
    task_id,
)
from cloud_manager.versions import VERSION_METRICS, Artifact, Candidate, ModelVersion, metric_value

Stage = Literal["Train", "Eval", "Deploy"]
StageState = Literal["Waiting", "Ready", "Starting", "Running", "Completed", "Failed"]
ACTIVE_TASK_STATES: tuple[TaskState, ...] = ("Starting", "Running")
#: Keep the condition history bounded: a job running for years keeps its recent past.
MAX_CONDITIONS = 500
#: Rounds whose sample ranges are kept: enough for eval's window of earlier rounds.
MAX_TRAINED_ROUNDS = 50


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditionEntry:
    stage: Stage
    state: StageState
    round: int
    reason: str
    time: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConditionEntry:
        return cls(stage=_checked_stage(data["stage"]), state=_checked_state(data["state"]),
                   round=int(data["round"]), reason=data["reason"], time=float(data["time"]))


def _checked_stage(value: object) -> Stage:
    """A stage read from the store, checked: a name this build does not know is an error."""
    for stage in get_args(Stage):
        if value == stage:
            return stage
    raise ValueError(f"stage {value!r} is not one of {', '.join(get_args(Stage))}")


def _checked_state(value: object) -> StageState:
    for state in get_args(StageState):
        if value == state:
            return state
    raise ValueError(f"state {value!r} is not one of {', '.join(get_args(StageState))}")


@dataclass
class TaskRun:
    """The task of the current stage: one attempt of it at a time."""

    task_id: str
    role: TaskRole
    round: int
    attempt: int
    node: str
    state: TaskState
    sent_at: float
    deadline: float
    last_seq: int = -1
    progress: float | None = None


@dataclass
class NodeTarget:
    """One node the job deploys to: the version it should serve and the one it last said it
    serves (None: the initial model, or nothing reported yet)."""

    desired: int | None = None
    serving: int | None = None
    #: what the node last said about the job's inference worker (FPS, restarts, shadow
    #: agreement): the baseline and the evidence of a staged rollout
    health: ro.Health | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeTarget:
        health = data.get("health")
        return cls(desired=data.get("desired"), serving=data.get("serving"),
                   health=ro.Health.from_dict(health) if health is not None else None)


@dataclass
class JobState:
    namespace: str
    name: str
    stage: Stage = "Train"
    state: StageState = "Waiting"
    round: int = 1
    conditions: list[ConditionEntry] = field(default_factory=list)
    paused: bool = False
    deleted: bool = False
    #: labelled samples in the dataset index, as last reported
    samples: int = 0
    #: the sample count when the last round started training: num_of_samples counts from here
    baseline: int = 0
    #: [start, end) of the samples the current round trains on
    round_samples: list[int] | None = None
    last_check: float | None = None
    task: TaskRun | None = None
    #: attempts made for the current stage's task
    attempt: int = 0
    retry_at: float | None = None
    #: what the current round trained, once its train task completed
    candidate: Candidate | None = None
    #: registered model versions, oldest first
    versions: list[ModelVersion] = field(default_factory=list)
    deployed_version: int | None = None
    #: a registered version whose files are being collected before it is deployed
    pending_version: int | None = None
    collect_deadline: float | None = None
    #: the version every target node says it serves (None while they differ or none does)
    serving_version: int | None = None
    #: the nodes the job deploys to, by name
    nodes: dict[str, NodeTarget] = field(default_factory=dict)
    #: whether the targets were ever worked out (the first look notes nothing)
    placed: bool = False
    #: whether the nodeSelector matched no node at the last look
    no_match: bool = False
    #: sample count when the job ended in Failed; more samples than this start a new round
    failed_at_samples: int | None = None
    #: ``[round, start, end]`` of every round that trained: eval also scores the held-out
    #: samples of the last few (forgetting check)
    trained_rounds: list[list[int]] = field(default_factory=list)
    #: the staged rollout of the last deployed version (deploySpec.rollout), ended or not
    rollout: ro.RolloutState | None = None
    #: versions whose rollout failed, with the reason (a rollback never picks them by itself)
    failed_versions: dict[int, str] = field(default_factory=dict)
    revision: int = 0

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def deployed(self) -> ModelVersion | None:
        return self.version(self.deployed_version)

    def version(self, number: int | None) -> ModelVersion | None:
        return next((v for v in self.versions if v.version == number), None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the store keeps (``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobState:
        data = dict(data)
        data["stage"] = _checked_stage(data.get("stage", "Train"))
        data["state"] = _checked_state(data.get("state", "Waiting"))
        data["conditions"] = [ConditionEntry.from_dict(c) for c in data.get("conditions", [])]
        if data.get("task") is not None:
            data["task"] = TaskRun(**data["task"])
        if data.get("candidate") is not None:
            data["candidate"] = Candidate.from_dict(data["candidate"])
        data["versions"] = [ModelVersion.from_dict(v) for v in data.get("versions", [])]
        data["nodes"] = {n: NodeTarget.from_dict(t) for n, t in data.get("nodes", {}).items()}
        if data.get("rollout") is not None:
            data["rollout"] = ro.RolloutState.from_dict(data["rollout"])
        data["failed_versions"] = {int(v): r for v, r in data.get("failed_versions", {}).items()}
        return cls(**data)


def new_job(namespace: str, name: str, now: float) -> JobState:
    state = JobState(namespace=namespace, name=name)
    _append(state, "Train", "Waiting", "job created; waiting for the train trigger", now)
    return state


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplesReported:
    """The dataset index now holds ``total`` labelled samples (``error``: it could not be read)."""

    total: int
    error: str | None = None


@dataclass(frozen=True)
class Tick:
    """Time passes: periodic trigger checks, task deadlines, retries that are due."""


@dataclass(frozen=True)
class TaskReported:
    task_id: str
    attempt: int
    seq: int
    state: TaskState
    result: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    exit_code: int | None = None


@dataclass(frozen=True)
class NodeChanged:
    node: str
    state: str  # online, offline, lost


@dataclass(frozen=True)
class SpecChanged:
    """The job manifest (or a resource it references) was updated; ``inputs`` is the new one."""


@dataclass(frozen=True)
class Paused:
    pass


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class Deleted:
    pass


@dataclass(frozen=True)
class ArtifactsCollected:
    """The registry has (``ok``) or could not get (``reason``) the files of ``version``."""

    version: int
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class ServingReported:
    """A node says which version of this job it serves (its status ``serving``) and, when it
    runs the job's inference worker, how that worker does (its status ``health``)."""

    version: int | None
    node: str
    health: ro.Health | None = None


@dataclass(frozen=True)
class Retarget:
    """Work out which nodes the job deploys to, all of them: it was just created."""


@dataclass(frozen=True)
class RolledBack:
    """Serve an earlier registered version (None: the one before the deployed one); through
    the staged rollout when the job has one, unless ``now``."""

    version: int | None = None
    now: bool = False


@dataclass(frozen=True)
class RolloutCommand:
    """``edgeloop rollout pause|resume|abort``."""

    command: Literal["pause", "resume", "abort"]


Event = (SamplesReported | Tick | TaskReported | NodeChanged | SpecChanged | Paused | Resumed
         | Deleted | RolledBack | ServingReported | ArtifactsCollected | Retarget
         | RolloutCommand)

#: Events after which the target nodes may have changed: the job looks at them again (at the
#: one node a node's event is about, at every node after the others).
_RETARGETING = (NodeChanged, ServingReported, SpecChanged, Retarget)


class RollbackError(ValueError):
    """A rollback that names no registered version."""


class RolloutError(ValueError):
    """A rollout command with no rollout to act on."""


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchTask:
    node: str
    task: Task


@dataclass(frozen=True)
class StopTask:
    node: str
    task: Task


@dataclass(frozen=True)
class RegisterModel:
    version: ModelVersion


@dataclass(frozen=True)
class CollectArtifacts:
    """Get the files of ``version`` into the registry (from ``node``, where they were trained);
    answered by an :class:`ArtifactsCollected` event."""

    version: int
    node: str


@dataclass(frozen=True)
class DeployModel:
    """``node`` runs the job's inference worker serving ``version`` (None: the initial model)."""

    node: str
    version: int | None


@dataclass(frozen=True)
class RemoveInference:
    """``node`` is no longer a target: its inference worker of this job stops."""

    node: str


@dataclass(frozen=True)
class PublishStatus:
    pass


Action = (DispatchTask | StopTask | RegisterModel | CollectArtifacts | DeployModel
          | RemoveInference | PublishStatus)


# --- context -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineSettings:
    train_timeout_s: float = 6 * 3600.0
    eval_timeout_s: float = 3600.0
    max_attempts: int = 3
    retry_initial_s: float = 10.0
    retry_max_s: float = 600.0
    #: How long a deployed version's files may take to reach the registry.
    collect_timeout_s: float = 1800.0
    #: Check the train trigger on every sample report. False checks only every
    #: checkPeriodSeconds, as Sedna does; kept to measure the difference (bench/).
    event_driven: bool = True

    def retry_delay(self, failed_attempt: int) -> float:
        return min(self.retry_max_s, self.retry_initial_s * 2 ** max(0, failed_attempt - 1))


@dataclass(frozen=True)
class Context:
    now: float
    online_nodes: frozenset[str] = frozenset()
    tz: tzinfo = timezone.utc
    settings: MachineSettings = MachineSettings()
    #: every known node's labels, as its last status declared them (the machine looks up one
    #: node at a time, and iterates only when it looks at every node)
    node_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass
class Transition:
    state: JobState
    actions: list[Action]


# --- the machine -------------------------------------------------------------------------------


def handle(state: JobState, inputs: JobInputs, event: Event, ctx: Context) -> Transition:
    """The job's state after ``event`` and what to do about it. ``state`` is not modified."""
    s = copy.deepcopy(state)
    before = s.revision
    actions: list[Action] = []
    if s.deleted:
        return Transition(s, actions)
    step = _Step(s, inputs, ctx, actions)
    step.on(event)
    if not s.deleted:
        step.advance()
    if s.revision != before:
        actions.append(PublishStatus())
    return Transition(s, actions)


def _append(s: JobState, stage: Stage, state: StageState, reason: str, now: float) -> None:
    s.stage, s.state = stage, state
    s.conditions.append(ConditionEntry(stage, state, s.round, reason, now))
    del s.conditions[:-MAX_CONDITIONS]
    s.revision += 1


class _Step:
    """One event's worth of work on a (copied) state."""

    def __init__(self, s: JobState, inputs: JobInputs, ctx: Context, actions: list[Action]):
        self.s, self.inputs, self.ctx, self.actions = s, inputs, ctx, actions

    def note(self, stage: Stage, state: StageState, reason: str) -> None:
        _append(self.s, stage, state, reason, self.ctx.now)

    # -- events --

    def on(self, event: Event) -> None:
        s = self.s
        if isinstance(event, NodeChanged | ServingReported):
            self.sync_targets(event.node)
        elif isinstance(event, _RETARGETING):
            self.sync_targets()
        match event:
            case SamplesReported(total=total, error=error):
                if error:
                    return  # an unreadable index says nothing about how many samples there are
                if total != s.samples:
                    s.revision += 1
                s.samples = total
                if total < s.baseline:
                    s.baseline = total  # the index shrank: count new samples from its new size
                if s.state == "Failed" and s.failed_at_samples is not None and total > s.failed_at_samples:
                    self.next_round("new samples arrived after the failure")
                if self.ctx.settings.event_driven:
                    self.check_train_trigger()
            case Tick():
                self.check_deadline()
                self.rollout_event(ro.Tick())
                if s.collect_deadline is not None and self.ctx.now >= s.collect_deadline \
                        and s.pending_version is not None:
                    self.on_collected(ArtifactsCollected(
                        s.pending_version, False,
                        f"its files did not reach the registry within "
                        f"{self.ctx.settings.collect_timeout_s:g} s"))
                if triggers.check_due(s.last_check, self.ctx.now, self.period()):
                    self.check_train_trigger()
            case TaskReported():
                self.on_task(event)
            case NodeChanged(node=node, state=node_state):
                task = s.task
                if node_state != "online" and task and task.node == node and task.state in ACTIVE_TASK_STATES:
                    self.stop_current()
                    self.attempt_failed(f"node {node} went {node_state} during the task", retry=True)
                self.rollout_event(ro.Tick())
            case SpecChanged():
                s.revision += 1
                self.unstage()
                if s.state == "Failed":
                    self.next_round("the job's manifest changed after the failure")
                self.check_train_trigger()
            case Paused():
                if not s.paused:
                    s.paused = True
                    self.note(s.stage, s.state, "paused: no new task starts until resumed")
            case Resumed():
                if s.paused:
                    s.paused = False
                    self.note(s.stage, s.state, "resumed")
                if s.state == "Failed":
                    self.next_round("resumed after the failure")
                self.check_train_trigger()
            case ArtifactsCollected():
                self.on_collected(event)
            case ServingReported(version=version, node=node, health=health):
                target = s.nodes.get(node)
                if target is not None and health is not None:
                    target.health = health
                    self.rollout_event(ro.Reported(node, health))
                if target is not None and version != target.serving:
                    target.serving = version
                    if version is not None and version == target.desired:
                        self.note(s.stage, s.state, f"node {node} serves model version {version}")
                    else:
                        s.revision += 1
                    self.summarise_serving()
            case RolledBack(version=version, now=now):
                self.roll_back(version, now)
            case RolloutCommand(command=command):
                self.rollout_command(command)
            case Deleted():
                if s.task and s.task.state in ACTIVE_TASK_STATES:
                    self.stop_current()
                s.deleted = True
                s.revision += 1

    def roll_back(self, version: int | None, now: bool = False) -> None:
        """Point the deploy node back at a registered version. The stage is left alone: a round
        in progress carries on, and its candidate is compared with the version now serving."""
        s = self.s
        known = sorted(v.version for v in s.versions)
        if version is None:
            usable = [v.version for v in s.versions
                      if v.collected is not False and v.version not in s.failed_versions]
            earlier = [v for v in usable if s.deployed_version is not None and v < s.deployed_version]
            if not earlier:
                raise RollbackError(f"job {s.ref} has no version before "
                                    f"{s.deployed_version or 'the initial model'} to roll back to")
            version = earlier[-1]
        if version not in known:
            raise RollbackError(f"job {s.ref} has no model version {version}; registered: "
                                f"{', '.join(map(str, known)) or 'none'}")
        record = s.version(version)
        if record is None or record.collected is False:
            raise RollbackError(f"job {s.ref} version {version} was never deployed: its files "
                                "did not reach the registry")
        if version == s.deployed_version and (s.rollout is None or not s.rollout.active):
            return
        previous = s.deployed_version
        rolling = s.rollout if s.rollout is not None and s.rollout.active else None
        if rolling is not None and version == rolling.previous and not now:
            self.rollout_event(ro.Abort(f"rolled back to version {version}"), mark=False)
            return
        if now or self.policy() is None:
            if s.rollout is not None and s.rollout.active:
                s.rollout.phase, s.rollout.ended = "Aborted", self.ctx.now
                s.rollout.reason = f"replaced by an immediate rollback to version {version}"
            s.deployed_version = version
            nodes = self.deploy_everywhere(version)
            self.note(s.stage, s.state,
                      f"rolled back from version {previous} to {version} on {self.where_to(nodes)}")
            return
        self.note(s.stage, s.state, f"rolling back from version {previous} to {version} "
                  "through the staged rollout (--now: every node at once)")
        self.deploy(version)

    # -- staged rollout --

    def policy(self) -> ro.Policy | None:
        """The job's rollout policy; None: every target gets a version at once."""
        spec = self.inputs.job.spec.deploy_spec.rollout
        return ro.Policy.of(spec) if spec is not None else None

    def rollout_context(self, policy: ro.Policy) -> ro.Context:
        return ro.Context(self.ctx.now, policy, self.ctx.online_nodes)

    def deploy(self, version: int) -> list[str]:
        """Serve ``version``: every target at once, or through a staged rollout (canaries
        first) when the manifest asks for one. Returns the nodes that get it now."""
        s, policy = self.s, self.policy()
        if policy is None:
            s.deployed_version = version
            return self.deploy_everywhere(version)
        previous = s.deployed_version
        current = s.rollout
        if current is not None and current.active:
            # the version it was rolling out is unproven: its nodes go back to the proven one
            previous = current.previous
            self.rollout_event(ro.Abort(f"superseded by model version {version}"), mark=False)
        self.sync_targets()
        s.deployed_version = version
        baselines = {node: ro.Baseline(t.health.fps if t.health else None,
                                       t.health.restarts if t.health else 0)
                     for node, t in s.nodes.items()}
        s.rollout, actions = ro.start(version, previous, baselines, self.rollout_context(policy))
        return self.apply_rollout(actions, mark=True)

    def rollout_event(self, event: ro.Event, mark: bool = True) -> None:
        s, policy = self.s, self.policy()
        if s.rollout is None or not s.rollout.active or policy is None:
            return
        s.rollout, actions = ro.handle(s.rollout, event, self.rollout_context(policy))
        self.apply_rollout(actions, mark)

    def apply_rollout(self, actions: list[ro.Action], mark: bool) -> list[str]:
        """Carry out what the rollout decided; returns the nodes sent a version."""
        s, sent = self.s, []
        rollout = s.rollout
        assert rollout is not None
        for action in actions:
            match action:
                case ro.Send(node=node, version=version):
                    target = s.nodes.get(node)
                    if target is None:
                        continue
                    target.desired = version
                    self.actions.append(DeployModel(node, version))
                    sent.append(node)
                case ro.Note(reason=reason):
                    self.note(s.stage, s.state, reason)
                case ro.Ended(ok=True, reason=reason):
                    self.note(s.stage, s.state, f"rollout completed: {reason}")
                case ro.Ended(ok=False, reason=reason):
                    s.deployed_version = rollout.previous
                    if mark and rollout.version is not None:
                        s.failed_versions[rollout.version] = reason
                        del_oldest(s.failed_versions)
                    what = "failed" if rollout.phase == "Failed" else "stopped"
                    marked = (f"; version {rollout.version} is marked failed"
                              if mark and rollout.version is not None else "")
                    self.note(s.stage, s.state, f"rollout of version {rollout.version} {what}: "
                              f"{reason}{marked}")
        self.summarise_serving()
        return sent

    def unstage(self) -> None:
        """The manifest no longer asks for a staged rollout: the one under way ends, and every
        target gets its version at once (a rollout never stays half-way)."""
        s, rollout = self.s, self.s.rollout
        if rollout is None or not rollout.active or self.policy() is not None:
            return
        rollout.phase, rollout.ended = "Completed", self.ctx.now
        rollout.reason = "the manifest no longer has deploySpec.rollout"
        if rollout.version is not None:
            nodes = self.deploy_everywhere(rollout.version)
            self.note(s.stage, s.state, f"rollout of version {rollout.version} ended: the "
                      f"manifest no longer has deploySpec.rollout; sent to {self.where_to(nodes)}")

    def rollout_command(self, command: str) -> None:
        s = self.s
        if s.rollout is None or not s.rollout.active:
            raise RolloutError(f"job {s.ref} has no rollout in progress"
                               + (f" (the last one: {s.rollout.phase})" if s.rollout else ""))
        event: ro.Event = (ro.Pause() if command == "pause" else ro.Resume()
                           if command == "resume" else ro.Abort())
        self.rollout_event(event)

    # -- targets --

    def deploy_targets(self) -> DeployTargets:
        return self.inputs.job.spec.deploy_targets()

    def current_targets(self) -> frozenset[str]:
        return targets(self.deploy_targets(), self.ctx.node_labels)

    def where_to(self, nodes: Iterable[str]) -> str:
        """``node edge0``, ``nodes edge0, edge1``, or why there is none."""
        names = sorted(nodes)
        if not names:
            selector = self.deploy_targets().selector
            shown = selector.describe() if selector else "{}"
            return f"no node yet: no node matches nodeSelector {shown}"
        return f"node{'s' if len(names) > 1 else ''} {', '.join(names)}"

    def sync_targets(self, node: str | None = None) -> None:
        """Compare the target nodes with the ones the job deploys to: a new one gets the
        serving version, one that left loses its inference task; each change is a condition
        (except at the first look, which only places the job). ``node``: only that node can
        have changed (its own status), so only its labels are read."""
        s, deploy = self.s, self.deploy_targets()
        if node is None or not s.placed:
            now = self.current_targets()
        else:
            labels = self.ctx.node_labels.get(node, {})
            others = frozenset(s.nodes) - {node}
            now = others | {node} if deploy.may_target(node, labels) else others
        quiet, s.placed = not s.placed, True
        rolling = s.rollout if s.rollout is not None and s.rollout.active else None
        for node in sorted(s.nodes.keys() - now):
            del s.nodes[node]
            self.actions.append(RemoveInference(node))
            if rolling is not None:
                self.rollout_event(ro.Left(node))
            if not quiet:
                why = ("its labels no longer match nodeSelector "
                       f"{deploy.selector.describe()}" if deploy.selector else "no longer named")
                self.note(s.stage, s.state, f"node {node} left the job's targets ({why}); its "
                          "inference task is removed")
        for node in sorted(now - s.nodes.keys()):
            # during a rollout a newcomer serves the proven version until its wave
            version = rolling.previous if rolling is not None else s.deployed_version
            s.nodes[node] = NodeTarget(desired=version)
            self.actions.append(DeployModel(node, version))
            if rolling is not None:
                self.rollout_event(ro.Joined(node))
            if not quiet:
                why = ("named in deploySpec" if node in deploy.names else
                       f"its labels match nodeSelector {deploy.selector.describe()}"
                       if deploy.selector else "")
                serves = f"model version {version}" if version else "the initial model"
                self.note(s.stage, s.state, f"node {node} joined the job's targets ({why}); it "
                          f"gets {serves}")
        self.check_selector(deploy)
        self.summarise_serving()

    def check_selector(self, deploy: DeployTargets) -> None:
        """A selector that matches no node is a condition the job shows, not a failure: it
        deploys to a node as soon as one declares matching labels."""
        s, selector = self.s, deploy.selector
        # every node the selector matches is a target: looking at the targets is enough
        selected = selector is not None and any(
            selector.matches(self.ctx.node_labels.get(n, {})) for n in s.nodes)
        no_match = selector is not None and not selected
        if no_match == s.no_match or selector is None:
            s.no_match = no_match
            return
        s.no_match = no_match
        if no_match:
            self.note(s.stage, s.state, f"no node matches nodeSelector {selector.describe()}; "
                      "the job goes on, and a node that declares matching labels gets the "
                      "serving version")
        else:
            self.note(s.stage, s.state, f"a node matches nodeSelector {selector.describe()} again")

    def deploy_everywhere(self, version: int) -> list[str]:
        """Every target node is to serve ``version`` (a deploy or a rollback); returns them."""
        s = self.s
        now = self.current_targets()
        for node in sorted(s.nodes.keys() - now):
            del s.nodes[node]
            self.actions.append(RemoveInference(node))
        nodes = sorted(now)
        for node in nodes:
            target = s.nodes.setdefault(node, NodeTarget())
            target.desired = version
            self.actions.append(DeployModel(node, version))
        s.placed = True
        self.summarise_serving()
        return nodes

    def summarise_serving(self) -> None:
        s = self.s
        served = {t.serving for t in s.nodes.values()}
        s.serving_version = served.pop() if len(served) == 1 else None

    def period(self) -> float:
        return float(self.inputs.job.spec.train_spec.trigger.check_period_seconds)

    def check_train_trigger(self) -> None:
        s = self.s
        if (s.stage, s.state) != ("Train", "Waiting") or s.paused:
            return
        s.last_check = self.ctx.now
        trigger = self.inputs.job.spec.train_spec.trigger
        decision = triggers.train_decision(
            trigger.condition,
            trigger.timer,
            triggers.new_samples(s.samples, s.baseline),
            triggers.minute_of_day(self.ctx.now, self.ctx.tz),
        )
        if decision.holds:
            s.round_samples = [s.baseline, s.samples]
            s.attempt, s.retry_at, s.candidate = 0, None, None
            self.note("Train", "Ready", f"train trigger: {decision.reason}")

    def next_round(self, why: str) -> None:
        s = self.s
        s.round += 1
        s.task, s.attempt, s.retry_at, s.candidate, s.round_samples = None, 0, None, None, None
        s.failed_at_samples = None
        s.last_check = None
        self.note("Train", "Waiting", f"round {s.round}: {why}; waiting for the train trigger")

    # -- tasks --


    def current_task_message(self) -> Task:
        """The Task message of the current attempt (for a stop)."""
        s, task = self.s, self.s.task
        assert task is not None
        return Task(
            task_id=task.task_id, attempt=task.attempt, action="stop", job=s.ref,
            role=task.role, round=task.round, ts=self.ctx.now,
        )

    def stop_current(self) -> None:
        task = self.s.task
        if task is not None:
            self.actions.append(StopTask(task.node, self.current_task_message()))
            task.state = "Failed"

    def advance(self) -> None:
        """Start what is ready: the task of a Ready stage, once its node is online."""
        s, ctx = self.s, self.ctx
        if s.state != "Ready" or s.stage not in ("Train", "Eval") or s.paused:
            return
        if s.retry_at is not None and ctx.now < s.retry_at:
            return
        # train and eval run where the stage names, else where the data is
        node = self.inputs.train_node if s.stage == "Train" else self.inputs.eval_node
        if node not in ctx.online_nodes:
            reason = f"waiting for node {node} to be online"
            if s.conditions[-1].reason != reason:
                self.note(s.stage, "Ready", reason)
            return
        s.attempt += 1
        s.retry_at = None
        settings = ctx.settings
        samples = self.round_samples()
        if s.stage == "Train":
            timeout = settings.train_timeout_s
            task = build_train_task(self.inputs, s.round, s.attempt, samples, s.deployed(), timeout)
        else:
            timeout = settings.eval_timeout_s
            task = build_eval_task(
                self.inputs, s.round, s.attempt, s.candidate, s.deployed(), timeout,
                sample_split(self.inputs, s.round, samples,
                             earlier_rounds(self.inputs, s.round, s.trained_rounds)),
            )
        task = task.model_copy(update={"ts": ctx.now})
        s.task = TaskRun(
            task_id=task.task_id, role=task.role, round=s.round, attempt=s.attempt, node=node,
            state="Starting", sent_at=ctx.now, deadline=ctx.now + timeout,
        )
        self.actions.append(DispatchTask(node, task))
        self.note(s.stage, "Starting", f"task {task.task_id} attempt {s.attempt} sent to node {node}")

    def round_samples(self) -> tuple[int, int]:
        """[start, end) of the samples the current round trains on."""
        s = self.s
        start, end = s.round_samples or (s.baseline, s.samples)
        return start, end

    def check_deadline(self) -> None:
        task = self.s.task
        if task and task.state in ACTIVE_TASK_STATES and self.ctx.now >= task.deadline:
            self.stop_current()
            self.attempt_failed(
                f"task {task.task_id} attempt {task.attempt} timed out after "
                f"{task.deadline - task.sent_at:g} s", retry=True,
            )

    def on_task(self, event: TaskReported) -> None:
        s, task = self.s, self.s.task
        if (
            task is None
            or event.task_id != task.task_id
            or event.attempt != task.attempt
            or event.seq <= task.last_seq
            or task.state not in ACTIVE_TASK_STATES
        ):
            return  # another attempt's, a duplicate, or stale
        task.last_seq = event.seq
        if event.state in ("Starting", "Running"):
            if isinstance(event.result.get("progress"), int | float):
                task.progress = float(event.result["progress"])
            if task.state != "Running" or s.state != "Running":
                task.state = "Running"
                self.note(s.stage, "Running", f"task {task.task_id} running on node {task.node}")
            return
        if event.state == "Failed":
            detail = event.message or "no message"
            code = f" (exit code {event.exit_code})" if event.exit_code is not None else ""
            task.state = "Failed"
            self.attempt_failed(f"{detail}{code}", retry=event.exit_code != contract.EXIT_BAD_INPUT)
            return
        if event.state == "Completed":
            task.state = "Completed"
            if s.stage == "Train":
                self.train_completed(event)
            elif s.stage == "Eval":
                self.eval_completed(event)

    def attempt_failed(self, reason: str, retry: bool) -> None:
        s, settings = self.s, self.ctx.settings
        if s.task is not None:
            s.task.state = "Failed"
        if retry and s.attempt < settings.max_attempts:
            delay = settings.retry_delay(s.attempt)
            s.retry_at = self.ctx.now + delay
            self.note(s.stage, "Failed", f"attempt {s.attempt} failed: {reason}")
            self.note(
                s.stage, "Ready",
                f"retry: attempt {s.attempt + 1} of {settings.max_attempts} in {delay:g} s",
            )
            return
        tried = f"after {s.attempt} attempt{'s' if s.attempt != 1 else ''}"
        self.note(s.stage, "Failed", f"{reason}; gave up {tried}")
        s.failed_at_samples = s.samples
        s.task = None

    def train_completed(self, event: TaskReported) -> None:
        s = self.s
        artifacts, problem = _model_artifacts(event, round_dir(self.inputs, s.round))
        if problem:
            self.attempt_failed(f"train completed without a usable model: {problem}", retry=False)
            return
        s.candidate = Candidate(artifacts, _summary(event.result))
        # The round consumed its samples: num_of_samples counts from here on.
        start, end = s.round_samples or [0, s.samples]
        s.baseline = end
        s.trained_rounds = [r for r in s.trained_rounds if r[0] != s.round] + [[s.round, start, end]]
        del s.trained_rounds[:-MAX_TRAINED_ROUNDS]
        self.note("Train", "Completed", f"task {event.task_id} produced {len(artifacts)} artifact(s)")
        s.task, s.attempt, s.retry_at = None, 0, None
        self.note("Eval", "Ready", "evaluating the candidate against the serving model")

    def eval_completed(self, event: TaskReported) -> None:
        s = self.s
        models = event.result.get("models")
        if not isinstance(models, list) or not models or not isinstance(models[0], dict) \
                or not isinstance(models[0].get("metrics"), dict):
            self.attempt_failed("eval result has no models[0].metrics", retry=False)
            return
        candidate = models[0]["metrics"]
        # models[1] is the model serving now: the deployed version, else the initial model
        serving = None
        if len(models) > 1 and isinstance(models[1], dict):
            serving = models[1].get("metrics") if isinstance(models[1].get("metrics"), dict) else None
        condition = self.inputs.job.spec.deploy_spec.trigger.condition
        decision = triggers.deploy_decision(condition, candidate, serving, self.inputs.class_names())
        if decision.fails_round:
            self.attempt_failed(decision.reason, retry=False)
            return
        if decision.holds:
            decision = self.forgetting(decision, event.result.get("rounds"))
        s.task = None
        if not decision.holds:
            self.note("Eval", "Completed", f"candidate not deployed: {decision.reason}")
            self.next_round("the candidate was not deployed")
            self.check_train_trigger()
            return
        self.note("Eval", "Completed", f"deploy trigger: {decision.reason}")
        number = max((v.version for v in s.versions), default=0) + 1
        version = ModelVersion(
            version=number,
            round=s.round,
            artifacts=s.candidate.artifacts if s.candidate else (),
            metrics={k: metric_value(candidate.get(k)) for k in VERSION_METRICS},
            decision=decision.reason,
            time=self.ctx.now,
        )
        s.versions.append(version)
        s.pending_version = number
        s.collect_deadline = self.ctx.now + self.ctx.settings.collect_timeout_s
        self.actions.append(RegisterModel(version))
        self.actions.append(CollectArtifacts(number, self.inputs.train_node))  # train wrote them
        self.note("Deploy", "Running",
                  f"model version {number} registered; collecting its files for the registry")

    def forgetting(self, passed: triggers.Decision, rounds: object) -> triggers.Decision:
        """The deploy trigger's decision once earlier rounds are checked: a candidate that
        forgets one of them is not deployed, and the reason names the round."""
        trigger = self.inputs.job.spec.deploy_spec.trigger
        scores = triggers.round_scores(trigger.condition, rounds, self.inputs.class_names())
        check = triggers.forgetting_decision(trigger.condition, trigger.forgetting_margin, scores)
        if not check.holds:
            return triggers.Decision(False, f"{passed.reason}, but it {check.reason}", passed.value)
        return triggers.Decision(True, f"{passed.reason}; {check.reason}", passed.value)

    def on_collected(self, event: ArtifactsCollected) -> None:
        s = self.s
        if event.version != s.pending_version or (s.stage, s.state) != ("Deploy", "Running"):
            return  # a late answer about a collection that already ended
        s.pending_version = s.collect_deadline = None
        number = event.version
        if not event.ok:
            s.versions = [replace(v, collected=False, collect_error=event.reason)
                          if v.version == number else v for v in s.versions]
            self.note("Deploy", "Failed", f"model version {number} not deployed: {event.reason}")
            self.next_round(f"version {number} could not be deployed; version "
                            f"{s.deployed_version or '(initial model)'} keeps serving")
            self.check_train_trigger()
            return
        nodes = self.deploy(number)
        staged = " (staged rollout: canaries first)" if self.policy() is not None else ""
        self.note("Deploy", "Completed",
                  f"model version {number} published to {self.where_to(nodes)}{staged}")
        self.next_round(f"version {number} deployed")
        # Samples that arrived during this round may already be enough for the next one.
        self.check_train_trigger()


#: Failed versions remembered with their reason.
MAX_FAILED_VERSIONS = 100


def del_oldest(failed: dict[int, str]) -> None:
    """Keep the reasons of the newest :data:`MAX_FAILED_VERSIONS` failed versions."""
    for version in sorted(failed)[:-MAX_FAILED_VERSIONS]:
        del failed[version]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The small part of a train result worth keeping in the job's state."""
    keep = ("loss", "epochs", "samples", "duration_s")
    return {k: result[k] for k in keep if k in result}


def _model_artifacts(event: TaskReported, out_dir: str) -> tuple[tuple[Artifact, ...], str]:
    """Artifacts of a train result (``result["artifacts"]`` with paths, else the message's
    ``artifacts``); or the reason there are none."""
    raw = event.result.get("artifacts") or event.artifacts
    if not isinstance(raw, list) or not raw:
        return (), "no artifacts reported"
    artifacts = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            return (), f"artifact {i} is not a mapping"
        name, sha, size, path = item.get("name"), item.get("sha256"), item.get("size"), item.get("path")
        if not isinstance(name, str) or not name or not isinstance(sha, str) or len(sha) != 64 \
                or not isinstance(size, int) or size < 0:
            return (), f"artifact {i} needs name, sha256 and size (got {sorted(item)})"
        artifacts.append(Artifact(name, sha, size, path if isinstance(path, str) else f"{out_dir}/{name}"))
    return tuple(artifacts), ""


def status_fields(s: JobState) -> dict[str, Any]:
    """The JobStatus message fields of a state (``protocol.messages.JobStatus(**...)``)."""
    return {
        "namespace": s.namespace,
        "name": s.name,
        "revision": s.revision,
        "stage": s.stage,
        "state": s.state,
        "round": s.round,
        "deployed_version": s.deployed_version,
        "samples": s.samples,
        "paused": s.paused,
        "conditions": [
            {"stage": c.stage, "state": c.state, "round": c.round, "reason": c.reason, "time": c.time}
            for c in s.conditions[-50:]
        ],
        "ts": s.conditions[-1].time if s.conditions else 0.0,
    }


__all__ = [
    "Action", "Context", "DeployModel", "DispatchTask", "Event", "JobState", "MachineSettings",
    "NodeChanged", "NodeTarget", "PublishStatus", "RegisterModel", "Paused", "Resumed", "Deleted",
    "RemoveInference", "Retarget",
    "SamplesReported", "SpecChanged", "StopTask", "TaskReported", "Tick", "Transition",
    "ArtifactsCollected", "CollectArtifacts", "RolledBack", "RollbackError", "RolloutCommand",
    "RolloutError", "ServingReported", "handle", "new_job", "status_fields", "task_id",
]
