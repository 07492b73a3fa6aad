"""Which samples of a dataset index a round trains, evaluates and replays. Pure, no I/O.

The cloud decides a round's range of new samples and sends it with the train and eval tasks as
``EDGELOOP_SPLIT`` (JSON, :class:`SampleSplit`); the node that holds the dataset writes the
round's ``train.txt``, ``eval.txt`` and ``replay.txt`` from its index by :func:`plan_round_indexes`.
Both sides share this module so that a sample lands on the same side of the ``trainProb`` split
wherever and however often it is computed: the split is a hash of the sample's index line.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

#: Task variable describing the sample split the node materialises before the worker runs.
SPLIT_VARIABLE = "EDGELOOP_SPLIT"
TRAIN_INDEX = "train.txt"
EVAL_INDEX = "eval.txt"
REPLAY_INDEX = "replay.txt"
#: How many earlier rounds eval also scores, the most recent ones: Sedna's eval set keeps the
#: held-out samples of up to five earlier data versions.
EARLIER_ROUNDS_WINDOW = 5


def earlier_eval_index(round_no: int) -> str:
    """File name, in the current round's folder, of round ``round_no``'s held-out samples."""
    return f"eval-round-{round_no}.txt"


@dataclass(frozen=True)
class EarlierRound:
    """An earlier round whose held-out samples eval also scores: the ``[start, end)`` range of
    samples it trained on, and where the node writes their held-out side (``eval``)."""

    round: int
    start: int
    end: int
    eval: str


@dataclass(frozen=True)
class SampleSplit:
    """Which samples of the dataset index a round uses: the ``[start, end)`` range of valid
    samples (in index order) is new; earlier train-side samples are the replay set. ``train``,
    ``eval`` and ``replay`` are where the node writes the three index files."""

    index: str
    start: int
    end: int
    train_prob: float
    train: str
    eval: str
    replay: str
    earlier: tuple[EarlierRound, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SampleSplit:
        """Parse ``EDGELOOP_SPLIT``; ``ValueError`` names the field that is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{SPLIT_VARIABLE} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{SPLIT_VARIABLE} must be a JSON object")  # noqa: TRY004
        paths: dict[str, str] = {}
        for name in ("index", "train", "eval", "replay"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{SPLIT_VARIABLE}.{name}: a path is required, got {value!r}")
            paths[name] = value
        counts: dict[str, int] = {}
        for name in ("start", "end"):
            value = data.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{SPLIT_VARIABLE}.{name}: a count >= 0 is required, got {value!r}")
            counts[name] = value
        if counts["end"] < counts["start"]:
            raise ValueError(f"{SPLIT_VARIABLE}: end {counts['end']} is before start {counts['start']}")
        prob = data.get("train_prob")
        if (not isinstance(prob, int | float) or isinstance(prob, bool) or math.isnan(prob)
                or not 0.0 <= prob <= 1.0):
            raise ValueError(f"{SPLIT_VARIABLE}.train_prob: a number in [0, 1] is required, got {prob!r}")
        return cls(index=paths["index"], start=counts["start"], end=counts["end"],
                   train_prob=float(prob), train=paths["train"], eval=paths["eval"],
                   replay=paths["replay"], earlier=_earlier_rounds(data.get("earlier", [])))


def _earlier_rounds(value: object) -> tuple[EarlierRound, ...]:
    """``EDGELOOP_SPLIT.earlier``: absent in a split from an older cloud."""
    if not isinstance(value, list):
        raise ValueError(f"{SPLIT_VARIABLE}.earlier must be a list, got {value!r}")  # noqa: TRY004
    rounds = []
    for i, item in enumerate(value):
        where = f"{SPLIT_VARIABLE}.earlier[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a JSON object")  # noqa: TRY004
        numbers = {k: item.get(k) for k in ("round", "start", "end")}
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in numbers.values()):
            raise ValueError(f"{where}: round, start and end must be counts >= 0, got {numbers}")
        if numbers["end"] < numbers["start"]:  # type: ignore[operator]
            raise ValueError(f"{where}: end {numbers['end']} is before start {numbers['start']}")
        path = item.get("eval")
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}.eval: a path is required, got {path!r}")
        rounds.append(EarlierRound(int(item["round"]), int(item["start"]), int(item["end"]), path))
    return tuple(rounds)


def goes_to_train(line: str, train_prob: float) -> bool:
    """Whether the sample of index line ``line`` is a training sample (else held out for eval).

    The line is hashed with surrounding whitespace removed, so the same sample lands on the same
    side however often and wherever the split is computed.
    """
    digest = hashlib.sha256(line.strip().encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return fraction < train_prob


def split_samples(lines: Sequence[str], train_prob: float) -> tuple[list[str], list[str]]:
    """Split index lines into (train, eval); blank lines and repeats of a line are dropped.

    With ``train_prob`` 1 every sample trains (the eval set is empty).
    """
    train: list[str] = []
    held_out: list[str] = []
    seen: set[str] = set()
    for raw in lines:
        line = raw.strip()
        if not line or line in seen:
            continue
        seen.add(line)
        (train if goes_to_train(line, train_prob) else held_out).append(line)
    return train, held_out


def held_out_of_range(
    samples: Sequence[str], start: int, end: int, train_prob: float
) -> list[str]:
    """The held-out samples that were new in ``[start, end)``: what that round's eval set was,
    without the fallback to earlier samples :func:`plan_round_indexes` applies."""
    earlier_train, earlier_eval = split_samples(samples[:start], train_prob)
    seen = set(earlier_train) | set(earlier_eval)
    new = [line for line in samples[start:end] if line.strip() not in seen]
    return split_samples(new, train_prob)[1]


@dataclass(frozen=True)
class RoundIndexes:
    """The three index files of a round, as lists of sample lines."""

    train: list[str]
    eval: list[str]
    replay: list[str]


def plan_round_indexes(
    samples: Sequence[str], start: int, end: int, train_prob: float
) -> RoundIndexes:
    """What a round's ``train.txt``, ``eval.txt`` and ``replay.txt`` hold.

    ``samples`` are the dataset index's valid sample lines in order; ``[start, end)`` are the
    round's new ones (``EDGELOOP_SPLIT``). New samples split by :func:`goes_to_train`; a line
    already seen before ``start`` is not new. Replay is the train side of everything before
    ``start``. When no new sample is held out (few samples, or ``trainProb`` 1), eval uses every
    held-out sample so far rather than an empty set.
    """
    earlier_train, earlier_eval = split_samples(samples[:start], train_prob)
    seen = set(earlier_train) | set(earlier_eval)
    new = [line for line in samples[start:end] if line.strip() not in seen]
    train, held_out = split_samples(new, train_prob)
    return RoundIndexes(train=train, eval=held_out or earlier_eval, replay=earlier_train)
