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
  mosquitto 2.0.11 stops enforcing it once acknowledgements flow.)
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
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
ConnectHook = Callable[[], Awaitable[None]]


@dataclass
class ClientStats:
    connects: int = 0
    disconnects: int = 0
    received: int = 0
    protocol_errors: int = 0
    handler_errors: int = 0
    published: int = 0
    publish_failures: int = 0
    refused_oversize: int = 0
    pending_publishes: int = 0
    #: the most messages ever waiting in the incoming queue; stays <= receive_maximum
    queue_high_water: int = 0
    last_error: str = ""


@dataclass
class _Subscription:
    topic_filter: str
    handler: Handler
    qos: int = 1


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
            try:
                while True:
                    client.loop_read()
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
        super()._on_socket_close(client, userdata, sock)  # type: ignore[arg-type]

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        super()._on_message(client, userdata, message)
        if not self._paused and self._reader and self._queue.qsize() >= self._high_water:
            self._loop.remove_reader(self._reader[0])
            self._paused = True

    def worked_down(self) -> None:
        """Called by the consumer after each message: resume reading below the low mark."""
        if self._paused and self._reader and self._queue.qsize() <= self._low_water:
            self._loop.add_reader(*self._reader)
            self._paused = False


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
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._pending_requests: dict[bytes, asyncio.Future[ApiResponse]] = {}
        self._reply_topic = topics.api_response(settings.client_id)
        # Only clients that make requests subscribe to their reply topic: a node's ACL has none.
        self._wants_replies = False
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max)

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
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client._disconnect(), timeout=2)  # noqa: SLF001
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
        self._subscriptions.append(_Subscription(topic_filter, handler))
        if self._client is not None and self.connected:
            asyncio.ensure_future(self._subscribe_one(self._client, self._subscriptions[-1]))

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
                await self._subscribe_one(client, _Subscription(self._reply_topic, self._on_reply))
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
            try:
                async with client:
                    self._client = client
                    self.stats.connects += 1
                    self._backoff.reset()
                    await self._after_connect(client)
                    await self._consume(client)
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
            await asyncio.sleep(self._backoff.next_delay())

    async def _after_connect(self, client: _FlowControlledClient) -> None:
        if self._wants_replies:
            await self._subscribe_one(client, _Subscription(self._reply_topic, self._on_reply))
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
        async for raw in client.messages:
            self.stats.received += 1
            self.stats.queue_high_water = max(self.stats.queue_high_water, len(client.messages) + 1)
            client.worked_down()
            try:
                await self._dispatch(raw)
            finally:
                if raw.qos > 0:
                    client._client.ack(raw.mid, raw.qos)  # noqa: SLF001

    async def _dispatch(self, raw: aiomqtt.Message) -> None:
        topic = raw.topic.value
        payload = raw.payload if isinstance(raw.payload, bytes) else bytes(str(raw.payload), "utf-8")
        try:
            message = decode(topic, payload, self.settings.max_payload)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("dropped a message on %s: %s", topic, exc.reason)
            return
        delivery = Delivery(topic, message, raw.retain, raw.properties)
        if topic == self._reply_topic:
            await self._on_reply(delivery)
            return
        for subscription in self._subscriptions:
            if raw.topic.matches(subscription.topic_filter):
                try:
                    await subscription.handler(delivery)
                except Exception:
                    self.stats.handler_errors += 1
                    log.exception("handler for %s failed on %s", subscription.topic_filter, topic)


def new_client_id(prefix: str) -> str:
    """A unique client id for short-lived clients such as one CLI call."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
