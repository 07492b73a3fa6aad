"""A message the cloud manager publishes once the transaction that produced it has committed."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import Message


@dataclass(frozen=True)
class Outgoing:
    """``message`` None clears the retained message of ``topic`` (a deleted job's status)."""

    topic: str
    message: Message | None
    retain: bool = False
