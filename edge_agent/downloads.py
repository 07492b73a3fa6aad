"""Model downloads: artifacts pulled from the cloud in chunks, verified, kept by content.

First the node says it wants the artifact with sha256 ``X`` (``ArtifactWant`` on
``artifact/want``): the cloud may then publish the whole file once on the shared
``models/<sha256>`` topic, which every node reads, for all the nodes of a deploy at once (see
:mod:`cloud_manager.distribution`). Each such chunk is checked against its own sha256 and
against the artifact before it is written. When no chunk has come for ``fanout_idle_s``, the
node asks for each chunk still missing itself: chunk ``i`` (``ChunkRequest`` on
``artifact/request``), answered by the cloud with it (``Chunk`` on ``artifact/chunk``). A few
requests are outstanding at a time (the window), each retried when its answer does not come.
Chunks are written in place into ``<sha256>.part`` and the indexes received so far are kept in
``<sha256>.have``, so a download cut by an outage or a restart resumes where it stopped. Nothing
uses the file before its size and sha256 match the :class:`~protocol.messages.ArtifactRef`; then
it is renamed to ``<sha256>`` and, being content-addressed, never fetched again.

Requests and chunks in flight when the connection drops are lost with it (the broker may have
crashed): at every reconnection the outstanding chunks are asked for again at once, rather than
after their timeout, and such a re-request does not count as a failed attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from edgeloop.checksum import file_sha256
from edgeloop.durable import write_atomically
from edgeloop.mqtt import Delivery, MqttClient, NotConnected
from protocol import topics
from protocol.messages import (
    MAX_CHUNK_BYTES,
    ArtifactRef,
    ArtifactWant,
    Chunk,
    ChunkRequest,
    ModelChunk,
)
from protocol.topics import Kind

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The artifact could not be fetched or did not verify; the message says which and why."""


class _AskAgain(Exception):
    """The connection was re-established while a chunk was awaited: request it again."""


@dataclass
class DownloadStats:
    requested: int = 0
    received: int = 0
    retried: int = 0
    #: requests sent again because the connection was re-established
    reasked: int = 0
    completed: int = 0
    bytes: int = 0
    #: chunks (and their bytes) that came through the cloud's fan-out and were written
    fanout_received: int = 0
    fanout_bytes: int = 0
    #: fanned-out chunks refused: their data does not match their sha256, or they do not fit
    #: the artifact (logged)
    fanout_rejected: int = 0
    #: fanned-out chunks of files this node is not downloading, or already has
    fanout_unwanted: int = 0


@dataclass
class _Receiving:
    """A download open to fanned-out chunks: where to write them and what came so far."""

    artifact: ArtifactRef
    fd: int
    total: int
    have: set[int]
    have_path: Path
    progress: asyncio.Event


def chunk_count(size: int, chunk_size: int = MAX_CHUNK_BYTES) -> int:
    return max(1, math.ceil(size / chunk_size))


class ArtifactDownloader:
    """Fetches artifacts into ``store_dir``; one download per sha256 however many ask for it."""

    def __init__(
        self,
        client: MqttClient,
        node: str,
        store_dir: Path,
        *,
        window: int = 4,
        chunk_timeout: float = 10.0,
        attempts: int = 6,
        chunk_size: int = MAX_CHUNK_BYTES,
        fanout_idle_s: float = 3.0,
    ) -> None:
        self.client = client
        self.node = node
        self.store_dir = Path(store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.window = window
        self.chunk_timeout = chunk_timeout
        self.attempts = attempts
        self.chunk_size = chunk_size
        #: how long a download waits for the next fanned-out chunk before pulling the rest;
        #: above the cloud's gathering window (``FanoutPolicy.gather_s``)
        self.fanout_idle_s = fanout_idle_s
        self.stats = DownloadStats()
        self._waiting: dict[tuple[str, int], asyncio.Future[Chunk]] = {}
        self._downloads: dict[str, asyncio.Task[Path]] = {}
        self._receiving: dict[str, _Receiving] = {}
        client.subscribe(topics.node_topic(Kind.ARTIFACT_CHUNK, node), self._on_chunk)
        client.subscribe(topics.models_filter(), self._on_model_chunk)
        client.on_connect(self._on_reconnect)

    def path_of(self, artifact: ArtifactRef) -> Path:
        return self.store_dir / artifact.sha256

    def have(self, artifact: ArtifactRef) -> bool:
        return self.path_of(artifact).is_file()

    async def fetch(self, artifact: ArtifactRef) -> Path:
        """The verified local file of ``artifact``, downloading what is missing."""
        if self.have(artifact):
            return self.path_of(artifact)
        running = self._downloads.get(artifact.sha256)
        if running is None or running.done():
            running = asyncio.create_task(
                self._download(artifact), name=f"download:{artifact.name}"
            )
            self._downloads[artifact.sha256] = running
        return await asyncio.shield(running)

    # -- receiving ------------------------------------------------------------------------

    async def _on_chunk(self, delivery: Delivery) -> None:
        chunk = delivery.message
        if not isinstance(chunk, Chunk):
            return
        future = self._waiting.get((chunk.sha256, chunk.index))
        if future is not None and not future.done():
            future.set_result(chunk)

    async def _on_model_chunk(self, delivery: Delivery) -> None:
        chunk = delivery.message
        if not isinstance(chunk, ModelChunk):
            return
        receiving = self._receiving.get(chunk.sha256)
        if receiving is None or chunk.index in receiving.have:
            self.stats.fanout_unwanted += 1
            return
        problem = self._misfit(chunk, delivery.topic, receiving)
        if problem:
            self.stats.fanout_rejected += 1
            log.warning("fanned-out chunk %d of %s refused: %s", chunk.index, chunk.sha256[:12],
                        problem)
            return
        os.pwrite(receiving.fd, chunk.data, chunk.index * self.chunk_size)
        receiving.have.add(chunk.index)
        self._save_have(receiving.have_path, receiving.have)
        self.stats.fanout_received += 1
        self.stats.fanout_bytes += len(chunk.data)
        receiving.progress.set()

    def _misfit(self, chunk: ModelChunk, topic: str, receiving: _Receiving) -> str:
        """Why ``chunk`` cannot be written into ``receiving``'s file, or "" when it can."""
        artifact = receiving.artifact
        expected = min(self.chunk_size, artifact.size - chunk.index * self.chunk_size)
        if topic != topics.model_chunks(chunk.sha256):
            return f"published on {topic}, not on its file's topic"
        if chunk.chunk_size != self.chunk_size or chunk.total != receiving.total:
            return (f"cut in {chunk.total} chunks of {chunk.chunk_size} bytes, this node reads "
                    f"{receiving.total} of {self.chunk_size}")
        if chunk.size != artifact.size or len(chunk.data) != expected:
            return (f"does not fit the artifact (size {chunk.size}/{artifact.size}, "
                    f"{len(chunk.data)}/{expected} bytes)")
        actual = hashlib.sha256(chunk.data).hexdigest()
        if actual != chunk.data_sha256:
            return f"its data has sha256 {actual}, the chunk says {chunk.data_sha256}"
        return ""

    async def _on_reconnect(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(_AskAgain())

    # -- downloading ----------------------------------------------------------------------

    async def _download(self, artifact: ArtifactRef) -> Path:
        sha = artifact.sha256
        part = self.store_dir / f"{sha}.part"
        have_path = self.store_dir / f"{sha}.have"
        total = chunk_count(artifact.size, self.chunk_size)
        have = self._load_have(have_path, total)
        if not part.exists():
            have = set()
        missing = [i for i in range(total) if i not in have]
        log.info(
            "downloading %s (%s, %d bytes): %d of %d chunks to fetch",
            artifact.name,
            sha[:12],
            artifact.size,
            len(missing),
            total,
        )
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        receiving = _Receiving(artifact, fd, total, have, have_path, asyncio.Event())
        self._receiving[sha] = receiving
        try:
            os.ftruncate(fd, artifact.size)
            if missing:
                await self._receive_fanout(receiving)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in range(total):
                if index not in have:
                    queue.put_nowait(index)

            async def worker() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    if index in have:
                        continue  # the fan-out brought it meanwhile
                    chunk = await self._fetch_chunk(artifact, index, total)
                    os.pwrite(fd, chunk.data, index * self.chunk_size)
                    have.add(index)
                    self._save_have(have_path, have)

            workers = [asyncio.create_task(worker())
                       for _ in range(min(self.window, queue.qsize()))]
            try:
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
            os.fsync(fd)
        finally:
            self._receiving.pop(sha, None)
            os.close(fd)
        actual = await asyncio.to_thread(file_sha256, part)
        if actual != sha:
            part.unlink(missing_ok=True)
            have_path.unlink(missing_ok=True)
            raise DownloadError(
                f"{artifact.name}: downloaded file has sha256 {actual}, expected {sha}; discarded"
            )
        final = self.path_of(artifact)
        os.replace(part, final)
        have_path.unlink(missing_ok=True)
        self.stats.completed += 1
        log.info("downloaded %s (%s)", artifact.name, sha[:12])
        return final

    async def _receive_fanout(self, receiving: _Receiving) -> None:
        """Say the artifact is wanted, then take fanned-out chunks until all are here or none
        came for ``fanout_idle_s``: what is still missing then is pulled chunk by chunk."""
        want = ArtifactWant(node=self.node, sha256=receiving.artifact.sha256)
        try:
            await self.client.publish(topics.node_topic(Kind.ARTIFACT_WANT, self.node), want)
        except NotConnected:
            return
        while len(receiving.have) < receiving.total:
            receiving.progress.clear()
            try:
                async with asyncio.timeout(self.fanout_idle_s):
                    await receiving.progress.wait()
            except TimeoutError:
                return

    async def _fetch_chunk(self, artifact: ArtifactRef, index: int, total: int) -> Chunk:
        expected = min(self.chunk_size, artifact.size - index * self.chunk_size)
        request = ChunkRequest(
            node=self.node, sha256=artifact.sha256, index=index, chunk_size=self.chunk_size
        )
        key = (artifact.sha256, index)
        last_problem = "no answer"
        attempt = 0
        while attempt < self.attempts:
            if attempt:
                self.stats.retried += 1
            attempt += 1
            future: asyncio.Future[Chunk] = asyncio.get_running_loop().create_future()
            self._waiting[key] = future
            try:
                await self.client.wait_connected(self.chunk_timeout)
                await self.client.publish(
                    topics.node_topic(Kind.ARTIFACT_REQUEST, self.node), request
                )
                self.stats.requested += 1
                async with asyncio.timeout(self.chunk_timeout):
                    chunk = await future
            except _AskAgain:
                self.stats.reasked += 1
                attempt -= 1
                continue
            except (TimeoutError, NotConnected) as exc:
                last_problem = str(exc) or "no answer in time"
                continue
            finally:
                self._waiting.pop(key, None)
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: a re-ask that raced a failed publish
            if chunk.error:
                raise DownloadError(f"{artifact.name}: the cloud cannot serve it: {chunk.error}")
            if chunk.total != total or chunk.size != artifact.size or len(chunk.data) != expected:
                last_problem = (
                    f"chunk {index} does not fit the artifact (total {chunk.total}/{total}, size "
                    f"{chunk.size}/{artifact.size}, {len(chunk.data)}/{expected} bytes)"
                )
                continue
            self.stats.received += 1
            self.stats.bytes += len(chunk.data)
            return chunk
        raise DownloadError(
            f"{artifact.name}: chunk {index} of {total} not received after {self.attempts} "
            f"attempts ({last_problem}); the download resumes from here next time"
        )

    @staticmethod
    def _load_have(path: Path, total: int) -> set[int]:
        with contextlib.suppress(OSError, ValueError, TypeError):
            return {int(i) for i in json.loads(path.read_text()) if 0 <= int(i) < total}
        return set()

    @staticmethod
    def _save_have(path: Path, have: set[int]) -> None:
        write_atomically(path, json.dumps(sorted(have)).encode())
