"""When the node sends what waits in its outbox, and how much: the upload policy.

The node's ``upload_policy`` setting (a job's ``deploySpec.uploadPolicy`` overrides it field by
field for that job's examples, :class:`protocol.data_policies.UploadPolicy`) says when sending
is allowed (daily windows in a timezone; a connection condition: a file that must exist, a
command that must exit 0) and how much (bytes per second, per calendar day and month in that
timezone). Examples wait in the durable outbox meanwhile, in order.

The decisions are pure functions of a :class:`Ledger` (bytes counted per day and month, the
per-second allowance, the counters the status reports), the policy, the time and the message
(:func:`hold_reason`, :func:`charge`, :func:`evict_order`). :class:`UploadGate` is the thin
shell: it reads the injectable clock, checks the condition (cached), persists the ledger so
that a restart does not reset the day's or the month's budget, and is the gate of the node's
:class:`edgeloop.reliable.ReliableSender`.

The per-second cap is an allowance of at most one second of bytes that a message may take
below zero: a message goes when the allowance is not negative, so a message larger than a
second's budget still goes, and the average stays at the cap. The day and month caps hold a
message that would take the count over the cap; one larger than a whole cap goes alone at the
start of a period (else it would wait forever), so a cap holds to within one message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from edgeloop.durable import write_atomically
from protocol.data_policies import EvictionOrder, UploadPolicy, UploadStatus, window_minutes

log = logging.getLogger(__name__)

LEDGER_NAME = "uploads.json"
#: The ledger is written at most this often (seconds): a crash forgets at most that much.
PERSIST_EVERY_S = 1.0
CONDITION_TIMEOUT_S = 10.0

Clock = Callable[[], float]


# --- state -------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the node sent and evicted, and the budget it used (persisted in uploads.json)."""

    day: str = ""  # the calendar day the day's bytes count in (policy timezone), 2026-12-07
    month: str = ""  # 2026-12
    bytes_day: int = 0
    bytes_month: int = 0
    allowance: float = 0.0  # bytes the per-second cap still allows (negative: a debt)
    allowance_at: float = 0.0  # when the allowance was last brought up to date
    sent: int = 0
    sent_bytes: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    evicted_by_job: dict[str, int] = field(default_factory=dict)
    pruned: int = 0  # held examples deleted by retention

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Message:
    """What the gate knows of one waiting message."""

    key: str
    size: int
    job: str = ""
    score: float | None = None


# --- the decisions ------------------------------------------------------------------------------


def calendar(now: float, timezone: str) -> tuple[str, str, int]:
    """(day, month, minute of the day) of the POSIX time ``now`` in ``timezone``."""
    moment = datetime.fromtimestamp(now, ZoneInfo(timezone))
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m"), moment.hour * 60 + moment.minute


def in_window(policy: UploadPolicy, minute: int) -> bool:
    """Whether the minute of the day lies in one of the windows (none: always); both ends'
    minutes included, a window whose end is earlier than its start crosses midnight."""
    if not policy.windows:
        return True
    for window in policy.windows:
        start, end = window_minutes(window)
        if (start <= minute <= end) if start <= end else (minute >= start or minute <= end):
            return True
    return False


def roll(ledger: Ledger, policy: UploadPolicy, now: float) -> None:
    """Bring the ledger to ``now``: a new day or month starts from zero, the per-second
    allowance grows by the time passed (at most one second's worth)."""
    day, month, _ = calendar(now, policy.timezone)
    if day != ledger.day:
        ledger.day, ledger.bytes_day = day, 0
    if month != ledger.month:
        ledger.month, ledger.bytes_month = month, 0
    rate = policy.bytes_per_second
    if rate is None:
        return
    elapsed = max(0.0, now - ledger.allowance_at) if ledger.allowance_at else 1.0
    ledger.allowance = min(float(rate), ledger.allowance + elapsed * rate)
    ledger.allowance_at = now


def hold_reason(ledger: Ledger, policy: UploadPolicy, now: float, size: int,
                condition_ok: bool = True) -> str | None:
    """Why a message of ``size`` bytes may not go now (``window``, ``condition``, ``rate``,
    ``day cap``, ``month cap``), or None when it may. The ledger must be rolled to ``now``."""
    _, _, minute = calendar(now, policy.timezone)
    if not in_window(policy, minute):
        return "window"
    if not condition_ok:
        return "condition"
    if policy.bytes_per_second is not None and ledger.allowance < 0:
        return "rate"
    for cap, used, name in ((policy.bytes_per_day, ledger.bytes_day, "day cap"),
                            (policy.bytes_per_month, ledger.bytes_month, "month cap")):
        if cap is not None and used + size > cap and used > 0:
            return name
    return None


def charge(ledger: Ledger, policy: UploadPolicy, size: int) -> None:
    """Count a message of ``size`` bytes that went (first sends only: a resend of a message
    whose acknowledgement was lost is not counted again)."""
    ledger.bytes_day += size
    ledger.bytes_month += size
    ledger.sent += 1
    ledger.sent_bytes += size
    if policy.bytes_per_second is not None:
        ledger.allowance -= size


def evict_order(messages: Iterable[Message], order: EvictionOrder) -> list[Message]:
    """The messages in the order the outbox gives them up when over its budget: ``oldest``
    first (as given: the outbox lists oldest first), or ``lowest-score`` first (a message
    without a score counts as the most valuable; ties: oldest first). ``none``: nothing is
    given up (the outbox refuses new messages instead)."""
    listed = list(messages)
    if order == "none":
        return []
    if order == "oldest":
        return listed
    ranked = sorted(enumerate(listed), key=lambda p: (
        p[1].score if p[1].score is not None else 2.0, p[0]))
    return [m for _, m in ranked]


def victims(waiting: Iterable[Message], incoming: Message, room: int,
            order: EvictionOrder) -> list[Message] | None:
    """Which messages to evict so that ``incoming`` fits in ``room`` more bytes. The incoming
    message is a candidate too (a newcomer worth less than everything waiting is the one given
    up). None: nothing may be evicted (``none``) or evicting everything would not make room."""
    if incoming.size <= room:
        return []
    chosen: list[Message] = []
    freed = 0
    for message in evict_order([*waiting, incoming], order):
        if message is incoming:
            return [incoming]  # the others stay: giving them up would not take it in
        chosen.append(message)
        freed += message.size
        if incoming.size <= room + freed:
            return chosen
    return None


# --- the shell ----------------------------------------------------------------------------------


class UploadGate:
    """The node's upload policy with its ledger, clock and connection condition.

    ``begin()`` starts a pass of the sender over the outbox, ``admit()`` says whether a
    message may go now (once a message is held, the rest of the pass under the same policy
    waits too: each job's examples leave in order, and a held policy costs no more reading),
    ``sent()`` counts one that went.
    """

    def __init__(self, policy: UploadPolicy, state_dir: Path, *,
                 meta: Callable[[str], Mapping[str, object]] = lambda key: {},
                 clock: Clock = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self.meta = meta
        self.path = Path(state_dir) / LEDGER_NAME
        self.ledger = self._load()
        self.jobs: dict[str, UploadPolicy] = {}  # job -> its policy (the node's, overridden)
        #: why the last pass held messages back: reason -> messages
        self.held: dict[str, int] = {}
        self._held_jobs: set[str] = set()
        self.blocked = ""
        self._condition: dict[str, tuple[float, bool]] = {}  # command -> (when, exit 0)
        self._persisted_at = 0.0
        self._dirty = False

    # -- policy per job -----------------------------------------------------------------------

    def set_job_policy(self, job: str, override: UploadPolicy | None) -> None:
        """The job's ``uploadPolicy`` (None: the node's applies)."""
        if override is None:
            self.jobs.pop(job, None)
        else:
            self.jobs[job] = self.policy.merged(override)

    def policy_of(self, job: str) -> UploadPolicy:
        return self.jobs.get(job, self.policy)

    # -- the sender's gate --------------------------------------------------------------------

    def begin(self) -> bool:
        """Start a pass; False when no policy lets anything go now (window closed, condition
        false, rate or a cap spent), so the sender need not read the waiting messages."""
        self.held = {}
        self._held_jobs = set()
        self._maybe_persist()
        now = self.clock()
        open_now = False
        for policy in (self.policy, *self.jobs.values()):
            roll(self.ledger, policy, now)
            reason = hold_reason(self.ledger, policy, now, 0, self._condition_ok(policy, now))
            if reason is None:
                open_now = True
            else:
                self.blocked = reason
        if not open_now:
            self._count_held(self.blocked)
        return open_now

    def admit(self, key: str, topic: str, size: int) -> bool:
        job = str(self.meta(key).get("job", ""))
        scope = job if job in self.jobs else ""  # "": the node's policy
        if scope in self._held_jobs:
            self._count_held("order")
            return False
        policy = self.policy_of(job)
        now = self.clock()
        roll(self.ledger, policy, now)
        reason = hold_reason(self.ledger, policy, now, size, self._condition_ok(policy, now))
        if reason is None:
            return True
        self._held_jobs.add(scope)
        self._count_held(reason)
        return False

    def more_may_go(self) -> bool:
        return len(self._held_jobs) < 1 + len(self.jobs)

    @property
    def limited(self) -> bool:
        """Whether any policy may hold a message (else the sender need not be nudged)."""
        return any(p != UploadPolicy() for p in (self.policy, *self.jobs.values()))

    def sent(self, key: str, size: int) -> None:
        policy = self.policy_of(str(self.meta(key).get("job", "")))
        roll(self.ledger, policy, self.clock())
        charge(self.ledger, policy, size)
        self._dirty = True
        self._maybe_persist()

    def evicted(self, message: Message) -> None:
        """Count one message the outbox gave up to stay in its budget (logged: never silent)."""
        ledger = self.ledger
        ledger.evicted += 1
        ledger.evicted_bytes += message.size
        ledger.evicted_by_job[message.job] = ledger.evicted_by_job.get(message.job, 0) + 1
        log.warning("outbox over its budget: evicted %s (job %s, %d bytes, score %s)",
                    message.key, message.job or "-", message.size, message.score)
        self._dirty = True
        self._maybe_persist(force=True)

    def pruned(self, count: int) -> None:
        """Count held examples the node's retention deleted."""
        if count:
            self.ledger.pruned += count
            self._dirty = True
            self._maybe_persist(force=True)

    # -- what the status says -----------------------------------------------------------------

    def status(self, waiting: int, waiting_bytes: int, skipped: Mapping[str, int],
               held_on_node: int = 0) -> UploadStatus:
        policy, ledger = self.policy, self.ledger
        roll(ledger, policy, self.clock())
        return UploadStatus(
            waiting=waiting, waiting_bytes=waiting_bytes, sent=ledger.sent,
            sent_bytes=ledger.sent_bytes, evicted=ledger.evicted,
            evicted_bytes=ledger.evicted_bytes, pruned=ledger.pruned, skipped=dict(skipped), held_on_node=held_on_node,
            bytes_today=ledger.bytes_day, bytes_month=ledger.bytes_month,
            bytes_per_day=policy.bytes_per_day, bytes_per_month=policy.bytes_per_month,
            bytes_per_second=policy.bytes_per_second,
            waiting_for=sorted(self.held),
        )

    def close(self) -> None:
        self._maybe_persist(force=True)

    # -- I/O ----------------------------------------------------------------------------------

    def _count_held(self, reason: str) -> None:
        self.held[reason] = self.held.get(reason, 0) + 1

    def _condition_ok(self, policy: UploadPolicy, now: float) -> bool:
        """The connection condition: the file exists and the command's last answer (see
        :meth:`check_conditions`) was exit 0; a command not run yet counts as false."""
        if policy.condition_file is not None and not os.path.exists(policy.condition_file):
            return False
        if policy.condition_command is None:
            return True
        return self._condition.get(policy.condition_command, (0.0, False))[1]

    async def check_conditions(self) -> None:
        """Run each policy's condition command whose answer is older than its
        ``condition_check_s`` (the agent calls this about once a second)."""
        now = self.clock()
        for policy in (self.policy, *self.jobs.values()):
            command = policy.condition_command
            if command is None:
                continue
            checked = self._condition.get(command)
            if checked is not None and now - checked[0] < policy.condition_check_s:
                continue
            self._condition[command] = (now, await run_condition(command))

    def _load(self) -> Ledger:
        try:
            return Ledger.from_json(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Ledger()
        except (OSError, ValueError, TypeError) as exc:
            log.error("upload ledger %s is unreadable (%s): today's and this month's counts "
                      "start from zero", self.path, exc)
            return Ledger()

    def _maybe_persist(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._dirty or (not force and now - self._persisted_at < PERSIST_EVERY_S):
            return
        try:
            write_atomically(self.path, json.dumps(asdict(self.ledger)).encode())
        except OSError as exc:
            log.error("cannot write the upload ledger %s: %s", self.path, exc)
            return
        self._persisted_at, self._dirty = now, False


async def run_condition(command: str) -> bool:
    """Run the connection hook; True when it exits 0. A hook that fails to start or hangs
    counts as false (logged), never as a crash."""
    try:
        process = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        log.warning("upload condition %r cannot start: %s; not sending", command, exc)
        return False
    try:
        async with asyncio.timeout(CONDITION_TIMEOUT_S):
            return await process.wait() == 0
    except TimeoutError:
        process.kill()
        await process.wait()
        log.warning("upload condition %r took over %s s; not sending", command,
                    CONDITION_TIMEOUT_S)
        return False
