"""Hard-example delivery through the edge agent's durable outbox, against an in-memory baseline.

Each row saves N hard examples (``--image-kb`` each) the way an inference worker does, lets the
agent take them into its outbox while the broker is down, restarts the broker and times until a
cloud stand-in that acknowledges has received all N (deduplicated). The baseline row sends the
same messages through ReliableSender with the in-memory store (no fsync, no intake). The ratio
column is the delivery rate (examples per second) as a fraction of the baseline's rate: 1.0 means
durability costs nothing, 0.5 that it halves the rate.

    .venv/bin/python bench/agent_outbox.py [--count 500] [--image-kb 40]

Writes bench/results/agent_outbox.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent_cloud import FakeCloud, agent_config

from edge_agent.daemon import Agent
from edgeloop.mqtt import MqttClient, MqttSettings
from edgeloop.reliable import ReliableSender
from mosquitto.launcher import Broker
from protocol import topics
from protocol.messages import HardExample, HardExampleSidecar

RESULTS = ROOT / "bench" / "results"


def save_examples(folder: Path, count: int, size: int) -> list[tuple[bytes, dict]]:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for i in range(count):
        image = rng.randbytes(size - 4) + i.to_bytes(4, "big")
        sha = hashlib.sha256(image).hexdigest()
        doc = {
            "boxes": [[1, 2, 30, 40]],
            "scores": [0.4],
            "classes": [1],
            "frame_index": i,
            "image": f"{i:06d}.jpg",
            "sha256": sha,
        }
        (folder / f"{i:06d}.jpg").write_bytes(image)
        (folder / f"{i:06d}.json").write_text(json.dumps(doc))
        examples.append((image, doc))
    return examples


async def durable_row(tmp: Path, count: int, size: int) -> dict[str, float]:
    with Broker(tmp / "broker") as broker:
        he = tmp / "he"
        config = agent_config(
            broker.url, tmp / "state", hardex_dirs={"bench/job": he}, hardex_scan_s=3600
        )
        async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
            await cloud.wait_for(cloud.statuses)
            broker.stop()
            while agent.client.connected:
                await asyncio.sleep(0.01)
            save_examples(he, count, size)
            start = time.perf_counter()
            await agent.intake.scan()
            intake_s = time.perf_counter() - start
            broker.start()
            start = time.perf_counter()
            await cloud.wait_for(lambda: len(cloud.hardex_deliveries) >= count, 600)
            deliver_s = time.perf_counter() - start
            duplicates = sum(cloud.hardex_deliveries.values()) - count
    return {"intake_s": intake_s, "deliver_s": deliver_s, "duplicates": duplicates}


async def memory_row(tmp: Path, count: int, size: int) -> dict[str, float]:
    examples = save_examples(tmp / "he-mem", count, size)
    messages = [
        HardExample(
            node="edge-1",
            job="bench/job",
            sha256=doc["sha256"],
            image=image,
            sidecar=HardExampleSidecar.model_validate(doc),
        )
        for image, doc in examples
    ]
    with Broker(tmp / "broker-mem") as broker:
        client = MqttClient(MqttSettings(url=broker.url, client_id="edge-1", backoff_max=0.5))
        sender = ReliableSender(client, topics.ack("edge-1"))
        async with FakeCloud(broker.url) as cloud, client, sender:
            await client.wait_connected(10)
            start = time.perf_counter()
            for message in messages:
                await sender.send(topics.hardex("edge-1"), message)
            intake_s = time.perf_counter() - start
            start = time.perf_counter()
            await cloud.wait_for(lambda: len(cloud.hardex_deliveries) >= count, 600)
            deliver_s = time.perf_counter() - start
            duplicates = sum(cloud.hardex_deliveries.values()) - count
    return {"intake_s": intake_s, "deliver_s": deliver_s, "duplicates": duplicates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--image-kb", type=float, default=40.0)
    args = parser.parse_args()
    size = int(args.image_kb * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        memory = asyncio.run(memory_row(Path(tmp), args.count, size))
        durable = asyncio.run(durable_row(Path(tmp), args.count, size))
    rows = {"memory outbox (baseline)": memory, "agent disk outbox + intake": durable}
    for row in rows.values():
        row["per_s"] = args.count / row["deliver_s"]
        row["rate_ratio_vs_memory"] = row["per_s"] / memory["per_s"]
    print(f"{args.count} hard examples of {args.image_kb:g} KiB")
    print(f"{'path':30} {'intake s':>9} {'deliver s':>10} {'per s':>8} {'x rate':>7} {'dups':>5}")
    for name, row in rows.items():
        print(
            f"{name:30} {row['intake_s']:9.2f} {row['deliver_s']:10.2f} {row['per_s']:8.0f} "
            f"{row['rate_ratio_vs_memory']:7.2f} {row['duplicates']:5d}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "agent_outbox.json"
    out.write_text(
        json.dumps(
            {
                "count": args.count,
                "image_kb": args.image_kb,
                "rows": rows,
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
