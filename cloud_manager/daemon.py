"""``edgeloop cloud``: the cloud manager process, wiring :class:`Manager` to the broker.

Subscriptions: the API (``api/+``), every node's status, sample reports, task progress and
hard examples (acknowledged to the node once durably in the inbox, or refused with the reason
when :mod:`cloud_manager.hardex_admission` says no), nodes' wants of model files and their chunk
requests (fanned out once through the broker or served per node from the registry, see
:mod:`cloud_manager.distribution`) and pushed chunks of trained models it pulls into the registry.
Each message is handled in one store transaction, except sample reports and node statuses: those
that arrived together (up to :data:`SAMPLE_BATCH`, :data:`STATUS_BATCH`) share one transaction
(group commit, see :meth:`Manager.on_sample_reports` and :meth:`Manager.on_statuses`), which is
what lets a restarted manager work off a queued backlog at the broker's pace. What a transaction
produced is published after its commit; the broker's messages are acknowledged only after their
handler ran, i.e. after the commit (see :mod:`edgeloop.mqtt`), so a crash mid-handler means the
broker redelivers them and the store's processed keys (statuses: their seq) stop them from
counting twice. A batch the store cannot commit is not acknowledged either: the client
reconnects and the broker sends it again. A clock tick drives periodic trigger checks, task
deadlines and retries. A :class:`RetainedSweeper` clears retained messages on topics
the design does not retain.

With several managers on one store (``split``, see :mod:`cloud_manager.ingest_split`), node
statuses, sample reports, hard examples and the API's read verbs are shared subscriptions of the
managers' group; the leader's daemon keeps every other subscription, and an ingest session's
daemon (``split.member``) takes only the shared ones and decides nothing.

Manifests published as plain text (``mosquitto_pub -t edgeloop/v1/api/apply -f job.yaml``) have
no MQTT v5 response topic: their answer goes to ``edgeloop/v1/reply/mqtt-text``
(:data:`TEXT_REPLY_TOPIC`), where ``mosquitto_sub`` can read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cloud_manager.artifact_pull import ArtifactPuller, PullError
from cloud_manager.database import StoreUnavailable
from cloud_manager.distribution import FanoutPolicy, ModelDistribution
from cloud_manager.hardex_admission import HardexAdmission, HardexQuotas
from cloud_manager.labels import LabelForwarder
from cloud_manager.ingest_split import IngestSplit
from cloud_manager.manager import JOURNAL_BATCH, Manager, Pull
from cloud_manager.outgoing import Outgoing
from cloud_manager.registry import RegistryError
from cloud_manager.retained_sweeper import SWEEP_PERIOD_S, RetainedSweeper
from cloud_manager.store import NotLeader
from edgeloop.fairness import Budget, NodeBudgets
from edgeloop.mqtt import Delivery, MqttClient, MqttSettings, NotConnected, Redeliver
from edgeloop.reliable import Acknowledger
from protocol import topics
from protocol.messages import (
    ApiRequest,
    ApiResponse,
    HardExample,
    NodeStatus,
    SampleReport,
    TaskProgress,
)

log = logging.getLogger("edgeloop.cloud")

T = TypeVar("T")

TEXT_REPLY_CLIENT = "mqtt-text"
TEXT_REPLY_TOPIC = topics.api_response(TEXT_REPLY_CLIENT)
TICK_SECONDS = 1.0
#: Most sample reports committed in one transaction. A batch is what was already waiting, never
#: a wait for more: a lone report is handled at once.
SAMPLE_BATCH = 256
#: Most node statuses committed in one transaction, on the same terms.
STATUS_BATCH = 256


@dataclass
class SampleStats:
    """Sample reports handled since start (``edgeloop cloud`` logs failures as they happen)."""

    batches: int = 0
    reports: int = 0
    duplicates: int = 0
    #: reports with a dataset update that failed and was rolled back, or in a batch that
    #: failed for another reason than the store (logged, acknowledged)
    failed: int = 0
    #: reports of batches the store could not commit: left unacknowledged for redelivery
    deferred: int = 0
    largest_batch: int = 0


@dataclass
class StatusStats:
    """Node statuses handled since start."""

    batches: int = 0
    statuses: int = 0
    #: statuses a newer one of the same node replaced within their batch, or older than the
    #: stored one (a late redelivery)
    superseded: int = 0
    #: statuses of nodes whose update failed and was rolled back (logged, acknowledged)
    failed: int = 0
    #: statuses of batches the store could not commit: left unacknowledged for redelivery
    deferred: int = 0


class CloudDaemon:
    def __init__(
        self,
        settings: MqttSettings,
        manager: Manager,
        *,
        tick_s: float = TICK_SECONDS,
        clock: Callable[[], float] = time.time,
        budget: Budget | None = None,
        hardex_quotas: HardexQuotas | None = None,
        sweep_period_s: float = SWEEP_PERIOD_S,
        fanout: FanoutPolicy | None = None,
        split: IngestSplit | None = None,
        lock: asyncio.Lock | None = None,
    ) -> None:
        """``split``: one of several managers on one store (see :mod:`cloud_manager.
        ingest_split`): the node reports and the API's reads are shared among them; a member
        (``split.member``) takes only those, and journals what it ingested for the leader.
        ``lock``: shared by every daemon of the process, whose stores' transactions must not
        overlap (one waiting on the event loop for a row another holds until its commit, which
        needs the event loop, would wait forever)."""
        self.manager = manager
        self.split = split
        #: what each node may send (see edgeloop.fairness); excess is turned away and counted
        self.budgets = NodeBudgets(budget or Budget())
        self.client = MqttClient(settings, admission=self.budgets)
        self.tick_s = tick_s
        self.clock = clock
        self._lock = lock or asyncio.Lock()  # one event at a time: the store has one writer
        ingest = split.filter if split else (lambda topic_filter: topic_filter)
        member = split is not None and split.member
        if split is not None and not member:
            # the session of a manager that ran alone before holds the unshared filters
            for kind in (topics.Kind.STATUS, topics.Kind.SAMPLES, topics.Kind.HARDEX):
                self.client.drop_stale(topics.node_filter(kind))
        for api_filter in split.api_filters() if split else [topics.api_request_filter()]:
            self.client.subscribe(api_filter, self._on_api, control=True)
        self.status_stats = StatusStats()
        self.client.subscribe_batch(ingest(topics.node_filter(topics.Kind.STATUS)),
                                    self._on_statuses, max_batch=STATUS_BATCH)
        self.sample_stats = SampleStats()
        self.client.subscribe_batch(ingest(topics.node_filter(topics.Kind.SAMPLES)),
                                    self._on_samples, max_batch=SAMPLE_BATCH)
        if not member:
            self.client.subscribe(topics.node_filter(topics.Kind.PROGRESS), self._on_progress)
        self.acknowledger = Acknowledger(self.client)
        self.labels: LabelForwarder | None = None
        if not member:
            self.labels = LabelForwarder(self.client, manager, self._lock, TEXT_REPLY_TOPIC,
                                         clock=clock)
        self.admission: HardexAdmission | None = None
        if manager.inbox is not None:
            self.admission = HardexAdmission(manager.inbox, hardex_quotas or HardexQuotas(),
                                             manager.target_nodes, manager.max_source_share)
            self.client.subscribe(ingest(topics.node_filter(topics.Kind.HARDEX)), self._on_hardex)
        self.puller: ArtifactPuller | None = None
        self.distribution: ModelDistribution | None = None
        self._pull_tasks: set[asyncio.Task[None]] = set()
        if manager.registry is not None and not member:
            self.puller = ArtifactPuller(self.client, manager.registry)
            self.distribution = ModelDistribution(self.client, manager.registry,
                                                  fanout or FanoutPolicy())
        self.client.on_connect(self._on_member_connect if member else self._on_connect)
        self.sweeper = RetainedSweeper(settings, period_s=sweep_period_s)
        #: set when an ingest member journaled events (the leader's journal listener)
        self.journal_due = asyncio.Event()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or forever)."""
        stop = stop or asyncio.Event()
        if self.labels is None:  # an ingest member: no decisions, no ticks, no sweeps
            async with self.client:
                await stop.wait()
            return
        async with self.client, self.labels:
            ticker = asyncio.create_task(self._tick_loop(stop), name="cloud-tick")
            sweeper = asyncio.create_task(self.sweeper.run(stop), name="cloud-sweeper")
            workers = [ticker, sweeper]
            if self.split is not None:
                workers.append(asyncio.create_task(self._journal_loop(stop), name="cloud-journal"))
            try:
                await stop.wait()
            finally:
                for worker in workers:
                    worker.cancel()
                for task in self._pull_tasks:
                    task.cancel()
                if self.distribution is not None:
                    await self.distribution.close()
                await asyncio.gather(*workers, *self._pull_tasks, return_exceptions=True)

    async def publish(self, messages: list[Outgoing]) -> None:
        for out in messages:
            try:
                if out.message is None:
                    await self.client.publish_bytes(out.topic, b"", retain=out.retain)
                else:
                    await self.client.publish(out.topic, out.message, retain=out.retain)
            except NotConnected:
                # Everything is in the store; the resync after reconnecting sends it again.
                log.info("not connected: %s will be re-sent on reconnect", out.topic)
                return

    async def _run(self, what: str, work: Callable[[], list[Outgoing]],
                   message: bool = False) -> None:
        """``message``: the work handles a broker message, which a store that is not ours to
        write any more (:class:`NotLeader`) leaves unacknowledged, for the leader."""
        async with self._lock:
            try:
                messages = work()
            except NotLeader as exc:
                log.warning("%s not handled: %s", what, exc)
                if message:
                    raise Redeliver(str(exc)) from exc
                return
            except Exception:
                log.exception("handling %s failed; state unchanged", what)
                return
        await self.publish(messages)
        self._start_pulls()

    def _start_pulls(self) -> None:
        for pull in self.manager.take_pulls():
            if self.puller is None:
                continue
            task = asyncio.create_task(self._pull(pull), name=f"pull:{pull.name}:{pull.version}")
            self._pull_tasks.add(task)
            task.add_done_callback(self._pull_tasks.discard)

    async def _pull(self, pull: Pull) -> None:
        assert self.puller is not None
        ok, reason = True, ""
        try:
            for artifact in pull.artifacts:
                await self.puller.pull(pull.node, artifact.name, artifact.sha256, artifact.size)
        except (PullError, RegistryError, OSError) as exc:
            ok, reason = False, str(exc)
            log.warning("%s/%s version %d: %s", pull.namespace, pull.name, pull.version, reason)
        await self._run(f"pull of {pull.name} version {pull.version}",
                        lambda: self.manager.on_collected(pull, ok, reason, self.clock()))

    # -- handlers --

    async def _on_connect(self) -> None:
        await self._run("resync", lambda: self.manager.resync(self.clock()))
        log.info("cloud manager connected to %s and in sync", self.client.settings.url)

    async def _on_member_connect(self) -> None:
        log.info("ingest session %s connected to %s", self.client.settings.client_id,
                 self.client.settings.url)

    async def _on_api(self, delivery: Delivery) -> None:
        request = delivery.message
        if not isinstance(request, ApiRequest):
            return
        if self.labels is not None and request.verb == "label_import":
            self.labels.accept(delivery)  # answers once the dataset's node has confirmed
            return
        async with self._lock:
            try:
                refusal = self.split.refusal(request) if self.split else None
                messages: list[Outgoing] = []
                if refusal is not None:
                    response = refusal
                else:
                    response, messages = self.manager.on_api(request, self.clock())
            except Exception as exc:
                log.exception("API %s failed", request.verb)
                response, messages = ApiResponse(
                    request_id=request.request_id, ok=False, code=500,
                    message=f"internal error: {type(exc).__name__}: {exc}"), []
        log.info("api %s %s %s/%s: %s %s", request.verb, request.resource, request.namespace,
                 request.name, response.code, response.message)
        try:
            if delivery.response_topic:
                await self.client.reply(delivery, response)
            else:
                await self.client.publish(TEXT_REPLY_TOPIC, response)
        except NotConnected:
            log.info("API answer to %s lost: not connected", request.request_id)
        await self.publish(messages)
        self._start_pulls()

    async def _on_statuses(self, deliveries: list[Delivery]) -> None:
        statuses = [d.message for d in deliveries if isinstance(d.message, NodeStatus)]
        if not statuses:
            return
        stats = self.status_stats
        stats.batches += 1
        async with self._lock:
            try:
                ingest = await self._commit_off_loop(
                    lambda: self.manager.on_statuses(statuses, self.clock()))
            except (sqlite3.Error, StoreUnavailable, NotLeader, OSError) as exc:
                # Nothing committed, so nothing is acknowledged: the broker sends them again.
                stats.deferred += len(statuses)
                raise Redeliver(f"a batch of {len(statuses)} node statuses was not committed "
                                f"({type(exc).__name__}: {exc})") from exc
            except Exception:
                stats.failed += len(statuses)
                log.exception("a batch of %d node statuses failed; state unchanged", len(statuses))
                return
        stats.statuses += len(statuses)
        stats.superseded += ingest.superseded
        stats.failed += ingest.failed
        await self.publish(ingest.messages)
        self._start_pulls()

    async def _on_samples(self, deliveries: list[Delivery]) -> None:
        reports = [d.message for d in deliveries if isinstance(d.message, SampleReport)]
        if not reports:
            return
        stats = self.sample_stats
        stats.batches += 1
        stats.largest_batch = max(stats.largest_batch, len(reports))
        async with self._lock:
            try:
                ingest = await self._commit_off_loop(
                    lambda: self.manager.on_sample_reports(reports, self.clock()))
            except (sqlite3.Error, StoreUnavailable, NotLeader, OSError) as exc:
                # Nothing committed, so nothing is acknowledged: the broker sends them again.
                stats.deferred += len(reports)
                raise Redeliver(f"a batch of {len(reports)} sample reports was not committed "
                                f"({type(exc).__name__}: {exc})") from exc
            except Exception:
                stats.failed += len(reports)
                log.exception("a batch of %d sample reports failed; state unchanged", len(reports))
                return
        stats.reports += ingest.reports
        stats.duplicates += ingest.duplicates
        stats.failed += ingest.failed
        await self.publish(ingest.messages)
        self._start_pulls()

    async def _commit_off_loop(self, work: Callable[[], T]) -> T:
        """Run a batch's ``work`` (the caller holds the lock) and commit its transaction in a
        worker thread: the event loop meanwhile reads the next messages off the socket, so the
        commit's fsync overlaps them instead of stalling the reader; the batch is acknowledged
        once the commit returned. Waits for the commit even when cancelled, so that nothing
        else uses the store while it runs."""
        store = self.manager.store
        try:
            with store.committing_later():
                return work()
        finally:
            if store.commit_due:
                commit = asyncio.ensure_future(asyncio.to_thread(store.commit_pending))
                try:
                    await asyncio.shield(commit)
                except asyncio.CancelledError:
                    while not commit.done():  # a second cancel must not leave it running
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.wait([commit])
                    if not commit.cancelled():
                        commit.exception()  # retrieved; unacknowledged, the batch comes again
                    raise

    async def _on_progress(self, delivery: Delivery) -> None:
        if isinstance(delivery.message, TaskProgress):
            progress = delivery.message
            await self._run(f"progress of {progress.task_id}",
                            lambda: self.manager.on_progress(progress, self.clock()), message=True)

    async def _on_hardex(self, delivery: Delivery) -> None:
        example = delivery.message
        inbox = self.manager.inbox
        if not isinstance(example, HardExample) or inbox is None or self.admission is None:
            return
        refusal = self.admission.check(example)
        if refusal is not None:
            self.acknowledger.refuse(example.node, example.key, refusal)
            return
        try:
            stored = await asyncio.to_thread(inbox.store, example)
        except OSError as exc:
            # Not acknowledged: the node keeps it and sends it again later.
            log.error("hard example %s from %s not stored: %s", example.sha256[:12], example.node, exc)
            return
        self.admission.stored(example, stored)
        if stored.new:
            log.debug("hard example %s from %s stored", example.sha256[:12], example.node)
        self.acknowledger.ack(example.node, example.key)

    async def _journal_loop(self, stop: asyncio.Event) -> None:
        """The leader of several managers: run what the ingest members journaled as soon as
        one says it wrote some (:attr:`journal_due`), and at every tick in case a signal was
        missed (the listener reconnecting)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.journal_due.wait(), self.tick_s)
            self.journal_due.clear()
            taken = JOURNAL_BATCH
            while taken == JOURNAL_BATCH:
                taken = await self._run_journal()

    async def _run_journal(self) -> int:
        async with self._lock:
            try:
                messages, taken = self.manager.apply_journal(self.clock(), JOURNAL_BATCH)
            except (NotLeader, StoreUnavailable, sqlite3.Error) as exc:
                log.warning("the ingest journal not run: %s", exc)
                return 0
        await self.publish(messages)
        self._start_pulls()
        return taken

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.tick_s)
            await self._run("tick", lambda: self.manager.tick(self.clock()))
