"""The node's decisions, pure: what the agent does about each thing that happens to it.

``handle(state, event, ctx)`` returns the node's next state and the actions the daemon
(:mod:`edge_agent.daemon`) must carry out, in order. Nothing here does I/O or reads the clock:
the time, the outbox backlog and what the worker processes are doing come in ``ctx``, so every
path is testable without a broker, and the same events replayed give the same result.

What it decides:

- which control messages are refused (a Task whose id is not its topic's, a desired state for
  another node) and which are queued to be applied one at a time;
- which desired-state generation applies: one at most once, so the copy the broker hands back
  at every reconnection, or an older one, changes nothing; which tasks it stops (no longer
  listed, or listed with action ``stop``) and which it starts or keeps running;
- once a task's model is at hand: start the worker, or leave it, or hot-swap the new version over
  the local channel, or restart the worker when it has no channel, or let a worker waiting for
  its restart start with the new version;
- which model version each inference task serves (its worker's ``hello``, ``stats``,
  ``swapped``; nothing after the worker dies or the task ends): the node status's ``serving``;
  on a node with cameras, per camera (each its own worker, :mod:`edge_agent.cameras`), with its
  frame rate or why it serves nothing: the status's ``cameras``;
- when the status is published again: the backlog, the served versions or the restarts changed,
  or an inference worker's version, up or down, or a model it refused changed, at most every
  :data:`STATUS_MIN_INTERVAL_S`; the rest of its health (its FPS, its shadow comparison)
  changed, at most every :data:`HEALTH_INTERVAL_S`;
- which final progress reports the cloud has not received yet: sent again at every connection.

Some actions ask the daemon for a fact only it can learn, and it answers with an event:
:class:`PrepareModels` with :class:`ModelReady`, :class:`SendSwap` with :class:`SwapSent`,
:class:`PublishProgress` with :class:`ProgressSent`, :class:`PublishStatus` with
:class:`StatusPublished`, :class:`RecordGeneration` with :class:`GenerationApplied`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from edge_agent import cameras
from edge_agent.deployment import PreparedModel
from protocol import topics
from protocol import worker_channel as wc
from protocol import worker_contract as contract
from protocol.data_policies import UploadStatus
from protocol.errors import ProtocolError
from protocol.messages import CameraStatus, DesiredState, Message, Task, TaskHealth, TaskProgress

STATUS_MIN_INTERVAL_S = 2.0
#: A status whose only news is a worker's health (a canary's shadow comparison growing) waits
#: this long after the last one: FPS changes with every stats report.
HEALTH_INTERVAL_S = 10.0
FINAL_STATES = ("Completed", "Failed")

# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedStatus:
    """What the last status the broker accepted said."""

    backlog: int
    serving: dict[str, int]
    restarts: dict[str, int]
    at: float
    health: dict[str, TaskHealth] = field(default_factory=dict)
    uploads: UploadStatus | None = None
    cameras: dict[str, dict[str, CameraStatus]] = field(default_factory=dict)


@dataclass
class NodeState:
    node: str
    #: the node watches dataset indexes: their sample counts are published at each connection
    watches_datasets: bool = False
    applied_generation: int = -1
    #: start tasks of the applied generation: a later one stops those it no longer lists
    desired_tasks: frozenset[str] = frozenset()
    #: inference worker id (the task id, or ``<task id>@<camera>``) -> model version it serves
    serving: dict[str, int] = field(default_factory=dict)
    worker_stats: dict[str, wc.Stats] = field(default_factory=dict)
    #: workers that reported frames served (with the initial model too) and have not exited
    #: since: a worker's hello comes before its video source opens, its stats after
    greeted: frozenset[str] = frozenset()
    #: camera workers that ever reported frames: only their restarts are crashes of the task
    served_once: frozenset[str] = frozenset()
    #: camera worker id -> why it serves nothing (it exited: its camera does not open, ...)
    camera_errors: dict[str, str] = field(default_factory=dict)
    #: inference worker id -> why the last model it was given would not load
    swap_errors: dict[str, str] = field(default_factory=dict)
    #: task id -> its final report, not received by the broker yet
    unsent_final: dict[str, TaskProgress] = field(default_factory=dict)
    published: PublishedStatus | None = None


# --- context -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerView:
    """A task's live attempt as the worker runner sees it now."""

    task: Task  # the version of the task the attempt stands for (retargeted after a swap)
    alive: bool  # False while a service worker waits to be started again
    restarts: int | None = None  # None: a worker that runs once

    @property
    def started_version(self) -> int | None:
        """The model version the worker was started with (``EDGELOOP_MODEL_VERSION``)."""
        version = self.task.env.get(contract.MODEL_VERSION, "")
        return int(version) if version.isdigit() else None


@dataclass(frozen=True)
class Context:
    now: float  # a monotonic clock, in seconds
    workers: Mapping[str, WorkerView] = field(default_factory=dict)
    backlog: int = 0  # hard examples waiting in the outbox
    connected: bool = True
    uploads: UploadStatus | None = None  # the upload counters, as the status reports them

    def restarts(self) -> dict[str, int]:
        return {t: w.restarts for t, w in self.workers.items() if w.restarts is not None}

    def workers_of(self, task_id: str) -> dict[str, WorkerView]:
        """The task's live workers by id: the one, or one per camera."""
        return {w: self.workers[w] for w in cameras.workers_of(task_id, self.workers)}


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlReceived:
    """A message arrived on the node's ``desired`` or ``task/{id}`` topic."""

    topic: str
    message: Message


@dataclass(frozen=True)
class DesiredReceived:
    """A queued desired state, now being applied."""

    desired: DesiredState


@dataclass(frozen=True)
class GenerationApplied:
    generation: int
    tasks: frozenset[str]


@dataclass(frozen=True)
class TaskReceived:
    """A queued Task message, now being applied."""

    task: Task


@dataclass(frozen=True)
class ModelReady:
    """The models of a start task are on disk; ``model`` is what its worker should serve (None:
    the task serves none)."""

    task: Task
    model: PreparedModel | None
    from_desired: bool


@dataclass(frozen=True)
class ModelUnavailable:
    """The models of a start task could not be had (a download failed, the model check
    discarded the file)."""

    task: Task
    reason: str


@dataclass(frozen=True)
class SwapSent:
    task: Task
    swap: wc.Swap
    delivered: bool  # False: the worker has no channel
    camera: str | None = None


@dataclass(frozen=True)
class WorkerHello:
    task_id: str
    model_version: str | None


@dataclass(frozen=True)
class WorkerStats:
    task_id: str
    stats: wc.Stats


@dataclass(frozen=True)
class WorkerSwapped:
    task_id: str
    swapped: wc.Swapped


@dataclass(frozen=True)
class WorkerExited:
    """A service worker died and is about to be started again (``task_id``: its worker id)."""

    task_id: str
    reason: str = ""


@dataclass(frozen=True)
class Recovered:
    """Final reports of the attempts an earlier run of the agent left unfinished."""

    reports: tuple[TaskProgress, ...]


@dataclass(frozen=True)
class ProgressReported:
    """The worker runner reports a task's progress."""

    report: TaskProgress


@dataclass(frozen=True)
class ProgressSent:
    report: TaskProgress
    delivered: bool


@dataclass(frozen=True)
class Connected:
    """The MQTT connection is (re)established."""


@dataclass(frozen=True)
class StatusDue:
    """Time to check whether the status must be published again."""


@dataclass(frozen=True)
class StatusPublished:
    backlog: int
    serving: dict[str, int]
    restarts: dict[str, int]
    health: dict[str, TaskHealth] = field(default_factory=dict)
    uploads: UploadStatus | None = None
    cameras: dict[str, dict[str, CameraStatus]] = field(default_factory=dict)


Event = (
    ControlReceived | DesiredReceived | GenerationApplied | TaskReceived | ModelReady
    | ModelUnavailable | SwapSent | WorkerHello | WorkerStats | WorkerSwapped | WorkerExited | Recovered | ProgressReported
    | ProgressSent | Connected | StatusDue | StatusPublished
)

# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueControl:
    """Apply ``message`` later, after those queued before it."""

    message: DesiredState | Task


@dataclass(frozen=True)
class ReportError:
    code: str
    reason: str
    about: str = ""


@dataclass(frozen=True)
class StopWorker:
    task_id: str
    reason: str


@dataclass(frozen=True)
class HandleTask:
    """Let the worker runner obey a Task message: an attempt handled before is not run again."""

    task: Task


@dataclass(frozen=True)
class PrepareModels:
    """Get the task's models on disk; answered by :class:`ModelReady`."""

    task: Task
    from_desired: bool


@dataclass(frozen=True)
class FailTask:
    """Report that ``task`` could not start (its models could not be had)."""

    task: Task
    reason: str


@dataclass(frozen=True)
class EnsureRunning:
    """The desired state lists ``task``: run it unless this attempt runs now."""

    task: Task


@dataclass(frozen=True)
class StartWorker:
    task: Task
    why: str = ""


@dataclass(frozen=True)
class SendSwap:
    """Hand the new model to the task's running worker (on ``camera``, on a node with
    cameras); answered by :class:`SwapSent`."""

    task: Task
    swap: wc.Swap
    camera: str | None = None

    @property
    def worker(self) -> str:
        return cameras.worker_id(self.task.task_id, self.camera)


@dataclass(frozen=True)
class Retarget:
    """The task's live attempt now stands for this version of the task (no restart)."""

    task: Task
    why: str


@dataclass(frozen=True)
class CloseTask:
    """The task ended: learn the artifacts its result lists, drop its live-view panel."""

    report: TaskProgress


@dataclass(frozen=True)
class PublishProgress:
    """Publish ``report``; answered by :class:`ProgressSent`."""

    report: TaskProgress


@dataclass(frozen=True)
class PublishStatus:
    """Publish the retained ``online`` status; answered by :class:`StatusPublished`."""

    backlog: int
    serving: dict[str, int]
    restarts: dict[str, int]
    health: dict[str, TaskHealth] = field(default_factory=dict)
    uploads: UploadStatus | None = None
    cameras: dict[str, dict[str, CameraStatus]] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishSamples:
    """Publish the current sample counts of the watched indexes."""


@dataclass(frozen=True)
class RecordGeneration:
    """Every other action of the generation is done; answered by :class:`GenerationApplied`.

    Last of its generation, so that one whose application failed half-way is applied again when
    its copy comes back.
    """

    generation: int
    tasks: frozenset[str]


Action = (
    QueueControl | ReportError | StopWorker | HandleTask | PrepareModels | FailTask
    | EnsureRunning | StartWorker | SendSwap | Retarget | CloseTask | PublishProgress | PublishStatus
    | PublishSamples | RecordGeneration
)


@dataclass
class Transition:
    state: NodeState
    actions: list[Action]


# --- the decisions -----------------------------------------------------------------------------


def handle(state: NodeState, event: Event, ctx: Context) -> Transition:
    """The node's state after ``event`` and what to do about it. ``state`` is not modified."""
    s = replace(
        state,
        serving=dict(state.serving),
        worker_stats=dict(state.worker_stats),
        camera_errors=dict(state.camera_errors),
        swap_errors=dict(state.swap_errors),
        unsent_final=dict(state.unsent_final),
    )
    return Transition(s, _decide(s, event, ctx))


def _decide(s: NodeState, event: Event, ctx: Context) -> list[Action]:
    match event:
        case ControlReceived(topic, message):
            return _control(s, topic, message)
        case DesiredReceived(desired):
            return _desired(s, desired)
        case GenerationApplied(generation, tasks):
            s.applied_generation, s.desired_tasks = generation, tasks
        case TaskReceived(task):
            return [HandleTask(task) if task.action == "stop" else PrepareModels(task, False)]
        case ModelReady(task, model, from_desired):
            return _model_ready(s, task, model, from_desired, ctx)
        case ModelUnavailable(task, reason):
            return _model_unavailable(s, task, reason, ctx)
        case SwapSent(task, swap, delivered, _camera):
            return _swap_sent(task, swap.version, delivered)
        case WorkerHello() | WorkerStats() | WorkerSwapped() | WorkerExited():
            return _worker(s, event, ctx)
        case Recovered(reports):
            s.unsent_final.update((r.task_id, r) for r in reports)
        case ProgressReported(report):
            return _progress(s, report)
        case ProgressSent(report, delivered):
            _sent(s, report, delivered)
        case Connected():
            return _connected(s, ctx)
        case StatusDue():
            return _status_due(s, ctx)
        case StatusPublished(backlog, serving, restarts, health, uploads, statuses):
            s.published = PublishedStatus(backlog, dict(serving), dict(restarts), ctx.now,
                                          dict(health), uploads, dict(statuses))
    return []


# -- control messages ---------------------------------------------------------------------------


def _control(s: NodeState, topic: str, message: Message) -> list[Action]:
    """Refuse what is not for this node or contradicts its topic; queue the rest."""
    if isinstance(message, Task):
        try:
            route_task = topics.parse(topic).task
        except ProtocolError as exc:
            return [ReportError("protocol", str(exc), topic)]
        if route_task != message.task_id:
            return [ReportError("protocol", f"task id {message.task_id!r} does not match its "
                                            "topic", topic)]
    elif isinstance(message, DesiredState):
        if message.node != s.node:
            return [ReportError("protocol", f"desired state for node {message.node!r} sent to "
                                            f"{s.node!r}", topic)]
    else:
        return []
    return [QueueControl(message)]


def _desired(s: NodeState, desired: DesiredState) -> list[Action]:
    """Stop what the generation drops or stops, run what it starts; nothing for one applied."""
    if desired.generation <= s.applied_generation:
        return []
    wanted = frozenset(t.task_id for t in desired.tasks if t.action == "start")
    actions: list[Action] = [
        StopWorker(task_id, "no longer in the desired state")
        for task_id in sorted(s.desired_tasks - wanted)
    ]
    for task in desired.tasks:
        if task.action == "stop":
            actions.append(StopWorker(task.task_id, "stopped by the desired state"))
        else:
            actions.append(PrepareModels(task, True))
    actions.append(RecordGeneration(desired.generation, wanted))
    return actions


# -- starting and hot-swapping ------------------------------------------------------------------


def _model_ready(
    s: NodeState, task: Task, model: PreparedModel | None, from_desired: bool, ctx: Context
) -> list[Action]:
    """Start the task, or give its running attempt the new model version without a restart
    (each of its workers, on a node with cameras)."""
    runs = ctx.workers_of(task.task_id)
    if not runs or any(r.task.attempt != task.attempt for r in runs.values()) or model is None:
        return [EnsureRunning(task) if from_desired else HandleTask(task)]
    actions: list[Action] = []
    shadow = task.env.get(contract.SHADOW_EVERY, "")
    for worker, run in sorted(runs.items()):
        served = s.serving.get(worker, run.started_version)
        if served == model.version:
            continue
        if not run.alive:
            actions.append(Retarget(task, f"its worker is waiting to be restarted; it will "
                                          f"start with model version {model.version}"))
            continue
        swap = wc.Swap(path=str(model.path), version=str(model.version), sha256=model.sha256,
                       shadow_every=int(shadow) if shadow.isdigit() else 0)
        actions.append(SendSwap(task, swap, cameras.camera_of(worker)))
    return actions


def _swap_sent(task: Task, version: str, delivered: bool) -> list[Action]:
    if delivered:
        return [Retarget(task, f"hot-swapping to model version {version}")]
    return [
        StopWorker(task.task_id, f"restarting with model version {version}"),
        StartWorker(task, f"no channel to its worker; restarting it with model version {version}"),
    ]


# -- what each inference task serves ------------------------------------------------------------


def _worker(
    s: NodeState, event: WorkerHello | WorkerStats | WorkerSwapped | WorkerExited, ctx: Context
) -> list[Action]:
    match event:
        case WorkerHello(task_id, version):
            run = ctx.workers.get(task_id)
            s.swap_errors.pop(task_id, None)  # a new worker loaded its model
            if run is not None and run.task.role == "inference" and task_id not in s.serving:
                # the version it started with, before any swap or stats
                _note_serving(s, task_id, version or run.task.env.get(contract.MODEL_VERSION), ctx)
        case WorkerStats(task_id, stats):
            s.worker_stats[task_id] = stats
            _note_serving(s, task_id, stats.model_version, ctx)
            _greeted(s, task_id, ctx)
        case WorkerSwapped(task_id, swapped) if swapped.ok:
            _note_serving(s, task_id, swapped.version, ctx)
            s.swap_errors.pop(task_id, None)
        case WorkerSwapped(task_id, swapped):
            error = swapped.error or "the worker refused the model"
            s.swap_errors[task_id] = error[:1024]
            return [ReportError("swap_failed", error, task_id)]
        case WorkerExited(task_id, reason):
            # until its successor says hello (with the version it loaded), it serves nothing
            _forget_worker(s, task_id)
            if cameras.camera_of(task_id) is not None:
                s.camera_errors[task_id] = reason or "its worker exited"
    return []


def _model_unavailable(s: NodeState, task: Task, reason: str, ctx: Context) -> list[Action]:
    """A new version for inference workers that run: they serve the old one on, and the
    version's refusal goes into their health as a model they refused would, so a rollout
    hears of it at once. Anything else could not start: the task fails."""
    running = [w for w in cameras.workers_of(task.task_id, ctx.workers) if ctx.workers[w].alive]
    if task.role != "inference" or not running:
        return [FailTask(task, reason)]
    for worker in running:
        s.swap_errors[worker] = reason[:1024]
    return [ReportError("model_unavailable", reason, task.task_id)]


def _note_serving(s: NodeState, task_id: str, version: str | None, ctx: Context) -> None:
    if version is not None and version.isdigit() and task_id in ctx.workers:
        s.serving[task_id] = int(version)


def _greeted(s: NodeState, worker: str, ctx: Context) -> None:
    if worker in ctx.workers:
        s.greeted |= {worker}
        s.served_once |= {worker}
        s.camera_errors.pop(worker, None)


def _forget_worker(s: NodeState, worker: str) -> None:
    s.serving.pop(worker, None)
    s.worker_stats.pop(worker, None)
    s.greeted -= {worker}


def _forget_task(s: NodeState, task_id: str) -> None:
    """The task ended: none of its workers serves anything any more."""
    workers = set(s.serving) | set(s.worker_stats) | s.greeted | set(s.camera_errors)
    for worker in cameras.workers_of(task_id, workers):
        _forget_worker(s, worker)
        s.camera_errors.pop(worker, None)


# -- progress reports ---------------------------------------------------------------------------


def _progress(s: NodeState, report: TaskProgress) -> list[Action]:
    if report.state not in FINAL_STATES:
        return [PublishProgress(report)]
    _forget_task(s, report.task_id)
    return [CloseTask(report), PublishProgress(report)]


def _sent(s: NodeState, report: TaskProgress, delivered: bool) -> None:
    """A final report the broker did not take is kept until a connection takes it."""
    if delivered:
        if s.unsent_final.get(report.task_id) == report:
            del s.unsent_final[report.task_id]
    elif report.state in FINAL_STATES:
        s.unsent_final[report.task_id] = report


def _connected(s: NodeState, ctx: Context) -> list[Action]:
    actions: list[Action] = [_publish_status(s, ctx)]
    if s.watches_datasets:
        actions.append(PublishSamples())
    actions.extend(PublishProgress(report) for report in s.unsent_final.values())
    return actions


# -- node status --------------------------------------------------------------------------------


def _publish_status(s: NodeState, ctx: Context) -> PublishStatus:
    return PublishStatus(ctx.backlog, cameras.serving_by_task(s.serving), _restarts(s, ctx),
                         _health(s, ctx), ctx.uploads, _camera_statuses(s, ctx))


def _restarts(s: NodeState, ctx: Context) -> dict[str, int]:
    """Worker restarts per task, as the status's ``worker_restarts`` says them (the cloud reads
    a task's crashes there): on a node with cameras, the sum over the cameras that have served
    frames, so a camera that never opened does not count as a crashing model."""
    out: dict[str, int] = {}
    for worker, restarts in ctx.restarts().items():
        if cameras.camera_of(worker) is not None and worker not in s.served_once:
            continue
        task = cameras.task_of(worker)
        out[task] = out.get(task, 0) + restarts
    return out


def _camera_statuses(s: NodeState, ctx: Context) -> dict[str, dict[str, CameraStatus]]:
    return cameras.camera_statuses(
        ctx.workers,
        {w: s.serving.get(w) for w in s.greeted},
        {w: stats.fps for w, stats in s.worker_stats.items()},
        s.camera_errors,
    )


def _without_fps(statuses: dict[str, dict[str, CameraStatus]]) -> dict[str, dict[str, tuple]]:
    """What of the cameras' statuses makes a new status worth publishing: not the frame rate,
    which changes with every report."""
    return {task: {camera: (c.version, c.serving, c.error) for camera, c in by_camera.items()}
            for task, by_camera in statuses.items()}


def _health(s: NodeState, ctx: Context) -> dict[str, TaskHealth]:
    """How each inference task's worker does, from its last stats and the runner's view; on a
    node with cameras, its cameras' workers together (:func:`_together`)."""
    out: dict[str, TaskHealth] = {}
    for task_id, run in ctx.workers.items():
        if run.task.role != "inference":
            continue
        stats = s.worker_stats.get(task_id)
        if stats is not None and task_id in s.serving and \
                stats.model_version != str(s.serving[task_id]):
            stats = None  # the version it served before a swap: says nothing of this one
        extra = stats.extra if stats is not None else {}
        fps = extra.get("version_fps")
        agreement = extra.get("shadow_agreement")
        compared = extra.get("shadow_compared")
        out[task_id] = TaskHealth(
            version=s.serving.get(task_id),
            up=run.alive,
            frames=stats.frames if stats is not None else 0,
            fps=round(float(fps if isinstance(fps, int | float) else
                            stats.fps if stats is not None else 0.0), 2),
            hard_examples=stats.hard_examples if stats is not None else 0,
            agreement=(round(float(agreement), 4)
                       if isinstance(agreement, int | float) and 0 <= agreement <= 1 else None),
            compared=compared if isinstance(compared, int) and compared >= 0 else 0,
            shadow=extra.get("shadow_active") is True,
            error=s.swap_errors.get(task_id, ""),
        )
    return _together(out)


def _together(by_worker: dict[str, TaskHealth]) -> dict[str, TaskHealth]:
    """Worker id -> health, as task id -> health. A task on several cameras is judged on the
    cameras that serve (a camera whose URL does not open says nothing of the model): the oldest
    version, the slowest FPS, the lowest agreement, up only when each of them is."""
    grouped: dict[str, list[TaskHealth]] = {}
    for worker, health in sorted(by_worker.items()):
        grouped.setdefault(cameras.task_of(worker), []).append(health)
    out: dict[str, TaskHealth] = {}
    for task, healths in grouped.items():
        if len(healths) == 1:
            out[task] = healths[0]
            continue
        judged = [h for h in healths if h.up and h.frames] or healths
        versions = [h.version for h in judged]
        agreements = [h.agreement for h in judged if h.agreement is not None]
        out[task] = TaskHealth(
            version=None if None in versions else min(v for v in versions if v is not None),
            up=all(h.up for h in judged),
            frames=sum(h.frames for h in judged),
            fps=min(h.fps for h in judged),
            hard_examples=sum(h.hard_examples for h in judged),
            agreement=min(agreements) if agreements else None,
            compared=sum(h.compared for h in judged),
            shadow=any(h.shadow for h in judged),
            # cameras refusing the same model say it once
            error="; ".join(dict.fromkeys(h.error for h in judged if h.error))[:1024],
        )
    return out


def _health_news(now: dict[str, TaskHealth], last: dict[str, TaskHealth]) -> bool:
    """Whether the health says something new beyond FPS jitter: a version, a worker up or
    down, a refused model, a shadow comparison that started or grew, the first frames of the
    version."""
    def gist(health: dict[str, TaskHealth]) -> dict[str, tuple[object, ...]]:
        return {t: (h.version, h.up, h.error, h.compared, h.shadow, h.frames > 0)
                for t, h in health.items()}
    return gist(now) != gist(last)


def _health_verdict(health: dict[str, TaskHealth]) -> dict[str, tuple[object, ...]]:
    """What of the health a rollout decides on at once: the version, the worker up or down, a
    model it refused. A swap refused on its first frame puts the served version back within the
    two seconds between statuses, so the refusal would otherwise wait for the health interval."""
    return {t: (h.version, h.up, h.error) for t, h in health.items()}


def _status_due(s: NodeState, ctx: Context) -> list[Action]:
    """Publish again when what the status says changed, at most every 2 s (every 10 s when
    only a worker's health changed), when connected."""
    last = s.published
    if last is not None:
        since = ctx.now - last.at
        health = _health(s, ctx)
        changed = (ctx.backlog, cameras.serving_by_task(s.serving), _restarts(s, ctx), ctx.uploads,
                   _without_fps(_camera_statuses(s, ctx)), _health_verdict(health)) != (
            last.backlog, last.serving, last.restarts, last.uploads, _without_fps(last.cameras),
            _health_verdict(last.health))
        if since < STATUS_MIN_INTERVAL_S or not changed and (
                since < HEALTH_INTERVAL_S or not _health_news(health, last.health)):
            return []
    return [_publish_status(s, ctx)] if ctx.connected else []
