"""A plain paho-mqtt (MQTT v5) client for tests that check the broker itself.

It deliberately bypasses the project's client layer: broker tests must see exactly what mosquitto
answers (CONNACK/SUBACK/PUBACK reason codes, disconnects, TLS failures), with no retries or
limits in between. Every wait has a generous timeout; none measures speed.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from dataclasses import dataclass
from itertools import count

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mosquitto.creds import ClientCredentials
from mosquitto.launcher import Broker

WAIT = 5.0
_ids = count()


class ProbeError(AssertionError):
    """The broker did not answer as a test needed (no ack, lost connection)."""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Probe:
    """One MQTT v5 connection to a test broker, recording what it receives."""

    def __init__(
        self,
        broker: Broker | tuple[str, int],
        identity: ClientCredentials | None = None,
        *,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry: int = 0,
        username: str | None = None,
        password: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        tls: bool | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        if isinstance(broker, Broker):
            self.host, self.port = broker.host, broker.port
            production, creds = broker.production, broker.credentials
        else:  # a broker this test did not start, e.g. `edgeloop broker` in a subprocess
            (self.host, self.port), production, creds = broker, False, None
        self.client_id = client_id or f"probe-{next(_ids)}"
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.messages: queue.Queue[Received] = queue.Queue()
        self._acks: dict[int, ReasonCode | list[ReasonCode]] = {}
        self._acked = threading.Condition()
        self._connected = threading.Event()
        self._closed = threading.Event()
        self.connack: ReasonCode | None = None
        self.connack_properties: Properties | None = None
        self.disconnect_reason: ReasonCode | None = None

        # No automatic reconnection: a probe reports what happened instead of hiding it.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        if identity is not None:
            ca = ca or str(identity.ca)
            cert = cert or str(identity.cert)
            key = key or str(identity.key)
            if identity.password is not None and username is None:
                username, password = identity.username, identity.password
        use_tls = production if tls is None else tls
        if use_tls:
            client.tls_set(
                ca_certs=ca or (str(creds.ca) if creds else None),
                certfile=cert,
                keyfile=key,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        self.client = client

    # --- callbacks (paho's network thread) ------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack = reason_code
        self.connack_properties = properties
        self._connected.set()
        if reason_code.is_failure:
            self._closed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnect_reason = reason_code
        self._closed.set()
        self._connected.set()
        with self._acked:
            self._acked.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        self.messages.put(Received(message.topic, message.payload, message.qos, message.retain))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked:
            self._acks[mid] = reason_code
            self._acked.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._acked:
            self._acks[mid] = list(reason_codes)
            self._acked.notify_all()

    # --- actions --------------------------------------------------------------------------

    def try_connect(self) -> ReasonCode | Exception:
        """Connect; the CONNACK reason code, or the exception/disconnect that prevented it."""
        props = Properties(PacketTypes.CONNECT)
        if self.session_expiry:
            props.SessionExpiryInterval = self.session_expiry
        try:
            self.client.connect(
                self.host,
                self.port,
                keepalive=30,
                clean_start=self.clean_start,
                properties=props,
            )
        except (OSError, ssl.SSLError) as exc:
            return exc
        self.client.loop_start()
        if not self._connected.wait(WAIT):
            raise ProbeError(f"{self.client_id}: no CONNACK within {WAIT} s")
        if self.connack is None:
            return ConnectionError(f"connection closed before CONNACK ({self.disconnect_reason})")
        return self.connack

    def connect(self) -> Probe:
        outcome = self.try_connect()
        if not isinstance(outcome, ReasonCode) or outcome.is_failure:
            raise ProbeError(f"{self.client_id}: could not connect: {outcome!r}")
        return self

    def _wait_ack(self, mid: int) -> ReasonCode | list[ReasonCode]:
        with self._acked:
            done = self._acked.wait_for(
                lambda: mid in self._acks or self._closed.is_set(), timeout=WAIT
            )
            if mid in self._acks:
                return self._acks.pop(mid)
        if not done:
            raise ProbeError(f"{self.client_id}: no acknowledgement for packet {mid} in {WAIT} s")
        raise ProbeError(f"{self.client_id}: disconnected ({self.disconnect_reason}) before ack")

    def subscribe(self, topic: str, qos: int = 1) -> ReasonCode:
        result, mid = self.client.subscribe(topic, qos=qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, result
        codes = self._wait_ack(mid)
        assert isinstance(codes, list)
        return codes[0]

    def publish(
        self, topic: str, payload: bytes = b"x", qos: int = 1, retain: bool = False
    ) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        code = self._wait_ack(info.mid)
        assert isinstance(code, ReasonCode)
        return code

    def expect(self, topic: str, timeout: float = WAIT) -> Received:
        """The next message; fails if it is on another topic than ``topic``."""
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise ProbeError(
                f"{self.client_id}: nothing received on {topic} in {timeout} s"
            ) from None
        if message.topic != topic:
            raise ProbeError(f"{self.client_id}: expected {topic}, received {message.topic}")
        return message

    def wait_closed(self, timeout: float = WAIT) -> bool:
        return self._closed.wait(timeout)

    def drop(self) -> None:
        """Lose the connection without DISCONNECT, as a crashed or unplugged node would."""
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT packet: the broker sends the will
        self.wait_closed()
        self.client.loop_stop()

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
        self.client.loop_stop()
