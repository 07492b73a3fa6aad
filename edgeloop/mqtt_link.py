"""One MQTT v5 connection: a paho client driven by the asyncio event loop.

paho's external-loop API does the protocol (``loop_read``, ``loop_write``, ``loop_misc``, the
``on_socket_*`` callbacks); this module registers its socket with the event loop and turns its
callbacks into futures. The reader can be paused: while paused nothing is read, TCP flow control
holds the broker back and keep-alive checks wait too (the broker still hears our
acknowledgements). Messages are acknowledged manually (``manual_ack``), after their handler ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("edgeloop.mqtt.link")

#: how often paho's housekeeping (keep-alive pings, their timeouts) runs
MISC_INTERVAL = 1.0
#: most packets read in one readiness event before yielding to other tasks: more than the
#: incoming queue holds (its reader pauses at ``incoming_high_water``), so that a batch is
#: the whole window waiting, not a slice of it (fewer, larger transactions in a backlog)
READS_PER_EVENT = 256
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)


class LinkLost(ConnectionError):
    """The connection is gone, or never came up (the message says why)."""


class Link:
    """One connection to the broker. Create, :meth:`connect`, use, :meth:`close`; not reusable.

    ``on_message`` is called in the event loop for every incoming PUBLISH, in order.
    """

    def __init__(
        self,
        *,
        client_id: str,
        host: str,
        port: int,
        on_message: Callable[[paho.MQTTMessage], None],
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        keepalive: int = 15,
        session_expiry: int = 0,
        receive_maximum: int | None = None,
        will: tuple[str, bytes, bool] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.client_id = client_id
        self._host, self._port, self._keepalive = host, port, keepalive
        self._session_expiry = session_expiry
        self._receive_maximum = receive_maximum
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._on_message_cb = on_message
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if username is not None:
            client.username_pw_set(username, password)
        if tls_context is not None:
            client.tls_set_context(tls_context)
        if will is not None:
            topic, payload, retain = will
            client.will_set(topic, payload, qos=1, retain=retain)
        if logger is not None:
            client.enable_logger(logger)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        self._connack: asyncio.Future[bool] = self._loop.create_future()
        self.lost: asyncio.Future[str] = self._loop.create_future()
        self._publishes: dict[int, asyncio.Future[bool]] = {}
        self._subscribes: dict[int, asyncio.Future[list[int]]] = {}
        self._sock: Any = None
        self._paused = False
        self._progress = 0
        self._misc: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self, timeout: float) -> bool:
        """Connect and wait for the broker's CONNACK; True when it kept our session."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._session_expiry
        if self._receive_maximum is not None:
            properties.ReceiveMaximum = self._receive_maximum
        clean_start = self._session_expiry == 0
        try:
            async with asyncio.timeout(timeout):
                # socket connect and TLS handshake block: paho runs them in a worker thread
                await self._loop.run_in_executor(None, lambda: self._client.connect(
                    self._host, self._port, self._keepalive, clean_start=clean_start,
                    properties=properties))
                self._misc = self._loop.create_task(self._misc_loop(),
                                                    name=f"mqtt-misc:{self.client_id}")
                return await asyncio.shield(self._connack)
        except TimeoutError:
            self._close_socket()
            raise LinkLost(f"no answer from the broker within {timeout} s") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._close_socket()
            raise LinkLost(str(exc) or type(exc).__name__) from None

    async def close(self) -> None:
        """Disconnect cleanly (no will) when connected, and release the socket."""
        if self.connected:
            self._client.disconnect()
            try:
                async with asyncio.timeout(2):
                    await asyncio.shield(self.lost)
            except TimeoutError:
                pass
        self._close_socket()
        if self._misc is not None:
            self._misc.cancel()

    @property
    def connected(self) -> bool:
        return self._connack.done() and not self._connack.exception() and not self.lost.done()

    def _close_socket(self) -> None:
        """Drop the connection without a word to the broker (it publishes our will)."""
        self._forget_socket()
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        self._lose("closed")

    # -- reading -----------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._paused and self._sock is not None:
            self._loop.remove_reader(self._sock)
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused and self._sock is not None:
            self._loop.add_reader(self._sock, self._read)
            # bytes an SSL socket already decrypted do not wake the selector
            self._loop.call_soon(self._read)
        self._paused = False

    def _read(self) -> None:
        """Read what the socket has (packets that came together are handled together, so a
        batch subscription sees them as one batch), until paused or nothing more came."""
        for _ in range(READS_PER_EVENT):
            if self._paused or self._sock is None:
                return
            before = self._progress
            rc = self._client.loop_read()
            if rc != paho.MQTT_ERR_SUCCESS:
                self._lose(paho.error_string(rc))
                return
            pending = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
            if self._progress == before and pending == 0:
                return

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL)
            if not self._paused:  # paused: the broker's ping answer waits unread
                self._client.loop_misc()

    # -- sending -----------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, retain: bool,
                      properties: Properties | None, timeout: float) -> bool:
        """Publish at QoS 1; True once the broker acknowledged it, False on timeout or refusal
        (never retried here: paho may still send it)."""
        if not self.connected:
            raise LinkLost("not connected")
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise LinkLost(paho.error_string(info.rc))
        future: asyncio.Future[bool] = self._loop.create_future()
        self._publishes[info.mid] = future
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            return False
        except LinkLost:
            return False
        finally:
            self._publishes.pop(info.mid, None)

    async def subscribe(self, topic_filter: str, qos: int) -> list[int]:
        """Subscribe; the granted reason codes once the SUBACK came (waits as long as that
        takes: on a paused connection it comes after the backlog ahead of it)."""
        rc, mid = self._client.subscribe(topic_filter, qos=qos)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise LinkLost(paho.error_string(rc))
        future: asyncio.Future[list[int]] = self._loop.create_future()
        self._subscribes[mid] = future
        try:
            return await asyncio.shield(future)
        finally:
            self._subscribes.pop(mid, None)

    def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe without waiting for the UNSUBACK (what the broker already queued for
        the filter still arrives)."""
        rc, _ = self._client.unsubscribe(topic_filter)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise LinkLost(paho.error_string(rc))

    def ack(self, mid: int, qos: int) -> None:
        if self.connected:
            self._client.ack(mid, qos)

    @property
    def pending_publishes(self) -> int:
        return len(self._publishes)

    # -- paho callbacks (event loop thread, except the socket opening in connect) ------------

    def _on_connect(self, client: paho.Client, userdata: object, flags: Any,
                    reason_code: ReasonCode, properties: Any) -> None:
        if self._connack.done():
            return
        if reason_code.is_failure:
            self._connack.set_exception(LinkLost(f"refused by the broker: {reason_code}"))
        else:
            self._connack.set_result(bool(flags.session_present))

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: Any,
                       reason_code: ReasonCode, properties: Any) -> None:
        self._lose(str(reason_code))

    def _lose(self, reason: str) -> None:
        if not self._connack.done():
            self._connack.set_exception(LinkLost(reason))
            self._connack.exception()  # retrieved: nobody may be waiting any more
        if not self.lost.done():
            self.lost.set_result(reason)
        waiting: list[asyncio.Future[Any]] = [*self._publishes.values(),
                                              *self._subscribes.values()]
        for future in waiting:
            if not future.done():
                future.set_exception(LinkLost(reason))
                future.exception()

    def _on_message(self, client: paho.Client, userdata: object,
                    message: paho.MQTTMessage) -> None:
        self._progress += 1
        self._on_message_cb(message)

    def _on_publish(self, client: paho.Client, userdata: object, mid: int,
                    reason_code: ReasonCode, properties: Any) -> None:
        self._progress += 1
        future = self._publishes.get(mid)
        if future is not None and not future.done():
            future.set_result(not reason_code.is_failure)

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int,
                      reason_codes: list[ReasonCode], properties: Any) -> None:
        self._progress += 1
        future = self._subscribes.get(mid)
        if future is not None and not future.done():
            future.set_result([code.value for code in reason_codes])

    def _on_socket_open(self, client: paho.Client, userdata: object, sock: Any) -> None:
        self._in_loop(self._register, sock)

    def _register(self, sock: Any) -> None:
        if self.lost.done():  # gave up on this connection while paho was still opening it
            sock.close()
            return
        self._sock = sock
        with contextlib.suppress(OSError):  # small packets (acks, replies) go out at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._paused:
            self._loop.add_reader(sock, self._read)
        if self._client.want_write():  # the CONNECT, queued before the socket was ours
            self._loop.add_writer(sock, self._write)

    def _on_socket_close(self, client: paho.Client, userdata: object, sock: Any) -> None:
        self._in_loop(self._forget_socket)

    def _forget_socket(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
            self._sock = None

    def _on_socket_register_write(self, client: paho.Client, userdata: object, sock: Any) -> None:
        self._in_loop(self._want_write, sock)

    def _want_write(self, sock: Any) -> None:
        if self._sock is sock:
            self._loop.add_writer(sock, self._write)

    def _write(self) -> None:
        """Send what paho queued. paho sends each packet on its own, and with ``TCP_NODELAY``
        each becomes a segment of its own: the acknowledgements of a batch (one per message)
        would cost the broker and us one segment each. Corked, they leave together."""
        corked = self._cork(True)
        try:
            rc = self._client.loop_write()
        finally:
            if corked:
                self._cork(False)
        if rc != paho.MQTT_ERR_SUCCESS:
            self._lose(paho.error_string(rc))

    def _cork(self, on: bool) -> bool:
        """Hold small writes back (``TCP_CORK``, Linux) until uncorked; False where unsupported."""
        if _TCP_CORK is None or self._sock is None:
            return False
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1 if on else 0)
        except OSError:
            return False
        return True

    def _on_socket_unregister_write(self, client: paho.Client, userdata: object,
                                    sock: Any) -> None:
        self._in_loop(self._no_write, sock)

    def _no_write(self, sock: Any) -> None:
        if self._sock is sock:
            self._loop.remove_writer(sock)

    def _in_loop(self, call: Callable[..., None], *args: Any) -> None:
        """Run ``call`` now in the event loop thread, or soon from paho's connect thread."""
        if threading.get_ident() == self._loop_thread:
            call(*args)
        else:
            self._loop.call_soon_threadsafe(call, *args)
