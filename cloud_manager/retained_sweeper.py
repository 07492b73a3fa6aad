"""Clears retained messages that the design does not retain, so that no client can make the
broker's memory grow at will.

A node may publish on each of its edge-to-cloud topics, and nothing in mosquitto's
configuration stops it from setting the retain flag there (``retain_available`` is all or
nothing, and its ACLs do not see the flag): a node could leave a message of up to the packet
limit on ``node/{node}/task/{any id}/progress`` for every task id it invents. Only ``status``
(and the cloud's own ``desired`` and job status) are meant to be retained
(:func:`protocol.topics.retain_allowed`).

The sweeper holds a connection of its own, raw bytes in and out: junk need not decode as a
message to take memory, and the product's client drops what does not decode. Every
``period_s`` (and right after connecting) it subscribes to the node topic tree, which hands it
the retained messages, publishes a marker to itself that arrives after them, unsubscribes, and
clears each retained message on a topic that may not hold one by publishing an empty retained
payload there (the cloud identity may write every topic). Each is counted and logged with its
topic and size. Between sweeps it receives nothing, so it does not double the cloud's traffic.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeloop.backoff import Backoff
from edgeloop.mqtt import MqttSettings
from protocol import topics

log = logging.getLogger("edgeloop.cloud.retained")

SWEEP_PERIOD_S = 30.0


@dataclass
class SweepStats:
    sweeps: int = 0
    #: retained messages cleared because their topic may not hold one
    cleared: int = 0
    cleared_bytes: int = 0
    last_error: str = ""


class RetainedSweeper:
    def __init__(self, settings: MqttSettings, *, period_s: float = SWEEP_PERIOD_S) -> None:
        self.settings = settings
        self.client_id = f"{settings.client_id}-sweeper"[:63]
        self.period_s = period_s
        self.stats = SweepStats()
        self._swept = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep until ``stop`` is set, reconnecting with backoff after a lost connection."""
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        while not stop.is_set():
            try:
                async with self._client() as client:
                    backoff.reset()
                    while not stop.is_set():
                        await self.sweep(client)
                        try:
                            async with asyncio.timeout(self.period_s):
                                await stop.wait()
                        except TimeoutError:
                            pass
                    return
            except aiomqtt.MqttError as exc:
                self.stats.last_error = str(exc)
                log.debug("retained sweeper: %s", exc)
            try:
                async with asyncio.timeout(backoff.next_delay()):
                    await stop.wait()
            except TimeoutError:
                pass

    async def wait_sweeps(self, count: int) -> None:
        """Wait until ``count`` sweeps have completed since start."""
        async with self._swept:
            await self._swept.wait_for(lambda: self.stats.sweeps >= count)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        return aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.password, identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5, keepalive=s.keepalive, timeout=s.connect_timeout,
            tls_context=s.tls_context(), logger=logging.getLogger("edgeloop.mqtt.paho"),
        )

    async def sweep(self, client: aiomqtt.Client) -> int:
        """One pass: clear every retained message on a topic that may not hold one."""
        marker, token = topics.sweep_marker(self.client_id), uuid.uuid4().bytes
        tree = topics.node_tree_filter()
        await client.subscribe(marker, qos=1)
        await client.subscribe(tree, options=SubscribeOptions(qos=1, retainHandling=0))
        await client.publish(marker, token, qos=1)
        junk: list[tuple[str, int]] = []
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic == marker and payload == token:
                break
            if message.retain and payload and not topics.retain_allowed(topic):
                junk.append((topic, len(payload)))
        await client.unsubscribe([tree, marker])
        for topic, size in junk:
            await client.publish(topic, b"", qos=1, retain=True)
            self.stats.cleared += 1
            self.stats.cleared_bytes += size
            log.warning("cleared a retained message of %d bytes on %s: only status and desired "
                        "are retained", size, topic)
        async with self._swept:
            self.stats.sweeps += 1
            self._swept.notify_all()
        return len(junk)
