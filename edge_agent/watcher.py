"""Watches dataset indexes (``data.txt``) and reports their sample counts.

Which indexes: those named in the agent's configuration (``datasets:`` in the config file or
``--dataset namespace/name=/path/data.txt``). The ``TRAIN_DATASET_URL`` of a task is *not*
watched: it is the index a train worker reads for one round, the per-round extract the agent
writes (:mod:`edge_agent.round_indexes`), not the growing index that labelling appends to; watching it would report the wrong
counts. The cloud will name datasets to watch in the desired state when its protocol carries them.

An index is meant to grow by appended lines. The watcher remembers the size and hash of what it
last saw (in ``<state>/datasets.json``, so across restarts too) and says so in the report's
``error`` field when the index disappeared, shrank (truncated) or changed in lines it had already
seen (rewritten): those break "samples added since the last round" and deserve a human's look.
The count is still reported for a truncated or rewritten index; it is 0 for a missing one.

Changes are seen through filesystem events (watchfiles, on the folder holding each index, so that
an index replaced by a rename is seen too), debounced so that a report follows a change within
about 0.3 s. A slower periodic check is the safety net for filesystems without events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from edgeloop.durable import write_atomically
from protocol.messages import DatasetSamples
from protocol.dataset_index import count_valid_samples

log = logging.getLogger(__name__)

ReportSink = Callable[[list[DatasetSamples]], Awaitable[None]]

DEBOUNCE_MS = 200
RECHECK_S = 5.0
STATE_NAME = "datasets.json"


@dataclass(frozen=True)
class Fingerprint:
    """What the watcher last saw of an index: its size and the sha256 of its bytes."""

    size: int
    sha256: str


def classify_change(previous: Fingerprint | None, data: bytes) -> str | None:
    """Why ``data`` is not a plain append to what ``previous`` saw, or None when it is."""
    if previous is None or previous.size == 0:
        return None
    if len(data) < previous.size:
        return (
            f"index shrank from {previous.size} to {len(data)} bytes: it was truncated; "
            "samples are counted from what is left"
        )
    if hashlib.sha256(data[: previous.size]).hexdigest() != previous.sha256:
        return (
            f"index was rewritten: its first {previous.size} bytes changed, so lines were edited "
            "or removed, not only appended"
        )
    return None


@dataclass(frozen=True)
class WatchedDataset:
    name: str  # namespace/name
    path: Path


class DatasetWatcher:
    """Keeps the current :class:`DatasetSamples` of each watched index and reports changes."""

    def __init__(
        self,
        datasets: dict[str, Path],
        state_dir: Path,
        report: ReportSink,
        *,
        num_classes: int = 4,
    ) -> None:
        self.datasets = [
            WatchedDataset(n, Path(p).expanduser().absolute()) for n, p in datasets.items()
        ]
        self.report = report
        self.num_classes = num_classes
        self._state_path = Path(state_dir) / STATE_NAME
        self._fingerprints: dict[str, Fingerprint | None] = self._load_fingerprints()
        self._current: dict[str, DatasetSamples] = {}
        self._stop = asyncio.Event()

    @property
    def current(self) -> list[DatasetSamples]:
        return [self._current[d.name] for d in self.datasets if d.name in self._current]

    async def refresh(self, only: set[str] | None = None) -> list[DatasetSamples]:
        """Recount ``only`` these datasets (all when None); return the full current list."""
        for dataset in self.datasets:
            if only is None or dataset.name in only:
                self._current[dataset.name] = await asyncio.to_thread(self._measure, dataset)
        self._save_fingerprints()
        return self.current

    async def run(self) -> None:
        """Watch until :meth:`close`; reports every change (the caller reports at connect)."""
        if not self.datasets:
            return
        await self.refresh()
        while not self._stop.is_set():
            folders = sorted({str(d.path.parent) for d in self.datasets if d.path.parent.is_dir()})
            try:
                if folders:
                    await self._watch(folders)
                else:
                    await self._wait_stop(RECHECK_S)
                    await self._recheck()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any filesystem oddity
                log.exception("dataset watcher error; retrying")
                await self._wait_stop(RECHECK_S)

    def close(self) -> None:
        self._stop.set()

    async def _watch(self, folders: list[str]) -> None:
        """One watch session; returns when the set of existing folders may have changed."""
        by_path: dict[str, list[str]] = {}
        for d in self.datasets:
            by_path.setdefault(str(d.path), []).append(d.name)
        recheck = asyncio.create_task(self._wait_stop(RECHECK_S))
        stop = asyncio.Event()
        watcher = watchfiles.awatch(
            *folders,
            watch_filter=None,
            debounce=DEBOUNCE_MS,
            step=50,
            stop_event=stop,
            recursive=False,
            rust_timeout=int(RECHECK_S * 1000),
            yield_on_timeout=True,
        )
        try:
            async for changes in watcher:
                names = {n for _, p in changes for n in by_path.get(os.path.abspath(p), [])}
                if names:
                    await self._publish(await self._changed_only(names))
                if recheck.done():
                    break
            else:
                return
        finally:
            stop.set()
            recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recheck
        await self._recheck()

    async def _recheck(self) -> None:
        """Catch what events missed: a folder that appeared, a filesystem without inotify."""
        before = dict(self._current)
        after = await self.refresh()
        if any(before.get(s.dataset) != s for s in after):
            await self._publish(after)

    async def _changed_only(self, names: set[str]) -> list[DatasetSamples]:
        before = {n: self._current.get(n) for n in names}
        current = await self.refresh(names)
        if all(before[n] == self._current.get(n) for n in names):
            return []
        return current

    async def _publish(self, reports: list[DatasetSamples]) -> None:
        if reports:
            await self.report(reports)

    async def _wait_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # -- measuring (runs in a thread) -------------------------------------------------------

    def _measure(self, dataset: WatchedDataset) -> DatasetSamples:
        url = str(dataset.path)
        try:
            data = dataset.path.read_bytes()
        except FileNotFoundError:
            return DatasetSamples(
                dataset=dataset.name, url=url, samples=0, error=f"dataset index not found: {url}"
            )
        except OSError as exc:
            return DatasetSamples(
                dataset=dataset.name, url=url, samples=0, error=f"cannot read index: {exc}"
            )
        previous = self._fingerprints.get(dataset.name)
        fingerprint = Fingerprint(len(data), hashlib.sha256(data).hexdigest())
        if previous == fingerprint and dataset.name in self._current:
            return self._current[dataset.name]  # unchanged: keep the report, error included
        problem = classify_change(previous, data)
        self._fingerprints[dataset.name] = fingerprint
        try:
            samples = count_valid_samples(dataset.path, self.num_classes)
        except FileNotFoundError:
            return DatasetSamples(
                dataset=dataset.name, url=url, samples=0, error=f"dataset index not found: {url}"
            )
        except OSError as exc:
            return DatasetSamples(
                dataset=dataset.name, url=url, samples=0, error=f"cannot read index: {exc}"
            )
        return DatasetSamples(dataset=dataset.name, url=url, samples=samples, error=problem)

    def _load_fingerprints(self) -> dict[str, Fingerprint | None]:
        try:
            raw = json.loads(self._state_path.read_text(encoding="utf-8"))
            return {k: Fingerprint(int(v["size"]), str(v["sha256"])) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", self._state_path, exc)
            return {}

    def _save_fingerprints(self) -> None:
        data = {k: {"size": v.size, "sha256": v.sha256} for k, v in self._fingerprints.items() if v}
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self._state_path, json.dumps(data).encode())
