"""Which sample counts of a batch of reports matter (pure).

Sample reports carry a dataset index's *current* size, not a difference: of several reports
about one dataset that arrive together, only the newest says anything the state needs. Handling
just that one turns N store writes and N trigger evaluations into one, and it is what the
machine would end at anyway (a report of an unreadable index changes nothing, so it never hides a
count).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol.messages import DatasetSamples, SampleReport


@dataclass
class DatasetUpdate:
    """The newest word of one node about one dataset within a batch."""

    namespace: str
    name: str
    node: str
    entry: DatasetSamples
    #: the report ``entry`` came from
    boot_id: str
    seq: int
    #: keys of every report of the batch that spoke of this dataset (for logging a failure)
    reports: list[str] = field(default_factory=list)

    @property
    def dataset(self) -> str:
        return f"{self.namespace}/{self.name}"


def _newer(update: DatasetUpdate, report: SampleReport, entry: DatasetSamples) -> bool:
    """Does ``entry`` of ``report`` supersede what ``update`` holds? A count beats an error;
    within one boot the higher seq wins; a different boot (a restarted node) is newer because
    it arrived later (boot ids do not order)."""
    if (entry.error is None) != (update.entry.error is None):
        return entry.error is None
    if report.boot_id == update.boot_id:
        return report.seq > update.seq
    return True


def coalesce(reports: Iterable[SampleReport]) -> list[DatasetUpdate]:
    """One update per (dataset, reporting node), in order of first mention.

    ``reports`` are in arrival order and already free of duplicates. The reporting node is part
    of the key: a node reporting a dataset that is not its own must not hide the owner's count
    (the manager refuses the stranger's afterwards).
    """
    updates: dict[tuple[str, str], DatasetUpdate] = {}
    for report in reports:
        for entry in report.datasets:
            slot = (entry.dataset, report.node)
            update = updates.get(slot)
            if update is None:
                namespace, name = entry.dataset.split("/", 1)
                update = updates[slot] = DatasetUpdate(namespace, name, report.node, entry,
                                                       report.boot_id, report.seq)
            elif _newer(update, report, entry):
                update.entry, update.boot_id, update.seq = entry, report.boot_id, report.seq
            update.reports.append(report.key)
    return list(updates.values())
