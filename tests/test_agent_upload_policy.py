"""The upload policy and the outbox's budget with real parts: a real broker, the agent's daemon
in-process, the cloud stand-in that acknowledges. Time is the agent's injectable clock, moved by
the test, so a window that opens "later" and a 1 KB/s cap take no wall-clock time."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_cloud import FakeCloud, agent_config

from edge_agent.daemon import Agent
from protocol.messages import HardExample, NodeStatus


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def save_example(folder: Path, index: int, size: int, score: float) -> str:
    """One example as workers.hardex_store saves it (image first, sidecar last)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = hashlib.sha256(str(index).encode()).digest() * (size // 32)
    sha = hashlib.sha256(image).hexdigest()
    stem = f"20260101T000000-f{index:08d}-{sha[:12]}"
    (folder / f"{stem}.jpg").write_bytes(image)
    document = {"boxes": [[1.0, 2.0, 30.0, 40.0]], "scores": [round(1 - score, 4)],
                "classes": [1], "frame_index": index, "image": f"{stem}.jpg", "sha256": sha,
                "score": score}
    (folder / f"{stem}.json").write_text(json.dumps(document))
    return sha


def uploads_of(cloud: FakeCloud, check) -> list[NodeStatus]:
    return [s for s in cloud.statuses() if s.uploads is not None and check(s.uploads)]


@pytest.mark.broker
async def test_a_1kbps_node_sends_nothing_before_its_window_then_all_in_order_once(
        broker, tmp_path):
    clock = FakeClock(at("2026-06-01T21:00:00"))
    he_dir = tmp_path / "hardex"
    policy = {"windows": ["22:00-23:00"], "bytes_per_second": 1024}
    config = agent_config(broker.url, tmp_path / "state", hardex_dirs={"ns/job": he_dir},
                          upload_policy=policy)
    count, size = 8, 2048  # each message takes two seconds of the cap
    async with FakeCloud(broker.url) as cloud, Agent(config, clock=clock) as agent:
        expected = [save_example(he_dir, i, size, 0.5) for i in range(count)]
        await agent.intake.scan()
        assert len(agent.outbox) == count
        # the node says they wait, and for what: the gate has looked at them and held them
        await cloud.wait_for(lambda: uploads_of(
            cloud, lambda u: u.waiting == count and u.waiting_for == ["window"]))
        assert not cloud.hardex_deliveries  # nothing before the window

        clock.now = at("2026-06-01T22:00:00")
        opened = clock.now
        sent_at: dict[str, float] = {}
        while len(sent_at) < count:
            before = len(cloud.hardex_deliveries)
            agent.sender.nudge()
            await cloud.wait_for(lambda: len(cloud.hardex_deliveries) > before  # noqa: B023
                                 or agent.uploads.held.get("rate"))
            sent_at.update((k, clock.now) for k in cloud.hardex_deliveries if k not in sent_at)
            clock.now += 0.5  # the cap's clock moves only here
        await agent.sender.wait_drained(10)
        statuses = await cloud.wait_for(lambda: uploads_of(
            cloud, lambda u: u.sent == count and u.waiting == 0))

    delivered = cloud.of_type(HardExample)
    assert [m.sha256 for m in delivered] == expected  # in order
    assert set(cloud.hardex_deliveries.values()) == {1}  # exactly once
    uploads = statuses[-1].uploads
    assert uploads is not None and uploads.sent_bytes >= count * size
    # the cap held: by any moment, at most one second's bytes plus one message above the rate
    per_message = uploads.sent_bytes / count
    for i, key in enumerate(expected):
        assert (i + 1) * per_message <= 1024 * (sent_at[key] - opened) + 1024 + per_message
    assert all(opened <= t for t in sent_at.values())


@pytest.mark.broker
async def test_a_node_over_its_outbox_budget_evicts_lowest_score_first_and_reports_it(
        broker, tmp_path):
    clock = FakeClock(at("2026-06-01T12:00:00"))
    he_dir = tmp_path / "hardex"
    size = 10_240
    config = agent_config(
        broker.url, tmp_path / "state", hardex_dirs={"ns/job": he_dir},
        outbox_quota_mb=4.5 * size / 2**20, outbox_eviction="lowest-score",
        upload_policy={"windows": ["13:00-14:00"]},  # nothing leaves meanwhile
    )
    scores = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05]
    async with FakeCloud(broker.url) as cloud, Agent(config, clock=clock) as agent:
        keys = {save_example(he_dir, i, size, score): score for i, score in enumerate(scores)}
        await agent.intake.scan()
        assert not list(he_dir.glob("*.json"))  # every example taken: kept or evicted
        kept = {k for k, s in keys.items() if s in sorted(scores)[-4:]}  # the four best
        assert {k for k, _, _ in agent.outbox.items()} == kept
        statuses = await cloud.wait_for(lambda: uploads_of(
            cloud, lambda u: u.evicted == 6 and u.waiting == 4))
        assert statuses[-1].uploads is not None
        assert statuses[-1].uploads.evicted_bytes >= 6 * size
        assert "evicted 6" in statuses[-1].uploads.summary()

        clock.now = at("2026-06-01T13:00:00")  # the window opens: what was kept goes
        agent.sender.nudge()
        await cloud.wait_for(lambda: len(cloud.hardex_deliveries) == 4)
        await agent.sender.wait_drained(10)
    assert set(cloud.hardex_deliveries) == kept
    ledger = json.loads((tmp_path / "state" / "uploads.json").read_text())
    assert ledger["evicted"] == 6 and ledger["evicted_by_job"] == {"ns/job": 6}
