"""What the demo knows of the running loop, as events arrive, and how the terminal shows it.

The job's stage comes from its retained status topic (``edgeloop/v1/job/{ns}/{name}/status``),
the version edge0 serves from edge0's retained node status, and the inference worker's frame
rate from edge0's live-view websocket (the same ``task`` messages the page gets). Nothing is
polled on a timer: each message updates :class:`LoopView` and wakes whoever waits for a
condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgeloop.mqtt import Delivery, MqttClient, MqttSettings
from protocol import topics
from protocol.messages import JobStatus, NodeStatus

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
    outbox_backlog: int = 0
    labelled: dict[str, int] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    #: (time, total samples in the dataset index) at each change
    sample_history: list[tuple[float, int]] = field(default_factory=list)
    #: (time, version) each time edge0 reported a new served version
    serving_history: list[tuple[float, int | None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()

    async def wait_for(self, predicate: Callable[[LoopView], bool], what: str, timeout: float,
                       check: Callable[[], None] | None = None) -> None:
        """Until ``predicate(self)``; ``check`` runs at least every second (dead processes)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if check is not None:
                check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not within {timeout:.0f} s: {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(1.0, left))


class JobWatch:
    """Subscribes to the job's status and the edge node's status; feeds a :class:`LoopView`."""

    def __init__(self, settings: MqttSettings, namespace: str, job: str, edge_node: str,
                 inference_task: str, view: LoopView,
                 on_transition: Callable[[Transition], None] | None = None) -> None:
        self.view = view
        self.inference_task = inference_task
        self.on_transition = on_transition
        self.client = MqttClient(settings)
        self.client.subscribe(topics.job_status(namespace, job), self._on_job)
        self.client.subscribe(topics.status(edge_node), self._on_node)

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
        moved = (status.stage, status.state, status.round) != (v.stage, v.state, v.round)
        v.stage, v.state, v.round = status.stage, status.state, status.round
        v.samples, v.deployed_version = status.samples, status.deployed_version
        if moved:
            reason = status.conditions[-1].reason if status.conditions else ""
            t = Transition(time.time(), status.stage, status.state, status.round, status.samples,
                           status.deployed_version, reason)
            v.transitions.append(t)
            if self.on_transition is not None:
                self.on_transition(t)
        v.notify()

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
        v.notify()


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
                        view.notify()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent restarts or is not listening yet
            log.debug("live view %s: %s", url, exc)
        await asyncio.sleep(1.0)


def render(view: LoopView) -> Group:
    """The live progress panel."""
    elapsed = time.time() - view.started
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    labelled = ", ".join(f"{k} {n}" for k, n in sorted(view.labelled.items())) or "-"
    table.add_row("step", f"{view.step}  [dim]({elapsed:.0f} s)[/]")
    table.add_row("camera", view.domain)
    table.add_row("job", f"{view.stage}/{view.state}, round {view.round}")
    table.add_row("samples", f"{view.samples} in data.txt; labelled hard examples: {labelled}")
    table.add_row("models", f"deployed v{view.deployed_version or '-'}, edge0 serves "
                            f"{'v' + str(view.serving) if view.serving else 'the initial model'}")
    table.add_row("edge0", f"{'online' if view.edge_online else 'offline'}, {view.fps:.1f} FPS, "
                           f"{view.frames} frames, {view.hard_examples} hard examples, "
                           f"{view.outbox_backlog} waiting upload")
    return Group(Text("edgeloop demo", style="bold"), table)
