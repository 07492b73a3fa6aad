"""What the demo shows while it runs: progress with an estimate, every decision of the cloud, why
the simulated annotator refused an example. Pure parts, no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.annotator import refusal_kind
from demo.data import _follow_progress
from demo.progress import ConditionLog, LoopView, StepProgress, remaining_seconds, render
from protocol.messages import JobCondition
from workers.sdk import PROGRESS_LOG, parse_progress_line


def test_the_estimate_follows_the_pace_so_far_and_waits_for_a_meaningful_one() -> None:
    assert remaining_seconds(0.25, 60.0) == pytest.approx(180.0)
    assert remaining_seconds(0.5, 100.0) == pytest.approx(100.0)
    assert remaining_seconds(0.01, 60.0) is None  # loading, compiling: no pace yet
    assert remaining_seconds(0.5, 2.0) is None
    assert remaining_seconds(1.0, 60.0) is None


def test_a_step_says_how_far_it_is_and_how_long_it_has_left() -> None:
    step = StepProgress("train round 2", 0.25, "epoch 3/12", since=1000.0)
    assert step.describe(now=1060.0) == "train round 2 25%, about 3 min left: epoch 3/12"
    assert StepProgress("eval round 2", 0.5, "", since=0.0).describe(now=40.0) == (
        "eval round 2 50%, about 40 s left")


def test_a_new_step_restarts_the_estimate() -> None:
    view = LoopView()
    view.report_progress("train round 1", 0.9, "epoch 9/10")
    first = view.progress
    view.report_progress("eval round 1", 0.1, "")
    assert view.progress is not first and view.progress.fraction == 0.1
    view.progress_done("train round 1")  # another step's end changes nothing
    assert view.progress is not None
    view.progress_done()
    assert view.progress is None


def test_progress_lines_are_read_from_the_workers_log_as_the_sdk_writes_them(tmp_path: Path) -> None:
    line = PROGRESS_LOG % (42.0, "epoch 5/12 step 30/72 loss 0.512 eta 40s")
    assert parse_progress_line(f"2026-12-04 10:00:00,000 INFO workers.sdk: {line}\n") == (
        0.42, "epoch 5/12 step 30/72 loss 0.512 eta 40s")
    assert parse_progress_line("INFO workers.train: loading 120 images") is None

    log = tmp_path / "worker.log"
    seen: list[tuple[float, str]] = []
    log.write_text(f"x INFO {PROGRESS_LOG % (10.0, 'a')}\nnoise\nx INFO progress  20% b")
    offset = _follow_progress(log, 0, lambda f, m: seen.append((f, m)))
    assert seen == [(0.1, "a")]  # the last line is still being written
    with open(log, "a") as handle:
        handle.write("\n")
    _follow_progress(log, offset, lambda f, m: seen.append((f, m)))
    assert seen == [(0.1, "a"), (0.2, "b")]


def test_every_condition_becomes_a_transition_once() -> None:
    """A round not deployed and the next round's start can come in one status update: both are
    shown; a retained status sent again shows nothing twice."""
    log = ConditionLog()
    first = [JobCondition(stage="Train", state="Waiting", round=1, reason="created", time=1.0)]
    assert [c.reason for c in log.new(first)] == ["created"]
    later = first + [
        JobCondition(stage="Eval", state="Completed", round=1,
                     reason="not deployed: precision_delta 0.035 <= 0.1", time=5.0),
        JobCondition(stage="Train", state="Waiting", round=2, reason="waiting", time=5.0),
    ]
    assert [c.reason for c in log.new(later)] == [
        "not deployed: precision_delta 0.035 <= 0.1", "waiting"]
    assert log.new(later) == []


def test_refusals_are_counted_by_kind_and_shown() -> None:
    assert refusal_kind("no video frame within 12 (nearest 20.5)") == (
        "frame not found in the camera's videos")
    assert refusal_kind("cannot read ab.jpg") == "image unreadable"
    assert refusal_kind("no ground truth for frame 3 of night") == "no ground truth for its frame"
    view = LoopView(labelled={"night": 40, "refused": 6},
                    refused={"frame not found in the camera's videos": 6})
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(view))
    text = console.export_text()
    assert "night 40; refused 6 (6 frame not found in the camera's videos)" in text


def test_blind_spot_mining_is_shown_and_a_stall_names_where_the_loop_stands() -> None:
    view = LoopView(stage="Train", state="Waiting", round=2, samples=147, domain="night",
                    frames=1800, hard_examples=31, labelled={"night": 27},
                    hard_examples_by_reason={"rule": 4, "detection-drop": 27},
                    mining_mode="detection-drop")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(view))
    assert ("31 hard examples (DETECTION DROP, sampling uniformly; detection-drop 27, rule 4)"
            in console.export_text())

    async def stall() -> None:
        await view.wait_for(lambda v: False, "edge0 to serve a version", 0.0)

    import asyncio

    with pytest.raises(TimeoutError) as caught:
        asyncio.run(stall())
    message = str(caught.value)
    assert message.startswith("not within 0 s: edge0 to serve a version; job Train/Waiting "
                              "round 2, 147 samples in data.txt")
    assert "camera night" in message and "detection-drop 27" in message
    assert "labelled {'night': 27}" in message


def test_the_report_counts_labelled_hard_examples_per_domain_and_mining_reason() -> None:
    from demo.report import mining_reasons

    journal = [{"domain": "night", "reason": "detection-drop"},
               {"domain": "night", "reason": "detection-drop"},
               {"domain": "night", "reason": "rule"},
               {"domain": "day", "reason": "rule"},
               {"domain": "night", "reason": "empty-frame", "refused": "no ground truth"},
               {"domain": None, "refused": "cannot read x.jpg"},
               {"domain": "day"}]  # a journal written before reasons were recorded
    assert mining_reasons(journal) == {"night": {"detection-drop": 2, "rule": 1},
                                       "day": {"rule": 1, "unknown": 1}}
