"""What the demo knows of the running loop, as events arrive, and how the terminal shows it.

The job's stage comes from its retained status topic (``edgeloop/v1/job/{ns}/{name}/status``),
every condition it adds becoming a :class:`Transition` (a round that is not deployed says so, with
its precision_delta, even when the next round begins in the same update); the progress of train
and eval from the dataset node's task progress reports; the version edge0 serves from edge0's
retained node status, and the inference worker's frame rate from edge0's live-view websocket
(the same ``task`` messages the page gets). Nothing is
polled on a timer: each message updates :class:`LoopView` and wakes whoever waits for a
condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgeloop.mqtt import Delivery, MqttClient, MqttSettings
from protocol import topics
from protocol.messages import JobCondition, JobStatus, NodeStatus, TaskProgress
from protocol.topics import Kind

log = logging.getLogger(__name__)


@dataclass
class Transition:
    time: float
    stage: str
    state: str
    round: int
    samples: int
    deployed_version: int | None
    reason: str = ""


@dataclass
class StepProgress:
    """How far a long step is (training the base model, a round's train or eval task)."""

    what: str
    fraction: float
    message: str
    #: when the step started (first report), on the demo's clock
    since: float

    def left_s(self, now: float) -> float | None:
        """Seconds left at the pace so far; None until the pace means something."""
        return remaining_seconds(self.fraction, now - self.since)

    def describe(self, now: float) -> str:
        left = self.left_s(now)
        estimate = f", about {_duration(left)} left" if left is not None else ""
        detail = f": {self.message}" if self.message else ""
        return f"{self.what} {self.fraction:.0%}{estimate}{detail}"


def remaining_seconds(fraction: float, elapsed_s: float) -> float | None:
    """Time left if the rest goes at the pace of what is done: None before 2 % or 5 s (the
    first moments, loading and compiling, say nothing of the pace)."""
    if fraction < 0.02 or elapsed_s < 5.0 or fraction >= 1.0:
        return None
    return elapsed_s * (1.0 - fraction) / fraction


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@dataclass
class LoopView:
    """The loop as last reported; ``changed`` fires on every update."""

    started: float = field(default_factory=time.time)
    step: str = "starting"
    domain: str = "-"
    stage: str = "-"
    state: str = "-"
    round: int = 0
    samples: int = 0
    deployed_version: int | None = None
    serving: int | None = None
    edge_online: bool = False
    fps: float = 0.0
    frames: int = 0
    hard_examples: int = 0
    #: mining reason -> hard examples edge0 saved for it; edge0's mining mode
    hard_examples_by_reason: dict[str, int] = field(default_factory=dict)
    mining_mode: str | None = None
    outbox_backlog: int = 0
    labelled: dict[str, int] = field(default_factory=dict)
    #: refusals of the simulated annotator by reason
    refused: dict[str, int] = field(default_factory=dict)
    progress: StepProgress | None = None
    transitions: list[Transition] = field(default_factory=list)
    #: (time, total samples in the dataset index) at each change
    sample_history: list[tuple[float, int]] = field(default_factory=list)
    #: (time, version) each time edge0 reported a new served version
    serving_history: list[tuple[float, int | None]] = field(default_factory=list)
    #: node -> the version its inference serves now (None: the initial model), every edge node
    node_serving: dict[str, int | None] = field(default_factory=dict)
    #: (time, node, version) each time an edge node reported a new served version, in order:
    #: the rollout's timeline
    node_history: list[tuple[float, str, int | None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()

    def report_progress(self, what: str, fraction: float, message: str) -> None:
        """A long step moved on; a new ``what`` starts a new estimate."""
        now = time.time()
        if self.progress is None or self.progress.what != what:
            self.progress = StepProgress(what, fraction, message, now)
        else:
            self.progress.fraction, self.progress.message = fraction, message
        self.notify()

    def progress_done(self, what: str | None = None) -> None:
        if self.progress is not None and (what is None or self.progress.what == what):
            self.progress = None
            self.notify()

    def where(self) -> str:
        """Where the loop stands, in one line: what a stall message must name."""
        return (f"job {self.stage}/{self.state} round {self.round}, {self.samples} samples in "
                f"data.txt, deployed v{self.deployed_version or '-'}, edge0 serves "
                f"{'v' + str(self.serving) if self.serving else 'the initial model'}, camera "
                f"{self.domain}; edge0 {'online' if self.edge_online else 'offline'}, "
                f"{self.frames} frames, {self.hard_examples} hard examples "
                f"({mining_text(self)}), {self.outbox_backlog} waiting upload; labelled "
                f"{dict(sorted(self.labelled.items())) or '-'}")

    async def wait_for(self, predicate: Callable[[LoopView], bool], what: str, timeout: float,
                       check: Callable[[], None] | None = None) -> None:
        """Until ``predicate(self)``; ``check`` runs at least every second (dead processes)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if check is not None:
                check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not within {timeout:.0f} s: {what}; {self.where()}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(1.0, left))


#: How the staged rollout's conditions begin (cloud_manager/rollout.py's notes)
ROLLOUT_PREFIXES = ("rollout ", "canary ", "wave ")


def is_rollout_step(reason: str) -> bool:
    """Whether a job condition is a step of a staged rollout (canary, bake, wave, end), which the
    terminal and the report show as the rollout's timeline."""
    if reason.startswith(ROLLOUT_PREFIXES):
        return True
    return reason.startswith(("node ", "waiting for ")) and (
        "canary" in reason or "model version" in reason)


class ConditionLog:
    """The job conditions already shown: each one becomes a transition once, although the
    retained status repeats the recent ones in every update."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str, int, str, float]] = set()

    def new(self, conditions: list[JobCondition]) -> list[JobCondition]:
        """Conditions not seen before, in order."""
        fresh = []
        for c in conditions:
            key = (c.stage, c.state, c.round, c.reason, c.time)
            if key not in self._seen:
                self._seen.add(key)
                fresh.append(c)
        return fresh


class JobWatch:
    """Subscribes to the job's status and the edge node's status; feeds a :class:`LoopView`."""

    def __init__(self, settings: MqttSettings, namespace: str, job: str, edge_node: str,
                 inference_task: str, view: LoopView,
                 on_transition: Callable[[Transition], None] | None = None,
                 dataset_node: str | None = None, other_nodes: Sequence[str] = (),
                 on_serving: Callable[[str, int | None], None] | None = None) -> None:
        """``other_nodes``: more edge nodes whose served version the view follows
        (``node_serving``, ``node_history``); ``on_serving(node, version)`` hears each change."""
        self.view = view
        self.inference_task = inference_task
        self.on_transition = on_transition
        self.on_serving = on_serving
        self.edge_node = edge_node
        self.conditions = ConditionLog()
        self.client = MqttClient(settings)
        self.client.subscribe(topics.job_status(namespace, job), self._on_job)
        self.client.subscribe(topics.status(edge_node), self._on_node)
        for node in other_nodes:
            self.client.subscribe(topics.status(node), self._on_other_node)
        if dataset_node is not None:  # where train and eval run
            self.client.subscribe(topics.node_filter(Kind.PROGRESS, dataset_node),
                                  self._on_progress)

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        await self.client.wait_connected(15)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()

    async def _on_job(self, delivery: Delivery) -> None:
        status = delivery.message
        if not isinstance(status, JobStatus):
            return
        v = self.view
        if status.samples != v.samples:
            v.sample_history.append((time.time(), status.samples))
        v.stage, v.state, v.round = status.stage, status.state, status.round
        v.samples, v.deployed_version = status.samples, status.deployed_version
        for condition in self.conditions.new(status.conditions):
            t = Transition(condition.time, condition.stage, condition.state, condition.round,
                           status.samples, status.deployed_version, condition.reason)
            v.transitions.append(t)
            if self.on_transition is not None:
                self.on_transition(t)
        v.notify()

    async def _on_progress(self, delivery: Delivery) -> None:
        report = delivery.message
        if not isinstance(report, TaskProgress):
            return
        _, round_part, role = report.task_id.rsplit("-", 2)  # name-digest-r<round>-<role>
        what = f"{role} round {round_part.removeprefix('r')}"
        if report.state == "Running" and report.progress is not None:
            self.view.report_progress(what, report.progress, report.message)
        elif report.state in ("Completed", "Failed"):
            self.view.progress_done()

    async def _on_node(self, delivery: Delivery) -> None:
        status = delivery.message
        if not isinstance(status, NodeStatus):
            return
        v = self.view
        v.edge_online = status.state == "online"
        v.outbox_backlog = status.outbox_backlog
        serving = status.serving.get(self.inference_task)
        if serving != v.serving:
            v.serving_history.append((time.time(), serving))
        v.serving = serving
        self._follow(self.edge_node, serving)
        v.notify()

    async def _on_other_node(self, delivery: Delivery) -> None:
        status = delivery.message
        if isinstance(status, NodeStatus):
            self._follow(status.node, status.serving.get(self.inference_task))
            self.view.notify()

    def _follow(self, node: str, serving: int | None) -> None:
        """Note a node's served version when it changes (its first report counts as one)."""
        v = self.view
        if node in v.node_serving and v.node_serving[node] == serving:
            return
        v.node_serving[node] = serving
        v.node_history.append((time.time(), node, serving))
        if self.on_serving is not None:
            self.on_serving(node, serving)


async def follow_live_view(url: str, view: LoopView) -> None:
    """Read the edge node's live-view websocket for the inference worker's FPS and counters.

    Runs until cancelled; reconnects while the agent is not up yet. Only ``task`` messages are
    used (the page's frames are not decoded).
    """
    import websockets

    while True:
        try:
            async with websockets.connect(url, max_size=2**24) as ws:
                async for raw in ws:
                    message: dict[str, Any] = json.loads(raw)
                    if message.get("type") == "task":
                        view.fps = float(message.get("fps") or 0.0)
                        view.frames = int(message.get("frames") or 0)
                        view.hard_examples = int(message.get("hard_examples") or 0)
                        view.hard_examples_by_reason = dict(
                            message.get("hard_examples_by_reason") or {})
                        view.mining_mode = message.get("mining_mode")
                        view.notify()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent restarts or is not listening yet
            log.debug("live view %s: %s", url, exc)
        await asyncio.sleep(1.0)


def mining_text(view: LoopView) -> str:
    """Hard examples per mining reason, and the detection-drop mode when edge0 is in it."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(view.hard_examples_by_reason.items()))
    if view.mining_mode == "detection-drop":
        reasons = f"DETECTION DROP, sampling uniformly; {reasons}"
    return reasons or "none yet"


def render(view: LoopView) -> Group:
    """The live progress panel."""
    elapsed = time.time() - view.started
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    labelled = ", ".join(f"{k} {n}" for k, n in sorted(view.labelled.items())
                         if k != "refused") or "-"
    if view.refused:
        why = "; ".join(f"{n} {reason}" for reason, n in sorted(view.refused.items()))
        labelled += f"; refused {sum(view.refused.values())} [dim]({why})[/]"
    table.add_row("step", f"{view.step}  [dim]({elapsed:.0f} s)[/]")
    if view.progress is not None:
        table.add_row("", view.progress.describe(time.time()))
    table.add_row("camera", view.domain)
    table.add_row("job", f"{view.stage}/{view.state}, round {view.round}")
    table.add_row("samples", f"{view.samples} in data.txt; labelled hard examples: {labelled}")
    table.add_row("models", f"deployed v{view.deployed_version or '-'}, edge0 serves "
                            f"{'v' + str(view.serving) if view.serving else 'the initial model'}")
    table.add_row("edge0", f"{'online' if view.edge_online else 'offline'}, {view.fps:.1f} FPS, "
                           f"{view.frames} frames, {view.hard_examples} hard examples "
                           f"({mining_text(view)}), {view.outbox_backlog} waiting upload")
    for node, version in sorted(view.node_serving.items()):
        if node != "edge0":
            table.add_row(node, f"serves {'v' + str(version) if version else 'the initial model'}")
    return Group(Text("edgeloop demo", style="bold"), table)
