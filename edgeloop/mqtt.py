"""The MQTT client layer shared by the cloud manager, the edge agents and the CLI.

One :class:`MqttClient` keeps one connection up for the life of a daemon: it reconnects with
exponential backoff and jitter, re-subscribes, publishes and delivers typed protocol messages,
and offers MQTT v5 request/response. It steers around three pitfalls of a naive aiomqtt loop:

* **Unbounded or lossy incoming queue.** aiomqtt's queue either grows without bound or drops
  messages when full, after paho has already acknowledged them. Here the client stops reading
  its socket while ``incoming_high_water`` messages wait and resumes once the handlers have
  worked the queue down: TCP flow control then holds the broker back, which keeps the backlog
  in its per-client queue (``max_queued_messages``) instead of our memory. Messages are
  acknowledged *manually, after their handler ran*, so one whose handler did not finish before a
  disconnect is redelivered. (The v5 ``receive_maximum`` we announce would do the same job, but
  mosquitto 2.0.11 stops enforcing it once acknowledgements flow.) A batch subscription
  (:meth:`MqttClient.subscribe_batch`) hands its handler the messages that were already waiting
  together, and acknowledges them after it: one store transaction for the lot, none acknowledged
  before it committed. A handler whose commit failed raises :class:`Redeliver` to get its
  messages again instead of having them acknowledged.
* **Publish timeouts that duplicate.** A publish that times out is still queued inside paho and
  may go out later; retrying it would send it twice. :meth:`MqttClient.publish` never retries.
  Data that must arrive goes through :class:`edgeloop.reliable.ReliableSender`, which resends
  under the same idempotency key until the receiver acknowledges it and lets receivers dedupe.
* **Log spam about pending publishes.** aiomqtt warns on every publish above ten pending calls,
  which a busy node always has; the number is exposed in :class:`ClientStats` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.backoff import Backoff
from edgeloop.cancellation import cancel_and_wait
from protocol import topics
from protocol.codec import DEFAULT_MAX_PAYLOAD, decode, encode
from protocol.errors import ProtocolError
from protocol.messages import ApiRequest, ApiResponse, Message

log = logging.getLogger("edgeloop.mqtt")


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
    #: How many QoS 1 messages the broker may have in flight to us.
    receive_maximum: int = 100
    #: Stop reading the socket when this many messages wait for their handlers.
    incoming_high_water: int = 100
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
    """An incoming message with what the transport knew about it."""

    topic: str
    message: Message
    retain: bool
    properties: Properties | None

    @property
    def response_topic(self) -> str | None:
        return getattr(self.properties, "ResponseTopic", None) if self.properties else None

    @property
    def correlation_data(self) -> bytes | None:
        return getattr(self.properties, "CorrelationData", None) if self.properties else None


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
    #: the most messages ever held at once: waiting in the incoming queue plus those taken for
    #: handling (one, or a batch); bounded by ``incoming_high_water`` plus the largest batch
    queue_high_water: int = 0
    last_error: str = ""


@dataclass
class _Subscription:
    topic_filter: str
    handler: Handler | None
    qos: int = 1
    batch_handler: BatchHandler | None = None
    max_batch: int = 1

    def __post_init__(self) -> None:
        self._levels = self.topic_filter.split("/")

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


#: one incoming message on its way: what arrived, what it decoded to (None: it did not), and
#: the subscriptions it goes to
_Item = tuple[paho.MQTTMessage, Delivery | None, list[_Subscription]]


@dataclass
class _Will:
    topic: str
    message: Message
    retain: bool = True


class _FlowControlledClient(aiomqtt.Client):
    """aiomqtt's client with a pausable socket reader: see the module docstring."""

    def __init__(self, *args: object, high_water: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._high_water = high_water
        self._low_water = max(1, high_water // 2)
        self._reader: tuple[int, Callable[[], None]] | None = None
        self._paused = False

    def _on_socket_open(self, client: paho.Client, userdata: object, sock: Any) -> None:
        # aiomqtt's own version of this callback, keeping the reader so it can be paused.
        def read() -> None:
            # paho reads about one packet per call. Go on while each call brought a message
            # (more are probably buffered) and the queue is below the mark, so that messages
            # that arrived together are queued together and a batch subscription sees them as
            # one batch instead of one per event-loop turn.
            try:
                while True:
                    before = self._queue.qsize()
                    client.loop_read()
                    if self._queue.qsize() > before and not self._paused:
                        continue
                    # loop_read does not always drain what an SSL socket has decoded
                    pending = getattr(client._sock, "pending", None)  # noqa: SLF001
                    if pending is not None and pending() > 0:
                        continue
                    break
            except Exception as exc:  # a broken pipe: the connection is gone
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            self._reader = (sock.fileno(), read)
            self._paused = False
            self._loop.add_reader(sock.fileno(), read)
            self._misc_task = self._loop.create_task(self._misc_loop())

        # paho calls this from the executor thread that runs connect()
        self._loop.call_soon_threadsafe(register)

    def _on_socket_close(self, client: paho.Client, userdata: object, sock: object) -> None:
        self._reader = None
        self._paused = False
        super()._on_socket_close(client, userdata, sock)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        # paho's message is queued as it is: aiomqtt's copy (a validated Topic object per
        # message) costs more than the rest of its handling here.
        self._queue.put_nowait(message)  # type: ignore[arg-type]
        if not self._paused and self._reader and self._queue.qsize() >= self._high_water:
            self._loop.remove_reader(self._reader[0])
            self._paused = True

    def worked_down(self) -> None:
        """Called by the consumer after each message: resume reading below the low mark."""
        if self._paused and self._reader and self._queue.qsize() <= self._low_water:
            self._loop.add_reader(*self._reader)
            self._paused = False

    async def next_message(self) -> paho.MQTTMessage:
        """The next incoming message; raises :class:`aiomqtt.MqttError` once disconnected. A
        message already waiting is taken at once, without the task aiomqtt's iterator starts
        for every message."""
        waiting = self.take_waiting()
        if waiting is not None:
            return waiting
        # aiomqtt types its queue as holding its own messages; _on_message queues paho's
        return cast(paho.MQTTMessage, await anext(self.messages))

    def take_waiting(self) -> paho.MQTTMessage | None:
        """A message that is already waiting, or None (none, or the connection is gone)."""
        if self._queue.empty() or self._disconnected.done():
            return None
        return cast(paho.MQTTMessage, self._queue.get_nowait())  # queued by _on_message


class MqttClient:
    """A long-lived, self-healing MQTT v5 connection speaking edgeloop's protocol.

    Use it as an async context manager; ``subscribe`` and ``on_connect`` may be called before or
    after entering, and take effect on every (re)connection.
    """

    def __init__(self, settings: MqttSettings, *, will: tuple[str, Message] | None = None):
        self.settings = settings
        self.stats = ClientStats()
        self._subscriptions: list[_Subscription] = []
        self._connect_hooks: list[ConnectHook] = []
        self._will = _Will(*will) if will else None
        self._client: _FlowControlledClient | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._pending_requests: dict[bytes, asyncio.Future[ApiResponse]] = {}
        self._reply_topic = topics.api_response(settings.client_id)
        self._reply_subscription = _Subscription(self._reply_topic, self._on_reply)
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
        client = self._client
        if client is not None and self._connected.is_set():
            # aiomqtt 2 disconnects (a DISCONNECT packet, awaited) only in leaving its
            # context; leaving it again in the connection loop is then a no-op
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), timeout=2)
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

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Deliver every valid message on ``topic_filter`` to ``handler``, now and after every
        reconnect. Messages that fail to decode are counted and logged, never delivered."""
        self._add_subscription(_Subscription(topic_filter, handler))

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
        if self._client is not None and self.connected:
            asyncio.ensure_future(self._subscribe_one(self._client, subscription))

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
        """Publish an already-encoded payload (or plain text for non-protocol readers)."""
        if len(payload) > self.settings.max_payload:
            self.stats.refused_oversize += 1
            raise ProtocolError(
                f"payload of {len(payload)} bytes is over the {self.settings.max_payload} byte "
                "limit; not published"
            )
        client = self._client
        if client is None or not self.connected:
            raise NotConnected(f"not connected to {self.settings.url}")
        try:
            await client.publish(
                topic, payload, qos=1, retain=retain, properties=properties, timeout=timeout
            )
        except aiomqtt.MqttError as exc:
            self.stats.publish_failures += 1
            log.debug("publish to %s not confirmed: %s", topic, exc)
            return False
        finally:
            self.stats.pending_publishes = len(client._pending_publishes)  # noqa: SLF001
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
                client = self._client
                if client is None:
                    raise NotConnected(f"not connected to {self.settings.url}")
                self._wants_replies = True
                await self._subscribe_one(client, self._reply_subscription)
            await self.publish(topic, request, properties=properties, timeout=timeout)
            async with asyncio.timeout(timeout):
                return await future
        except (TimeoutError, NotConnected):
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

    def _new_client(self) -> _FlowControlledClient:
        s = self.settings
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = s.session_expiry
        properties.ReceiveMaximum = s.receive_maximum
        will = None
        if self._will is not None:
            will = aiomqtt.Will(
                self._will.topic,
                encode(self._will.message, s.max_payload),
                qos=1,
                retain=self._will.retain,
            )
        client = _FlowControlledClient(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY if s.session_expiry == 0 else False,
            keepalive=s.keepalive,
            timeout=s.connect_timeout,
            properties=properties,
            will=will,
            tls_context=s.tls_context(),
            logger=logging.getLogger("edgeloop.mqtt.paho"),
            high_water=s.incoming_high_water,
        )
        client.pending_calls_threshold = math.inf  # type: ignore[assignment]
        client._client.manual_ack_set(True)  # noqa: SLF001 - see the module docstring
        return client

    async def _run(self) -> None:
        while not self._closing:
            client = self._new_client()
            delay: float | None = None
            try:
                async with client:
                    self._client = client
                    self.stats.connects += 1
                    self._backoff.reset()
                    await self._after_connect(client)
                    await self._consume(client)
            except Redeliver as exc:
                self.stats.redeliveries += 1
                self.stats.last_error = str(exc)
                delay = self._redelivery_backoff.next_delay()
                log.warning("%s; reconnecting in %.1f s so that the broker sends the messages "
                            "again", exc, delay)
            except aiomqtt.MqttError as exc:
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
            finally:
                if self._connected.is_set():
                    self.stats.disconnects += 1
                self._connected.clear()
                self._client = None
            if self._closing:
                return
            await asyncio.sleep(delay if delay is not None else self._backoff.next_delay())

    async def _after_connect(self, client: _FlowControlledClient) -> None:
        if self._wants_replies:
            await self._subscribe_one(client, self._reply_subscription)
        for subscription in self._subscriptions:
            await self._subscribe_one(client, subscription)
        self._connected.set()
        for hook in self._connect_hooks:
            try:
                await hook()
            except Exception:
                self.stats.handler_errors += 1
                log.exception("connect hook failed")

    async def _subscribe_one(self, client: _FlowControlledClient, subscription: _Subscription) -> None:
        granted = await client.subscribe(subscription.topic_filter, qos=subscription.qos)
        codes = [getattr(code, "value", code) for code in (granted or [])]
        if any(code >= 0x80 for code in codes):
            log.error("subscription to %s refused by the broker (%s)", subscription.topic_filter, codes)

    async def _consume(self, client: _FlowControlledClient) -> None:
        """Take what is waiting (at least one message, at most the largest batch), deliver it
        in arrival order, acknowledge each message after its handlers ran."""
        while True:
            window = [await client.next_message()]
            limit = max((sub.max_batch for sub in self._subscriptions), default=1)
            while len(window) < limit and (raw := client.take_waiting()) is not None:
                window.append(raw)
            self.stats.received += len(window)
            self.stats.queue_high_water = max(self.stats.queue_high_water,
                                              len(window) + len(client.messages))
            client.worked_down()
            # If cancelled mid-window (closing), the broker redelivers what is not acknowledged.
            for run in self._runs(window):
                await self._deliver(run)  # Redeliver: this run and the rest stay unacknowledged
                for raw, _, _ in run:
                    if raw.qos > 0:
                        client._client.ack(raw.mid, raw.qos)  # noqa: SLF001
            self._redelivery_backoff.reset()

    def _runs(self, window: list[paho.MQTTMessage]) -> Iterator[list[_Item]]:
        """Split a window into consecutive runs delivered together: messages for the same batch
        subscriptions stay together (up to the smallest ``max_batch``); every other message is
        a run of its own. A message that fails to decode joins the run it sits in."""
        run: list[_Item] = []
        run_subs: list[_Subscription] | None = None
        for raw in window:
            delivery, subs = self._decode(raw)
            if delivery is None:
                run.append((raw, None, []))
                continue
            batched = any(sub.batch_handler for sub in subs)
            limit = min((sub.max_batch for sub in subs if sub.batch_handler), default=1)
            if run and not (batched and subs == run_subs and len(run) < limit):
                yield run
                run = []
            run.append((raw, delivery, subs))
            run_subs = subs if batched else None
        if run:
            yield run

    def _decode(self, raw: paho.MQTTMessage) -> tuple[Delivery | None, list[_Subscription]]:
        try:
            topic = raw.topic
        except UnicodeDecodeError:
            self.stats.protocol_errors += 1
            log.warning("dropped a message on a topic that is not UTF-8: %r",
                        raw._topic)  # noqa: SLF001
            return None, []
        payload = raw.payload
        try:
            message = decode(topic, payload, self.settings.max_payload)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("dropped a message on %s: %s", topic, exc.reason)
            return None, []
        delivery = Delivery(topic, message, bool(raw.retain), getattr(raw, "properties", None))
        if topic == self._reply_topic:
            return delivery, [self._reply_subscription]
        levels = topic.split("/")
        return delivery, [sub for sub in self._subscriptions if sub.matches(levels)]

    async def _deliver(self, run: list[_Item]) -> None:
        """Hand a run to its handlers; a handler's failure is counted and logged, never fatal."""
        deliveries = [delivery for _, delivery, _ in run if delivery is not None]
        if not deliveries:
            return
        subscriptions = next(subs for _, delivery, subs in run if delivery is not None)
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
