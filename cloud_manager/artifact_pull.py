"""Uploads of trained models: the cloud pulls an artifact from the node that trained it.

The cloud asks for chunk ``i`` of the file with sha256 ``X`` (``ChunkRequest`` on
``node/{node}/artifact/pull``); the node answers with it (``Chunk`` on ``artifact/push``), or with
a Chunk whose ``error`` says why it cannot. A few chunks are outstanding at a time (the window)
and each is asked again when its answer does not come. Chunks land in ``<sha256>.part`` under the
registry's incoming folder, and the file enters the registry only once its size and sha256
match (:meth:`ModelRegistry.import_file`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from pathlib import Path

from cloud_manager.registry import ModelRegistry
from edgeloop.mqtt import Delivery, MqttClient, NotConnected
from protocol import topics
from protocol.messages import MAX_CHUNK_BYTES, Chunk, ChunkRequest
from protocol.topics import Kind

log = logging.getLogger("edgeloop.cloud.pull")

INCOMING_DIR = ".incoming"


class PullError(RuntimeError):
    """An artifact could not be pulled; the message says which and why."""


class ArtifactPuller:
    def __init__(
        self,
        client: MqttClient,
        registry: ModelRegistry,
        *,
        window: int = 4,
        chunk_timeout: float = 10.0,
        attempts: int = 5,
        chunk_size: int = MAX_CHUNK_BYTES,
    ) -> None:
        self.client = client
        self.registry = registry
        self.window = window
        self.chunk_timeout = chunk_timeout
        self.attempts = attempts
        self.chunk_size = chunk_size
        self.incoming = registry.root / INCOMING_DIR
        self._waiting: dict[tuple[str, str, int], asyncio.Future[Chunk]] = {}
        client.subscribe(topics.node_filter(Kind.ARTIFACT_PUSH), self._on_chunk)

    async def _on_chunk(self, delivery: Delivery) -> None:
        chunk = delivery.message
        if not isinstance(chunk, Chunk):
            return
        future = self._waiting.get((chunk.node, chunk.sha256, chunk.index))
        if future is not None and not future.done():
            future.set_result(chunk)

    async def pull(self, node: str, name: str, sha256: str, size: int) -> Path:
        """The registry's file of the artifact, pulled from ``node`` if it is not there yet."""
        if self.registry.has(sha256):
            return self.registry.path(sha256)
        self.incoming.mkdir(parents=True, exist_ok=True)
        part = self.incoming / f"{sha256}.part"
        total = max(1, math.ceil(size / self.chunk_size))
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in range(total):
                queue.put_nowait(index)

            async def worker() -> None:
                while True:
                    try:
                        index = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    chunk = await self._fetch(node, name, sha256, index, total, size)
                    os.pwrite(fd, chunk.data, index * self.chunk_size)

            workers = [asyncio.create_task(worker()) for _ in range(min(self.window, total))]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                raise
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            return await asyncio.to_thread(self.registry.import_file, part, sha256, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    async def _fetch(self, node: str, name: str, sha256: str, index: int, total: int,
                     size: int) -> Chunk:
        expected = min(self.chunk_size, size - index * self.chunk_size)
        key = (node, sha256, index)
        request = ChunkRequest(node=node, sha256=sha256, index=index, chunk_size=self.chunk_size)
        for _ in range(self.attempts):
            future: asyncio.Future[Chunk] = asyncio.get_running_loop().create_future()
            self._waiting[key] = future
            try:
                await self.client.publish(topics.node_topic(Kind.ARTIFACT_PULL, node), request)
                async with asyncio.timeout(self.chunk_timeout):
                    chunk = await future
            except (TimeoutError, NotConnected):
                continue
            finally:
                self._waiting.pop(key, None)
            if chunk.error:
                raise PullError(f"{name}: node {node} cannot send it: {chunk.error}")
            if chunk.total != total or chunk.size != size or len(chunk.data) != expected:
                raise PullError(f"{name}: chunk {index} from node {node} does not fit the artifact "
                                f"(total {chunk.total}/{total}, size {chunk.size}/{size}, "
                                f"{len(chunk.data)}/{expected} bytes)")
            return chunk
        raise PullError(f"{name}: chunk {index} of {total} not received from node {node} after "
                        f"{self.attempts} attempts")
