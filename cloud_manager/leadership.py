"""Which of several cloud managers on one database takes the decisions, pure: a lease with an epoch.

Several managers can share one PostgreSQL store (and split the ingest among them); decisions
(triggers, task dispatch, deploys, rollouts) must be taken by exactly one at a time. The store
holds one lease row: its holder, an ``epoch`` that grows by one at every change of holder, and
when it expires. ``handle(state, event, settings)`` returns the manager's next view and the
actions its shell carries out; nothing here does I/O or reads the clock.

- A manager that finds no lease, or an expired one, claims it with a conditional write that
  names the epoch it saw (:class:`Claim`): of several managers racing for it, one wins.
- The holder renews it on every tick (:class:`Renew`), conditional on still holding that epoch.
- The holder stops deciding as soon as it cannot be sure it still holds the lease: another
  holder or epoch seen, a renewal refused, or no renewal for so long that its lease is within
  ``margin_s`` of expiring (a stalled process or a lost database).

Clocks only decide liveness (when a follower may claim: the lease's expiry plus nothing; when
the holder gives up: ``margin_s`` before it). Safety does not rest on them: every decision
transaction checks the epoch it was taken under (:meth:`cloud_manager.store.Store.fence`), and
the claim's write waits for such a transaction to end, so a stale leader's decision either
commits before the new epoch exists or is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Lease:
    """The lease row as read."""

    holder: str
    epoch: int
    expires: float


@dataclass(frozen=True)
class LeaseSettings:
    #: how long a claim or renewal holds: a dead leader's successor starts within this (plus
    #: one tick)
    ttl_s: float = 6.0
    #: the holder gives up this long before its lease expires, for clock differences and the
    #: time a decision in flight may take
    margin_s: float = 2.0


@dataclass(frozen=True)
class LeaderState:
    #: this manager's name in the lease (unique per process)
    me: str
    #: the epoch this manager leads under; None while following
    epoch: int | None = None
    #: the expiry of its last claim or renewal
    valid_until: float = 0.0
    #: who leads, as last seen (None: nobody known)
    leader: str | None = None

    @property
    def leading(self) -> bool:
        return self.epoch is not None


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRead:
    """The shell read the lease row (None: there is none yet)."""

    lease: Lease | None
    now: float


@dataclass(frozen=True)
class ClaimDone:
    """The outcome of a :class:`Claim`: the lease as it is after it (won or not)."""

    won: bool
    lease: Lease | None
    now: float


@dataclass(frozen=True)
class RenewDone:
    ok: bool
    expires: float
    now: float


@dataclass(frozen=True)
class Tick:
    """Time passed without a lease read (the database may be unreachable)."""

    now: float


Event = LeaseRead | ClaimDone | RenewDone | Tick


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """Take the lease if its epoch is still ``seen_epoch`` (None: if there is no row)."""

    seen_epoch: int | None
    expires: float


@dataclass(frozen=True)
class Renew:
    epoch: int
    expires: float


@dataclass(frozen=True)
class StartLeading:
    """Resynchronise from the store and take decisions under ``epoch`` from now on."""

    epoch: int


@dataclass(frozen=True)
class StopLeading:
    """Take no decision from now on (the ingest and the API go on)."""

    reason: str


Action = Claim | Renew | StartLeading | StopLeading


def may_decide(state: LeaderState, now: float, settings: LeaseSettings) -> bool:
    """Whether a decision may be taken now (the store's fence still has the last word)."""
    return state.leading and now < state.valid_until - settings.margin_s


def _stop(state: LeaderState, reason: str, leader: str | None) -> tuple[LeaderState, list[Action]]:
    if not state.leading:
        return replace(state, leader=leader), []
    return replace(state, epoch=None, valid_until=0.0, leader=leader), [StopLeading(reason)]


def handle(state: LeaderState, event: Event,
           settings: LeaseSettings) -> tuple[LeaderState, list[Action]]:
    if isinstance(event, Tick):
        if state.leading and not may_decide(state, event.now, settings):
            return _stop(state, "the lease was not renewed in time", None)
        return state, []
    if isinstance(event, LeaseRead):
        return _on_read(state, event, settings)
    if isinstance(event, ClaimDone):
        lease = event.lease
        if event.won and lease is not None and lease.holder == state.me:
            return (replace(state, epoch=lease.epoch, valid_until=lease.expires, leader=state.me),
                    [StartLeading(lease.epoch)])
        return replace(state, leader=lease.holder if lease else None), []
    if not event.ok:
        return _stop(state, "the lease renewal was refused", None)
    if not state.leading:
        return state, []
    return replace(state, valid_until=event.expires), []


def _on_read(state: LeaderState, event: LeaseRead,
             settings: LeaseSettings) -> tuple[LeaderState, list[Action]]:
    lease, now = event.lease, event.now
    expires = now + settings.ttl_s
    if lease is None:
        stopped, actions = _stop(state, "the lease is gone", None)
        return stopped, [*actions, Claim(None, expires)]
    ours = state.leading and lease.holder == state.me and lease.epoch == state.epoch
    if ours and now < lease.expires:
        # nobody can claim before the expiry: renewing is safe even when late, and deciding
        # waits for the renewal (may_decide) when the lease came close to its end
        return state, [Renew(lease.epoch, expires)]
    if now >= lease.expires:
        stopped, actions = _stop(state, f"the lease of epoch {lease.epoch} expired", None)
        return stopped, [*actions, Claim(lease.epoch, expires)]
    return _stop(state, f"{lease.holder} leads under epoch {lease.epoch}", lease.holder)
