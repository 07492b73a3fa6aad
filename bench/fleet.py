"""Model distribution to a fleet: the broker's fan-out against per-node chunk pulls.

A real mosquitto on a free port, the cloud's real :class:`ModelDistribution` (its MQTT client and
model registry) holding a real LiteRT file of the default detector (built untrained and exported
by ``workers/``: the size is what matters), and many lightweight simulated nodes: a few processes,
each holding many MQTT connections (:class:`edgeloop.mqtt_link.Link`), each node checking every
chunk by its sha256 and the whole file by its sha256 as it assembles it.

(a) fan-out: every node subscribes to ``models/+`` and says it wants the file; the cloud publishes
it once, the broker copies it to each node. A node that misses chunks pulls them itself.
(b) pull (today's path for each node): each node asks for every chunk on its own
``artifact/request`` (4 outstanding) and the cloud answers on its ``artifact/chunk``; measured for
fewer nodes in the same run, its bytes extrapolated to the fleet (they grow with each node).

Reported per mode: seconds from the deploy to the last node verified, chunk bytes the cloud
published (and over one copy of the model), broker CPU seconds (``/proc/<pid>/stat``).

    .venv/bin/python bench/fleet.py [--nodes 1000] [--pull-nodes 50] [--procs 4]

Writes bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud_manager.distribution import FanoutPolicy, ModelDistribution  # noqa: E402
from cloud_manager.registry import ModelRegistry  # noqa: E402
from edgeloop.mqtt import MqttClient, MqttSettings  # noqa: E402
from edgeloop.mqtt_link import Link  # noqa: E402
from mosquitto.launcher import Broker  # noqa: E402
from protocol import codec, topics  # noqa: E402
from protocol.errors import ProtocolError  # noqa: E402
from protocol.messages import (  # noqa: E402
    MAX_CHUNK_BYTES,
    ArtifactWant,
    Chunk,
    ChunkRequest,
    ModelChunk,
)
from protocol.topics import Kind  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
#: a node that got no fanned-out chunk for this long pulls what it misses
FANOUT_IDLE_S = 3.0
WINDOW = 4
DEADLINE_S = 240.0


def build_model(out: Path) -> Path:
    """The default detector, untrained, as the fp32 LiteRT file a deploy would ship."""
    from workers.detector import DetectorSpec, build_detector
    from workers.export import export_tflite

    return export_tflite(build_detector(DetectorSpec(), seed=0), out)


@dataclass
class SimNode:
    """One simulated node: assembles the file in order, hashing as it goes."""

    name: str
    sha256: str
    size: int
    total: int
    link: Link | None = None
    next_index: int = 0
    pending: dict[int, bytes] = field(default_factory=dict)
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    verified_at: float | None = None
    failed: str = ""
    fanout_chunks: int = 0
    pulled_chunks: int = 0
    bad_chunks: int = 0
    requested: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, index: int, data: bytes) -> None:
        if index < self.next_index or index in self.pending:
            return
        self.pending[index] = data
        while self.next_index in self.pending:
            self.hasher.update(self.pending.pop(self.next_index))
            self.next_index += 1
        self.progress.set()
        if self.next_index == self.total and self.verified_at is None:
            if self.hasher.hexdigest() == self.sha256:
                self.verified_at = time.time()
            else:
                self.failed = "whole-file sha256 mismatch"

    def missing(self) -> list[int]:
        return [i for i in range(self.next_index, self.total) if i not in self.pending]


async def _node_main(names: list[str], port: int, sha: str, size: int, mode: str,
                     ready: Any, go: Any, out: Any) -> None:
    total = max(1, -(-size // MAX_CHUNK_BYTES))
    nodes: dict[str, SimNode] = {}

    def handler(node: SimNode):
        def on_message(raw) -> None:
            assert node.link is not None
            node.link.ack(raw.mid, raw.qos)
            try:
                message = codec.decode(raw.topic, raw.payload)
            except ProtocolError:
                node.bad_chunks += 1
                return
            if isinstance(message, ModelChunk):
                if hashlib.sha256(message.data).hexdigest() != message.data_sha256:
                    node.bad_chunks += 1
                    return
                node.fanout_chunks += 1
                node.take(message.index, message.data)
            elif isinstance(message, Chunk) and not message.error:
                node.pulled_chunks += 1
                node.take(message.index, message.data)
        return on_message

    for name in names:
        node = SimNode(name, sha, size, total)
        node.link = Link(client_id=name, host="127.0.0.1", port=port, on_message=handler(node),
                         session_expiry=3600, keepalive=60)
        nodes[name] = node
    for node in nodes.values():
        assert node.link is not None
        await node.link.connect(30)
        if mode == "fanout":
            await node.link.subscribe(topics.models_filter(), 1)
        await node.link.subscribe(topics.node_topic(Kind.ARTIFACT_CHUNK, node.name), 1)
    await asyncio.to_thread(ready.wait)
    await asyncio.to_thread(go.wait)
    await asyncio.gather(*(_download(node, mode) for node in nodes.values()))
    out.put([(n.name, n.verified_at, n.failed, n.fanout_chunks, n.pulled_chunks, n.bad_chunks)
             for n in nodes.values()])
    for node in nodes.values():
        assert node.link is not None
        await node.link.close()


async def _download(node: SimNode, mode: str) -> None:
    link = node.link
    assert link is not None
    try:
        async with asyncio.timeout(DEADLINE_S):
            if mode == "fanout":
                want = ArtifactWant(node=node.name, sha256=node.sha256)
                await link.publish(topics.node_topic(Kind.ARTIFACT_WANT, node.name),
                                   codec.encode(want), retain=False, properties=None, timeout=30)
                while node.next_index < node.total:
                    node.progress.clear()
                    try:
                        async with asyncio.timeout(FANOUT_IDLE_S):
                            await node.progress.wait()
                    except TimeoutError:
                        break
            await _pull(node)
    except TimeoutError:
        node.failed = node.failed or f"not verified within {DEADLINE_S} s"


async def _pull(node: SimNode) -> None:
    """Today's per-node path: ask for each missing chunk, ``WINDOW`` outstanding, asking again
    for those whose answer did not come in 10 s."""
    link = node.link
    assert link is not None
    topic = topics.node_topic(Kind.ARTIFACT_REQUEST, node.name)
    outstanding: set[int] = set()
    while node.next_index < node.total and not node.failed:
        outstanding = {i for i in outstanding if i >= node.next_index and i not in node.pending}
        for index in node.missing():
            if len(outstanding) >= WINDOW:
                break
            if index in outstanding:
                continue
            outstanding.add(index)
            request = ChunkRequest(node=node.name, sha256=node.sha256, index=index)
            node.requested += 1
            await link.publish(topic, codec.encode(request), retain=False, properties=None,
                               timeout=30)
        node.progress.clear()
        try:
            async with asyncio.timeout(10):
                await node.progress.wait()
        except TimeoutError:
            outstanding.clear()


def _node_process(names: list[str], port: int, sha: str, size: int, mode: str,
                  ready: Any, go: Any, out: Any) -> None:
    asyncio.run(_node_main(names, port, sha, size, mode, ready, go, out))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_mode(broker: Broker, registry: ModelRegistry, sha: str, size: int, mode: str,
                   count: int, procs: int) -> dict[str, object]:
    client = MqttClient(MqttSettings(url=broker.url, client_id=f"cloud-{mode}"))
    distribution = ModelDistribution(client, registry, FanoutPolicy(gather_s=1.0))
    ctx = mp.get_context("spawn")
    procs = max(1, min(procs, count))
    ready, go, out = ctx.Barrier(procs + 1), ctx.Event(), ctx.Queue()
    names = [f"{mode}-{i:04d}" for i in range(count)]
    workers = [ctx.Process(target=_node_process, daemon=True,
                           args=(names[p::procs], broker.port, sha, size, mode, ready, go, out))
               for p in range(procs)]
    async with client:
        await client.wait_connected(30)
        for worker in workers:
            worker.start()
        await asyncio.to_thread(ready.wait, 300)
        assert broker.pid is not None
        cpu0, start = _cpu_seconds(broker.pid), time.time()
        go.set()
        rows = []
        for _ in workers:
            rows += await asyncio.to_thread(out.get, True, DEADLINE_S + 60)
        cpu = _cpu_seconds(broker.pid) - cpu0
        await distribution.close()
    for worker in workers:
        worker.join(30)
    verified = [r for r in rows if r[1] is not None and not r[2]]
    stats = distribution.stats
    return {
        "mode": mode,
        "nodes": count,
        "verified": len(verified),
        "failed": sorted({r[2] for r in rows if r[2]}),
        "seconds_to_all_verified": (max(r[1] for r in verified) - start) if verified else None,
        "cloud_published_bytes": stats.published_bytes,
        "fanout_bytes": stats.fanout_bytes,
        "pulled_bytes": stats.pulled_bytes,
        "copies_of_model": stats.published_bytes / size,
        "nodes_that_pulled": sum(1 for r in rows if r[4]),
        "bad_chunks": sum(r[5] for r in rows),
        "broker_cpu_s": cpu,
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        work = Path(tmp)
        model = build_model(work / "model.tflite")
        sha, size = hashlib.sha256(model.read_bytes()).hexdigest(), model.stat().st_size
        registry = ModelRegistry(work / "registry")
        registry.import_file(model, sha, size)
        with Broker(work / "broker") as broker:
            pull = await run_mode(broker, registry, sha, size, "pull", args.pull_nodes, args.procs)
            fanout = await run_mode(broker, registry, sha, size, "fanout", args.nodes, args.procs)
    per_node_pull = pull["cloud_published_bytes"] / max(1, args.pull_nodes)
    return {
        "model_bytes": size,
        "chunks": max(1, -(-size // MAX_CHUNK_BYTES)),
        "pull": pull,
        "fanout": fanout,
        "pull_bytes_extrapolated_to_fleet": per_node_pull * args.nodes,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pull-nodes", type=int, default=50)
    parser.add_argument("--procs", type=int, default=4)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    mib = 1024 * 1024
    print(f"model: {result['model_bytes']} bytes in {result['chunks']} chunks")
    print(f"{'mode':8} {'nodes':>6} {'verified':>8} {'s to all':>9} {'cloud MiB':>10} "
          f"{'x model':>8} {'pulled by':>9} {'broker CPU s':>12}")
    for row in (result["pull"], result["fanout"]):
        assert isinstance(row, dict)
        secs = row["seconds_to_all_verified"]
        print(f"{row['mode']:8} {row['nodes']:>6} {row['verified']:>8} "
              f"{(f'{secs:.1f}' if secs is not None else '-'):>9} "
              f"{row['cloud_published_bytes'] / mib:>10.1f} {row['copies_of_model']:>8.2f} "
              f"{row['nodes_that_pulled']:>9} {row['broker_cpu_s']:>12.1f}")
    print(f"pull extrapolated to {args.nodes} nodes: "
          f"{result['pull_bytes_extrapolated_to_fleet'] / mib:.0f} MiB from the cloud")  # type: ignore[operator]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
