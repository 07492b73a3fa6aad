"""When to start an inference worker again after it exited on its own.

An inference worker is a service: a camera that drops, a corrupt frame that crashes a decoder or
an out-of-memory kill must not leave the site unwatched until someone notices. So the agent
starts it again, but after a pause that grows exponentially with full jitter
(:class:`edgeloop.backoff.Backoff`) up to a cap, so that a worker failing at start-up (an
unreadable camera, a missing file) costs a start every few tens of seconds, not a busy loop,
and a fleet of nodes whose shared stream went down does not hammer it back in lock-step. A worker
that ran healthily for a while before dying is a fresh incident: its pauses start small again.

Pure logic, no clock of its own: the caller says how long the worker ran.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from edgeloop.backoff import Backoff

#: First pause before a restart (the jittered draw lies between half of it and it).
DEFAULT_INITIAL_S = 1.0
#: Longest pause between two restarts.
DEFAULT_MAXIMUM_S = 60.0
#: A worker that ran at least this long before exiting restarts after a short pause again.
DEFAULT_HEALTHY_S = 120.0


@dataclass
class RestartPolicy:
    """The restarts of one task's worker: how many so far and the pause before the next."""

    initial_s: float = DEFAULT_INITIAL_S
    maximum_s: float = DEFAULT_MAXIMUM_S
    healthy_s: float = DEFAULT_HEALTHY_S
    rng: random.Random = field(default_factory=random.Random, repr=False)
    restarts: int = 0
    _backoff: Backoff = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.maximum_s:
            raise ValueError(
                f"restart pauses: need 0 < initial ({self.initial_s}) <= maximum ({self.maximum_s})"
            )
        self._backoff = Backoff(initial=self.initial_s, maximum=self.maximum_s, rng=self.rng)

    def next_delay(self, ran_for_s: float) -> float:
        """The pause before starting the worker again, which ran ``ran_for_s`` seconds this
        time; counts the restart."""
        if ran_for_s >= self.healthy_s:
            self._backoff.reset()
        self.restarts += 1
        return self._backoff.next_delay()

    @property
    def streak(self) -> int:
        """Restarts since the worker last ran healthily."""
        return self._backoff.attempt
