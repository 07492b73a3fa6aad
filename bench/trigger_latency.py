"""How long from a node's sample report to the train task arriving on the node.

Runs a real mosquitto, the cloud manager in-process and a scripted node, then for each mode
reports enough new samples to trigger a round, ``--rounds`` times, at random moments:

- ``event``: edgeloop's default, the train trigger is checked on every sample report;
- ``polling``: the baseline, checked only every ``checkPeriodSeconds`` (Sedna's behaviour).

Both use the broker config as shipped, with ``set_tcp_nodelay true``: without it small QoS 1
messages wait for delayed TCP acknowledgements (about 40 ms on Linux).

Prints a table and writes ``bench/results/trigger_latency.json``. Usage::

    .venv/bin/python bench/trigger_latency.py [--rounds 40] [--period 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from cloud_manager import state_machine as sm  # noqa: E402
from cloud_manager.api_client import call, new_request  # noqa: E402
from cloud_manager.daemon import CloudDaemon  # noqa: E402
from cloud_manager.manager import Manager  # noqa: E402
from cloud_manager.store import Store  # noqa: E402
from edgeloop.connection import ConnectionOptions  # noqa: E402
from edgeloop.mqtt import MqttSettings  # noqa: E402
from mosquitto.launcher import Broker  # noqa: E402
from scripted_node import ScriptedNode, succeed  # noqa: E402
from test_cloud_daemon import DATASET, JOB, NODE, NS, seed_manifests  # noqa: E402

THRESHOLD = 10
RESULTS = ROOT / "bench" / "results" / "trigger_latency.json"


async def measure(url: str, workdir: Path, event_driven: bool, rounds: int, period: int,
                  rng: random.Random) -> list[float]:
    store = Store(workdir / ("event" if event_driven else "polling"))
    manager = Manager(store, settings=sm.MachineSettings(event_driven=event_driven))
    daemon = CloudDaemon(MqttSettings(url=url, client_id=f"cloud-{event_driven}"), manager)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    latencies: list[float] = []
    try:
        await daemon.client.wait_connected(10)
        options = ConnectionOptions(broker=url)
        await call(options, "create_namespace", new_request(name=NS))
        for text in seed_manifests(workdir, threshold=THRESHOLD):
            data = json.loads(text)
            if data["kind"] == "IncrementalLearningJob":
                data["spec"]["trainSpec"]["trigger"]["checkPeriodSeconds"] = period
            (response,) = await call(options, "apply", new_request(body=json.dumps(data)))
            assert response.ok, response
        async with ScriptedNode(url, NODE, succeed()) as node:
            while NODE not in manager.online_nodes():
                await asyncio.sleep(0.01)
            total = 0
            for _ in range(rounds):
                await asyncio.sleep(rng.uniform(0, period))  # a random phase against the checks
                seen = len(node.arrivals)
                total += THRESHOLD + 1
                started = time.monotonic()
                await node.report_samples(DATASET, "x", total)
                while len(node.arrivals) == seen:
                    await asyncio.sleep(0.001)
                latencies.append(node.arrivals[seen] - started)
                state = store.load_job(NS, JOB)
                while state is None or (state.stage, state.state) != ("Train", "Waiting"):
                    await asyncio.sleep(0.01)
                    state = store.load_job(NS, JOB)
    finally:
        stop.set()
        await runner
        store.close()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000,
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--period", type=int, default=2, help="checkPeriodSeconds of the job")
    args = parser.parse_args()
    rng = random.Random(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        with Broker(Path(tmp) / "broker") as broker:
            for mode, event_driven in (("polling", False), ("event", True)):
                latencies = await measure(broker.url, Path(tmp) / mode, event_driven,
                                          args.rounds, args.period, rng)
                results[mode] = summary(latencies)
    ratio = results["polling"]["median_ms"] / results["event"]["median_ms"]
    print(f"sample report -> train task on the node (checkPeriodSeconds={args.period}, "
          f"{args.rounds} rounds each; goal: event p99 <= 200 ms)")
    print(f"{'mode':<10}{'n':>4}{'median ms':>12}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for mode, row in results.items():
        print(f"{mode:<10}{row['n']:>4}{row['median_ms']:>12.1f}{row['p90_ms']:>10.1f}"
              f"{row['p99_ms']:>10.1f}{row['max_ms']:>10.1f}")
    print(f"polling / event median: {ratio:.1f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "check_period_s": args.period, "rounds": args.rounds, "results": results,
        "polling_over_event_median": ratio, "goal_event_p99_ms": 200,
    }, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
