"""The node writes a round's train/eval/replay indexes from ``EDGELOOP_SPLIT`` before the worker
starts: the cloud's documented plan, absolute image paths, clear errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from agent_cloud import FakeCloud, agent_config

from edge_agent.daemon import Agent
from edge_agent.round_indexes import RoundIndexError, valid_samples, write_round_indexes
from protocol import topics
from protocol.messages import Task, WorkerSpec
from protocol.sample_split import SPLIT_VARIABLE, SampleSplit, plan_round_indexes


def make_index(folder: Path, count: int) -> Path:
    """An index of ``count`` valid samples with a blank line, a missing image, a bad box and a
    repeated line mixed in (none of which is a valid new sample)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        (folder / "img" / f"{i}.jpg").write_bytes(b"jpeg")
        lines.append(f"img/{i}.jpg 1,2,30,40,{i % 4}")
        if i == 2:
            lines += ["", "img/missing.jpg 1,1,2,2,0", "img/0.jpg 1,1,2"]
    index = folder / "data.txt"
    index.write_text("\n".join(lines) + "\n")
    return index


def split_task(tmp: Path, index: Path, start: int, end: int, prob: float = 0.5,
               role: str = "train") -> Task:
    out = tmp / "out" / "1"
    split = SampleSplit(index=str(index), start=start, end=end, train_prob=prob,
                        train=str(out / "train.txt"), eval=str(out / "eval.txt"),
                        replay=str(out / "replay.txt"))
    return Task(task_id=f"t-{role}", job="ns/job", role=role,
                worker=WorkerSpec(script_dir=str(tmp), boot_file="w.py"),
                env={SPLIT_VARIABLE: split.to_json()})


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_the_three_files_follow_the_plan_with_absolute_paths(tmp_path):
    index = make_index(tmp_path / "data", 40)
    samples = valid_samples(index, num_classes=4)
    assert len(samples) == 40  # the bad lines are not samples
    written = write_round_indexes(split_task(tmp_path, index, 25, 40), num_classes=4)

    plan = plan_round_indexes([line for line, _ in samples], 25, 40, 0.5)
    out = tmp_path / "out" / "1"
    base = (tmp_path / "data").resolve()
    assert lines_of(out / "train.txt") == [f"{base}/{line}" for line in plan.train]
    assert lines_of(out / "eval.txt") == [f"{base}/{line}" for line in plan.eval]
    assert lines_of(out / "replay.txt") == [f"{base}/{line}" for line in plan.replay]
    assert (written.train, written.eval, written.replay) == (
        len(plan.train), len(plan.eval), len(plan.replay))
    new = {line for line, _ in samples[25:40]}
    assert set(plan.train) | (set(plan.eval) & new) == new  # every new sample on one side
    assert plan.replay and not set(plan.replay) & new
    assert not list(out.glob(".*.tmp"))


def test_an_index_without_the_samples_the_cloud_counted_is_refused(tmp_path):
    index = make_index(tmp_path / "data", 10)
    with pytest.raises(RoundIndexError, match="has 10 valid samples, the round needs samples 5..11"):
        write_round_indexes(split_task(tmp_path, index, 5, 12), num_classes=4)
    with pytest.raises(RoundIndexError, match="dataset index not found"):
        write_round_indexes(split_task(tmp_path, tmp_path / "nope.txt", 0, 1), num_classes=4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (('{"index": "a", "train": "b", "eval": "c", "replay": "d", "start": 3, "end": 1, '
          '"train_prob": 0.5}'), "end 1 is before start 3"),
        (('{"index": "a", "train": "b", "eval": "c", "replay": "d", "start": 0, "end": 1, '
          '"train_prob": 2}'), "train_prob"),
        ('{"train": "b", "eval": "c", "replay": "d", "start": 0, "end": 1, "train_prob": 1}',
         "EDGELOOP_SPLIT.index"),
    ],
)
def test_a_bad_split_names_what_is_wrong(tmp_path, text, message):
    task = Task(task_id="t", job="ns/job", role="train",
                worker=WorkerSpec(script_dir=str(tmp_path), boot_file="w.py"),
                env={SPLIT_VARIABLE: text})
    with pytest.raises(RoundIndexError, match=message):
        write_round_indexes(task, num_classes=4)


def test_a_task_without_a_split_writes_nothing(tmp_path):
    task = Task(task_id="t", job="ns/job", role="train",
                worker=WorkerSpec(script_dir=str(tmp_path), boot_file="w.py"))
    assert write_round_indexes(task, num_classes=4) is None


@pytest.mark.broker
async def test_the_agent_writes_the_indexes_before_the_worker_starts(broker, tmp_path):
    index = make_index(tmp_path / "data", 12)
    (tmp_path / "w.py").write_text(textwrap.dedent("""
        import json, os
        from pathlib import Path
        train = json.loads(os.environ["EDGELOOP_SPLIT"])["train"]
        lines = Path(train).read_text().splitlines()
        Path(os.environ["EDGELOOP_RESULT"]).write_text(json.dumps({"lines": len(lines)}))
    """))
    good = split_task(tmp_path, index, 0, 12, prob=1.0)
    bad = split_task(tmp_path, index, 0, 99, role="eval")
    async with FakeCloud(broker.url) as cloud, Agent(agent_config(broker.url, tmp_path / "s")):
        await cloud.wait_for(lambda: [s for s in cloud.statuses() if s.state == "online"])
        await cloud.client.publish(topics.task("edge-1", good.task_id), good)
        await cloud.client.publish(topics.task("edge-1", bad.task_id), bad)
        done = await cloud.wait_for(lambda: [p for p in cloud.progress(good.task_id)
                                             if p.state == "Completed"])
        failed = await cloud.wait_for(lambda: [p for p in cloud.progress(bad.task_id)
                                               if p.state == "Failed"])
    assert done[0].result == {"lines": 12}
    assert "has 12 valid samples, the round needs samples 0..98" in failed[0].message
    assert len(lines_of(tmp_path / "out" / "1" / "replay.txt")) == 0


def test_a_split_reads_back_what_the_cloud_wrote(tmp_path):
    split = SampleSplit(index="/d/data.txt", start=3, end=9, train_prob=0.8, train="/o/train.txt",
                        eval="/o/eval.txt", replay="/o/replay.txt")
    assert SampleSplit.from_json(split.to_json()) == split


def test_eval_also_gets_each_earlier_rounds_held_out_samples(tmp_path):
    """``EDGELOOP_SPLIT.earlier``: each earlier round's own held-out samples, in its own file,
    without the fallback to earlier samples that the round's eval.txt has."""
    from protocol.sample_split import EarlierRound, held_out_of_range

    index = make_index(tmp_path / "data", 60)
    out = tmp_path / "out" / "3"
    split = SampleSplit(index=str(index), start=40, end=60, train_prob=0.5,
                        train=str(out / "train.txt"), eval=str(out / "eval.txt"),
                        replay=str(out / "replay.txt"),
                        earlier=(EarlierRound(1, 0, 20, str(out / "eval-round-1.txt")),
                                 EarlierRound(2, 20, 40, str(out / "eval-round-2.txt"))))
    assert SampleSplit.from_json(split.to_json()) == split
    task = Task(task_id="t-eval", job="ns/job", role="eval",
                worker=WorkerSpec(script_dir=str(tmp_path), boot_file="w.py"),
                env={SPLIT_VARIABLE: split.to_json()})
    written = write_round_indexes(task, num_classes=4)
    samples = [line for line, _ in valid_samples(index, num_classes=4)]
    base = (tmp_path / "data").resolve()
    for number, (start, end) in ((1, (0, 20)), (2, (20, 40))):
        expected = held_out_of_range(samples, start, end, 0.5)
        assert expected, "the 0.5 split holds some samples out of each range"
        assert lines_of(out / f"eval-round-{number}.txt") == [f"{base}/{x}" for x in expected]
        assert written is not None and written.earlier[number] == len(expected)
    # rounds' held-out sets are disjoint and none of them was trained on
    one, two = (set(lines_of(out / f"eval-round-{n}.txt")) for n in (1, 2))
    assert not one & two
    assert not (one | two) & set(lines_of(out / "replay.txt"))


def test_a_bad_earlier_list_is_an_error_naming_it():
    import json

    data = json.loads(SampleSplit(index="d", start=0, end=1, train_prob=0.5, train="t",
                                  eval="e", replay="r").to_json())
    data["earlier"] = [{"round": 1, "start": 5, "end": 2, "eval": "x"}]
    with pytest.raises(ValueError, match=r"EDGELOOP_SPLIT.earlier\[0\]: end 2 is before start 5"):
        SampleSplit.from_json(json.dumps(data))
