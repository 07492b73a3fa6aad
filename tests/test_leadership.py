"""One leader among the managers sharing a store: the pure lease decisions, scenario by scenario,
then the same decisions carried out on a real store (SQLite and PostgreSQL), where the epoch
fence refuses a stale leader's decision."""

from __future__ import annotations

import pytest

from cloud_manager import leadership as ld
from cloud_manager.store import NotLeader, Store

SETTINGS = ld.LeaseSettings(ttl_s=6.0, margin_s=2.0)
T0 = 1_000.0


def step(state: ld.LeaderState, event: ld.Event) -> tuple[ld.LeaderState, list[ld.Action]]:
    return ld.handle(state, event, SETTINGS)


# -- pure scenarios --


def test_the_first_manager_claims_an_absent_lease_and_leads_once_it_won():
    state, actions = step(ld.LeaderState("a"), ld.LeaseRead(None, T0))
    assert actions == [ld.Claim(None, T0 + 6)] and not state.leading
    state, actions = step(state, ld.ClaimDone(True, ld.Lease("a", 1, T0 + 6), T0))
    assert actions == [ld.StartLeading(1)] and state.epoch == 1
    assert ld.may_decide(state, T0 + 1, SETTINGS)
    state, actions = step(state, ld.LeaseRead(ld.Lease("a", 1, T0 + 6), T0 + 1))
    assert actions == [ld.Renew(1, T0 + 7)]
    state, actions = step(state, ld.RenewDone(True, T0 + 7, T0 + 1))
    assert actions == [] and state.valid_until == T0 + 7


def test_a_follower_waits_for_a_live_lease_and_claims_it_once_expired_with_the_next_epoch():
    lease = ld.Lease("a", 4, T0 + 6)
    state, actions = step(ld.LeaderState("b"), ld.LeaseRead(lease, T0 + 5.9))
    assert actions == [] and state.leader == "a" and not state.leading
    state, actions = step(state, ld.LeaseRead(lease, T0 + 6))
    assert actions == [ld.Claim(4, T0 + 12)]
    state, actions = step(state, ld.ClaimDone(True, ld.Lease("b", 5, T0 + 12), T0 + 6))
    assert actions == [ld.StartLeading(5)] and state.epoch == 5


def test_of_two_claims_the_loser_follows_the_winner():
    state, _ = step(ld.LeaderState("b"), ld.LeaseRead(ld.Lease("a", 4, T0), T0 + 1))
    state, actions = step(state, ld.ClaimDone(False, ld.Lease("c", 5, T0 + 7), T0 + 1))
    assert actions == [] and not state.leading and state.leader == "c"


def test_a_leader_that_sees_another_holder_stops_at_once():
    leader = ld.LeaderState("a", epoch=4, valid_until=T0 + 6, leader="a")
    state, actions = step(leader, ld.LeaseRead(ld.Lease("b", 5, T0 + 12), T0 + 1))
    assert actions == [ld.StopLeading("b leads under epoch 5")] and not state.leading


def test_a_refused_renewal_stops_the_leader():
    leader = ld.LeaderState("a", epoch=4, valid_until=T0 + 6, leader="a")
    state, actions = step(leader, ld.RenewDone(False, T0 + 7, T0 + 1))
    assert actions == [ld.StopLeading("the lease renewal was refused")]


def test_a_leader_cut_from_the_database_stops_before_anyone_may_claim():
    leader = ld.LeaderState("a", epoch=4, valid_until=T0 + 6, leader="a")
    state, actions = step(leader, ld.Tick(T0 + 3.9))
    assert actions == [] and state.leading
    state, actions = step(state, ld.Tick(T0 + 4))  # margin_s before the expiry
    assert actions == [ld.StopLeading("the lease was not renewed in time")]
    # a follower claims no earlier than the expiry, after the old leader stopped
    _, claim = step(ld.LeaderState("b"), ld.LeaseRead(ld.Lease("a", 4, T0 + 6), T0 + 4))
    assert claim == []


def test_a_stalled_leader_renews_late_but_decides_only_once_renewed():
    leader = ld.LeaderState("a", epoch=4, valid_until=T0 + 6, leader="a")
    state, actions = step(leader, ld.LeaseRead(ld.Lease("a", 4, T0 + 6), T0 + 5))
    assert actions == [ld.Renew(4, T0 + 11)]
    assert not ld.may_decide(state, T0 + 5, SETTINGS)
    state, _ = step(state, ld.RenewDone(True, T0 + 11, T0 + 5))
    assert ld.may_decide(state, T0 + 5, SETTINGS)


def test_a_leader_whose_own_lease_expired_stops_and_claims_again():
    leader = ld.LeaderState("a", epoch=4, valid_until=T0 + 6, leader="a")
    state, actions = step(leader, ld.LeaseRead(ld.Lease("a", 4, T0 + 6), T0 + 7))
    assert actions == [ld.StopLeading("the lease of epoch 4 expired"), ld.Claim(4, T0 + 13)]


# -- on a real store --


class Shell:
    """What a manager's shell does with the actions, on a store of its own connection."""

    def __init__(self, name: str, store: Store) -> None:
        self.state = ld.LeaderState(name)
        self.store = store
        self.log: list[ld.Action] = []

    def tick(self, now: float) -> None:
        with self.store.transaction():
            lease = self.store.lease()
        self.apply(ld.LeaseRead(lease, now), now)

    def apply(self, event: ld.Event, now: float) -> None:
        self.state, actions = ld.handle(self.state, event, SETTINGS)
        for action in actions:
            self.log.append(action)
            if isinstance(action, ld.Claim):
                with self.store.transaction():
                    won = self.store.claim_lease(self.state.me, action.seen_epoch, action.expires)
                    lease = self.store.lease()
                self.apply(ld.ClaimDone(won, lease, now), now)
            elif isinstance(action, ld.Renew):
                with self.store.transaction():
                    ok = self.store.renew_lease(self.state.me, action.epoch, action.expires)
                self.apply(ld.RenewDone(ok, action.expires, now), now)


def test_two_managers_on_one_store_one_leads_and_the_other_takes_over_when_it_dies(store_at):
    a, b = Shell("a", store_at.open()), Shell("b", store_at.open())
    now = T0
    a.tick(now)
    b.tick(now)
    assert a.state.epoch == 1 and not b.state.leading and b.state.leader == "a"
    for _ in range(5):  # a renews, b follows
        now += 1
        a.tick(now)
        b.tick(now)
    assert a.state.epoch == 1 and not b.state.leading
    died_at = now  # a stops ticking: killed
    while not b.state.leading:
        now += 1
        b.tick(now)
    assert b.state.epoch == 2 and now - died_at <= SETTINGS.ttl_s + 1
    # a decision a took under epoch 1 is refused once b holds epoch 2
    with pytest.raises(NotLeader, match="epoch 1; the lease is at epoch 2"), \
            a.store.transaction():
        a.store.fence(1)
        a.store.create_namespace("decided-by-a-stale-leader", now)
    with b.store.transaction():
        b.store.fence(2)
        b.store.create_namespace("decided-by-b", now)
    assert b.store.namespaces() == ["decided-by-b", "default"]
    # a comes back: it sees b's lease and follows
    now += 1
    a.tick(now)
    assert not a.state.leading and a.state.leader == "b"


def test_of_managers_claiming_an_expired_lease_at_once_exactly_one_wins(store_at):
    stores = [store_at.open() for _ in range(3)]
    with stores[0].transaction():
        assert stores[0].claim_lease("old", None, T0)
    wins = []
    for i, store in enumerate(stores):
        with store.transaction():
            wins.append(store.claim_lease(f"m{i}", 1, T0 + 10))  # all saw epoch 1
    assert wins == [True, False, False]
    lease = stores[2].lease()
    assert lease is not None and (lease.holder, lease.epoch) == ("m0", 2)
    with stores[1].transaction():
        assert not stores[1].renew_lease("m1", 2, T0 + 20)
        assert stores[1].renew_lease("m0", 2, T0 + 20)
