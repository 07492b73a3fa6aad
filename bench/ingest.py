"""Sample-report ingest: the cloud manager against a raw aiomqtt subscriber, same broker, same run.

N simulated nodes (default 10,000), each with its own Dataset, send one sample report each
through a real mosquitto, published as fast as a separate process can. Two receivers are timed
on the same stream:

* baseline: a bare aiomqtt subscriber that only counts messages;
* manager: the real cloud manager daemon (decode, dedupe, one SQLite transaction per batch of
  reports that arrived together, trigger evaluation for the datasets' jobs, acknowledgement
  after the commit);
* with ``--store postgresql``, also the same manager with its store in PostgreSQL (a server
  started for the run in a temporary directory, fsync on, as in production), timed against the
  same baseline in the same repeat. Its CPU per message counts this process only: the work the
  PostgreSQL server does is not in it, so its rate is the fairer comparison.

Reported: sustained rate of each (messages/s between the first and the last one handled), their
ratio (goal >= 0.8), and report-to-state latency (publish time to committed transaction; for the
baseline, to arrival) p50/p99. Latency counts the time a report waits in the broker behind the
burst, so it mostly measures how far behind the publisher a receiver falls.

The machine may be shared: rates then move with the neighbours' load. So the two receivers run
``--repeats`` times, alternating, each pair's ratio is printed and the median is the result; and
each receiver's CPU time per message (this process only, publisher excluded) is reported too, a
steadier measure of the work each does per report.

    .venv/bin/python bench/ingest.py [--nodes 10000] [--repeats 3] [--store postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import aiomqtt

from cloud_manager.daemon import CloudDaemon
from cloud_manager.ingest_split import IngestSplit
from cloud_manager.manager import Manager
from cloud_manager.store import Store
from edgeloop.mqtt import MqttSettings
from edgeloop.postgres_server import PostgresServer
from mosquitto.launcher import Broker
from protocol import topics
from protocol.codec import decode, encode
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
            datasets=[DatasetSamples(dataset=f"{NAMESPACE}/ds-{i:05d}", url="/d", samples=seq)],
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


def summary(done_at: list[float], latencies: list[float], cpu_s: float) -> dict[str, float]:
    lat = sorted(latencies)
    return {
        "handled": len(done_at),
        "rate": (len(done_at) - 1) / (done_at[-1] - done_at[0]),
        "latency_p50_ms": 1000 * statistics.median(lat),
        "latency_p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "cpu_us_per_msg": 1e6 * cpu_s / len(done_at),
    }


async def baseline(port: int, nodes: int) -> dict[str, float]:
    """Count messages; the payloads are decoded for their publish time only after the clock
    stopped, so that the baseline does no more than receive."""
    times: list[float] = []
    arrivals: list[tuple[float, str, bytes]] = []
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topics.node_filter(Kind.SAMPLES), qos=1)
        process, go = start_publisher(port, nodes, seq=1)
        cpu = time.process_time()
        go.set()
        async with asyncio.timeout(300):
            async for message in client.messages:
                times.append(time.perf_counter())
                payload = message.payload
                assert isinstance(payload, bytes)
                arrivals.append((time.time(), message.topic.value, payload))
                if len(times) == nodes:
                    break
        cpu = time.process_time() - cpu
    await asyncio.to_thread(process.join)
    latencies = []
    for wall, topic, payload in arrivals:
        report = decode(topic, payload)
        assert isinstance(report, SampleReport)
        latencies.append(wall - report.ts)
    return summary(times, latencies, cpu)


class TimedStore(Store):
    """The real store, telling its manager when a commit left for later has happened."""

    after_commit: Callable[[], None] = staticmethod(lambda: None)

    def commit_pending(self) -> None:
        due = self.commit_due
        super().commit_pending()
        if due:
            self.after_commit()


class TimedManager(Manager):
    """The real manager, noting when each report's transaction has committed (the daemon
    commits a batch in a worker thread after the handler returned)."""

    latencies: list[float]
    done_at: list[float]
    batches: int
    store: TimedStore

    def on_sample_reports(self, reports, now):  # noqa: ANN001, ANN201
        out = super().on_sample_reports(reports, now)
        self.batches += 1
        self.committing = list(reports)
        if not self.store.commit_due:
            self.committed()
        return out

    def committed(self) -> None:
        done, wall = time.perf_counter(), time.time()
        for report in self.committing:
            self.done_at.append(done)
            self.latencies.append(wall - report.ts)
        self.committing = []


def make_manager(store: TimedStore, nodes: int, *, datasets: bool = True,
                 decides: bool = True) -> TimedManager:
    manager = TimedManager(store, decides=decides)
    store.after_commit = manager.committed
    manager.committing = []
    if not datasets:  # another manager on the same database applied them
        return manager
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


async def managed(broker: Broker, manager: TimedManager, nodes: int, seq: int) -> dict[str, float]:
    """One burst through a freshly started daemon (no session left over from the last one)."""
    manager.latencies, manager.done_at, manager.batches = [], [], 0
    settings = MqttSettings(url=broker.url, client_id="bench-cloud", session_expiry=0)
    daemon = CloudDaemon(settings, manager)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await daemon.client.wait_connected(10)
    process, go = start_publisher(broker.port, nodes, seq=seq)
    cpu = time.process_time()
    go.set()
    async with asyncio.timeout(600):
        # the daemon counts a batch once its commit returned, which may be after the handler
        while len(manager.done_at) < nodes or daemon.sample_stats.reports < nodes:
            await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu
    stop.set()
    await runner
    await asyncio.to_thread(process.join)
    stats = daemon.sample_stats
    if stats.failed or stats.reports != nodes:
        raise SystemExit(f"the manager did not apply every report: {stats}")
    return summary(manager.done_at, manager.latencies, cpu) | {
        "mean_batch": len(manager.done_at) / manager.batches,
    }


def member_process(url: str, port: int, nodes: int, ready, stop, handled, out) -> None:  # noqa: ANN001
    """Runs in its own process: a second manager's ingest session on the same PostgreSQL
    database, in the share group, until ``stop``; sends back when each report committed and
    the CPU time it took."""
    store = TimedStore(url=url)
    manager = make_manager(store, nodes, datasets=False, decides=False)
    manager.latencies, manager.done_at, manager.batches = [], [], 0
    committed = manager.committed

    def counted() -> None:
        before = len(manager.done_at)
        committed()
        with handled.get_lock():
            handled.value += len(manager.done_at) - before

    store.after_commit = manager.committed = counted  # type: ignore[method-assign]

    async def serve() -> None:
        settings = MqttSettings(url=f"mqtt://127.0.0.1:{port}", client_id="bench-member",
                                session_expiry=0)
        daemon = CloudDaemon(settings, manager, split=split(member=True))
        done = asyncio.Event()
        runner = asyncio.create_task(daemon.run(done))
        await daemon.client.wait_connected(10)
        ready.set()
        cpu = time.process_time()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        cpu = time.process_time() - cpu
        done.set()
        await runner
        out.put((manager.done_at, manager.latencies, cpu, manager.batches))

    asyncio.run(serve())
    store.close()


def split(*, member: bool) -> IngestSplit:
    return IngestSplit("bench", member, "bench-member" if member else "bench-leader",
                       lambda: "bench-leader")


async def two_managers(broker: Broker, manager: TimedManager, url: str, nodes: int,
                       seq: int) -> dict[str, float]:
    """One burst through two managers on one PostgreSQL database: this process's daemon as
    the leader's session and a second process's ingest session, in one share group (fresh
    sessions, as :func:`managed`). The rate is over both: the first report committed by
    either to the last; CPU is both processes'."""
    manager.latencies, manager.done_at, manager.batches = [], [], 0
    context = multiprocessing.get_context("spawn")
    ready, stop, handled, out = (context.Event(), context.Event(), context.Value("i", 0),
                                 context.Queue())
    member = context.Process(target=member_process,
                             args=(url, broker.port, nodes, ready, stop, handled, out))
    member.start()
    settings = MqttSettings(url=broker.url, client_id="bench-cloud", session_expiry=0)
    daemon = CloudDaemon(settings, manager, split=split(member=False))
    done = asyncio.Event()
    runner = asyncio.create_task(daemon.run(done))
    await daemon.client.wait_connected(10)
    await asyncio.to_thread(ready.wait, 60)
    process, go = start_publisher(broker.port, nodes, seq=seq)
    cpu = time.process_time()
    go.set()
    async with asyncio.timeout(600):
        while len(manager.done_at) + handled.value < nodes:
            await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu
    stop.set()
    member_done, member_latencies, member_cpu, member_batches = await asyncio.to_thread(out.get)
    await asyncio.to_thread(member.join)
    done.set()
    await runner
    await asyncio.to_thread(process.join)
    if len(manager.done_at) + len(member_done) != nodes:
        raise SystemExit(f"two managers applied {len(manager.done_at)} + {len(member_done)} "
                         f"reports, not {nodes}")
    return summary(sorted(manager.done_at + member_done), manager.latencies + member_latencies,
                   cpu + member_cpu) | {
        "mean_batch": nodes / (manager.batches + member_batches),
        "share_of_second": len(member_done) / nodes,
    }


#: the receivers timed against the baseline, by store: (key in the JSON, label in the table)
RECEIVERS = {"sqlite": ("cloud_manager", "cloud manager, SQLite"),
             "postgresql": ("cloud_manager_postgresql", "cloud manager, PostgreSQL"),
             "postgresql2": ("two_managers_postgresql", "two managers, PostgreSQL")}


def open_store(kind: str, tmp: Path, stack: ExitStack,
               servers: list[PostgresServer]) -> tuple[TimedStore, str]:
    """The store of ``kind`` and its location; the PostgreSQL kinds share one server, each
    with a database of its own."""
    if kind == "sqlite":
        store, location = TimedStore(tmp / "state"), str(tmp / "state")
    else:
        if not servers:
            servers.append(stack.enter_context(PostgresServer()))
        location = servers[0].create_database(f"bench_{kind}")
        store = TimedStore(url=location)
    stack.callback(store.close)
    return store, location


def ratios(pairs: list[dict], key: str) -> dict[str, float]:
    return {
        "ratio": statistics.median(p[key]["ratio"] for p in pairs),
        "ratio_min": min(p[key]["ratio"] for p in pairs),
        "ratio_max": max(p[key]["ratio"] for p in pairs),
        "cpu_ratio": statistics.median(p[key]["cpu_ratio"] for p in pairs),
    }


async def main(nodes: int, repeats: int, stores: list[str]) -> dict[str, object]:
    pairs = []
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker, \
            ExitStack() as stack:
        servers: list[PostgresServer] = []
        opened = {kind: open_store(kind, Path(tmp), stack, servers) for kind in stores}
        managers = {kind: await asyncio.to_thread(make_manager, store, nodes)
                    for kind, (store, _) in opened.items()}
        for run in range(repeats):
            raw = await baseline(broker.port, nodes)
            pair: dict[str, object] = {"baseline_raw_aiomqtt": raw}
            for kind, manager in managers.items():
                if kind == "postgresql2":
                    cloud = await two_managers(broker, manager, opened[kind][1], nodes,
                                               seq=2 + run)
                else:
                    cloud = await managed(broker, manager, nodes, seq=2 + run)
                pair[RECEIVERS[kind][0]] = cloud | {
                    "ratio": cloud["rate"] / raw["rate"],
                    "cpu_ratio": raw["cpu_us_per_msg"] / cloud["cpu_us_per_msg"],
                }
            pairs.append(pair)
    result: dict[str, object] = {"nodes": nodes, "runs": pairs, "goal_ratio": 0.8}
    result |= ratios(pairs, RECEIVERS["sqlite"][0])  # the embedded default, as before
    for kind in stores[1:]:
        result[kind] = ratios(pairs, RECEIVERS[kind][0])
    return result


def print_table(result: dict[str, object]) -> None:
    print(f"{'run':<5}{'receiver':<28}{'reports/s':>11}{'CPU us/msg':>12}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'batch':>7}{'ratio':>7}")
    for i, pair in enumerate(result["runs"], 1):  # type: ignore[arg-type]
        rows = [("raw aiomqtt (baseline)", pair["baseline_raw_aiomqtt"], "")]
        rows += [(label, pair[key], f"{pair[key]['mean_batch']:>7.0f}{pair[key]['ratio']:>7.2f}")
                 for key, label in RECEIVERS.values() if key in pair]
        for name, row, extra in rows:
            print(f"{i:<5}{name:<28}{row['rate']:>11.0f}{row['cpu_us_per_msg']:>12.0f}"
                  f"{row['latency_p50_ms']:>9.0f}{row['latency_p99_ms']:>9.0f}{extra}")
    print(f"SQLite: ratio median {result['ratio']:.2f} (min {result['ratio_min']:.2f}, max "
          f"{result['ratio_max']:.2f}; goal >= 0.8), CPU per message ratio "
          f"{result['cpu_ratio']:.2f}, {result['nodes']} nodes")
    for kind, label in (("postgresql", "PostgreSQL"), ("postgresql2", "two managers, PostgreSQL")):
        if kind in result:
            pg = result[kind]
            print(f"{label}: ratio median {pg['ratio']:.2f} (min {pg['ratio_min']:.2f}, max "  # type: ignore[index]
                  f"{pg['ratio_max']:.2f}), CPU per message ratio (managers' processes only) "  # type: ignore[index]
                  f"{pg['cpu_ratio']:.2f}")  # type: ignore[index]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite",
                        help="postgresql: time a manager on PostgreSQL too, besides SQLite, "
                             "and two managers sharing the ingest on PostgreSQL")
    args = parser.parse_args()
    stores = ["sqlite"] + (["postgresql", "postgresql2"] if args.store == "postgresql" else [])
    outcome = asyncio.run(main(args.nodes, args.repeats, stores))
    print_table(outcome)
    RESULTS.mkdir(exist_ok=True)
    name = "ingest.json" if args.store == "sqlite" else "ingest_postgresql.json"
    (RESULTS / name).write_text(json.dumps(outcome, indent=2))
