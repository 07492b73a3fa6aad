"""The review queue's decisions, without I/O: which hard examples a person sees next, whether a
set of corrected boxes may be saved, and who may save an example when two people label at once.

The web layer (:mod:`console.app`) asks these functions and carries out what they say; the
cloud (through :mod:`console.cloud`) stays the one place labels are written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Show = Literal["todo", "difficult", "all"]


class SubmittedBox(BaseModel):
    """A box as the page sends it: pixel corners in the image and a class index."""

    model_config = ConfigDict(extra="forbid")
    x1: float
    y1: float
    x2: float
    y2: float
    cls: int


class AcceptRequest(BaseModel):
    """``POST /api/accept``: the corrected boxes of one hard example."""

    model_config = ConfigDict(extra="forbid")
    job: str
    id: str = Field(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")
    boxes: list[SubmittedBox] = Field(default_factory=list, max_length=500)
    #: The person says the image holds no object: saved as a negative sample.
    no_objects: bool = False


class MarkRequest(BaseModel):
    """``POST /api/skip`` and ``POST /api/difficult``."""

    model_config = ConfigDict(extra="forbid")
    job: str
    id: str = Field(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")
    difficult: bool = True


class BoxProblems(ValueError):
    """Boxes that cannot be saved; ``problems`` has one line per wrong box."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def checked_boxes(request: AcceptRequest, width: int, height: int,
                  class_names: Sequence[str]) -> list[list[int]]:
    """The boxes as dataset lines hold them (integer ``x1,y1,x2,y2,cls``), or
    :class:`BoxProblems` naming every box that lies outside the image, has no area, or names a
    class the job does not have. Nothing is clipped or guessed: a wrong box is the person's to
    fix."""
    if request.no_objects and request.boxes:
        raise BoxProblems([f"marked as having no objects but {len(request.boxes)} boxes were "
                           "sent: delete them or unmark the image"])
    if not request.no_objects and not request.boxes:
        raise BoxProblems(["no boxes: mark the image as having no objects (key e) to save it "
                           "without any"])
    problems: list[str] = []
    lines: list[list[int]] = []
    for i, box in enumerate(request.boxes, start=1):
        x1, y1, x2, y2 = (round(v) for v in (box.x1, box.y1, box.x2, box.y2))
        wrong = _box_problem(x1, y1, x2, y2, box.cls, width, height, class_names)
        if wrong:
            problems.append(f"box {i}: {wrong}")
        else:
            lines.append([x1, y1, x2, y2, box.cls])
    if problems:
        raise BoxProblems(problems)
    return lines


def _box_problem(x1: int, y1: int, x2: int, y2: int, cls: int, width: int, height: int,
                 class_names: Sequence[str]) -> str | None:
    for name, value, limit, what in (("x1", x1, width, "width"), ("x2", x2, width, "width"),
                                     ("y1", y1, height, "height"), ("y2", y2, height, "height")):
        if not 0 <= value <= limit:
            return f"{name} ({value}) is outside the image {what} {limit}"
    if x2 <= x1 or y2 <= y1:
        return f"no area ({x1},{y1} to {x2},{y2}): drag it larger or delete it"
    if not 0 <= cls < len(class_names):
        return (f"class {cls} is not one of the job's classes "
                f"({', '.join(f'{i} {n}' for i, n in enumerate(class_names))})")
    return None


# --- the queue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueFilter:
    """What the person asked to see; empty fields match everything."""

    node: str = ""
    camera: str = ""
    mining: str = ""
    since: dt.date | None = None
    until: dt.date | None = None
    show: Show = "todo"


def camera_of(item: dict[str, Any]) -> str:
    """The camera a hard example came from: its node's name for it, else (a node without
    cameras in its settings, an older sidecar) the stream its worker read (``video_url``)."""
    sidecar = item.get("sidecar") or {}
    return str(sidecar.get("camera") or item.get("camera") or sidecar.get("source")
               or item.get("source") or "")


def day_of(item: dict[str, Any]) -> dt.date | None:
    when = item.get("time")
    if isinstance(when, bool) or not isinstance(when, int | float):
        return None
    return dt.datetime.fromtimestamp(when, dt.UTC).date()


@dataclass
class Ledger:
    """What the people using this console did with the examples, and who is saving what now.

    "Two people never save the same example twice": the first accept takes the example
    (:meth:`begin_save`) until the cloud has answered; a second accept meanwhile, or after it
    was saved, is refused with who took it. The dataset node's refusal of a sample it already
    holds stands beneath this, for accepts from other consoles or the CLI.
    """

    saving: dict[str, str] = field(default_factory=dict)
    saved: dict[str, str] = field(default_factory=dict)
    difficult: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # user -> ids, oldest first

    def begin_save(self, example: str, user: str) -> str | None:
        """None when ``user`` may save ``example`` now (it is then taken), else why not."""
        if example in self.saved:
            return f"already saved by {self.saved[example]}"
        if example in self.saving:
            return f"{self.saving[example]} is saving it right now"
        self.saving[example] = user
        return None

    def end_save(self, example: str, saved: bool) -> None:
        user = self.saving.pop(example, "")
        if saved:
            self.saved[example] = user

    def skip(self, example: str, user: str) -> None:
        """The example goes to the end of ``user``'s queue (others still see it in order)."""
        mine = self.skipped.setdefault(user, [])
        if example in mine:
            mine.remove(example)
        mine.append(example)

    def mark_difficult(self, example: str, user: str, difficult: bool) -> None:
        if difficult:
            self.difficult[example] = user
        else:
            self.difficult.pop(example, None)

    def state(self, item: dict[str, Any]) -> str:
        """``labelled``, ``saving``, ``difficult`` or ``todo``."""
        example = item["id"]
        if item.get("labelled") or example in self.saved:
            return "labelled"
        if example in self.saving:
            return "saving"
        if example in self.difficult:
            return "difficult"
        return "todo"


def matches(item: dict[str, Any], state: str, wanted: QueueFilter) -> bool:
    if wanted.show != "all" and state not in (("todo", "saving") if wanted.show == "todo"
                                              else ("difficult",)):
        return False
    if wanted.node and item.get("node") != wanted.node:
        return False
    if wanted.camera and camera_of(item) != wanted.camera:
        return False
    if wanted.mining and item.get("mining") != wanted.mining:
        return False
    day = day_of(item)
    if wanted.since and (day is None or day < wanted.since):
        return False
    return not (wanted.until and (day is None or day > wanted.until))


def queue(items: Iterable[dict[str, Any]], ledger: Ledger, wanted: QueueFilter,
          user: str) -> list[dict[str, Any]]:
    """The examples ``user`` sees, in order: oldest first, those they skipped last."""
    chosen = [(item, ledger.state(item)) for item in items]
    shown = [dict(item, state=state) for item, state in chosen if matches(item, state, wanted)]
    skipped = {example: i for i, example in enumerate(ledger.skipped.get(user, []))}
    return sorted(shown, key=lambda item: (skipped.get(item["id"], -1), item.get("time") or 0))


def choices(items: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """The values the filters offer: every node, camera and mining rule seen."""
    listed = list(items)
    return {
        "nodes": sorted({str(i.get("node") or "") for i in listed} - {""}),
        "cameras": sorted({camera_of(i) for i in listed} - {""}),
        "minings": sorted({str(i.get("mining") or "") for i in listed} - {""}),
    }
