"""A scripted edge node: speaks the protocol over a real broker, runs no worker.

It announces itself (retained ``online`` status, ``lost`` as its will), reports dataset sample
counts when told to, records every task and desired state it receives, answers each new task
(deduplicated by the task's key, as a real agent does) with the canned progress its ``script``
returns for the task's role, says it serves what its desired state names, and pushes the files
its train results listed when the cloud pulls them. Tests use it to drive the cloud manager through rounds;
load tests can run many of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeloop.mqtt import Delivery, MqttClient, MqttSettings
from protocol import topics
from protocol.messages import (
    Chunk,
    ChunkRequest,
    DatasetSamples,
    DesiredState,
    NodeStatus,
    SampleReport,
    Task,
    TaskProgress,
)

#: What the node answers to a task: a list of (state, result, message, exit_code) steps.
Step = tuple[str, dict[str, Any], str, int | None]
Script = Callable[[Task], list[Step]]


def fake_artifact(task: Task, name: str, write_bytes: int = 0) -> dict[str, Any]:
    """An artifact record as train.py reports it; with ``write_bytes`` the file is really
    written (that many bytes) under the task's MODEL_URL."""
    seed = f"{task.task_id}/{task.attempt}/{name}".encode()
    content = seed if not write_bytes else (hashlib.sha256(seed).digest() * (write_bytes // 32 + 1))[:write_bytes]
    path = Path(task.env.get("MODEL_URL", "/tmp")) / name
    if write_bytes:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    # "_content" stays on the node (play() strips it): it is what the node pushes when the
    # cloud pulls the artifact
    return {"name": name, "path": str(path), "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content), "_content": content}


def succeed(precision_by_round: Callable[[int], float] | None = None,
            deployed_precision: float = 0.5, write_bytes: int = 0) -> Script:
    """Train produces two artifacts (real files of ``write_bytes`` bytes if given); eval reports
    the candidate's precision (by round) and the deployed model's."""

    def script(task: Task) -> list[Step]:
        if task.role == "train":
            result = {"artifacts": [fake_artifact(task, "model.tflite", write_bytes),
                                    fake_artifact(task, "model.keras", write_bytes)], "loss": 0.1}
            return [("Running", {}, "training", None), ("Completed", result, "done", 0)]
        if task.role == "eval":
            candidate = precision_by_round(task.round) if precision_by_round else 0.9
            models = [{"url": "candidate", "metrics": {"precision": candidate}},
                      {"url": "deployed", "metrics": {"precision": deployed_precision}}]
            return [("Running", {}, "evaluating", None), ("Completed", {"models": models}, "done", 0)]
        return []

    return script


class ScriptedNode:
    def __init__(self, url: str, node: str, script: Script | None = None,
                 *, answer: bool = True, hide_paths: bool = False) -> None:
        self.node = node
        self.hide_paths = hide_paths
        self.files: dict[str, bytes] = {}  # sha256 -> content of the artifacts it produced
        self.pulls = 0  # chunk requests the cloud sent
        self.answer_pulls = True
        self.script = script or succeed()
        self.answer = answer
        self.boot_id = uuid.uuid4().hex[:12]
        self.tasks: list[Task] = []
        self.serving: dict[str, int] = {}  # inference task id -> version, as in NodeStatus
        self.arrivals: list[float] = []  # time.monotonic() of each task's arrival
        self.desired: list[DesiredState] = []
        self.started: list[str] = []  # keys of tasks actually started
        self.held: list[Task] = []  # started but not answered (answer=False): call play()
        self._seen: set[str] = set()
        self._seq = 0
        self._jobs: list[asyncio.Task[None]] = []
        lost = NodeStatus(node=node, state="lost", boot_id=self.boot_id)
        self.client = MqttClient(
            MqttSettings(url=url, client_id=f"node-{node}", backoff_max=0.5),
            will=(topics.status(node), lost),
        )
        self.client.subscribe(topics.node_filter(topics.Kind.TASK, node), self._on_task)
        self.client.subscribe(topics.desired(node), self._on_desired)
        self.client.subscribe(topics.node_topic(topics.Kind.ARTIFACT_PULL, node), self._on_pull)
        self.client.on_connect(self._announce)
        self.task_arrived = asyncio.Event()

    async def __aenter__(self) -> ScriptedNode:
        await self.client.__aenter__()
        await self.client.wait_connected(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.client.publish(topics.status(self.node), NodeStatus(
                node=self.node, state="offline", boot_id=self.boot_id, seq=self._next()),
                retain=True)
        await self.client.close()

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def _announce(self) -> None:
        await self.client.publish(topics.status(self.node), NodeStatus(
            node=self.node, state="online", boot_id=self.boot_id, seq=self._next(),
            agent_version="scripted", serving=self.serving), retain=True)

    async def report_samples(self, dataset: str, url: str, samples: int) -> None:
        await self.client.publish(topics.samples(self.node), SampleReport(
            node=self.node, boot_id=self.boot_id, seq=self._next(),
            datasets=[DatasetSamples(dataset=dataset, url=url, samples=samples)]))

    def _keep_files(self, result: dict[str, Any]) -> dict[str, Any]:
        artifacts = result.get("artifacts")
        if not isinstance(artifacts, list):
            return result
        public = []
        for artifact in artifacts:
            artifact = dict(artifact)
            content = artifact.pop("_content", None)
            if content is not None:
                self.files[artifact["sha256"]] = content
                if self.hide_paths:  # as if trained on another machine
                    artifact["path"] = f"/on-node-{self.node}-only{artifact['path']}"
            public.append(artifact)
        return result | {"artifacts": public}

    async def _on_pull(self, delivery: Delivery) -> None:
        """Push chunk i of a file this node produced (the cloud pulls trained models)."""
        request = delivery.message
        if not isinstance(request, ChunkRequest):
            return
        self.pulls += 1
        if not self.answer_pulls:
            return
        data = self.files.get(request.sha256)
        if data is None:
            chunk = Chunk(node=self.node, sha256=request.sha256, index=request.index, total=0,
                          size=0, error="no such file on this node")
        else:
            total = max(1, -(-len(data) // request.chunk_size))
            start = request.index * request.chunk_size
            chunk = Chunk(node=self.node, sha256=request.sha256, index=request.index, total=total,
                          size=len(data), data=data[start:start + request.chunk_size])
        await self.client.publish(topics.node_topic(topics.Kind.ARTIFACT_PUSH, self.node), chunk)

    async def _on_desired(self, delivery: Delivery) -> None:
        desired = delivery.message
        if not isinstance(desired, DesiredState):
            return
        self.desired.append(desired)
        # "deploy" at once: say which version each inference task now serves
        self.serving = {t.task_id: t.models[0].version for t in desired.tasks if t.models}
        await self._announce()

    async def _on_task(self, delivery: Delivery) -> None:
        task = delivery.message
        if not isinstance(task, Task):
            return
        self.tasks.append(task)
        self.arrivals.append(time.monotonic())
        self.task_arrived.set()
        if task.key in self._seen or task.action != "start":
            return  # a repeat (a real agent dedupes the same way) or a stop
        self._seen.add(task.key)
        self.started.append(task.key)
        if self.answer:
            self._jobs.append(asyncio.create_task(self.play(task)))
        else:
            self.held.append(task)

    async def play(self, task: Task) -> None:
        """Publish the script's progress for ``task`` (tests call it to answer a held task)."""
        for seq, (state, result, message, exit_code) in enumerate(self.script(task), start=1):
            result = self._keep_files(result)
            await asyncio.sleep(0.01)
            await self.client.publish(topics.progress(self.node, task.task_id), TaskProgress(
                node=self.node, task_id=task.task_id, attempt=task.attempt, seq=seq, state=state,
                result=result, message=message, exit_code=exit_code))
