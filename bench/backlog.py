"""Backlog and flood: the cloud manager working off a queued backlog, and one node flooding.

(a) drain: the manager is away while 100 simulated nodes queue sample reports and status
    messages (10,000 in all) in its persistent session; then it starts. Reported: the time to
    drain and its rate against a raw paho subscriber draining the same backlog from its own
    session in the same run (goal >= 0.8x), and how long the API takes to answer ``get nodes``
    asked every 50 ms during the drain from a process of its own, as an operator's CLI would
    (goal: p99 <= 1 s). Each side's CPU time per message counts this process only: the broker
    and the process asking the API (reported apart) are not in it.
(b) flood: 1,000 well-behaved nodes send one sample report per second each while one node sends
    20 times its budget (``--budget`` messages per second). Reported: the well-behaved nodes'
    report-to-commit latency p50/p99 against a run without the flooder (goal: p99 within 2x),
    and how much of the flood got through.

    .venv/bin/python bench/backlog.py [--nodes 100] [--per-node 100] [--flood-nodes 1000]
                                      [--only drain|flood] [--repeats 1]

With ``--repeats N`` the drain runs N times (each with its own raw baseline right before it);
every run's ratio is printed and the median run is the result. The machine may be shared: the
load average at the start is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from ingest import RESULTS, TimedManager, TimedStore, make_manager, node_name

from cloud_manager.api_client import new_request
from cloud_manager.daemon import CloudDaemon
from edgeloop.fairness import Budget
from edgeloop.mqtt import MqttClient, MqttSettings, RequestTimeout
from mosquitto.launcher import Broker
from protocol import topics
from protocol.codec import encode
from protocol.messages import DatasetSamples, NodeStatus, SampleReport
from protocol.topics import Kind

NAMESPACE = "bench"
SESSION_EXPIRY = 3600


def report(i: int, seq: int) -> tuple[str, bytes]:
    node = node_name(i)
    message = SampleReport(node=node, boot_id="bench", seq=seq, ts=time.time(), datasets=[
        DatasetSamples(dataset=f"{NAMESPACE}/ds-{i:05d}", url="/d", samples=seq)])
    return topics.samples(node), encode(message)


def status(i: int, seq: int) -> tuple[str, bytes]:
    node = node_name(i)
    return topics.status(node), encode(NodeStatus(node=node, state="online", boot_id="bench",
                                                  seq=seq))


def queue_backlog(port: int, nodes: int, per_node: int) -> int:
    """Half sample reports, half statuses, interleaved by node; returns how many."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = []
    for seq in range(per_node):
        for i in range(nodes):
            topic, payload = (report if seq % 2 == 0 else status)(i, 1000 + seq)
            infos.append(client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()
    return len(infos)


def raw_session(port: int, connect: bool, expected: int = 0) -> float:
    """A bare paho subscriber with a persistent session: subscribe once (``connect`` False), or
    come back and time draining ``expected`` queued messages.

    Like for like with the manager's data connection: MQTT v5, QoS 1, the same session expiry
    and receive maximum, and each message acknowledged manually after it was handled (here:
    counted), not by paho on arrival."""
    done = threading.Event()
    count = 0

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        client.ack(message.mid, message.qos)
        if count == expected:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw",
                         protocol=mqtt.MQTTv5, manual_ack=True)
    client.on_message = on_message
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = SESSION_EXPIRY
    properties.ReceiveMaximum = MqttSettings.receive_maximum
    start = time.perf_counter()
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.loop_start()
    if not connect:
        client.subscribe([(topics.node_filter(Kind.SAMPLES), 1), (topics.node_filter(Kind.STATUS), 1)])
        time.sleep(0.5)  # the SUBACK; nothing is measured here
    elif not done.wait(600):
        raise SystemExit(f"raw subscriber drained only {count} of {expected}")
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return elapsed


async def start_daemon(broker: Broker, manager: TimedManager,
                       budget: Budget | None = None) -> tuple[CloudDaemon, asyncio.Event, Any]:
    settings = MqttSettings(url=broker.url, client_id="bench-cloud", session_expiry=SESSION_EXPIRY)
    daemon = CloudDaemon(settings, manager, budget=budget)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    return daemon, stop, runner


async def ask_api(url: str, ready: Any, go: Any, until: Any, answers: list[float]) -> float:
    """``get nodes`` every 50 ms from ``go`` until ``until`` (process events; ``ready`` once
    connected); returns the CPU seconds it took from ``go``. The manager's API subscription is
    on a clean session, so a request sent before it subscribed is lost: until the first answer,
    a request not answered in 2 s is asked again (not counted). A drain over before the first
    answer still waits for one, so that every run has an answer time."""
    settings = MqttSettings(url=url, client_id="bench-api", session_expiry=0)
    async with MqttClient(settings) as client:
        await client.wait_connected(10)
        ready.set()
        await asyncio.to_thread(go.wait)
        cpu = time.process_time()
        while not (until.is_set() and answers):
            start = time.perf_counter()
            try:
                await client.request(topics.api_request("get"), new_request(
                    verb="get", resource="nodes"), 30 if answers else 2)
            except RequestTimeout:
                if answers:
                    raise
                continue
            answers.append(time.perf_counter() - start)
            await asyncio.sleep(0.05)
        return time.process_time() - cpu


def asker_process(url: str, ready: Any, go: Any, until: Any, results: Any) -> None:
    """Runs in its own process, as an operator's CLI would: its CPU and its turns of an event
    loop are not the manager's. Sends back the answer times and its CPU seconds while asking."""
    answers: list[float] = []
    cpu = asyncio.run(ask_api(url, ready, go, until, answers))
    results.send((answers, cpu))


def handled(daemon: CloudDaemon) -> int:
    """Sample reports and statuses the manager has committed."""
    samples, statuses = daemon.sample_stats, daemon.status_stats
    return samples.reports + samples.duplicates + samples.failed + statuses.statuses


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


async def drain(nodes: int, per_node: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        manager = await asyncio.to_thread(make_manager, TimedStore(Path(tmp) / "state"), nodes)
        manager.latencies, manager.done_at, manager.batches = [], [], 0
        await asyncio.to_thread(raw_session, broker.port, False)
        daemon, stop, runner = await start_daemon(broker, manager)
        await daemon.client.wait_connected(10)
        stop.set()
        await runner  # away from here on: the backlog queues in both sessions
        total = await asyncio.to_thread(queue_backlog, broker.port, nodes, per_node)
        cpu = time.process_time()
        raw_s = await asyncio.to_thread(raw_session, broker.port, True, total)
        raw_cpu = time.process_time() - cpu

        spawn = multiprocessing.get_context("spawn")
        ready, go, drained = spawn.Event(), spawn.Event(), spawn.Event()
        results, sent = spawn.Pipe(duplex=False)
        asker = spawn.Process(target=asker_process, args=(broker.url, ready, go, drained, sent))
        asker.start()
        if not await asyncio.to_thread(ready.wait, 60):
            raise SystemExit("the process asking the API did not connect")
        start, cpu = time.perf_counter(), time.process_time()
        go.set()
        daemon, stop, runner = await start_daemon(broker, manager)
        async with asyncio.timeout(600):
            while handled(daemon) < total:  # committed, hence acknowledged
                await asyncio.sleep(0.01)
        manager_s = time.perf_counter() - start
        manager_cpu = time.process_time() - cpu
        drained.set()
        answers, asker_cpu = await asyncio.to_thread(results.recv)
        await asyncio.to_thread(asker.join)
        stop.set()
        await runner
    return {
        "messages": total,
        "raw_s": raw_s,
        "raw_rate": total / raw_s,
        "manager_s": manager_s,
        "manager_rate": total / manager_s,
        "ratio": raw_s / manager_s,
        "raw_cpu_us_per_msg": 1e6 * raw_cpu / total,
        "manager_cpu_us_per_msg": 1e6 * manager_cpu / total,
        # the process asking ``get nodes`` (not in the manager's): from the start to its last answer
        "asker_cpu_us_per_msg": 1e6 * asker_cpu / total,
        "largest_sample_batch": daemon.sample_stats.largest_batch,
        "transactions": daemon.sample_stats.batches + daemon.status_stats.batches,
        "api_answers": len(answers),
        "api_p50_ms": 1000 * statistics.median(answers),
        "api_p99_ms": 1000 * pct(answers, 0.99),
        "api_max_ms": 1000 * max(answers),
    }


def publish_stream(port: int, nodes: int, seconds: float, flood_per_s: int, go: Any) -> None:
    """Runs in its own process: each node one report per second, spread evenly; plus node
    ``nodes`` (the flooder) sending ``flood_per_s`` reports per second."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(2000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    go.wait()
    tick, start, seq, flood_seq = 0.01, time.monotonic(), 0, 0
    ticks = int(seconds / tick)
    per_tick = nodes * tick
    flood_per_tick = flood_per_s * tick
    sent = flood_sent = 0.0
    for t in range(ticks):
        sent += per_tick
        while seq < int(sent):
            client.publish(*report(seq % nodes, 1 + seq // nodes), qos=1)
            seq += 1
        flood_sent += flood_per_tick
        while flood_seq < int(flood_sent):
            client.publish(*report(nodes, 1 + flood_seq), qos=1)
            flood_seq += 1
        time.sleep(max(0.0, start + (t + 1) * tick - time.monotonic()))
    time.sleep(2)
    client.loop_stop()
    client.disconnect()


async def flood_run(nodes: int, seconds: float, budget: Budget, flooder: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        manager = await asyncio.to_thread(
            make_manager, TimedStore(Path(tmp) / "state"), nodes + 1)
        manager.latencies, manager.done_at, manager.batches = [], [], 0
        daemon, stop, runner = await start_daemon(broker, manager, budget)
        await daemon.client.wait_connected(10)
        flood_per_s = 20 * budget.messages if flooder else 0
        go = multiprocessing.Event()
        process = multiprocessing.Process(target=publish_stream,
                                          args=(broker.port, nodes, seconds, flood_per_s, go))
        process.start()
        go.set()
        await asyncio.to_thread(process.join)
        expected_calm = int(nodes * seconds)
        async with asyncio.timeout(120):
            while sum(1 for n, _ in manager.by_node if n != node_name(nodes)) < expected_calm:
                await asyncio.sleep(0.05)
        stop.set()
        await runner
    calm = [lat for n, lat in manager.by_node if n != node_name(nodes)]
    flood_in = sum(1 for n, _ in manager.by_node if n == node_name(nodes))
    flood_sent = int(flood_per_s * seconds)
    return {
        "calm_reports": len(calm),
        "calm_p50_ms": 1000 * statistics.median(calm),
        "calm_p99_ms": 1000 * pct(calm, 0.99),
        "flood_sent": flood_sent,
        "flood_handled": flood_in,
        "flood_refused": daemon.budgets.refused[node_name(nodes)],
    }


class NodeTimedManager(TimedManager):
    """Notes each committed report's node as well, to tell the flooder's from the others'."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.by_node: list[tuple[str, float]] = []

    def committed(self) -> None:
        wall = time.time()
        for r in self.committing:
            self.by_node.append((r.node, wall - r.ts))
        super().committed()


async def main(args: argparse.Namespace) -> dict[str, object]:
    import ingest
    ingest.TimedManager = NodeTimedManager  # type: ignore[misc]  # what make_manager builds
    result: dict[str, object] = {"load_average_1m": os.getloadavg()[0]}
    if args.only in (None, "drain"):
        runs = []
        for _ in range(args.repeats):
            runs.append(await drain(args.nodes, args.per_node))
            last = runs[-1]
            print(f"drain run {len(runs)}: ratio {last['ratio']:.2f} "
                  f"(raw {last['raw_rate']:.0f}/s, manager {last['manager_rate']:.0f}/s, "
                  f"API p99 {last['api_p99_ms']:.0f} ms; CPU us/msg raw "
                  f"{last['raw_cpu_us_per_msg']:.0f}, manager {last['manager_cpu_us_per_msg']:.0f})",
                  flush=True)
        median = sorted(runs, key=lambda run: run["ratio"])[len(runs) // 2]
        result["drain"] = median | {
            "goal_ratio": 0.8, "goal_api_p99_ms": 1000, "ratios": [run["ratio"] for run in runs],
            **{f"{side}_cpu_us_per_msg_runs": [run[f"{side}_cpu_us_per_msg"] for run in runs]
               for side in ("raw", "manager", "asker")},
            # raw / manager CPU per message within each run: both sides under the same load
            "cpu_ratios": [run["raw_cpu_us_per_msg"] / run["manager_cpu_us_per_msg"]
                           for run in runs]}
    if args.only in (None, "flood"):
        budget = Budget(messages=args.budget, bytes=1 << 20)
        quiet = await flood_run(args.flood_nodes, args.seconds, budget, flooder=False)
        flooded = await flood_run(args.flood_nodes, args.seconds, budget, flooder=True)
        result["flood"] = {
            "budget_messages_per_s": args.budget, "nodes": args.flood_nodes,
            "seconds": args.seconds, "without_flooder": quiet, "with_flooder": flooded,
            "p99_ratio": flooded["calm_p99_ms"] / quiet["calm_p99_ms"], "goal_p99_ratio": 2}
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"load average (1 min) at the start: {result['load_average_1m']:.2f}")
    if "drain" in result:
        print_drain(result["drain"])
    if "flood" in result:
        print_flood(result["flood"])


def print_drain(d: dict[str, Any]) -> None:
    print(f"(a) drain of {d['messages']} queued messages (median of {len(d['ratios'])} run(s); "
          f"ratios {min(d['ratios']):.2f}-{max(d['ratios']):.2f})")
    print(f"{'receiver':<26}{'seconds':>9}{'msg/s':>9}{'ratio':>7}{'API p50 ms':>12}"
          f"{'API p99 ms':>12}{'CPU us/msg':>12}")
    print(f"{'raw paho (baseline)':<26}{d['raw_s']:>9.2f}{d['raw_rate']:>9.0f}{'':>31}"
          f"{d['raw_cpu_us_per_msg']:>12.0f}")
    print(f"{'cloud manager':<26}{d['manager_s']:>9.2f}{d['manager_rate']:>9.0f}{d['ratio']:>7.2f}"
          f"{d['api_p50_ms']:>12.0f}{d['api_p99_ms']:>12.0f}{d['manager_cpu_us_per_msg']:>12.0f}")
    print(f"{d['transactions']} transactions, largest sample batch {d['largest_sample_batch']}")
    raw, manager = d["raw_cpu_us_per_msg_runs"], d["manager_cpu_us_per_msg_runs"]
    print(f"CPU us/msg over the runs (median, range): raw {statistics.median(raw):.0f} "
          f"({min(raw):.0f}-{max(raw):.0f}), manager {statistics.median(manager):.0f} "
          f"({min(manager):.0f}-{max(manager):.0f}): "
          f"{statistics.median(raw) / statistics.median(manager):.2f}x (within each run: median "
          f"{statistics.median(d['cpu_ratios']):.2f}x, {min(d['cpu_ratios']):.2f}-"
          f"{max(d['cpu_ratios']):.2f}x); the process asking the API "
          f"{statistics.median(d['asker_cpu_us_per_msg_runs']):.0f}")


def print_flood(f: dict[str, Any]) -> None:
    print(f"(b) {f['nodes']} nodes at 1 report/s for {f['seconds']} s, budget "
          f"{f['budget_messages_per_s']} msg/s per node")
    print(f"{'run':<26}{'calm p50 ms':>12}{'calm p99 ms':>12}{'flood sent':>11}{'handled':>9}"
          f"{'refused':>9}")
    for name, row in (("without the flooder", f["without_flooder"]),
                      ("with a 20x flooder", f["with_flooder"])):
        print(f"{name:<26}{row['calm_p50_ms']:>12.0f}{row['calm_p99_ms']:>12.0f}"
              f"{row['flood_sent']:>11}{row['flood_handled']:>9}{row['flood_refused']:>9}")
    print(f"p99 with/without the flooder {f['p99_ratio']:.2f}x (goal <= 2)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--per-node", type=int, default=100)
    parser.add_argument("--flood-nodes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--budget", type=int, default=10, help="messages/s per node")
    parser.add_argument("--only", choices=("drain", "flood"), help="run one case only")
    parser.add_argument("--repeats", type=int, default=1, help="drain runs (median reported)")
    outcome = asyncio.run(main(parser.parse_args()))
    print_table(outcome)
    RESULTS.mkdir(exist_ok=True)
    only = parser.parse_args().only
    name = f"backlog-{only}.json" if only else "backlog.json"
    (RESULTS / name).write_text(json.dumps(outcome, indent=2))
