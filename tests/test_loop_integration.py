"""The whole loop without ML: a real broker, the real cloud manager, a real edge agent, and boot
files that only pretend to learn.

The seed's manifests (paths moved into tmp) are applied; samples appended to the dataset index
make the agent report counts, the cloud trains (the agent writes the round's indexes from
``EDGELOOP_SPLIT``), evaluates, registers the candidate, pulls its files from the node into the
registry, and names it in the deploy node's desired state; the agent downloads it by chunks and
hot-swaps it into the running inference worker, whose ``swapped`` reaches the node status the
cloud records. Twice, so that round 2 trains from version 1 on the new samples only.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
from agent_cloud import agent_config
from running_cloud import api, cloud
from test_cloud_daemon import DATASET, JOB, NODE, NS, job_state, seed_manifests, wait_for

from cloud_manager.daemon import CloudDaemon
from cloud_manager.task_builder import task_id
from edge_agent.daemon import Agent

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

THRESHOLD = 5  # num_of_samples > 5 starts a round
#: Bigger than one 256 KiB chunk, so that pulls and downloads take several chunks.
MODEL_BYTES = 300 * 1024
INFERENCE_TASK = task_id(NS, JOB, 0, "inference")

TRAIN_PY = """
import hashlib, json, os, sys
from pathlib import Path

train = Path(os.environ["TRAIN_DATASET_URL"])
lines = train.read_text().splitlines() if train.is_file() else []
if not lines or not all(Path(line.split()[0]).is_absolute() for line in lines):
    print(f"bad train index {train}: {lines[:3]}", flush=True)
    sys.exit(2)
out = Path(os.environ["MODEL_URL"])
out.mkdir(parents=True, exist_ok=True)
artifacts = []
for name in ("model.keras", "model.tflite"):
    data = os.urandom(%(size)d)
    (out / name).write_bytes(data)
    artifacts.append({"name": name, "path": str(out / name), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
result = {"artifacts": artifacts, "samples": len(lines),
          "base_model": os.environ.get("BASE_MODEL_URL", "")}
Path(os.environ["EDGELOOP_RESULT"]).write_text(json.dumps(result))
"""

EVAL_PY = """
import json, os, sys
from pathlib import Path

test = Path(os.environ["TEST_DATASET_URL"])
if not test.is_file() or not test.read_text().strip():
    print(f"no eval samples in {test}", flush=True)
    sys.exit(2)
candidate, serving = os.environ["MODEL_URLS"].split(";")
models = [{"url": candidate, "metrics": {"precision": 0.9}},
          {"url": serving, "metrics": {"precision": 0.5}}]
Path(os.environ["EDGELOOP_RESULT"]).write_text(json.dumps({"models": models}))
"""

INFERENCE_PY = """
import json, signal, sys, time
from pathlib import Path
from workers import sdk

session = sdk.session("inference")
swaps = Path("swaps.jsonl")

def on_swap(message):
    previous = session.model_version
    data = Path(message.path).read_bytes()
    with swaps.open("a") as f:
        f.write(json.dumps({"version": message.version, "bytes": len(data)}) + "\\n")
    session.report_swapped(True, message.version, previous)

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sdk.on_swap(on_swap)
while True:
    time.sleep(0.1)
"""


def write_boot_files(code: Path) -> None:
    code.mkdir(parents=True)
    (code / "train.py").write_text(textwrap.dedent(TRAIN_PY % {"size": MODEL_BYTES}))
    (code / "eval.py").write_text(textwrap.dedent(EVAL_PY))
    (code / "inference.py").write_text(textwrap.dedent(INFERENCE_PY))


def append_samples(data_dir: Path, first: int, count: int) -> None:
    """Append ``count`` labelled samples (image files really there) to ``data_dir/data.txt``."""
    images = data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(first, first + count):
        (images / f"img{i}.jpg").write_bytes(b"\xff\xd8 not decoded by anyone here")
        lines.append(f"images/img{i}.jpg 1,1,{5 + i},{5 + i},{i % 4}\n")
    with open(data_dir / "data.txt", "a") as f:
        f.write("".join(lines))




def node_serving(daemon: CloudDaemon) -> dict[str, int]:
    node = daemon.manager.store.node(NODE)
    return node.status.serving if node else {}


def swaps(tmp: Path) -> list[dict]:
    path = tmp / "code" / "swaps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def index_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


async def test_two_rounds_train_eval_deploy_and_hot_swap(broker, tmp_path):
    write_boot_files(tmp_path / "code")
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.txt").write_text("")
    config = agent_config(broker.url, tmp_path / "agent", node=NODE,
                          datasets={DATASET: str(data / "data.txt")},
                          check_models=False)  # the scripted train writes random bytes
    async with cloud(broker.url, tmp_path / "cloud", read_node_paths=False) as daemon, Agent(config) as agent:
        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in seed_manifests(tmp_path, THRESHOLD, script_dir=tmp_path / "code"):
            response = await api(broker.url, "apply", body=text)
            assert response.ok, response
        await wait_for(lambda: NODE in daemon.manager.online_nodes(), "the agent online")
        # a model that arrives before the worker's channel is up restarts the worker instead
        await wait_for(lambda: INFERENCE_TASK in agent.channel.connected_tasks(),
                       "the inference worker's channel to the agent")
        registry = daemon.manager.registry
        assert registry is not None

        for round_no, first in ((1, 0), (2, 10)):
            append_samples(data, first, 10)
            await wait_for(lambda r=round_no: job_state(daemon).deployed_version == r,
                           f"round {round_no} deployed")
            version = next(v for v in daemon.manager.store.model_versions(f"{NS}/{JOB}")
                           if v.version == round_no)

            # pulled from the node into the registry, byte for byte
            assert version.collected is True
            for artifact in version.artifacts:
                node_file = Path(artifact.path)
                assert registry.has(artifact.sha256)
                assert registry.path(artifact.sha256).read_bytes() == node_file.read_bytes()

            # downloaded back by the deploy node, hot-swapped into the running worker
            await wait_for(lambda r=round_no: [s for s in swaps(tmp_path)
                                               if s["version"] == str(r)],
                           f"the inference worker swapped to version {round_no}")
            tflite = next(a for a in version.artifacts if a.name == "model.tflite")
            served = tmp_path / "agent" / "models" / NS / JOB / f"v{round_no}" / "model.tflite"
            assert hashlib.sha256(served.read_bytes()).hexdigest() == tflite.sha256
            assert (tmp_path / "deploy" / "model.tflite").read_bytes() == served.read_bytes()
            assert swaps(tmp_path)[-1] == {"version": str(round_no), "bytes": MODEL_BYTES}

            # the node's status names the version, and the job records it
            await wait_for(lambda r=round_no: node_serving(daemon).get(INFERENCE_TASK) == r,
                           f"node status serving version {round_no}")
            await wait_for(lambda r=round_no: job_state(daemon).serving_version == r,
                           f"job serving version {round_no}")
            assert agent.serving == {INFERENCE_TASK: round_no}

        # chunked both ways: two model files of two chunks each, per version (to the node
        # through the cloud's fan-out, or pulled chunk by chunk)
        stats = agent.downloader.stats
        assert stats.completed == 4
        assert stats.requested + stats.fanout_received >= 8
        # one inference worker all along: versions arrived by hot-swap, not by restarts
        assert [s["version"] for s in swaps(tmp_path)] == ["1", "2"]

        # the node wrote each round's indexes: absolute paths, new samples only, replay
        out = tmp_path / "output"
        held_out_before: set[str] = set()
        for round_no, new in ((1, range(10)), (2, range(10, 20))):
            train = index_lines(out / str(round_no) / "train.txt")
            held_out = index_lines(out / str(round_no) / "eval.txt")
            assert train and held_out
            assert all(Path(line.split()[0]).is_absolute() for line in train + held_out)
            new_names = {f"img{i}.jpg" for i in new}
            assert {Path(line.split()[0]).name for line in train} <= new_names
            assert set(held_out) <= held_out_before | {
                line for line in held_out if Path(line.split()[0]).name in new_names}
            held_out_before |= set(held_out)
        assert index_lines(out / "1" / "replay.txt") == []
        assert index_lines(out / "2" / "replay.txt") == index_lines(out / "1" / "train.txt")

        # round 2 trained from version 1's Keras file
        train2 = tmp_path / "agent" / "tasks" / task_id(NS, JOB, 2, "train") / "attempt-1"
        result = json.loads((train2 / "result.json").read_text())
        assert result["base_model"] == str(out / "1" / "model.keras")
        state = job_state(daemon)
        assert (state.stage, state.state, state.round) == ("Train", "Waiting", 3)
