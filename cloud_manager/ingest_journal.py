"""What a manager that does not decide hands to the one that does, pure: job events as rows.

With several managers on one store (``--leader-lease``), every manager ingests a share of the
node reports (MQTT 5 shared subscriptions), but only the leader runs the jobs' state machines.
A member that is not the leader stores what a report says (the dataset's count, the node's
status) as the leader would, and, where the leader would have fed a job an event, writes that
event to the ``ingest_journal`` table instead, in the same transaction as the report's key: the
report is acknowledged to the broker only after both are durable. The leader takes the journal
in order, runs each event through the job's machine in its own fenced transaction and deletes
the rows it ran there, so an event is decided on once even across a change of leader.

Only the events the ingest produces travel this way: :class:`~cloud_manager.state_machine.
SamplesReported`, :class:`~cloud_manager.state_machine.NodeChanged` and
:class:`~cloud_manager.state_machine.ServingReported`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cloud_manager import rollout as ro
from cloud_manager import state_machine as sm

#: the PostgreSQL notification channel a member signals on when it wrote to the journal
CHANNEL = "edgeloop_ingest_journal"

JournalEvent = sm.SamplesReported | sm.NodeChanged | sm.ServingReported

_KINDS: dict[str, type[JournalEvent]] = {
    "samples": sm.SamplesReported,
    "node": sm.NodeChanged,
    "serving": sm.ServingReported,
}
_NAMES: dict[type, str] = {kind: name for name, kind in _KINDS.items()}


class NotJournaled(TypeError):
    """An event a member must not take on itself: it has no journal form."""


@dataclass(frozen=True)
class JournalRow:
    """One event for one job, as the journal holds it."""

    seq: int
    namespace: str
    job: str
    event: str


def encode(event: sm.Event) -> str:
    """The journal's text of an ingest event."""
    name = _NAMES.get(type(event))
    if name is None:
        raise NotJournaled(f"{type(event).__name__} is not an ingest event; only the leader "
                           "takes it")
    return json.dumps({"kind": name, **asdict(event)}, sort_keys=True)


def decode(text: str) -> JournalEvent:
    """The event a journal row holds; ``ValueError`` naming what is wrong when it is not one."""
    try:
        data: dict[str, Any] = json.loads(text)
        kind = _KINDS[data.pop("kind")]
        if kind is sm.ServingReported and data.get("health") is not None:
            data["health"] = ro.Health(**data["health"])
        return kind(**data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a journal event ({type(exc).__name__}: {exc}): {text[:200]}"
                         ) from None
