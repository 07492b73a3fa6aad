"""Sample-report ingest: the cloud manager against a raw aiomqtt subscriber, same broker, same run.

N simulated nodes (default 10,000), each with its own Dataset, send one sample report each
through a real mosquitto, published as fast as a separate process can. Two receivers are timed
on the same stream:

* baseline: a bare aiomqtt subscriber that only counts messages;
* manager: the real cloud manager daemon (decode, dedupe, one SQLite transaction per report,
  trigger evaluation for the dataset's jobs).

Reported: sustained rate of each (messages/s between the first and the last one handled), their
ratio (goal >= 0.8), and the manager's report-to-state latency (publish time to committed
transaction) p50/p99.

    .venv/bin/python bench/ingest.py [--nodes 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from cloud_manager.daemon import CloudDaemon
from cloud_manager.manager import Manager
from cloud_manager.store import Store
from edgeloop.mqtt import MqttSettings
from mosquitto.launcher import Broker
from protocol import topics
from protocol.codec import encode
from protocol.messages import ApiRequest, DatasetSamples, SampleReport
from protocol.topics import Kind

RESULTS = Path(__file__).resolve().parent / "results"
NAMESPACE = "bench"


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def publish_reports(port: int, nodes: int, seq: int, start_event) -> None:  # noqa: ANN001
    """Runs in its own process: one report per node, QoS 1, as fast as paho can."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start_event.wait()
    infos = []
    for i in range(nodes):
        node = node_name(i)
        report = SampleReport(
            node=node,
            boot_id="bench",
            seq=seq,
            datasets=[DatasetSamples(dataset=f"{NAMESPACE}/ds-{i:05d}", url="/d", samples=1)],
            ts=time.time(),
        )
        infos.append(client.publish(topics.samples(node), encode(report), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def start_publisher(port: int, nodes: int, seq: int) -> tuple[multiprocessing.Process, object]:
    ready = multiprocessing.Event()
    process = multiprocessing.Process(target=publish_reports, args=(port, nodes, seq, ready))
    process.start()
    return process, ready


async def baseline(port: int, nodes: int) -> dict[str, float]:
    times: list[float] = []
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topics.node_filter(Kind.SAMPLES), qos=1)
        process, go = start_publisher(port, nodes, seq=1)
        go.set()
        async with asyncio.timeout(300):
            async for _ in client.messages:
                times.append(time.perf_counter())
                if len(times) == nodes:
                    break
    await asyncio.to_thread(process.join)
    return {"handled": len(times), "rate": (len(times) - 1) / (times[-1] - times[0])}


class TimedManager(Manager):
    """The real manager, noting when each report's transaction has committed."""

    latencies: list[float]
    done_at: list[float]

    def on_samples(self, report, now):  # noqa: ANN001, ANN201
        out = super().on_samples(report, now)
        self.done_at.append(time.perf_counter())
        self.latencies.append(time.time() - report.ts)
        return out


def make_manager(state: Path, nodes: int) -> TimedManager:
    manager = TimedManager(Store(state))
    manager.latencies, manager.done_at = [], []
    now = time.time()
    manager.on_api(ApiRequest(request_id="ns", verb="create_namespace", name=NAMESPACE), now)
    for i in range(nodes):
        body = {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": f"ds-{i:05d}", "namespace": NAMESPACE},
            "spec": {"url": f"/data/{i}/data.txt", "format": "txt", "nodeName": node_name(i)},
        }
        response, _ = manager.on_api(
            ApiRequest(request_id=f"ds{i}", verb="apply", body=json.dumps(body)), now
        )
        if not response.ok:
            raise SystemExit(f"cannot create dataset {i}: {response.message} {response.errors}")
    return manager


async def managed(broker: Broker, manager: TimedManager, nodes: int) -> dict[str, float]:
    daemon = CloudDaemon(MqttSettings(url=broker.url, client_id="bench-cloud"), manager)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await daemon.client.wait_connected(10)
    process, go = start_publisher(broker.port, nodes, seq=2)
    go.set()
    async with asyncio.timeout(600):
        while len(manager.done_at) < nodes:
            await asyncio.sleep(0.05)
    stop.set()
    await runner
    await asyncio.to_thread(process.join)
    done = manager.done_at
    lat = sorted(manager.latencies)
    return {
        "handled": len(done),
        "rate": (len(done) - 1) / (done[-1] - done[0]),
        "latency_p50_ms": 1000 * statistics.median(lat),
        "latency_p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
    }


async def main(nodes: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        raw = await baseline(broker.port, nodes)
        manager = await asyncio.to_thread(make_manager, Path(tmp) / "state", nodes)
        cloud = await managed(broker, manager, nodes)
    return {
        "nodes": nodes,
        "baseline_raw_aiomqtt": raw,
        "cloud_manager": cloud,
        "ratio": cloud["rate"] / raw["rate"],
        "goal_ratio": 0.8,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    args = parser.parse_args()
    result = asyncio.run(main(args.nodes))
    raw, cloud = result["baseline_raw_aiomqtt"], result["cloud_manager"]
    print(f"{'receiver':<24}{'reports/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'raw aiomqtt (baseline)':<24}{raw['rate']:>12.0f}{'':>10}{'':>10}")
    print(
        f"{'cloud manager':<24}{cloud['rate']:>12.0f}"
        f"{cloud['latency_p50_ms']:>10.1f}{cloud['latency_p99_ms']:>10.1f}"
    )
    print(f"ratio {result['ratio']:.2f} (goal >= 0.8), {result['nodes']} nodes")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2))
