"""The dataset watcher: counts on change, reports missing/truncated/rewritten indexes, and sends
sample reports over a real broker at connection and on change."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from agent_cloud import FakeCloud, agent_config

from edge_agent.daemon import Agent
from edge_agent.watcher import DatasetWatcher, Fingerprint, classify_change
from protocol.messages import DatasetSamples


def make_images(folder: Path, count: int) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / "images" / f"{i}.jpg").touch()


def lines(start: int, stop: int) -> str:
    return "".join(f"images/{i}.jpg 1,2,30,40,1\n" for i in range(start, stop))


class Reports:
    def __init__(self) -> None:
        self.items: list[list[DatasetSamples]] = []
        self.changed = asyncio.Event()

    async def __call__(self, datasets: list[DatasetSamples]) -> None:
        self.items.append(datasets)
        self.changed.set()

    async def next(self, timeout: float = 5.0) -> dict[str, DatasetSamples]:
        count = len(self.items)
        async with asyncio.timeout(timeout):
            while len(self.items) == count:
                self.changed.clear()
                await self.changed.wait()
        return {d.dataset: d for d in self.items[-1]}


def test_classify_change():
    old = b"a 1,1,2,2,0\n"
    seen = Fingerprint(len(old), hashlib.sha256(old).hexdigest())
    assert classify_change(None, old) is None
    assert classify_change(seen, old + b"b 1,1,2,2,0\n") is None
    assert "truncated" in classify_change(seen, old[:4])
    assert "rewritten" in classify_change(seen, b"z" + old[1:] + b"more\n")


async def test_watcher_reports_growth_truncation_rewrite_and_removal(tmp_path):
    data = tmp_path / "data"
    make_images(data, 10)
    index = data / "data.txt"
    index.write_text(lines(0, 3) + "images/missing.jpg 1,1,2,2,0\nnot a line at all ,,\n")
    reports = Reports()
    watcher = DatasetWatcher({"ns/helmet": index}, tmp_path / "state", reports)
    current = {d.dataset: d for d in await watcher.refresh()}
    assert current["ns/helmet"].samples == 3 and current["ns/helmet"].error is None
    task = asyncio.create_task(watcher.run())
    await asyncio.sleep(0.3)  # let it start watching
    try:
        with open(index, "a") as f:
            f.write(lines(3, 6))
        grown = (await reports.next())["ns/helmet"]
        assert grown.samples == 6 and grown.error is None

        index.write_text(lines(0, 2))
        truncated = (await reports.next())["ns/helmet"]
        assert truncated.samples == 2 and "truncated" in truncated.error

        tmp = data / "data.txt.new"
        tmp.write_text(lines(5, 9))
        os.replace(tmp, index)  # replaced by a rename: still seen
        rewritten = (await reports.next())["ns/helmet"]
        assert rewritten.samples == 4 and "rewritten" in rewritten.error

        index.unlink()
        missing = (await reports.next())["ns/helmet"]
        assert missing.samples == 0 and "not found" in missing.error
    finally:
        watcher.close()
        task.cancel()


async def test_watcher_remembers_what_it_saw_across_restarts(tmp_path):
    data = tmp_path / "data"
    make_images(data, 5)
    index = data / "data.txt"
    index.write_text(lines(0, 5))
    first = DatasetWatcher({"ns/d": index}, tmp_path / "state", Reports())
    assert (await first.refresh())[0].samples == 5
    index.write_text(lines(0, 1))  # truncated while the agent was down
    second = DatasetWatcher({"ns/d": index}, tmp_path / "state", Reports())
    report = (await second.refresh())[0]
    assert report.samples == 1 and "truncated" in report.error


async def test_watcher_waits_for_a_folder_that_does_not_exist_yet(tmp_path, monkeypatch):
    monkeypatch.setattr("edge_agent.watcher.RECHECK_S", 0.2)
    index = tmp_path / "later" / "data.txt"
    reports = Reports()
    watcher = DatasetWatcher({"ns/d": index}, tmp_path / "state", reports)
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.1)
        assert watcher.current[0].error and "not found" in watcher.current[0].error
        make_images(tmp_path / "later", 2)
        index.write_text(lines(0, 2))
        report = (await reports.next())["ns/d"]
        assert report.samples == 2 and report.error is None
    finally:
        watcher.close()
        task.cancel()


@pytest.mark.broker
async def test_sample_reports_at_connection_and_on_change(broker, tmp_path):
    data = tmp_path / "data"
    make_images(data, 8)
    index = data / "data.txt"
    index.write_text(lines(0, 4))
    config = agent_config(broker.url, tmp_path / "state", datasets={"default/helmet": index})
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        first = await cloud.wait_for(cloud.samples)
        assert first[0].datasets[0].samples == 4
        assert first[0].datasets[0].url == str(index)
        assert first[0].boot_id == agent.identity.boot_id
        with open(index, "a") as f:
            f.write(lines(4, 8))
        grown = await cloud.wait_for(
            lambda: [r for r in cloud.samples() if r.datasets[0].samples == 8], 5
        )
        assert grown[0].seq > first[0].seq
