"""The bounded queue between a connection's socket reader and its handlers.

Pure bookkeeping, no I/O: the MQTT layer asks it after every arrival whether to stop reading the
socket and after every handled window whether to read again. Two policies:

* ``PAUSE`` (node traffic): above ``high_water`` the reader stops and TCP holds the broker back,
  so the backlog stays in the broker's session queue; nothing is dropped. Reading resumes at
  ``low_water``. Only safe on a connection whose handlers never wait for a packet from that
  same connection (acknowledgements of their own publishes travel on the other connection).
* ``DROP`` (requests whose sender waits for an answer): the reader never stops, so the
  acknowledgements that share the connection always get through; an arrival over ``high_water``
  is refused and counted. Its sender times out and may ask again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class Overflow(str, Enum):
    PAUSE = "pause"
    DROP = "drop"


@dataclass
class InflowQueue(Generic[T]):
    """Arrivals waiting for their handlers, bounded by ``high_water`` (see the module doc)."""

    high_water: int
    overflow: Overflow = Overflow.PAUSE
    #: reading resumes at or below this many waiting (``PAUSE``); half the high mark by default
    low_water: int = -1
    items: deque[T] = field(default_factory=deque)
    paused: bool = False
    dropped: int = 0
    #: the most arrivals ever waiting at once
    peak: int = 0

    def __post_init__(self) -> None:
        if self.high_water < 1:
            raise ValueError(f"high_water must be at least 1, not {self.high_water}")
        if self.low_water < 0:
            self.low_water = self.high_water // 2
        if not 0 <= self.low_water < self.high_water:
            raise ValueError(f"low_water must be in [0, {self.high_water}), not {self.low_water}")

    def push(self, item: T) -> bool:
        """Queue an arrival. False: it was refused (``DROP`` policy, queue full)."""
        if self.overflow is Overflow.DROP and len(self.items) >= self.high_water:
            self.dropped += 1
            return False
        self.items.append(item)
        self.peak = max(self.peak, len(self.items))
        if self.overflow is Overflow.PAUSE and len(self.items) >= self.high_water:
            self.paused = True
        return True

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` waiting arrivals, oldest first (none: an empty list)."""
        taken: list[T] = []
        while self.items and len(taken) < limit:
            taken.append(self.items.popleft())
        return taken

    def resume_due(self) -> bool:
        """True once when a paused reader should read again: the queue is down to the low mark."""
        if self.paused and len(self.items) <= self.low_water:
            self.paused = False
            return True
        return False

    def clear(self) -> None:
        """Forget what waits (the connection is gone: the broker sends it again)."""
        self.items.clear()
        self.paused = False

    def __len__(self) -> int:
        return len(self.items)
