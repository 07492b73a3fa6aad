"""The upload policy's decisions (windows, rate, day and month caps, eviction order), its shell
(the gate with its persisted ledger and per-job policies), the outbox's eviction and the node's
retention. The broker tests are in test_agent_upload_policy.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_agent.outbox import DiskOutbox, OutboxFull
from edge_agent.retention import Item, RetentionSettings, prune_held, to_prune
from edge_agent.upload_policy import (
    Ledger,
    Message,
    UploadGate,
    charge,
    evict_order,
    hold_reason,
    in_window,
    roll,
    victims,
)
from protocol.data_policies import UploadPolicy, UploadStatus


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- decisions -----------------------------------------------------------------------------------


def test_windows_include_their_end_minute_and_may_cross_midnight():
    policy = UploadPolicy(windows=["22:00-06:00", "12:00-12:00"])
    inside = [22 * 60, 23 * 60 + 59, 0, 6 * 60, 12 * 60]
    outside = [21 * 60 + 59, 6 * 60 + 1, 11 * 60 + 59, 12 * 60 + 1]
    assert all(in_window(policy, m) for m in inside)
    assert not any(in_window(policy, m) for m in outside)
    assert in_window(UploadPolicy(), 600)  # no window: always


def test_windows_are_read_in_the_policys_timezone():
    policy = UploadPolicy(windows=["22:00-23:00"], timezone="Europe/Paris")
    ledger = Ledger()
    now = at("2026-07-01T20:30:00")  # 22:30 in Paris (summer time)
    roll(ledger, policy, now)
    assert hold_reason(ledger, policy, now, 10) is None
    assert hold_reason(ledger, UploadPolicy(windows=["22:00-23:00"]), now, 10) == "window"


def test_bad_policies_name_the_field():
    with pytest.raises(ValidationError, match="25:00-06:00"):
        UploadPolicy(windows=["25:00-06:00"])
    with pytest.raises(ValidationError, match="unknown timezone 'Mars/Olympus'"):
        UploadPolicy(timezone="Mars/Olympus")
    assert UploadPolicy.model_validate({"bytesPerDay": 5}).bytes_per_day == 5  # both spellings
    assert UploadPolicy.model_validate({"bytes_per_day": 5}).bytes_per_day == 5


def test_a_new_day_and_a_new_month_start_from_zero():
    policy = UploadPolicy(bytes_per_day=100, bytes_per_month=150)
    ledger = Ledger()
    now = at("2026-01-31T23:59:00")
    roll(ledger, policy, now)
    charge(ledger, policy, 90)
    assert hold_reason(ledger, policy, now, 20) == "day cap"
    now = at("2026-02-01T00:00:00")
    roll(ledger, policy, now)
    assert (ledger.bytes_day, ledger.bytes_month) == (0, 0)
    charge(ledger, policy, 90)
    now = at("2026-02-02T00:00:00")
    roll(ledger, policy, now)
    assert hold_reason(ledger, policy, now, 70) == "month cap"
    assert ledger.sent == 2 and ledger.sent_bytes == 180


@settings(max_examples=80, deadline=None)
@given(
    st.integers(100, 5000), st.integers(1000, 20000),
    st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(1, 3000)), min_size=1, max_size=200),
)
def test_rate_and_daily_cap_hold_to_within_one_message(rate, day_cap, arrivals):
    """Whatever the messages and the times the sender looks, the bytes sent in any span stay
    within the rate plus one second and one message, and a day's bytes within the cap plus
    one message."""
    policy = UploadPolicy(bytes_per_second=rate, bytes_per_day=day_cap)
    ledger = Ledger()
    start = now = at("2026-03-01T23:58:00")
    sent: list[tuple[float, int]] = []
    queue = [size for _, size in arrivals]
    for step, _ in arrivals:
        now += step
        roll(ledger, policy, now)
        while queue and hold_reason(ledger, policy, now, queue[0]) is None:
            charge(ledger, policy, queue[0])
            sent.append((now, queue.pop(0)))
    largest = max(size for _, size in arrivals)
    for i, (t0, _) in enumerate(sent):
        in_span = sum(size for t, size in sent[i:])
        assert in_span <= rate * (sent[-1][0] - t0) + rate + largest
    for day in {datetime.fromtimestamp(t, UTC).date() for t, _ in sent}:
        total = sum(s for t, s in sent if datetime.fromtimestamp(t, UTC).date() == day)
        assert total <= day_cap + largest
    assert now >= start


def test_eviction_orders():
    waiting = [Message("a", 10, score=0.9), Message("b", 10, score=0.1),
               Message("c", 10), Message("d", 10, score=0.1)]
    assert [m.key for m in evict_order(waiting, "oldest")] == ["a", "b", "c", "d"]
    assert [m.key for m in evict_order(waiting, "lowest-score")] == ["b", "d", "a", "c"]
    assert evict_order(waiting, "none") == []
    incoming = Message("new", 15, score=0.5)
    assert [m.key for m in victims(waiting, incoming, 0, "lowest-score") or []] == ["b", "d"]
    assert [m.key for m in victims(waiting, incoming, 0, "oldest") or []] == ["a", "b"]
    assert victims(waiting, Message("new", 15, score=0.05), 0, "lowest-score") == [
        Message("new", 15, score=0.05)]  # worth less than everything waiting: given up
    assert victims(waiting, incoming, 0, "none") is None
    assert victims(waiting, incoming, 20, "oldest") == []


# --- the outbox's eviction -----------------------------------------------------------------------


def test_outbox_evicts_lowest_score_first_and_hands_each_eviction_over(tmp_path: Path):
    evicted: list[Message] = []
    box = DiskOutbox(tmp_path / "o", quota_bytes=400, eviction="lowest-score",
                     on_evict=evicted.append)
    for i, score in enumerate([0.5, 0.2, 0.9]):
        box.put(f"k{i}", "t", b"x" * 60, {"job": "ns/j", "score": score})
    box.put("k3", "t", b"x" * 60, {"job": "ns/j", "score": 0.7})  # over: k1 (0.2) goes
    assert [m.key for m in evicted] == ["k1"] and evicted[0].job == "ns/j"
    box.put("k4", "t", b"x" * 60, {"job": "ns/j", "score": 0.1})  # the newcomer is the least
    assert [m.key for m in evicted] == ["k1", "k4"]
    reopened = DiskOutbox(tmp_path / "o", quota_bytes=400)
    assert [k for k, _, _ in reopened.items()] == ["k0", "k2", "k3"]
    assert reopened.meta("k3") == {"job": "ns/j", "score": 0.7}
    with pytest.raises(OutboxFull):  # eviction none: refuses, as before
        reopened.put("k5", "t", b"x" * 60)
    sending = DiskOutbox(tmp_path / "o", quota_bytes=400, eviction="oldest",
                         on_evict=evicted.append, in_flight=lambda: {"k0"})
    sending.put("k6", "t", b"x" * 60, {"job": "ns/j"})  # k0 is on the wire: k2 goes
    assert [m.key for m in evicted][-1] == "k2" and "k0" in sending


# --- the gate ------------------------------------------------------------------------------------


def test_gate_holds_a_jobs_later_messages_behind_its_first_and_lets_other_jobs_go(tmp_path):
    clock = FakeClock(at("2026-05-05T12:00:00"))
    meta = {"a1": {"job": "ns/a"}, "a2": {"job": "ns/a"}, "b1": {"job": "ns/b"}}
    gate = UploadGate(UploadPolicy(bytes_per_day=1000), tmp_path,
                      meta=lambda key: meta[key], clock=clock)
    gate.set_job_policy("ns/b", UploadPolicy.model_validate({"windows": ["13:00-14:00"]}))
    gate.sent("a1", 900)
    assert gate.begin()
    assert not gate.admit("a1", "t", 200)  # over the day cap
    assert not gate.admit("a2", "t", 10)  # would fit, but waits behind a1
    assert not gate.admit("b1", "t", 10)  # its job's window is closed
    assert gate.held == {"day cap": 1, "order": 1, "window": 1}
    clock.now = at("2026-05-05T13:00:00")
    assert gate.begin() and gate.admit("b1", "t", 10)


def test_gate_ledger_survives_a_restart_and_reports_the_caps(tmp_path):
    clock = FakeClock(at("2026-05-05T12:00:00"))
    gate = UploadGate(UploadPolicy(bytes_per_day=1000), tmp_path, clock=clock)
    gate.sent("a", 400)
    gate.evicted(Message("b", 50, "ns/j", 0.1))
    gate.close()
    again = UploadGate(UploadPolicy(bytes_per_day=1000), tmp_path, clock=clock)
    status = again.status(2, 300, {"cap:day": 4})
    assert status == UploadStatus(
        waiting=2, waiting_bytes=300, sent=1, sent_bytes=400, evicted=1, evicted_bytes=50,
        skipped={"cap:day": 4}, bytes_today=400, bytes_month=400, bytes_per_day=1000)
    assert "today 400 B / 1 kB" in status.summary() and "cap:day 4" in status.summary()


async def test_condition_file_and_command(tmp_path):
    clock = FakeClock(at("2026-05-05T12:00:00"))
    flag = tmp_path / "on-wifi"
    gate = UploadGate(UploadPolicy(condition_file=str(flag)), tmp_path, clock=clock)
    assert not gate.begin() and gate.held == {"condition": 1}
    flag.touch()
    assert gate.begin()
    command = UploadPolicy(condition_command=f"test -e {tmp_path / 'up'}", condition_check_s=5)
    gate = UploadGate(command, tmp_path, clock=clock)
    await gate.check_conditions()
    assert not gate.begin()
    (tmp_path / "up").touch()
    await gate.check_conditions()
    assert not gate.begin()  # the answer is kept condition_check_s
    clock.now += 5
    await gate.check_conditions()
    assert gate.begin()


# --- retention -----------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 100)), max_size=40),
       st.one_of(st.none(), st.floats(1, 500)), st.one_of(st.none(), st.integers(0, 2000)))
def test_retention_prunes_the_old_then_the_oldest_until_the_rest_fits(files, max_age, max_bytes):
    items = [Item(f"f{i}", mtime, size) for i, (mtime, size) in enumerate(files)]
    pruned = to_prune(items, 1000.0, max_age, max_bytes)
    kept = [i for i in items if i not in pruned]
    if max_age is not None:
        assert all(1000.0 - i.mtime <= max_age for i in kept)
    if max_bytes is not None:
        assert sum(i.size for i in kept) <= max_bytes
    if kept and pruned:  # nothing kept is older than what was pruned for size
        by_size = [i for i in pruned if max_age is None or 1000.0 - i.mtime <= max_age]
        assert all(p.mtime <= k.mtime for p in by_size for k in kept)


def test_prune_held_deletes_whole_examples_oldest_first(tmp_path):
    held = tmp_path / "he" / "held"
    held.mkdir(parents=True)
    for i in range(4):
        for suffix in (".jpg", ".json"):
            path = held / f"ex{i}{suffix}"
            path.write_bytes(b"x" * 100)
            os.utime(path, (1000 + i, 1000 + i))
    pruned = prune_held([tmp_path / "he"], RetentionSettings(held_max_mb=450 / 2**20), 2000)
    assert pruned == 2
    assert sorted(p.name for p in held.iterdir()) == [
        "ex2.jpg", "ex2.json", "ex3.jpg", "ex3.json"]
    assert prune_held([tmp_path / "he"], RetentionSettings(), 2000) == 0  # no limits: nothing


def test_get_nodes_and_describe_show_the_upload_line():
    from rich.console import Console

    from cloud_manager.render import _uploads_table, table

    line = UploadStatus(waiting=3, waiting_bytes=61_200, sent=40, sent_bytes=812_000,
                        skipped={"cap:day": 120}, bytes_today=812_000, bytes_per_day=5_000_000,
                        waiting_for=["window"]).summary()
    assert line == ("waiting 3 (61.2 kB), sent 40 (812 kB), evicted 0, skipped 120 "
                    "(cap:day 120), today 812 kB / 5 MB, waiting for window")
    console = Console(width=400, record=True)
    row = {"name": "edge-1", "state": "online", "labels": {}, "updated": 0, "uploads": line}
    console.print(table("Node", [row], wide=True))
    target = {"node": "edge-1", "state": "online", "desired": 2, "serving": 2,
              "health": "online", "seen": 0, "labels": {}, "uploads": line}
    console.print(_uploads_table([target]))
    assert console.export_text().count(line) == 2


def test_prune_task_logs_keeps_running_attempts_and_what_attempts_produced(tmp_path):
    from edge_agent.retention import prune_task_logs

    attempts = []
    for i, task in enumerate(["train-1", "train-2", "infer-1"]):
        attempt = tmp_path / "tasks" / task / "attempt-1"
        attempt.mkdir(parents=True)
        for name in ("worker.log", "state.json"):
            (attempt / name).write_bytes(b"x" * 100)
            os.utime(attempt / name, (1000 + i, 1000 + i))
        attempts.append(attempt)
    settings_ = RetentionSettings(task_logs_max_age_days=0.5 / 86400)  # older than half a second
    assert prune_task_logs(tmp_path, [attempts[2]], settings_, 2000) == 2
    assert [a.joinpath("worker.log").exists() for a in attempts] == [False, False, True]
    assert all(a.joinpath("state.json").exists() for a in attempts)
