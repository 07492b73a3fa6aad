"""Which node statuses of a batch matter (pure).

A status is a node's whole current word about itself, so of several statuses of one node that
arrive together the store needs only the newest: one write per node instead of one per message.
The jobs, though, must still hear of every change of state on the way: a node that went offline
and came back within one batch has lost the task it ran, and its job retries it only when it sees
the ``offline``. So a node's statuses settle into the newest one plus the states it passed
through, exactly as handling them one by one would have seen them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from protocol.messages import NodeStatus


@dataclass(frozen=True)
class Known:
    """What the store holds of a node before the batch."""

    boot_id: str
    seq: int
    state: str


@dataclass
class Settled:
    """What one node's statuses of a batch come to."""

    #: the status to store (the newest one)
    latest: NodeStatus
    #: each state the node entered, in order, starting from what the store held: one
    #: ``NodeChanged`` per entry (a node the store did not know enters its first state)
    changes: list[str] = field(default_factory=list)
    #: statuses of the batch that said nothing new: older than one already applied (a late
    #: redelivery) or followed by a newer one
    superseded: int = 0


def by_node(statuses: Iterable[NodeStatus]) -> dict[str, list[NodeStatus]]:
    """Each node's statuses in arrival order; nodes in order of first mention."""
    groups: dict[str, list[NodeStatus]] = {}
    for status in statuses:
        groups.setdefault(status.node, []).append(status)
    return groups


def settle(known: Known | None, statuses: Sequence[NodeStatus]) -> Settled | None:
    """One node's statuses (arrival order) after ``known``; None when none of them is newer.

    A status older than the one applied before it (same boot, lower seq) is a late redelivery
    and skipped; a different boot is newer because it arrived later (boot ids do not order).
    The last will (``lost``) is the exception: the broker publishes it when the connection dies,
    with the seq the agent gave it when connecting, so it is never stale; it keeps the seq
    reached so far, so that a late redelivery from before it stays stale."""
    current = known
    settled: Settled | None = None
    for status in statuses:
        if current and current.boot_id == status.boot_id and current.seq > status.seq:
            if status.state != "lost":
                continue
            status = status.model_copy(update={"seq": current.seq})
        if settled is None:
            settled = Settled(status)
        if current is None or current.state != status.state:
            settled.changes.append(status.state)
        settled.latest = status
        current = Known(status.boot_id, status.seq, status.state)
    if settled is not None:
        settled.superseded = len(statuses) - 1
    return settled
