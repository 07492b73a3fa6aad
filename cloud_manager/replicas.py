"""Several cloud managers on one PostgreSQL store: the one holding the lease serves, the others
stand by and take over when it stops renewing (the shell of :mod:`cloud_manager.leadership`).

The leader runs the whole daemon on the managers' MQTT session: decisions, the API's writes,
task progress, and its share of the node reports and of the API's reads. Every manager, leader or
standby, also serves an ingest session (:mod:`cloud_manager.ingest_split`). When a standby wins
the lease it starts the daemon with the leader's client id, so the broker hands it the
persistent session, with every message the old leader had not acknowledged: nothing accepted is
lost, and the stored message keys make repeats harmless. Every
transaction of a term checks that term's epoch (:meth:`cloud_manager.store.Store.fence`), so a
leader that was paused past its lease and wakes up cannot write: its messages stay
unacknowledged for the new leader, and it stops serving at its next lease check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from cloud_manager import leadership as ld
from cloud_manager.daemon import CloudDaemon
from cloud_manager.database import StoreUnavailable
from cloud_manager.ingest_split import IngestMembers, IngestSplit, listen_journal
from cloud_manager.store import Store
from edgeloop.cancellation import cancel_and_wait

log = logging.getLogger(__name__)

#: how often the lease is read and renewed
LEASE_TICK_S = 1.0


def replica_name() -> str:
    """A name no other manager process has, readable in the lease row."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseShell:
    """Carries out the lease decisions on its own store connection (never fenced)."""

    def __init__(self, store: Store, me: str, settings: ld.LeaseSettings,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.state = ld.LeaderState(me)
        self.settings = settings
        self.clock = clock

    def tick(self) -> list[ld.Action]:
        """Read the lease and act on it; returns what the caller does: start or stop serving."""
        now = self.clock()
        try:
            with self.store.transaction():
                lease = self.store.lease()
        except StoreUnavailable as exc:
            log.warning("lease not read: %s", exc)
            return self._apply(ld.Tick(now))
        return self._apply(ld.LeaseRead(lease, now))

    def _apply(self, event: ld.Event) -> list[ld.Action]:
        self.state, actions = ld.handle(self.state, event, self.settings)
        out: list[ld.Action] = []
        for action in actions:
            if isinstance(action, ld.Claim):
                out += self._claim(action)
            elif isinstance(action, ld.Renew):
                out += self._renew(action)
            else:
                out.append(action)
        return out

    def _claim(self, claim: ld.Claim) -> list[ld.Action]:
        now = self.clock()
        try:
            with self.store.transaction():
                won = self.store.claim_lease(self.state.me, claim.seen_epoch, claim.expires)
                lease = self.store.lease()
        except StoreUnavailable as exc:
            log.warning("lease not claimed: %s", exc)
            return self._apply(ld.Tick(now))
        return self._apply(ld.ClaimDone(won, lease, now))

    def _renew(self, renew: ld.Renew) -> list[ld.Action]:
        now = self.clock()
        try:
            with self.store.transaction():
                ok = self.store.renew_lease(self.state.me, renew.epoch, renew.expires)
        except StoreUnavailable as exc:
            log.warning("lease not renewed: %s", exc)
            return self._apply(ld.Tick(now))  # the margin decides when to give up
        return self._apply(ld.RenewDone(ok, renew.expires, now))


async def serve_while_leader(lease: LeaseShell, store: Store,
                             serve: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
                             stop: asyncio.Event, tick_s: float = LEASE_TICK_S,
                             lock: asyncio.Lock | None = None) -> None:
    """Until ``stop``: stand by for the lease, and ``serve(demoted)`` for each term this
    manager wins, with ``store`` fenced by the term's epoch; ``demoted`` is set when the term
    ends. ``lock``: the
    daemons' (a renewal waits for a decision's transaction to commit, which must not be one
    waiting behind it on the event loop)."""
    term: asyncio.Task[None] | None = None
    demoted = asyncio.Event()
    lock = lock or asyncio.Lock()
    try:
        while not stop.is_set():
            async with lock:
                actions = lease.tick()
            for action in actions:
                if isinstance(action, ld.StartLeading):
                    if term is not None:  # the last term's daemon is gone before the next
                        await term
                    store.epoch = action.epoch
                    demoted = asyncio.Event()
                    log.info("leading under epoch %d as %s", action.epoch, lease.state.me)
                    term = asyncio.create_task(serve(demoted), name=f"term-{action.epoch}")
                elif isinstance(action, ld.StopLeading):
                    # store.epoch stays: a write still in flight is checked against the row
                    log.warning("no longer leading: %s", action.reason)
                    demoted.set()
            if term is not None and term.done():
                await term  # a term's error ends the manager
                term = None
                if not demoted.is_set():
                    log.error("the daemon stopped by itself; the manager stops")
                    return
            try:
                await asyncio.wait_for(stop.wait(), tick_s)
            except TimeoutError:
                pass
    finally:
        demoted.set()
        if term is not None:
            await term


def log_ingest(client_id: str, daemon: CloudDaemon) -> None:
    """What one of several managers' sessions ingested, said when it ends (how the share of
    the reports fell among the managers)."""
    samples, statuses = daemon.sample_stats, daemon.status_stats
    log.info("session %s ingested %d sample reports (%d duplicates) and %d node statuses",
             client_id, samples.reports, samples.duplicates, statuses.statuses)


#: builds a daemon: (its store, how it shares the ingest, its MQTT client id or None for the
#: managers' own, the process's transaction lock)
DaemonOf = Callable[[Store, IngestSplit, str | None, asyncio.Lock], CloudDaemon]


async def serve_replica(store_url: str, store: Store, lease_store: Store, client_id: str,
                        daemon_of: DaemonOf, stop: asyncio.Event) -> None:
    """One of several managers until ``stop``: stand by for the lease and lead while holding it
    (on ``store``, the managers' session ``client_id``), and serve an ingest session all along
    (each on a store connection of its own); ``lease_store`` is the lease's own connection."""
    lease = LeaseShell(lease_store, replica_name(), ld.LeaseSettings(), time.time)
    log.info("cloud manager %s: standing by for the leader lease", lease.state.me)
    with lease_store.transaction():
        group = lease_store.share_group()
    lock = asyncio.Lock()  # the daemons of this process: one transaction at a time

    def split(member: bool) -> IngestSplit:
        return IngestSplit(group, member, lease.state.me, lambda: lease.state.leader)

    async def lead(demoted: asyncio.Event) -> None:
        daemon = daemon_of(store, split(False), None, lock)
        listener = asyncio.create_task(listen_journal(store_url, daemon.journal_due))
        try:
            await daemon.run(demoted)
        finally:
            await cancel_and_wait(listener)
            log_ingest(client_id, daemon)

    async def ingest(member_id: str, member_stop: asyncio.Event) -> None:
        member_store = Store(url=store_url)
        try:
            daemon = daemon_of(member_store, split(True), member_id, lock)
            await daemon.run(member_stop)
            log_ingest(member_id, daemon)
        finally:
            member_store.close()

    members = IngestMembers(lease_store, lease.state.me, client_id, ingest, time.time)
    await asyncio.gather(serve_while_leader(lease, store, lead, stop, lock=lock),
                         members.run(lambda: lease.state.leading, stop, lock))
