"""Exponential backoff with full jitter, for reconnects and retries.

Full jitter (a uniform draw between 0 and the exponential cap) keeps a fleet of nodes that lost
the broker at the same moment from reconnecting in lock-step when it returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0

    def cap(self) -> float:
        """The upper bound of the next delay, before jitter."""
        return min(self.maximum, self.initial * self.factor**self.attempt)

    def next_delay(self) -> float:
        delay = self.rng.uniform(self.initial / 2, max(self.initial / 2, self.cap()))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
