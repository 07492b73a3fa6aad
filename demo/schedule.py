"""Which domain the demo's camera shows, from what the job is learning. Pure.

The camera plays one domain at a time. A round's new samples are fixed when its train trigger
fires, so while a round learns domain D the camera can already show the next domain to learn,
and its hard examples make the next round. A round is said to learn the domain most of its new
samples come from (the simulated annotator knows each label's domain). A deployed round marks its
domain learned; a round that is not deployed leaves it unlearned, so the camera goes back to it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class DomainPlan:
    """``shifted``: the domains to learn, in order; ``first``: what the camera starts with and
    what round 1 (the dataset already in data.txt) learns."""

    first: str
    shifted: Sequence[str]
    #: round -> the domain it learns
    round_domain: dict[int, str] = field(default_factory=dict)
    learned: list[str] = field(default_factory=list)
    #: (time.time(), domain) of every label, in order
    labels: list[tuple[float, str]] = field(default_factory=list)
    #: round -> time its training was first seen to start
    round_started: dict[int, float] = field(default_factory=dict)
    #: domain -> rounds of it whose candidate was not deployed
    failures: dict[str, int] = field(default_factory=dict)
    deployed_rounds: set[int] = field(default_factory=set)
    failed_rounds: set[int] = field(default_factory=set)

    def add_labels(self, labelled: Sequence[tuple[float, str]]) -> None:
        self.labels.extend(labelled)

    def round_begins(self, round_no: int, now: float) -> str:
        """Record that ``round_no``'s samples were fixed at ``now``; returns its domain: the
        majority of the labels since the previous round began (round 1: ``first``)."""
        if round_no in self.round_domain:
            return self.round_domain[round_no]
        self.round_failed(round_no - 1)  # a new round after one that deployed nothing
        since = max((t for r, t in self.round_started.items() if r < round_no), default=None)
        window = [d for t, d in self.labels if (since is None or t > since) and t <= now]
        domain = Counter(window).most_common(1)[0][0] if window and round_no > 1 else self.first
        self.round_started[round_no] = now
        self.round_domain[round_no] = domain
        return domain

    def round_failed(self, round_no: int) -> None:
        """The round's candidate was not deployed: its domain is shown again, from a new video.
        Idempotent; a deployed round is never failed."""
        domain = self.round_domain.get(round_no)
        if domain is None or round_no in self.deployed_rounds or round_no in self.failed_rounds:
            return
        self.failed_rounds.add(round_no)
        self.failures[domain] = self.failures.get(domain, 0) + 1

    def variant(self, domain: str) -> int:
        """Which video of ``domain`` to play: a new one after each round of it that failed."""
        return self.failures.get(domain, 0)

    def round_deployed(self, round_no: int) -> None:
        self.deployed_rounds.add(round_no)
        domain = self.round_domain.get(round_no)
        if domain is not None and domain not in self.learned:
            self.learned.append(domain)

    def unlearned(self, also_excluding: Sequence[str] = ()) -> str | None:
        for domain in self.shifted:
            if domain not in self.learned and domain not in also_excluding:
                return domain
        return None

    def camera(self, stage: str, state: str, round_no: int, current: str) -> str:
        """The domain to show now (``current`` when nothing should change)."""
        if stage == "Deploy":
            return current  # the round's version is being registered and pushed: hold
        learning = stage == "Eval" or (stage == "Train" and state not in ("Waiting", "-"))
        if learning:
            domain = self.round_domain.get(round_no)
            return self.unlearned([domain] if domain else []) or current
        return self.unlearned() or current

    @property
    def done(self) -> bool:
        return all(domain in self.learned for domain in self.shifted)
