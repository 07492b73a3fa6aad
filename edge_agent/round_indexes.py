"""Writes a round's sample indexes (``train.txt``, ``eval.txt``, ``replay.txt``) on the node.

The cloud sends train and eval tasks with ``EDGELOOP_SPLIT`` (:class:`~protocol.sample_split.
SampleSplit`): the dataset index, the range of its valid samples that is new this round, the
``trainProb`` and where the three files go. Only this node can read the index, so it writes them
before the worker starts, by :func:`protocol.sample_split.plan_round_indexes` (the rule the cloud
documents). Valid samples are those the dataset watcher counts (the line parses and its image
exists), so the range the cloud took from the node's counts means the same samples here. Image
paths are written absolute: the files live in the job's output folder, not beside the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.task_paths import TaskPathError, resolve_task_path
from edgeloop.durable import write_atomically
from protocol.messages import Task
from protocol.sample_split import (
    SPLIT_VARIABLE,
    SampleSplit,
    held_out_of_range,
    plan_round_indexes,
)
from protocol.dataset_index import parse_line


class RoundIndexError(ValueError):
    """The round's index files cannot be written; the message says what is wrong."""


@dataclass(frozen=True)
class WrittenIndexes:
    """How many samples each file received."""

    train: int
    eval: int
    replay: int
    #: held-out samples written for earlier rounds, per round
    earlier: dict[int, int] = field(default_factory=dict)


def valid_samples(index: Path, num_classes: int) -> list[tuple[str, str]]:
    """The index's valid samples in order, as (stripped line, the line with its image path made
    absolute). Repeated lines stay, so that positions match the counts the watcher reported."""
    try:
        with open(index, encoding="utf-8-sig", errors="replace", newline=None) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise RoundIndexError(f"dataset index not found: {index}") from None
    except OSError as exc:
        raise RoundIndexError(f"cannot read dataset index {index}: {exc}") from None
    base = index.resolve().parent
    samples: list[tuple[str, str]] = []
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            sample = parse_line(line, line_no, base, num_classes)
        except ValueError:
            continue
        if not sample.image.is_file():
            continue
        samples.append((line, " ".join([str(sample.image), *line.split()[1:]])))
    return samples


def _write_index(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))


def _resolve(location: str, script_dir: Path | None, what: str) -> Path:
    """Relative to the worker's working directory, and never out of it."""
    try:
        return resolve_task_path(location, script_dir, f"{SPLIT_VARIABLE}.{what}")
    except TaskPathError as exc:
        raise RoundIndexError(str(exc)) from None


def write_round_indexes(task: Task, num_classes: int) -> WrittenIndexes | None:
    """Write the three files ``task``'s ``EDGELOOP_SPLIT`` asks for; None when it has none.

    Raises :class:`RoundIndexError` when the split cannot be read, the index lacks the samples
    it names (it shrank since the cloud counted them), or a file cannot be written.
    """
    text = task.env.get(SPLIT_VARIABLE)
    if not text:
        return None
    try:
        split = SampleSplit.from_json(text)
    except ValueError as exc:
        raise RoundIndexError(str(exc)) from None
    script_dir = Path(task.worker.script_dir).expanduser() if task.worker else None
    targets = {name: _resolve(getattr(split, name), script_dir, name)
               for name in ("index", "train", "eval", "replay")}
    samples = valid_samples(targets["index"], num_classes)
    needed = max([split.end, *(r.end for r in split.earlier)])
    if len(samples) < needed:
        raise RoundIndexError(
            f"dataset index {split.index} has {len(samples)} valid samples, the round needs "
            f"samples {split.start}..{split.end - 1}"
        )
    absolute = dict(samples)
    plan = plan_round_indexes([line for line, _ in samples], split.start, split.end,
                              split.train_prob)
    lines = [line for line, _ in samples]
    earlier = {r.round: held_out_of_range(lines, r.start, r.end, split.train_prob)
               for r in split.earlier}
    files = [(targets["train"], plan.train), (targets["eval"], plan.eval),
             (targets["replay"], plan.replay)]
    files += [(_resolve(r.eval, script_dir, f"earlier[{r.round}].eval"), earlier[r.round])
              for r in split.earlier]
    try:
        for target, chosen in files:
            _write_index(target, [absolute[line] for line in chosen])
    except OSError as exc:
        raise RoundIndexError(f"cannot write the round's sample indexes: {exc}") from None
    return WrittenIndexes(len(plan.train), len(plan.eval), len(plan.replay),
                          {k: len(v) for k, v in earlier.items()})
