"""``edgeloop cloud`` as a real process with the CLI talking to it: kill -9 in each stage of a
round, restart, and the job carries on without running anything twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripted_node import ScriptedNode, succeed
from test_cloud_daemon import (
    DATASET,
    JOB,
    NODE,
    NS,
    seed_manifests,
    stop_cloud_in_stage,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def edgeloop(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True,
                          text=True, timeout=timeout)


class CloudProcess:
    def __init__(self, broker_url: str, state: Path, log: Path, store: str | None = None) -> None:
        self.args = [sys.executable, "-m", "edgeloop", "cloud", "--broker", broker_url,
                     "--state", str(state), *(["--store", store] if store else [])]
        self.log = log
        self.proc: subprocess.Popen | None = None
        self._ready_count = 0

    def start(self) -> None:
        out = self.log.open("a")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "EDGELOOP_LOG": "INFO"})
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the manager has subscribed: an API request sent earlier would be lost."""
        mark = "cloud manager connected"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            count = self.log.read_text().count(mark)
            if count > self._ready_count:
                self._ready_count = count
                return
            time.sleep(0.05)
        raise AssertionError(f"cloud manager not ready after {timeout} s:\n"
                             + self.log.read_text()[-2000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def cloud_process(broker, tmp_path, store_at) -> Iterator[CloudProcess]:
    """``edgeloop cloud`` with its store in the state directory, then in PostgreSQL."""
    process = CloudProcess(broker.url, tmp_path / "state", tmp_path / "cloud.log", store_at.url)
    process.start()
    yield process
    process.stop()


def get_job(url: str) -> dict:
    result = edgeloop("get", "il", JOB, "-n", NS, "-o", "json", "--broker", url)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    return row


async def job_when(url: str, predicate, timeout: float = 30.0) -> dict:
    """The job's row once ``predicate`` holds for it (polled through the CLI)."""
    async with asyncio.timeout(timeout):
        while True:
            row = await asyncio.to_thread(get_job, url)
            if predicate(row):
                return row
            await asyncio.sleep(0.2)


def apply_seed(url: str, tmp_path: Path) -> None:
    files = tmp_path / "manifests"
    files.mkdir()
    for i, text in enumerate(seed_manifests(tmp_path)):
        (files / f"{i}.json").write_text(text)
    result = edgeloop("create", "namespace", NS, "--broker", url, "--timeout", "20")
    assert result.returncode == 0, result.stderr
    assert "namespace/neptune-test created" in result.stdout
    result = edgeloop("apply", "-f", str(files), "--broker", url)
    assert result.returncode == 0, result.stderr
    assert "IncrementalLearningJob/neptune-test/helmet-detection-demo created" in result.stdout


def test_cli_get_describe_and_errors(broker, cloud_process, tmp_path):
    apply_seed(broker.url, tmp_path)
    table = edgeloop("get", "il", "-n", NS, "--broker", broker.url)
    assert table.returncode == 0, table.stderr
    assert "helmet-detection-demo" in table.stdout and "Waiting" in table.stdout
    wide = edgeloop("get", "jobs", "-A", "-o", "wide", "--broker", broker.url)
    assert "waiting for the train trigger" in wide.stdout
    datasets = edgeloop("get", "datasets", "-n", NS, "-o", "yaml", "--broker", broker.url)
    assert "node: cloud0" in datasets.stdout
    described = edgeloop("describe", "il", JOB, "-n", NS, "--broker", broker.url)
    assert described.returncode == 0, described.stderr
    assert "num_of_samples > 100" in described.stdout and "Conditions" in described.stdout
    missing = edgeloop("describe", "il", "nope", "-n", NS, "--broker", broker.url)
    assert missing.returncode == 1 and "not found" in missing.stderr
    bad_kind = edgeloop("get", "pods", "--broker", broker.url)
    assert bad_kind.returncode == 1 and "unknown resource type 'pods'" in bad_kind.stderr
    paused = edgeloop("pause", JOB, "-n", NS, "--broker", broker.url)
    assert paused.returncode == 0 and "paused" in paused.stdout
    assert get_job(broker.url)["paused"] is True
    deleted = edgeloop("delete", "il", JOB, "-n", NS, "--broker", broker.url)
    assert deleted.returncode == 0, deleted.stderr
    empty = edgeloop("get", "il", "-n", NS, "--broker", broker.url)
    assert "No il found" in empty.stderr


@pytest.mark.parametrize("stage", ["train", "eval", "deploy"])
async def test_kill_9_in_a_stage_then_restart_resumes_once(broker, cloud_process, tmp_path, stage):
    await asyncio.to_thread(apply_seed, broker.url, tmp_path)
    # hide_paths: the model files must be pulled from the node, as from another machine
    async with ScriptedNode(broker.url, NODE, succeed(), answer=False, hide_paths=True) as node:
        await stop_cloud_in_stage(node, stage, cloud_process.kill)
        await node.report_samples(DATASET, "x", 160)  # more samples while it is down
        cloud_process.start()
        if stage == "train":
            await wait_for(lambda: len(node.held) == 2, timeout=30)  # eval sent after restart
            await node.play(node.held[-1])
        row = await job_when(broker.url, lambda r: r["round"] == 2)
        assert row["deployed_version"] == 1 and row["stage"] == "Train"
        assert row["samples"] == 160
        # every task key started once, one train and one eval attempt in all
        assert len(node.started) == len(set(node.started)) == 2
        assert {(t.role, t.attempt) for t in node.tasks} == {("train", 1), ("eval", 1)}
    versions = edgeloop("get", "versions", "-n", NS, "-o", "json", "--broker", broker.url)
    assert [v["version"] for v in json.loads(versions.stdout)] == [1]


async def test_kill_9_while_waiting_then_restart_starts_one_train_task(broker, cloud_process,
                                                                       tmp_path):
    await asyncio.to_thread(apply_seed, broker.url, tmp_path)
    async with ScriptedNode(broker.url, NODE, succeed(), answer=False) as node:
        await node.report_samples(DATASET, "x", 60)  # below the threshold of 100
        row = await job_when(broker.url, lambda r: r["samples"] == 60)
        assert (row["stage"], row["state"]) == ("Train", "Waiting")
        round_before = row["round"]
        cloud_process.kill()
        cloud_process.start()
        row = await asyncio.to_thread(get_job, broker.url)
        assert (row["stage"], row["state"], row["round"], row["samples"]) == \
            ("Train", "Waiting", round_before, 60)
        assert not node.tasks  # the restart itself starts nothing
        await node.report_samples(DATASET, "x", 150)
        await wait_for(lambda: len(node.held) == 1, timeout=30)
        row = await job_when(broker.url, lambda r: r["state"] in ("Starting", "Running"))
        assert row["stage"] == "Train"
        await node.report_samples(DATASET, "x", 150)  # a repeat report changes nothing
        await node.report_samples(DATASET, "x", 151)  # handled after the repeat: a barrier
        await job_when(broker.url, lambda r: r["samples"] == 151)
        assert len(node.started) == len(set(node.started)) == 1
        assert {(t.role, t.attempt) for t in node.tasks} == {("train", 1)}
