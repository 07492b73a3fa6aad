"""Model files to nodes: fanned out once through the broker, served chunk by chunk as fallback.

A node about to download an artifact says so (``ArtifactWant`` on ``node/{node}/artifact/want``).
The first such want starts a *fan-out*: after a short gathering window (so the other nodes of
the same deploy, whose wants arrive within it, are all listening) the cloud publishes every
chunk of the file once, at QoS 1, on the shared ``models/<sha256>`` topic that every node reads
with its persistent session; the broker copies them to the subscribers. Wants that come while
a fan-out of the file is pending or running, or within :attr:`FanoutPolicy.rebroadcast_s` of
the last one, start nothing: those nodes pull what they miss chunk by chunk
(``ChunkRequest`` on ``artifact/request``, answered on their own ``artifact/chunk``), the path
every node always had. So the cloud publishes a file about once per deploy, however many nodes,
and a node that joins later or lost chunks still gets it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

from cloud_manager.registry import ModelRegistry
from edgeloop.mqtt import Delivery, MqttClient, NotConnected
from protocol import topics
from protocol.messages import MAX_CHUNK_BYTES, ArtifactWant, ChunkRequest, ModelChunk
from protocol.topics import Kind

log = logging.getLogger("edgeloop.cloud.distribution")


@dataclass(frozen=True)
class FanoutPolicy:
    #: wait this long after the first want before publishing, so that the nodes of one deploy
    #: (whose wants arrive together) are all downloading when the chunks pass
    gather_s: float = 0.5
    #: a file is fanned out again at most this often; wants in between fall back to pulling
    rebroadcast_s: float = 30.0
    chunk_size: int = MAX_CHUNK_BYTES


@dataclass
class DistributionStats:
    """What the cloud sent nodes since start: bytes are chunk data, not MQTT overhead."""

    wants: int = 0
    #: fan-outs started (one per file per deploy, plus rate-limited repeats)
    fanouts: int = 0
    fanout_chunks: int = 0
    fanout_bytes: int = 0
    #: chunks served to one node at its request (the fallback path)
    pulled_chunks: int = 0
    pulled_bytes: int = 0
    #: wants and requests for a file the registry does not have
    unknown: int = 0
    #: sha256 -> chunks of that file fanned out, and chunks of it served per node
    fanout_chunks_of: Counter[str] = field(default_factory=Counter)
    pulled_chunks_of: Counter[str] = field(default_factory=Counter)

    @property
    def published_bytes(self) -> int:
        return self.fanout_bytes + self.pulled_bytes


@dataclass
class _FileState:
    started_at: float | None = None
    pending: bool = False


def should_fan_out(state: _FileState, now: float, policy: FanoutPolicy) -> bool:
    """A want starts a fan-out unless one is pending or running, or the last began within
    ``rebroadcast_s`` (those nodes pull the rest)."""
    if state.pending:
        return False
    return state.started_at is None or now - state.started_at >= policy.rebroadcast_s


@dataclass
class ModelDistribution:
    """Answers nodes' wants (fan-out) and chunk requests (per node) from the registry."""

    client: MqttClient
    registry: ModelRegistry
    policy: FanoutPolicy = field(default_factory=FanoutPolicy)
    stats: DistributionStats = field(default_factory=DistributionStats)

    def __post_init__(self) -> None:
        self._files: dict[str, _FileState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.client.subscribe(topics.node_filter(Kind.ARTIFACT_REQUEST), self._on_chunk_request)
        self.client.subscribe(topics.node_filter(Kind.ARTIFACT_WANT), self._on_want)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_want(self, delivery: Delivery) -> None:
        want = delivery.message
        if not isinstance(want, ArtifactWant):
            return
        self.stats.wants += 1
        if not self.registry.has(want.sha256):
            self.stats.unknown += 1
            log.info("%s wants %s, not in the registry", want.node, want.sha256[:12])
            return  # its chunk requests get the error that says so
        state = self._files.setdefault(want.sha256, _FileState())
        if not should_fan_out(state, asyncio.get_running_loop().time(), self.policy):
            return
        state.pending = True
        task = asyncio.create_task(self._fan_out(want.sha256, state), name=f"fanout:{want.sha256[:12]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fan_out(self, sha256: str, state: _FileState) -> None:
        try:
            await asyncio.sleep(self.policy.gather_s)
            state.started_at = asyncio.get_running_loop().time()
            self.stats.fanouts += 1
            path = self.registry.path(sha256)
            size = path.stat().st_size
            chunk_size = self.policy.chunk_size
            total = max(1, math.ceil(size / chunk_size))
            log.info("fanning out %s: %d bytes in %d chunks", sha256[:12], size, total)
            topic = topics.model_chunks(sha256)
            with open(path, "rb") as handle:
                for index in range(total):
                    data = handle.read(chunk_size)
                    await self.client.publish(topic, ModelChunk(
                        sha256=sha256, index=index, total=total, size=size, chunk_size=chunk_size,
                        data=data, data_sha256=hashlib.sha256(data).hexdigest()))
                    self.stats.fanout_chunks += 1
                    self.stats.fanout_chunks_of[sha256] += 1
                    self.stats.fanout_bytes += len(data)
        except (NotConnected, OSError) as exc:
            log.warning("fan-out of %s stopped (%s); nodes pull what they miss", sha256[:12], exc)
        finally:
            state.pending = False

    async def _on_chunk_request(self, delivery: Delivery) -> None:
        request = delivery.message
        if not isinstance(request, ChunkRequest):
            return
        chunk = await asyncio.to_thread(self.registry.chunk, request.node, request)
        if chunk.error:
            self.stats.unknown += 1
            log.info("chunk %d of %s for %s: %s", request.index, request.sha256[:12], request.node,
                     chunk.error)
        try:
            await self.client.publish(topics.node_topic(Kind.ARTIFACT_CHUNK, request.node), chunk)
        except NotConnected:
            return  # the node asks again
        self.stats.pulled_chunks += 1
        self.stats.pulled_chunks_of[request.sha256] += 1
        self.stats.pulled_bytes += len(chunk.data)
