"""Uploads of trained models: the node answers the cloud's pulls of files its train tasks made.

The cloud asks for chunk ``i`` of the file with sha256 ``X`` (``ChunkRequest`` on
``artifact/pull``); the node answers with it (``Chunk`` on ``artifact/push``). Only files a
finished task's result listed as artifacts (``name``, ``sha256``, ``size``, ``path``) are served,
and only while their content still has that sha256: the cloud cannot make a node send any other
file. An unknown sha256, a file gone or changed, an index out of range get a ``Chunk`` whose
``error`` says so, which ends the cloud's pull at once instead of after its retries.

What can be served is learnt from task reports as they are published and, at start-up, from the
``state.json`` of every task attempt kept under ``<state>/tasks/``, so a restarted agent still
serves the models it trained before.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edgeloop.mqtt import Delivery, MqttClient, NotConnected
from protocol import topics
from protocol.messages import Chunk, ChunkRequest, TaskProgress
from protocol.topics import Kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedFile:
    path: Path
    size: int


def listed_artifacts(result: dict) -> list[tuple[str, ServedFile]]:
    """(sha256, file) of each well-formed artifact a task result lists with an absolute path."""
    found: list[tuple[str, ServedFile]] = []
    artifacts = result.get("artifacts")
    if not isinstance(artifacts, list):
        return found
    for artifact in artifacts:
        if not isinstance(artifact, dict):
            continue
        sha256, size, path = artifact.get("sha256"), artifact.get("size"), artifact.get("path")
        if (isinstance(sha256, str) and len(sha256) == 64 and isinstance(size, int)
                and isinstance(path, str) and Path(path).is_absolute()):
            found.append((sha256, ServedFile(Path(path), size)))
    return found


def read_chunk(file: ServedFile, sha256: str, index: int, chunk_size: int,
               verified: set[tuple[str, int, int]]) -> bytes:
    """Chunk ``index`` of ``file``, after checking the whole file still has ``sha256``.

    ``verified`` holds (sha256, mtime_ns, size) of files already checked, so that a large model
    is hashed once per pull, not once per chunk. Raises ``ValueError`` saying why the chunk
    cannot be served.
    """
    total = max(1, math.ceil(file.size / chunk_size))
    if index >= total:
        raise ValueError(f"chunk {index} is out of range (the file has {total})")
    try:
        with open(file.path, "rb") as f:
            stat = os.fstat(f.fileno())
            if stat.st_size != file.size:
                raise ValueError(f"{file.path} no longer has the {file.size} bytes trained")
            checked = (sha256, stat.st_mtime_ns, stat.st_size)
            if checked not in verified:
                digest = hashlib.sha256()
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                if digest.hexdigest() != sha256:
                    raise ValueError(f"{file.path} changed since it was trained")
                verified.add(checked)
            f.seek(index * chunk_size)
            return f.read(chunk_size)
    except OSError as exc:
        raise ValueError(f"cannot read {file.path}: {exc.strerror or exc}") from None


class ArtifactUploader:
    """Serves ``artifact/pull`` requests for ``node`` from the files its tasks produced."""

    def __init__(self, client: MqttClient, node: str, state_dir: Path) -> None:
        self.client = client
        self.node = node
        self.files: dict[str, ServedFile] = {}
        self._verified: set[tuple[str, int, int]] = set()  # (sha256, mtime_ns, size) checked
        self._load(Path(state_dir))
        client.subscribe(topics.node_topic(Kind.ARTIFACT_PULL, node), self._on_pull)

    def _load(self, state_dir: Path) -> None:
        for state_file in sorted(state_dir.glob("tasks/*/attempt-*/state.json")):
            try:
                report = TaskProgress.model_validate_json(state_file.read_text(encoding="utf-8"))
            except (OSError, ValidationError):
                continue
            self.note(report)

    def note(self, report: TaskProgress) -> None:
        """Remember the artifacts a completed task's result lists."""
        if report.state != "Completed":
            return
        for sha256, file in listed_artifacts(report.result):
            self.files[sha256] = file

    async def _on_pull(self, delivery: Delivery) -> None:
        request = delivery.message
        if not isinstance(request, ChunkRequest):
            return
        chunk = await self._chunk_for(request)
        if chunk.error:
            log.warning("cannot send chunk %d of %s: %s", request.index, request.sha256[:12],
                        chunk.error)
        try:
            await self.client.publish(topics.node_topic(Kind.ARTIFACT_PUSH, self.node), chunk)
        except NotConnected:
            pass  # the cloud asks again

    async def _chunk_for(self, request: ChunkRequest) -> Chunk:
        file = self.files.get(request.sha256)
        if file is None:
            return self._refusal(request, "no such file on this node (not a listed artifact)")
        total = max(1, math.ceil(file.size / request.chunk_size))
        try:
            data = await asyncio.to_thread(read_chunk, file, request.sha256, request.index,
                                           request.chunk_size, self._verified)
        except ValueError as exc:
            return self._refusal(request, str(exc))
        return Chunk(node=self.node, sha256=request.sha256, index=request.index, total=total,
                     size=file.size, data=data)

    def _refusal(self, request: ChunkRequest, reason: str) -> Chunk:
        return Chunk(node=self.node, sha256=request.sha256, index=request.index, total=0,
                     size=0, error=reason)

