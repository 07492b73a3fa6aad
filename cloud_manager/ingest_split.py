"""Several cloud managers on one store share the ingest and the API's reads; one decides.

With ``--leader-lease`` every manager connects to the broker, not only the leader:

- **Node reports** (statuses, sample reports, hard examples) are subscribed as MQTT 5 shared
  subscriptions, ``$share/GROUP/edgeloop/v1/node/+/samples``: the broker deals each message to
  one member of the group. The leader's own session (``--client-id``) is a member, and so is
  each manager's *ingest session* (``<client-id>-ingest-<n>``). What an ingest session receives
  is stored as the leader would store it; where the leader would run a job's state machine, the
  event is journaled instead (:mod:`cloud_manager.ingest_journal`), in the same transaction as
  the report's key, and only then is the report acknowledged. The leader listens for the
  journal (PostgreSQL ``LISTEN``/``NOTIFY``: a member's commit wakes it at once, no polling; its
  tick re-reads the journal too, should a notification be missed while the listener
  reconnects), runs the events in order under its fence and deletes them.
- **GROUP is a secret of the managers**: made at random once, kept in the store
  (:meth:`cloud_manager.store.Store.share_group`), never in a file a node can read. Mosquitto
  2.0 checks a subscription against its ACL only when it delivers: a node that joined the
  managers' group with the same filter would be dealt a share of the reports, which the ACL
  then drops. A node that does not know the group name forms a group of its own, which takes
  nothing from the managers'.
- **The API**: the read verbs (:data:`READ_VERBS`) are shared the same way, so any manager
  answers ``get``/``describe``; every other verb is subscribed by the leader alone (not
  shared), so a write reaches the leader, or nobody while there is none (the caller times out
  and asks again). A member that is dealt a write all the same refuses it, naming the leader.
- **Ingest sessions survive their manager.** Mosquitto deals shared messages to a member's
  persistent session whether it is connected or not, and keeps what it dealt there. So each
  ingest session is held through a row in ``ingest_members`` renewed every second; when its
  holder stops renewing, the leader *adopts* it: connects with that client id, which hands it
  every report the dead manager had not acknowledged and those dealt since, and serves it as
  another ingest session. A manager that starts takes a session that nobody renews, or one the
  leader adopted, before it makes a new one, so the number of sessions is the most managers
  that ever ran at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from cloud_manager.database import StoreUnavailable
from cloud_manager.ingest_journal import CHANNEL
from cloud_manager.store import MemberRow, Store
from edgeloop.backoff import Backoff
from edgeloop.cancellation import cancel_and_wait
from protocol import topics
from protocol.messages import ApiRequest, ApiResponse

log = logging.getLogger(__name__)

#: API verbs any manager answers from the store; the rest go to the leader
READ_VERBS = ("get", "describe", "hardex_list", "hardex_export")
#: how long an ingest session's row holds without renewal
MEMBER_TTL_S = 6.0
#: how often the rows are renewed and the leader looks for sessions nobody renews
MEMBER_TICK_S = 1.0
#: a manager that cannot renew its rows stops serving them this long before they expire
GIVE_UP_MARGIN_S = 2.0


@dataclass(frozen=True)
class IngestSplit:
    """How one daemon of several managers subscribes."""

    #: the shared-subscription group (the managers' secret)
    group: str
    #: an ingest session: it takes only the shared reports and reads, and decides nothing
    member: bool
    #: this manager's name in the lease
    me: str
    #: who leads, as last seen
    leader: Callable[[], str | None]

    def filter(self, topic_filter: str) -> str:
        """``topic_filter`` shared with the other managers."""
        return f"$share/{self.group}/{topic_filter}"

    def api_filters(self) -> list[str]:
        reads = [self.filter(topics.api_request(verb)) for verb in READ_VERBS]
        if self.member:
            return reads
        return reads + [topics.api_request(verb) for verb in topics.API_VERBS
                        if verb not in READ_VERBS]

    def refusal(self, request: ApiRequest) -> ApiResponse | None:
        """The answer of an ingest session to a request that is the leader's to take."""
        if not self.member or request.verb in READ_VERBS:
            return None
        leader = self.leader()
        where = f"the leader, {leader}" if leader else "the leader (none right now)"
        return ApiResponse(
            request_id=request.request_id, ok=False, code=503,
            message=f"cloud manager {self.me} does not take decisions: {request.verb} goes to "
                    f"{where}; send it again")


def member_client_id(client_id: str, number: int) -> str:
    return f"{client_id}-ingest-{number}"


def _number(client_id: str, base: str) -> int:
    prefix = member_client_id(base, 0)[:-1]
    tail = client_id[len(prefix):]
    return int(tail) if client_id.startswith(prefix) and tail.isdigit() else 0


Serve = Callable[[str, asyncio.Event], Coroutine[Any, Any, None]]


class IngestMembers:
    """The ingest sessions this manager serves: its own, and while it leads, those nobody
    renews. ``serve(client_id, stop)`` runs one until ``stop`` is set."""

    def __init__(self, store: Store, me: str, client_id: str, serve: Serve,
                 clock: Callable[[], float], ttl_s: float = MEMBER_TTL_S) -> None:
        self.store = store
        self.me = me
        self.client_id = client_id
        self.serve = serve
        self.clock = clock
        self.ttl_s = ttl_s
        self.own: str | None = None
        self._held: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._renewed_at = clock()

    @property
    def held(self) -> list[str]:
        return sorted(self._held)

    def _give_up_when_due(self) -> None:
        """Without the store for nearly a row's life, serve no session: the leader may adopt
        them any moment, and two connections with one client id would take it from each other
        at the broker (safe, since nothing unacknowledged is lost, but a churn)."""
        if self._held and self.clock() - self._renewed_at > self.ttl_s - GIVE_UP_MARGIN_S:
            log.warning("ingest sessions %s given up: their rows were not renewed for %.0f s",
                        ", ".join(self.held), self.clock() - self._renewed_at)
            for client_id in list(self._held):
                self._drop(client_id)
            self.own = None

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event,
                  lock: asyncio.Lock, tick_s: float = MEMBER_TICK_S) -> None:
        """``lock``: the daemons' (see :func:`cloud_manager.replicas.serve_while_leader`)."""
        try:
            while not stop.is_set():
                try:
                    async with lock:
                        self.tick(leading())
                    self._renewed_at = self.clock()
                except StoreUnavailable as exc:
                    log.warning("ingest sessions not renewed: %s", exc)
                    self._give_up_when_due()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick_s)
        finally:
            for client_id in list(self._held):
                await self._stop(client_id)

    def tick(self, leading: bool) -> None:
        """Renew what is held (drop what another manager took), take a session of our own,
        and, leading, adopt those whose holder stopped renewing."""
        now = self.clock()
        expires = now + self.ttl_s
        for client_id, (task, stop) in list(self._held.items()):
            if task.done():  # it failed (logged): serve the session again
                _log_end(task)
                self._held[client_id] = (self._start(client_id, stop), stop)
        for client_id in list(self._held):
            with self.store.transaction():
                renewed = self.store.renew_member(client_id, self.me, expires)
            if not renewed:
                log.warning("ingest session %s is served by another manager now", client_id)
                self._drop(client_id)
        with self.store.transaction():
            rows = self.store.ingest_members()
        if self.own is None or self.own not in self._held:
            self.own = None
            self._take_own(rows, now, expires)
        if leading:
            for row in rows:
                if row.client_id not in self._held and row.expires <= now:
                    self._claim(row, row.client_id, adopted=True, expires=expires)

    def _take_own(self, rows: list[MemberRow], now: float, expires: float) -> None:
        free = [r for r in rows if r.expires <= now and r.client_id not in self._held]
        adopted = [r for r in rows if r.adopted and r.holder != self.me]
        for row in free + adopted:
            if self._claim(row, row.client_id, adopted=False, expires=expires):
                self.own = row.client_id
                return
        number = max((_number(r.client_id, self.client_id) for r in rows), default=0) + 1
        client_id = member_client_id(self.client_id, number)
        if self._claim(None, client_id, adopted=False, expires=expires):
            self.own = client_id

    def _claim(self, seen: MemberRow | None, client_id: str, *, adopted: bool,
               expires: float) -> bool:
        with self.store.transaction():
            won = self.store.claim_member(seen, client_id, self.me, adopted, expires)
        if won:
            log.info("%s ingest session %s", "adopting the" if adopted else "serving the",
                     client_id)
            stop = asyncio.Event()
            self._held[client_id] = (self._start(client_id, stop), stop)
        return won

    def _start(self, client_id: str, stop: asyncio.Event) -> asyncio.Task[None]:
        return asyncio.create_task(self.serve(client_id, stop), name=f"ingest:{client_id}")

    def _drop(self, client_id: str) -> None:
        task, stop = self._held.pop(client_id)
        stop.set()
        task.add_done_callback(_log_end)

    async def _stop(self, client_id: str) -> None:
        task, stop = self._held.pop(client_id)
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except TimeoutError:
            await cancel_and_wait(task)


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("ingest session %s ended with an error", task.get_name(),
                  exc_info=task.exception())


async def listen_journal(url: str, wake: asyncio.Event) -> None:
    """Set ``wake`` whenever an ingest member committed journal rows (PostgreSQL's
    ``LISTEN``), and once on every (re)connection for what was written before. Runs until
    cancelled; reconnects with a backoff when the server goes."""
    import psycopg

    backoff = Backoff(0.5, 10.0)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                backoff.reset()
                wake.set()
                async for _ in conn.notifies():
                    wake.set()
        except psycopg.OperationalError as exc:
            log.warning("the ingest journal's listener lost the database: %s", exc)
        await asyncio.sleep(backoff.next_delay())
