"""Per-node budgets: one node's flood must not starve the others.

Every node message that reaches the cloud manager or an agent passes :meth:`NodeBudgets.admit`
before its handler. Each node (the node level of the topic, which the broker's ACL ties to the
sender's identity) has a token bucket over messages and one over bytes, each refilled at its
budget per ``interval_s`` and holding at most one interval's worth. A message over budget is
turned away: the MQTT layer acknowledges it to the broker and does not hand it to its handler,
so the backlog keeps moving for everyone else. Nothing the sender needs is lost that way: what
it expects to be acknowledged (hard examples, labels' receipts) goes through
:class:`edgeloop.reliable.ReliableSender`, which sends it again when no acknowledgement came;
sample reports and statuses carry the latest totals, superseded by the next; a chunk request
is repeated by the downloader when its chunk does not come.

Pure: the caller passes the clock. Refusals are counted per node and logged once per interval
per node, naming it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import topics
from protocol.errors import ProtocolError

log = logging.getLogger("edgeloop.fairness")


@dataclass(frozen=True)
class Budget:
    """What one node may send per ``interval_s``: ``messages`` messages and ``bytes`` bytes."""

    messages: int = 2000
    bytes: int = 64 * 1024 * 1024
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.messages < 1 or self.bytes < 1 or self.interval_s <= 0:
            raise ValueError(
                f"a node budget needs messages >= 1, bytes >= 1 and interval_s > 0; got "
                f"{self.messages} messages, {self.bytes} bytes per {self.interval_s} s")


@dataclass
class _Bucket:
    messages: float
    bytes: float
    updated: float
    refused: int = 0
    refused_since_log: int = 0
    logged: float = float("-inf")


@dataclass
class NodeBudgets:
    """Token buckets per node; see the module docstring."""

    budget: Budget = field(default_factory=Budget)
    clock: Callable[[], float] = time.monotonic
    #: messages turned away, per node
    refused: Counter[str] = field(default_factory=Counter)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def admit(self, topic: str, size: int) -> bool:
        """True when the node that sent on ``topic`` has budget left for a message of ``size``
        bytes (and spends it); messages on topics of no node always pass."""
        try:
            node = topics.parse(topic).node
        except ProtocolError:
            node = None
        if node is None:
            return True
        return self.admit_node(node, size)

    def admit_node(self, node: str, size: int) -> bool:
        now = self.clock()
        bucket = self._refill(node, now)
        limit = self.budget.bytes
        if bucket.messages >= 1 and bucket.bytes >= (size if size < limit else limit):
            bucket.messages -= 1
            bucket.bytes -= size
            return True
        bucket.refused += 1
        bucket.refused_since_log += 1
        self.refused[node] += 1
        if now - bucket.logged >= self.budget.interval_s:
            log.warning("node %s is over its budget of %d messages and %d bytes per %g s: "
                        "turned away %d message(s) since the last report (%d in all)",
                        node, self.budget.messages, self.budget.bytes, self.budget.interval_s,
                        bucket.refused_since_log, bucket.refused)
            bucket.logged = now
            bucket.refused_since_log = 0
        return False

    def _refill(self, node: str, now: float) -> _Bucket:
        b = self.budget
        bucket = self._buckets.get(node)
        if bucket is None:
            bucket = self._buckets[node] = _Bucket(b.messages, b.bytes, now)
            return bucket
        elapsed = now - bucket.updated
        if elapsed <= 0:  # also a clock that went back: nothing to add
            bucket.updated = now
            return bucket
        # once per message of every node: comparisons, not calls of min()
        share = elapsed / b.interval_s
        messages = bucket.messages + share * b.messages
        bucket.messages = messages if messages < b.messages else b.messages
        size = bucket.bytes + share * b.bytes
        bucket.bytes = size if size < b.bytes else b.bytes
        bucket.updated = now
        return bucket
