"""Clears retained messages that the design does not retain, so that no client can make the
broker's memory grow at will.

A node may publish on each of its edge-to-cloud topics, and nothing in mosquitto's
configuration stops it from setting the retain flag there (``retain_available`` is all or
nothing, and its ACLs do not see the flag): a node could leave a message of up to the packet
limit on ``node/{node}/task/{any id}/progress`` for every task id it invents. Only ``status``
(and the cloud's own ``desired`` and job status) are meant to be retained
(:func:`protocol.topics.retain_allowed`).

Every ``period_s`` (and at start) the sweeper opens a short connection of its own, raw bytes
in and out (junk need not decode as a message to take memory, and the product's client drops
what does not decode): it subscribes to the node topic tree, which hands it the retained
messages, publishes a marker to itself that arrives after them, clears each retained message on
a topic that may not hold one by publishing an empty retained payload there (the cloud identity
may write every topic), and disconnects. Each is counted and logged with its topic and size.
Between sweeps it holds no connection, so it does not double the cloud's traffic.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import paho.mqtt.client as paho

from edgeloop.backoff import Backoff
from edgeloop.mqtt import MqttSettings
from edgeloop.mqtt_link import Link, LinkLost
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
        """Sweep every ``period_s`` until ``stop`` is set; after a failed sweep, retry with
        backoff."""
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        while not stop.is_set():
            try:
                await self.sweep()
                backoff.reset()
                wait = self.period_s
            except LinkLost as exc:
                self.stats.last_error = str(exc)
                log.debug("retained sweeper: %s", exc)
                wait = backoff.next_delay()
            try:
                async with asyncio.timeout(wait):
                    await stop.wait()
            except TimeoutError:
                pass

    async def wait_sweeps(self, count: int) -> None:
        """Wait until ``count`` sweeps have completed since start."""
        async with self._swept:
            await self._swept.wait_for(lambda: self.stats.sweeps >= count)

    async def sweep(self) -> int:
        """One pass on a connection of its own: clear every retained message on a topic that
        may not hold one. Raises :class:`LinkLost` when the broker cannot be reached."""
        s = self.settings
        marker, token = topics.sweep_marker(self.client_id), uuid.uuid4().bytes
        junk: list[tuple[str, int]] = []
        marked, done = False, asyncio.Event()

        def arrived(message: paho.MQTTMessage) -> None:
            nonlocal marked
            link.ack(message.mid, message.qos)
            if message.topic == marker and message.payload == token:
                marked = True
                done.set()
            elif (message.retain and message.payload
                  and not topics.retain_allowed(message.topic)):
                junk.append((message.topic, len(message.payload)))

        link = Link(client_id=self.client_id, host=s.host, port=s.port, on_message=arrived,
                    username=s.username, password=s.password, tls_context=s.tls_context(),
                    keepalive=s.keepalive, logger=logging.getLogger("edgeloop.mqtt.paho"))
        link.lost.add_done_callback(lambda _: done.set())
        try:
            await link.connect(s.connect_timeout)
            await link.subscribe(marker, qos=1)
            await link.subscribe(topics.node_tree_filter(), qos=1)
            await link.publish(marker, token, retain=False, properties=None,
                               timeout=s.connect_timeout)
            await done.wait()  # the marker came after every retained message, or the link went
            if not marked:
                raise LinkLost(f"connection lost during a sweep: {link.lost.result()}")
            for topic, size in junk:
                await link.publish(topic, b"", retain=True, properties=None,
                                   timeout=s.connect_timeout)
                self.stats.cleared += 1
                self.stats.cleared_bytes += size
                log.warning("cleared a retained message of %d bytes on %s: only status and "
                            "desired are retained", size, topic)
        finally:
            await link.close()
        async with self._swept:
            self.stats.sweeps += 1
            self._swept.notify_all()
        return len(junk)

