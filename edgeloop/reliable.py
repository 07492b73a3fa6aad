"""Reliable delivery on top of MQTT for data that must not be lost.

The broker is not a database: a QoS 1 message it accepted can still be lost if the broker dies
before its next autosave. So the *sender* keeps each message until the *receiver* acknowledges it
at the application level, after making it durable, and resends it after a reconnect or when no
acknowledgement came in time. Receivers see duplicates and drop them by the message's idempotency
key (:class:`Deduper`, or a unique key in their store).

A receiver may also *refuse* a message (:class:`protocol.messages.Refusal`): temporarily (no room
now) and the sender holds it for ``retry_refused_after`` seconds before sending it again, or for
good, and the sender hands it to its ``on_refused`` hook (the agent's outbox sets it aside with
the reason) instead of sending it again. Either way it is counted and logged, never dropped
silently.

A :class:`SendGate` (the edge agent's upload policy) may hold messages back: it is asked before
each message's first send, and the messages it holds stay in the store, in order, until it lets
them go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from edgeloop.cancellation import cancel_and_wait
from edgeloop.mqtt import Delivery, MqttClient, NotConnected
from protocol import topics
from protocol.codec import encode
from protocol.messages import Ack, Message, Refusal

log = logging.getLogger("edgeloop.reliable")


class OutboxStore(Protocol):
    """Where a sender keeps messages until they are acknowledged. A durable implementation
    (the edge agent's on-disk outbox) makes them survive a restart too. ``meta`` is what the
    caller said about the message (for a gate, for an eviction order)."""

    def put(self, key: str, topic: str, payload: bytes,
            meta: Mapping[str, object] | None = None) -> None: ...

    def remove(self, key: str) -> bool: ...

    def items(self) -> Iterator[tuple[str, str, bytes]]: ...

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...


class SendGate(Protocol):
    """Says when stored messages may go (an upload policy: windows, bandwidth caps)."""

    def begin(self) -> bool:
        """A pass over the store, oldest message first, starts; False when no message may go
        now at all (the pass only resends what is in flight)."""

    def admit(self, key: str, topic: str, size: int) -> bool:
        """Whether the message may be sent for the first time now."""

    def more_may_go(self) -> bool:
        """After a refusal: whether a later message of this pass may still be admitted (False
        ends the pass without reading the rest of the store)."""

    def sent(self, key: str, size: int) -> None:
        """The message went (its first send was confirmed by the broker)."""


class MemoryOutbox:
    """Keeps messages in memory, in the order they were sent."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    def put(self, key: str, topic: str, payload: bytes,
            meta: Mapping[str, object] | None = None) -> None:
        self._items[key] = (topic, payload)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def remove(self, key: str) -> bool:
        return self._items.pop(key, None) is not None

    def items(self) -> Iterator[tuple[str, str, bytes]]:
        for key, (topic, payload) in list(self._items.items()):
            yield key, topic, payload

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class SenderStats:
    sent: int = 0
    resent: int = 0
    acked: int = 0
    #: refusals for now (held, sent again later) and for good (handed to ``on_refused``)
    refused_temporary: int = 0
    refused_permanent: int = 0


#: What a sender does with a message refused for good: take it out of the store and set it
#: aside; True when it did, False when the store no longer held it.
RefusedHook = Callable[[str, Refusal], bool]


class ReliableSender:
    """Sends messages that stay in ``store`` until their key comes back in an :class:`Ack` on
    ``ack_topic``.

    At most ``window`` messages are unacknowledged on the wire at a time, so a long backlog
    after an outage drains at the receiver's pace instead of flooding the broker. A message
    without an acknowledgement after ``resend_after`` seconds, or in flight when the connection
    dropped, is sent again under the same key.
    """

    def __init__(
        self,
        client: MqttClient,
        ack_topic: str,
        store: OutboxStore | None = None,
        *,
        window: int = 32,
        resend_after: float = 5.0,
        retry_refused_after: float = 60.0,
        on_refused: RefusedHook | None = None,
        gate: SendGate | None = None,
    ) -> None:
        self.client = client
        self.ack_topic = ack_topic
        self.store: OutboxStore = store if store is not None else MemoryOutbox()
        self.window = window
        self.resend_after = resend_after
        self.retry_refused_after = retry_refused_after
        self.on_refused = on_refused
        self.gate = gate
        self.stats = SenderStats()
        self._in_flight: dict[str, float] = {}  # key -> time last sent
        self._held: dict[str, float] = {}  # key -> when a temporary refusal lets it go again
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        client.subscribe(ack_topic, self._on_ack)
        client.on_connect(self._on_reconnect)

    async def __aenter__(self) -> ReliableSender:
        self._task = asyncio.create_task(self._pump(), name=f"reliable:{self.ack_topic}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged (stored, in flight or waiting for the window)."""
        return len(self.store)

    async def send(self, topic: str, message: Message,
                   meta: Mapping[str, object] | None = None) -> str:
        """Keep ``message`` until acknowledged and send it as soon as the window allows.

        Returns its key. Raises ``PayloadTooLarge`` before storing an oversize message.
        """
        payload = encode(message, self.client.settings.max_payload)
        self.store.put(message.key, topic, payload, meta)
        self._drained.clear()
        self._wake.set()
        return message.key

    @property
    def in_flight(self) -> frozenset[str]:
        """Keys sent and not acknowledged yet (an outbox must not give these up: the cloud
        may hold them already)."""
        return frozenset(self._in_flight)

    def nudge(self) -> None:
        """Look at the store again now (a gate may let messages go: a window opened)."""
        self._wake.set()

    async def wait_drained(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far has been acknowledged."""
        if not len(self.store):
            return
        async with asyncio.timeout(timeout):
            await self._drained.wait()

    async def _on_ack(self, delivery: Delivery) -> None:
        if not isinstance(delivery.message, Ack):
            return
        for key in delivery.message.keys:
            self._in_flight.pop(key, None)
            self._held.pop(key, None)
            if self.store.remove(key):
                self.stats.acked += 1
        for key, refusal in delivery.message.refused.items():
            self._refused(key, refusal)
        if not len(self.store):
            self._drained.set()
        self._wake.set()

    def _refused(self, key: str, refusal: Refusal) -> None:
        self._in_flight.pop(key, None)
        if refusal.temporary:
            if key in self._held:
                return  # a repeat of a refusal already holding it
            self.stats.refused_temporary += 1
            self._held[key] = time.monotonic() + self.retry_refused_after
            log.warning("%s refused for now, sent again in %.0f s: %s", key,
                        self.retry_refused_after, refusal.reason)
            return
        self._held.pop(key, None)
        if self.on_refused is not None:
            set_aside = self.on_refused(key, refusal)
        else:
            set_aside = self.store.remove(key)
        if set_aside:  # False: a repeat, the message was set aside already
            self.stats.refused_permanent += 1
            log.error("%s refused: %s", key, refusal.reason)

    async def _on_reconnect(self) -> None:
        # What was in flight may have died with the connection: send it again.
        self._in_flight.clear()
        self._wake.set()

    async def _pump(self) -> None:
        while True:
            try:
                await self._send_due()
            except NotConnected:
                pass
            except Exception:
                log.exception("reliable sender on %s", self.ack_topic)
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the event being set, and the sender would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.resend_after / 2):
                    await self._wake.wait()

    async def _send_due(self) -> None:
        if not self.client.connected:
            return
        for gone in [k for k in self._in_flight if k not in self.store]:
            del self._in_flight[gone]  # evicted while in flight: no acknowledgement will come
        if self.gate is not None and not self.gate.begin() and not self._in_flight:
            return  # nothing may go: no need to read the stored messages
        now = time.monotonic()
        for key, topic, payload in self.store.items():
            if self._held.get(key, now) > now:
                continue  # refused for now: its time has not come
            self._held.pop(key, None)
            sent_at = self._in_flight.get(key)
            if sent_at is not None and now - sent_at < self.resend_after:
                continue
            if sent_at is None and len(self._in_flight) >= self.window:
                break
            if sent_at is None and self.gate is not None and not self.gate.admit(
                key, topic, len(payload)
            ):
                if not self.gate.more_may_go():
                    break  # everything after it is held too
                continue  # held back by the gate; it keeps each job's order
            # A short publish timeout: a send caught by an outage must not hold the queue for
            # long; it is resent under the same key anyway.
            if not await self.client.publish_bytes(
                topic, payload, timeout=min(self.resend_after, 10.0)
            ):
                return  # not confirmed; the next round tries again under the same key
            if sent_at is None:
                self.stats.sent += 1
                if self.gate is not None:
                    self.gate.sent(key, len(payload))
            else:
                self.stats.resent += 1
            self._in_flight[key] = time.monotonic()


class Deduper:
    """Remembers the last ``capacity`` keys seen; ``seen(key)`` is True for a repeat."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0

    def seen(self, key: str) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            self.duplicates += 1
            return True
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return False


class Acknowledger:
    """Receiver side: acknowledges keys to a node, batched over a few milliseconds so that a burst
    of messages costs a few acknowledgements, not one each."""

    def __init__(self, client: MqttClient, linger: float = 0.02, max_batch: int = 500) -> None:
        self.client = client
        self.linger = linger
        self.max_batch = max_batch
        self._pending: dict[str, list[str]] = {}
        self._refusals: dict[str, dict[str, Refusal]] = {}
        self._flush_task: asyncio.Task[None] | None = None

    def ack(self, node: str, key: str) -> None:
        """Acknowledge ``key`` to ``node``. Call only once the message is durable."""
        self._pending.setdefault(node, []).append(key)
        self._flush_soon()

    def refuse(self, node: str, key: str, refusal: Refusal) -> None:
        """Tell ``node`` that the message under ``key`` is not kept, and why."""
        self._refusals.setdefault(node, {})[key] = refusal
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.linger)
        # What arrives while a flush publishes finds this task still running and starts none:
        # it goes out in the next round here.
        while self._pending or self._refusals:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        refusals, self._refusals = self._refusals, {}
        for node, keys in pending.items():
            for start in range(0, len(keys), self.max_batch):
                await self._send(Ack(node=node, keys=keys[start : start + self.max_batch]))
        for node, refused in refusals.items():
            items = list(refused.items())
            for start in range(0, len(items), self.max_batch):
                await self._send(Ack(node=node, refused=dict(items[start : start + self.max_batch])))

    async def _send(self, ack: Ack) -> None:
        try:
            await self.client.publish(topics.ack(ack.node), ack)
        except NotConnected:
            # The sender will resend; the repeat is acknowledged (or refused) then.
            log.debug("ack for %d keys to %s not sent: not connected",
                      len(ack.keys) + len(ack.refused), ack.node)
