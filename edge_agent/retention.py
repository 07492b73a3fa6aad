"""Retention on the node: what the agent prunes so that a long-running node's disk stays bounded.

Two things grow on a node without bound otherwise: the hard examples a capture policy keeps
aside at a cap (``HE_SAVED_URL/held``, ``onCap: keep``) and the workers' logs
(``<state>/tasks/<task>/attempt-<n>/worker.log``). The agent's ``retention`` settings bound each
by age and by total size; the defaults prune nothing. Examples waiting in the outbox are not
pruned here: the outbox has its own budget and eviction order (:mod:`edge_agent.outbox`).

:func:`to_prune` is the decision (a pure function of the items, the time and the limits: the
ones past the age first, then the oldest until the rest fits the size); :func:`prune_held` and
:func:`prune_task_logs` are the shells that list the files and delete them, counted and logged.
A held example is deleted sidecar first, so the worker that holds it sees it gone and never
releases half of one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

HELD_DIR = "held"  # as workers.capture_policy names it (the agent does not import workers)
LOG_NAME = "worker.log"
DAY_S = 86400.0


class RetentionSettings(BaseModel):
    """The agent's ``retention`` setting; None: no limit of that kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    held_max_age_days: float | None = Field(default=None, gt=0)
    held_max_mb: float | None = Field(default=None, gt=0)
    task_logs_max_age_days: float | None = Field(default=None, gt=0)
    task_logs_max_mb: float | None = Field(default=None, gt=0)
    #: seconds between two pruning passes
    check_s: float = Field(default=600.0, gt=0)


@dataclass(frozen=True)
class Item:
    """One thing that may be pruned: its name, when it was last written, its bytes."""

    name: str
    mtime: float
    size: int


def to_prune(items: Iterable[Item], now: float, max_age_s: float | None,
             max_bytes: int | None) -> list[Item]:
    """The items to delete: every one older than ``max_age_s``, then the oldest of the rest
    until what remains is at most ``max_bytes``."""
    ordered = sorted(items, key=lambda i: (i.mtime, i.name))
    pruned = [i for i in ordered if max_age_s is not None and now - i.mtime > max_age_s]
    old = set(pruned)
    kept = [i for i in ordered if i not in old]
    if max_bytes is not None:
        total = sum(i.size for i in kept)
        while kept and total > max_bytes:
            oldest = kept.pop(0)
            pruned.append(oldest)
            total -= oldest.size
    return pruned


def _held_items(folder: Path) -> dict[str, tuple[Item, list[Path]]]:
    """Each held example (its stem) with its files, sidecar first."""
    examples: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            examples.setdefault(path.stem, []).append(path)
    out = {}
    for stem, paths in examples.items():
        try:
            stats = [p.stat() for p in paths]
        except FileNotFoundError:
            continue
        paths.sort(key=lambda p: p.suffix != ".json")
        out[stem] = (Item(stem, max(s.st_mtime for s in stats), sum(s.st_size for s in stats)),
                     paths)
    return out


def prune_held(he_folders: Iterable[Path], settings: RetentionSettings, now: float) -> int:
    """Prune the held examples of each ``HE_SAVED_URL`` folder; returns how many went."""
    max_age = settings.held_max_age_days * DAY_S if settings.held_max_age_days else None
    max_bytes = int(settings.held_max_mb * 2**20) if settings.held_max_mb else None
    if max_age is None and max_bytes is None:
        return 0
    pruned = 0
    for folder in he_folders:
        held = folder / HELD_DIR
        if not held.is_dir():
            continue
        items = _held_items(held)
        for item in to_prune((i for i, _ in items.values()), now, max_age, max_bytes):
            for path in items[item.name][1]:
                path.unlink(missing_ok=True)
            pruned += 1
            log.warning("retention: pruned held hard example %s (%d bytes) from %s",
                        item.name, item.size, held)
    return pruned


def prune_task_logs(state_dir: Path, running: Iterable[Path], settings: RetentionSettings,
                    now: float) -> int:
    """Prune the worker logs of finished attempts (a running attempt's log is kept); returns
    how many went. The attempt's ``state.json`` stays: it says what the attempt produced."""
    max_age = settings.task_logs_max_age_days * DAY_S if settings.task_logs_max_age_days else None
    max_bytes = int(settings.task_logs_max_mb * 2**20) if settings.task_logs_max_mb else None
    if max_age is None and max_bytes is None:
        return 0
    live = {p.resolve() for p in running}
    items = {}
    logs = Path(state_dir).glob(f"tasks/*/attempt-*/{LOG_NAME}")
    camera_logs = Path(state_dir).glob(f"tasks/*/attempt-*/camera-*/{LOG_NAME}")  # one per camera
    for path in (*logs, *camera_logs):
        if path.parent.resolve() in live:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        items[str(path)] = Item(str(path), stat.st_mtime, stat.st_size)
    pruned = to_prune(items.values(), now, max_age, max_bytes)
    for item in pruned:
        Path(item.name).unlink(missing_ok=True)
    if pruned:
        log.info("retention: pruned %d worker log(s) of finished attempts", len(pruned))
    return len(pruned)
