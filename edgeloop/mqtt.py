"""The MQTT client layer shared by the cloud manager, the edge agents and the CLI.

One :class:`MqttClient` keeps one identity on the broker for the life of a daemon: it reconnects
with exponential backoff and jitter, re-subscribes, publishes and delivers typed protocol
messages, and offers MQTT v5 request/response. It is paho's client driven by the event loop
(:mod:`edgeloop.mqtt_link`) and avoids these traps:

* **A reader that stalls the connection.** Incoming messages wait for their handlers in a
  bounded queue (:mod:`edgeloop.flow_control`). When it is full the client stops reading the
  socket: TCP then holds the broker back and the backlog stays in its per-client queue
  (``max_queued_messages``) instead of our memory. (The v5 ``receive_maximum`` we announce
  would do that job, but mosquitto 2.0.11 lets each acknowledgement release a whole window more,
  so it does not bound anything.) A paused reader also holds back every packet behind those
  messages: SUBACKs and the PUBACKs of our own publishes. So an identity uses **two
  connections**: the *data* connection (client id ``<id>``, persistent session, the will,
  node traffic) whose reader may pause, and the *control* connection (``<id>/ctl``, clean
  session) that carries every publish and the request/response traffic and never stops reading.
  A handler therefore never waits on a packet that its own paused reader holds back; the
  subscriptions of a reconnection are confirmed while the backlog ahead of their SUBACKs is
  handled, not before. The control connection bounds its queue by refusing requests over
  ``control_high_water`` (counted, logged): their senders time out.
* **Acknowledged but lost.** Messages are acknowledged *manually, after their handler ran*, so
  one whose handler did not finish before a disconnect is redelivered. A batch subscription
  (:meth:`MqttClient.subscribe_batch`) hands its handler the messages that were already waiting
  together, and acknowledges them after it: one store transaction for the lot, none acknowledged
  before it committed. A handler whose commit failed raises :class:`Redeliver` to get its
  messages again instead of having them acknowledged.
* **Publish timeouts that duplicate.** A publish that times out is still queued inside paho and
  may go out later; retrying it would send it twice. :meth:`MqttClient.publish` never retries.
  Data that must arrive goes through :class:`edgeloop.reliable.ReliableSender`, which resends
  under the same idempotency key until the receiver acknowledges it and lets receivers dedupe.
* **One node drowning the others.** An optional admission check (:mod:`edgeloop.fairness`) sees
  each node message before its handler and may turn it away; it is then acknowledged to the
  broker but not handled, and counted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.backoff import Backoff
from edgeloop.cancellation import cancel_and_wait
from edgeloop.flow_control import InflowQueue, Overflow
from edgeloop.mqtt_link import Link, LinkLost
from protocol import topics
from protocol.codec import DEFAULT_MAX_PAYLOAD, decode, encode
from protocol.errors import ProtocolError
from protocol.messages import ApiRequest, ApiResponse, Message

log = logging.getLogger("edgeloop.mqtt")

#: topics whose matching subscriptions a client remembers before it starts over
MATCHES_KEPT = 1 << 16


class NotConnected(ConnectionError):
    """The client has no broker connection right now."""


class RequestTimeout(TimeoutError):
    """No response arrived for an API request in time."""


class Redeliver(Exception):
    """Raised by a handler that cannot take its messages now (its store failed to commit):
    they are not acknowledged, the client reconnects after a backoff and the broker sends them
    again. Needs a persistent session (``session_expiry`` > 0); the handler must dedupe."""


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker and who we are there.

    ``url`` is ``mqtt://host:port`` or ``mqtts://host:port`` (TLS). For production, give the CA
    and this identity's certificate and key (certificate identity), or username and password
    over TLS.
    """

    url: str
    client_id: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 15
    #: A persistent session: messages for us that arrive while we are away are kept by the
    #: broker for this long (seconds). 0 for throwaway clients such as the CLI.
    session_expiry: int = 3600
    #: How many QoS 1 messages the broker may have in flight to us (announced; see the module
    #: docstring for why the bound is ``incoming_high_water``).
    receive_maximum: int = 100
    #: Stop reading the data connection when this many messages wait for their handlers.
    incoming_high_water: int = 100
    #: Refuse requests on the control connection while this many wait for their handler.
    control_high_water: int = 1000
    max_payload: int = DEFAULT_MAX_PAYLOAD
    connect_timeout: float = 10.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file and self.key_file:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


@dataclass(frozen=True)
class Delivery:
    """An incoming message with what the transport knew about it: for a request, where to
    answer (the v5 response topic and correlation data)."""

    topic: str
    message: Message
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(slots=True)
class _Arrival:
    """What the client keeps of an incoming PUBLISH until its handler ran: plain values, not
    paho's message. That one holds a v5 property object of some sixty containers and a
    condition variable; with a backlog's hundreds of them alive at once, the garbage collector
    ran every few messages and, as they aged, traversed the whole heap (a fifth of a drain)."""

    #: the topic, or its bytes when they are not UTF-8 (dropped with a protocol error)
    topic: str | bytes
    payload: bytes | bytearray
    mid: int
    qos: int
    retain: bool
    response_topic: str | None
    correlation_data: bytes | None

    @classmethod
    def of(cls, raw: paho.MQTTMessage) -> _Arrival:
        try:
            topic: str | bytes = raw.topic
        except UnicodeDecodeError as exc:
            topic = exc.object
        properties = raw.properties
        return cls(topic, raw.payload, raw.mid, raw.qos, bool(raw.retain),
                   getattr(properties, "ResponseTopic", None),
                   getattr(properties, "CorrelationData", None))

    @property
    def topic_text(self) -> str:
        return self.topic if isinstance(self.topic, str) else repr(self.topic)


Handler = Callable[[Delivery], Awaitable[None]]
BatchHandler = Callable[[list[Delivery]], Awaitable[None]]
ConnectHook = Callable[[], Awaitable[None]]


@dataclass
class ClientStats:
    connects: int = 0
    disconnects: int = 0
    received: int = 0
    protocol_errors: int = 0
    handler_errors: int = 0
    #: reconnections asked for by a handler (:class:`Redeliver`)
    redeliveries: int = 0
    published: int = 0
    publish_failures: int = 0
    refused_oversize: int = 0
    pending_publishes: int = 0
    #: requests refused because the control connection's queue was full
    refused_overload: int = 0
    #: node messages turned away by the admission check (see :mod:`edgeloop.fairness`)
    refused_budget: int = 0
    #: the most messages ever held at once: waiting in the incoming queue plus those taken for
    #: handling (one, or a batch); bounded by ``incoming_high_water`` (``control_high_water`` on
    #: the control connection) plus the largest batch
    queue_high_water: int = 0
    last_error: str = ""


@dataclass
class _Subscription:
    topic_filter: str
    handler: Handler | None
    qos: int = 1
    batch_handler: BatchHandler | None = None
    max_batch: int = 1
    #: delivered on the control connection (see the module docstring)
    control: bool = False

    def __post_init__(self) -> None:
        levels = self.topic_filter.split("/")
        if levels[0] == "$share" and len(levels) > 2:
            # ``$share/GROUP/FILTER``: messages arrive on their own topics, matched by FILTER
            levels = levels[2:]
        self._levels = levels

    def matches(self, levels: list[str]) -> bool:
        """MQTT filter matching of a topic split at ``/`` (``+`` one level, ``#`` the rest),
        without building objects per message as aiomqtt's ``Topic.matches`` does."""
        last = self._levels[-1]
        if last != "#" and (len(levels) != len(self._levels) or last not in ("+", levels[-1])):
            return False  # the usual miss, found at once: another kind of message
        for i, wanted in enumerate(self._levels):
            if wanted == "#":
                return True
            if i >= len(levels) or (wanted != "+" and wanted != levels[i]):
                return False
        return len(levels) == len(self._levels)


@dataclass(frozen=True)
class _Targets:
    """The subscriptions a topic goes to and what delivering to them takes, worked out once
    per topic rather than once per message."""

    subs: tuple[_Subscription, ...] = ()
    #: some of them take batches, of at most ``limit`` messages
    batched: bool = False
    limit: int = 1
    #: delivered on the control connection: admission does not apply
    control: bool = False

    @classmethod
    def of(cls, subs: list[_Subscription]) -> _Targets:
        limits = [sub.max_batch for sub in subs if sub.batch_handler]
        return cls(tuple(subs), bool(limits), min(limits, default=1),
                   any(sub.control for sub in subs))


_NOWHERE = _Targets()

#: one incoming message on its way: what arrived, what it decoded to (None: it did not), and
#: where it goes
_Item = tuple[_Arrival, Delivery | None, _Targets]


@dataclass
class _Will:
    topic: str
    message: Message
    retain: bool = True


class Admission(Protocol):
    """Decides, before its handler, whether a node's message is handled now (see
    :mod:`edgeloop.fairness`). A message turned away is acknowledged and not handled."""

    def admit(self, topic: str, size: int) -> bool: ...


@dataclass
class _Lane:
    """One connection's incoming side: its link, the queue its reader fills and who waits on it."""

    link: Link
    queue: InflowQueue[_Arrival]
    control: bool
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class MqttClient:
    """A long-lived, self-healing MQTT v5 identity speaking edgeloop's protocol.

    Use it as an async context manager; ``subscribe`` and ``on_connect`` may be called before or
    after entering, and take effect on every (re)connection.
    """

    def __init__(self, settings: MqttSettings, *, will: tuple[str, Message] | None = None,
                 admission: Admission | None = None):
        self.settings = settings
        self.stats = ClientStats()
        self._subscriptions: list[_Subscription] = []
        self._matches: dict[str, list[_Subscription]] = {}
        self._routes: dict[str, _Targets] = {}
        self._connect_hooks: list[ConnectHook] = []
        self._stale: list[str] = []
        self._will = _Will(*will) if will else None
        self._admission = admission
        self._data: _Lane | None = None
        self._control: _Lane | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._pending_requests: dict[bytes, asyncio.Future[ApiResponse]] = {}
        self._reply_topic = topics.api_response(settings.client_id)
        self._reply_subscription = _Subscription(self._reply_topic, self._on_reply, control=True)
        self._reply_targets = _Targets.of([self._reply_subscription])
        # Only clients that make requests subscribe to their reply topic: a node's ACL has none.
        self._wants_replies = False
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        # Grows while handlers keep asking for redelivery; a connection's success does not reset
        # it, a window handled without such a request does.
        self._redelivery_backoff = Backoff(settings.backoff_initial, settings.backoff_max)

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> MqttClient:
        self._closing = False
        self._runner = asyncio.create_task(self._run(), name=f"mqtt:{self.settings.client_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect cleanly (the broker then does not publish our will)."""
        self._closing = True
        for lane in (self._data, self._control):
            if lane is not None:
                await lane.link.close()
        await cancel_and_wait(self._runner)
        self._runner = None
        self._connected.clear()
        for future in self._pending_requests.values():
            future.cancel()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for a connection; raise :class:`NotConnected` when none comes in time."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise NotConnected(
                f"no connection to the broker at {self.settings.url} after {timeout} s"
                + (f" ({self.stats.last_error})" if self.stats.last_error else "")
            ) from None

    def subscribe(self, topic_filter: str, handler: Handler, *, control: bool = False) -> None:
        """Deliver every valid message on ``topic_filter`` to ``handler``, now and after every
        reconnect. Messages that fail to decode are counted and logged, never delivered.

        ``control``: deliver on the control connection (clean session, never behind a node
        backlog, refused over ``control_high_water``), for requests whose sender waits for
        the answer and asks again when none comes."""
        self._add_subscription(_Subscription(topic_filter, handler, control=control))

    def subscribe_batch(self, topic_filter: str, handler: BatchHandler, *,
                        max_batch: int = 256) -> None:
        """Like :meth:`subscribe`, but ``handler`` gets the messages that arrived together: up
        to ``max_batch`` consecutive ones on ``topic_filter`` that were already waiting, in
        arrival order. It never waits for more (a lone message is a batch of one, handled at
        once). Every message of the batch is acknowledged only after ``handler`` returned, so a
        handler that commits the batch in one transaction loses nothing if the process dies
        before the commit: the broker redelivers the lot."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._add_subscription(_Subscription(topic_filter, None, batch_handler=handler,
                                             max_batch=max_batch))

    def _add_subscription(self, subscription: _Subscription) -> None:
        self._subscriptions.append(subscription)
        self._matches.clear()
        self._routes.clear()
        lane = self._control if subscription.control else self._data
        if lane is not None and self.connected:
            asyncio.ensure_future(self._subscribe_one(lane, subscription))

    def drop_stale(self, topic_filter: str) -> None:
        """On every connection, first unsubscribe the persistent session from ``topic_filter``:
        a subscription an earlier run of this identity made and this one must not keep (a
        cloud manager that moved its node filters into a shared group)."""
        self._stale.append(topic_filter)

    def on_connect(self, hook: ConnectHook) -> None:
        """Run ``hook`` after every (re)connection and re-subscription: birth messages, state
        re-sync."""
        self._connect_hooks.append(hook)

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        message: Message,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 10.0,
    ) -> bool:
        """Publish once at QoS 1. Returns True when the broker acknowledged it.

        Raises :class:`protocol.codec.PayloadTooLarge` before anything is sent when the message
        is over the size limit, and :class:`NotConnected` when there is no connection. A timeout
        returns False and is not retried (see the module docstring).
        """
        try:
            payload = encode(message, self.settings.max_payload)
        except ProtocolError:
            self.stats.refused_oversize += 1
            raise
        return await self.publish_bytes(
            topic, payload, retain=retain, properties=properties, timeout=timeout
        )

    async def publish_bytes(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 10.0,
    ) -> bool:
        """Publish an already-encoded payload (or plain text for non-protocol readers). Works
        from the moment the connections are up, before the subscriptions are confirmed, so
        that handlers working off a backlog can answer."""
        if len(payload) > self.settings.max_payload:
            self.stats.refused_oversize += 1
            raise ProtocolError(
                f"payload of {len(payload)} bytes is over the {self.settings.max_payload} byte "
                "limit; not published"
            )
        lane = self._control
        if lane is None or not lane.link.connected:
            raise NotConnected(f"not connected to {self.settings.url}")
        try:
            ok = await lane.link.publish(topic, payload, retain=retain, properties=properties,
                                         timeout=timeout)
        except LinkLost as exc:
            raise NotConnected(f"not connected to {self.settings.url}: {exc}") from None
        finally:
            self.stats.pending_publishes = lane.link.pending_publishes
        if not ok:
            self.stats.publish_failures += 1
            log.debug("publish to %s not confirmed within %.1f s", topic, timeout)
            return False
        self.stats.published += 1
        return True

    # -- request / response --------------------------------------------------------------------

    async def request(self, topic: str, request: ApiRequest, timeout: float = 5.0) -> ApiResponse:
        """Send an API request with a v5 response-topic and correlation data; await the reply."""
        correlation = request.request_id.encode()
        future: asyncio.Future[ApiResponse] = asyncio.get_running_loop().create_future()
        self._pending_requests[correlation] = future
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self._reply_topic
        properties.CorrelationData = correlation
        try:
            await self.wait_connected(timeout)
            if not self._wants_replies:
                lane = self._control
                if lane is None:
                    raise NotConnected(f"not connected to {self.settings.url}")
                self._wants_replies = True
                await self._subscribe_one(lane, self._reply_subscription)
            await self.publish(topic, request, properties=properties, timeout=timeout)
            async with asyncio.timeout(timeout):
                return await future
        except (TimeoutError, NotConnected, LinkLost):
            raise RequestTimeout(
                f"no response to {request.verb or topic} within {timeout} s: is the cloud "
                f"manager running and connected to {self.settings.url}?"
            ) from None
        finally:
            self._pending_requests.pop(correlation, None)

    async def reply(self, delivery: Delivery, response: ApiResponse) -> bool:
        """Answer a request on its response topic, echoing its correlation data."""
        topic = delivery.response_topic
        if not topic:
            return False
        properties = Properties(PacketTypes.PUBLISH)
        if delivery.correlation_data is not None:
            properties.CorrelationData = delivery.correlation_data
        return await self.publish(topic, response, properties=properties)

    async def _on_reply(self, delivery: Delivery) -> None:
        correlation = delivery.correlation_data
        if correlation is None and isinstance(delivery.message, ApiResponse):
            correlation = delivery.message.request_id.encode()
        future = self._pending_requests.get(correlation or b"")
        if future is not None and not future.done() and isinstance(delivery.message, ApiResponse):
            future.set_result(delivery.message)

    # -- the connection loop -------------------------------------------------------------------

    def _new_lane(self, *, control: bool) -> _Lane:
        s = self.settings
        will = None
        if self._will is not None and not control:
            will = (self._will.topic, encode(self._will.message, s.max_payload), self._will.retain)
        queue: InflowQueue[_Arrival] = InflowQueue(
            s.control_high_water if control else s.incoming_high_water,
            Overflow.DROP if control else Overflow.PAUSE)
        lane: _Lane
        link = Link(
            client_id=f"{s.client_id}/ctl" if control else s.client_id,
            host=s.host,
            port=s.port,
            on_message=lambda raw: self._arrive(lane, raw),
            username=s.username,
            password=s.password,
            tls_context=s.tls_context(),
            keepalive=s.keepalive,
            session_expiry=0 if control else s.session_expiry,
            receive_maximum=None if control else s.receive_maximum,
            will=will,
            logger=logging.getLogger("edgeloop.mqtt.paho"),
        )
        lane = _Lane(link, queue, control)
        return lane

    def _arrive(self, lane: _Lane, raw: paho.MQTTMessage) -> None:
        """A message came off the socket: queue it, stop reading when that filled the queue."""
        arrival = _Arrival.of(raw)
        if not lane.queue.push(arrival):
            self.stats.refused_overload += 1
            lane.link.ack(arrival.mid, arrival.qos)  # refused for good: the broker may forget it
            if lane.queue.dropped in (1, 10, 100) or lane.queue.dropped % 1000 == 0:
                log.warning("control queue full (%d waiting): refused a request on %s (%d so far)",
                            len(lane.queue), arrival.topic_text, lane.queue.dropped)
            return
        if lane.queue.paused:
            lane.link.pause_reading()
        lane.arrived.set()

    async def _run(self) -> None:
        while not self._closing:
            delay: float | None = None
            try:
                await self._session()
            except Redeliver as exc:
                self.stats.redeliveries += 1
                self.stats.last_error = str(exc)
                delay = self._redelivery_backoff.next_delay()
                log.warning("%s; reconnecting in %.1f s so that the broker sends the messages "
                            "again", exc, delay)
            except LinkLost as exc:
                # Say it once per kind of failure, not on every retry of an outage.
                level = logging.DEBUG if str(exc) == self.stats.last_error else logging.INFO
                self.stats.last_error = str(exc)
                if not self._closing:
                    log.log(level, "broker %s: %s", self.settings.url, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the connection loop
                self.stats.last_error = repr(exc)
                log.exception("connection loop error")
            if self._closing:
                return
            await asyncio.sleep(delay if delay is not None else self._backoff.next_delay())

    async def _session(self) -> None:
        """One connection of both links, until either is lost or a handler asks to reconnect."""
        control, data = self._new_lane(control=True), self._new_lane(control=False)
        self._control, self._data = control, data
        tasks: list[asyncio.Task[None]] = []
        try:
            timeout = self.settings.connect_timeout
            await control.link.connect(timeout)
            await data.link.connect(timeout)
            self.stats.connects += 1
            self._backoff.reset()
            tasks = [asyncio.create_task(self._consume(lane), name=f"mqtt-consume:{lane.link.client_id}")
                     for lane in (data, control)]
            tasks.append(asyncio.create_task(self._after_connect(control, data),
                                             name=f"mqtt-setup:{self.settings.client_id}"))
            await self._watch(tasks, control, data)
        finally:
            if self._connected.is_set():
                self.stats.disconnects += 1
            self._connected.clear()
            await cancel_and_wait(*tasks)
            for lane in (data, control):
                await lane.link.close()
                lane.queue.clear()
            self._control = self._data = None

    async def _watch(self, tasks: list[asyncio.Task[None]], control: _Lane, data: _Lane) -> None:
        """Return (raise) when the session ends: a link lost, a handler's :class:`Redeliver`."""
        waiting: set[asyncio.Future[Any]] = {*tasks, control.link.lost, data.link.lost}
        while True:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                if future in (control.link.lost, data.link.lost):
                    raise LinkLost(f"connection lost: {future.result()}")
                if future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
                if future is not tasks[-1]:  # only the setup task ends by itself
                    raise LinkLost("message consumer stopped")

    async def _after_connect(self, control: _Lane, data: _Lane) -> None:
        for topic_filter in self._stale:
            data.link.unsubscribe(topic_filter)
        if self._wants_replies:
            await self._subscribe_one(control, self._reply_subscription)
        # Sent together, confirmed as the backlog ahead of the confirmations is handled. A
        # subscription added meanwhile is taken in the next pass: from the moment ``connected``
        # is set, :meth:`_add_subscription` subscribes new ones itself.
        subscribed = 0
        while pending := self._subscriptions[subscribed:]:  # appended only, never removed
            await asyncio.gather(*(self._subscribe_one(control if sub.control else data, sub)
                                   for sub in pending))
            subscribed += len(pending)
        self._connected.set()
        for hook in self._connect_hooks:
            try:
                await hook()
            except Exception:
                self.stats.handler_errors += 1
                log.exception("connect hook failed")

    async def _subscribe_one(self, lane: _Lane, subscription: _Subscription) -> None:
        codes = await lane.link.subscribe(subscription.topic_filter, subscription.qos)
        if any(code >= 0x80 for code in codes):
            log.error("subscription to %s refused by the broker (%s)", subscription.topic_filter, codes)

    async def _consume(self, lane: _Lane) -> None:
        """Take what is waiting (at least one message, at most the largest batch), deliver it
        in arrival order, acknowledge each message after its handlers ran."""
        while True:
            if not lane.queue:
                lane.arrived.clear()
                await lane.arrived.wait()
                continue
            limit = max((sub.max_batch for sub in self._subscriptions), default=1)
            window = lane.queue.take(limit)
            self.stats.received += len(window)
            self.stats.queue_high_water = max(self.stats.queue_high_water,
                                              len(window) + len(lane.queue))
            if lane.queue.resume_due():
                lane.link.resume_reading()
            # If cancelled mid-window (closing), the broker redelivers what is not acknowledged.
            for run in self._runs(window):
                await self._deliver(run)  # Redeliver: this run and the rest stay unacknowledged
                for raw, _, _ in run:
                    if raw.qos > 0:
                        lane.link.ack(raw.mid, raw.qos)
            self._redelivery_backoff.reset()

    def _runs(self, window: list[_Arrival]) -> Iterator[list[_Item]]:
        """Split a window into consecutive runs delivered together: messages for the same batch
        subscriptions stay together (up to the smallest ``max_batch``); every other message is
        a run of its own. A message that fails to decode, or that admission turned away, joins
        the run it sits in."""
        run: list[_Item] = []
        run_subs: tuple[_Subscription, ...] | None = None
        for raw in window:
            delivery, targets = self._decode(raw)
            if delivery is None or not self._admitted(delivery, targets, raw):
                run.append((raw, None, _NOWHERE))
                continue
            batched = targets.batched
            if run and not (batched and targets.subs == run_subs and len(run) < targets.limit):
                yield run
                run = []
            run.append((raw, delivery, targets))
            run_subs = targets.subs if batched else None
        if run:
            yield run

    def _admitted(self, delivery: Delivery, targets: _Targets, raw: _Arrival) -> bool:
        if self._admission is None or targets.control:
            return True
        if self._admission.admit(delivery.topic, len(raw.payload)):
            return True
        self.stats.refused_budget += 1
        return False

    def _decode(self, raw: _Arrival) -> tuple[Delivery | None, _Targets]:
        topic = raw.topic
        if not isinstance(topic, str):
            self.stats.protocol_errors += 1
            log.warning("dropped a message on a topic that is not UTF-8: %r", topic)
            return None, _NOWHERE
        try:
            message = decode(topic, raw.payload, self.settings.max_payload)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("dropped a message on %s: %s", topic, exc.reason)
            return None, _NOWHERE
        delivery = Delivery(topic, message, raw.retain, raw.response_topic, raw.correlation_data)
        if topic == self._reply_topic:
            return delivery, self._reply_targets
        return delivery, self._route(topic)

    def _route(self, topic: str) -> _Targets:
        """Where ``topic`` goes, remembered per topic as :meth:`_matching` is."""
        targets = self._routes.get(topic)
        if targets is None:
            if len(self._routes) >= MATCHES_KEPT:
                self._routes.clear()
            targets = self._routes[topic] = _Targets.of(self._matching(topic))
        return targets

    def _matching(self, topic: str) -> list[_Subscription]:
        """The subscriptions ``topic`` goes to, remembered per topic until the subscriptions
        change (a node sends on a handful of topics, again and again)."""
        subs = self._matches.get(topic)
        if subs is None:
            if len(self._matches) >= MATCHES_KEPT:
                self._matches.clear()
            levels = topic.split("/")
            subs = self._matches[topic] = [sub for sub in self._subscriptions
                                           if sub.matches(levels)]
        return subs

    async def _deliver(self, run: list[_Item]) -> None:
        """Hand a run to its handlers; a handler's failure is counted and logged, never fatal."""
        deliveries = [delivery for _, delivery, _ in run if delivery is not None]
        if not deliveries:
            return
        subscriptions = next(targets.subs for _, delivery, targets in run if delivery is not None)
        for subscription in subscriptions:
            if subscription.batch_handler is not None:
                try:
                    await subscription.batch_handler(deliveries)
                except Redeliver:
                    raise
                except Exception:
                    self.stats.handler_errors += 1
                    log.exception("batch handler for %s failed on %d messages",
                                  subscription.topic_filter, len(deliveries))
                continue
            assert subscription.handler is not None
            for delivery in deliveries:
                try:
                    await subscription.handler(delivery)
                except Redeliver:
                    raise
                except Exception:
                    self.stats.handler_errors += 1
                    log.exception("handler for %s failed on %s", subscription.topic_filter,
                                  delivery.topic)


def new_client_id(prefix: str) -> str:
    """A unique client id for short-lived clients such as one CLI call."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
