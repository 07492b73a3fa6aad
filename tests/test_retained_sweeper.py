"""Retained messages stay only where the design retains them (``status``, ``desired``, job
status): anything a node leaves retained elsewhere is cleared by the cloud manager's sweeper and
counted, whether or not it decodes, on the dev broker and through the production ACL."""

from __future__ import annotations

import asyncio

import pytest
from running_cloud import cloud

from cloud_manager.retained_sweeper import RetainedSweeper
from edgeloop.mqtt import MqttSettings
from protocol import topics

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def test_retain_allowed_follows_the_topic_tree():
    assert topics.retain_allowed(topics.status("edge0"))
    assert topics.retain_allowed(topics.desired("edge0"))
    assert topics.retain_allowed(topics.job_status("ns", "job"))
    for topic in (topics.progress("edge0", "junk1"), topics.hardex("edge0"),
                  topics.samples("edge0"), topics.ack("edge0"), topics.task("edge0", "t"),
                  f"{topics.ROOT}/node/edge0/no-such-topic", "elsewhere/entirely"):
        assert not topics.retain_allowed(topic), topic


async def sweep_once(settings: MqttSettings) -> RetainedSweeper:
    sweeper = RetainedSweeper(settings, period_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    try:
        async with asyncio.timeout(20):
            await sweeper.wait_sweeps(1)
    finally:
        stop.set()
        await task
    return sweeper


def retained_left(probe, filter_: str) -> dict[str, bytes]:
    """The retained messages under ``filter_``, up to a marker the probe sends itself."""
    probe.subscribe(filter_)
    marker = f"{topics.ROOT}/sweep/probe-check"
    probe.subscribe(marker)
    probe.publish(marker, b"end")
    left: dict[str, bytes] = {}
    while (message := probe.messages.get(timeout=10)).topic != marker:
        if message.retain:
            left[message.topic] = message.payload
    return left


async def test_the_cloud_clears_junk_and_keeps_status(broker, tmp_path, mqtt_probe):
    node = mqtt_probe(broker).connect()
    junk = {topics.progress("edge0", f"junk{i}"): bytes([i]) * (1024 * 1024) for i in range(3)}
    junk[topics.hardex("edge0")] = b"not even msgpack"
    for topic, payload in junk.items():
        assert node.publish(topic, payload, retain=True).value in (0, 16)  # 16: no subscriber yet
    assert node.publish(topics.status("edge0"), b"online", retain=True).value in (0, 16)
    async with cloud(broker.url, tmp_path / "state") as daemon:
        await daemon.sweeper.wait_sweeps(1)
        assert daemon.sweeper.stats.cleared == 4
        assert daemon.sweeper.stats.cleared_bytes == sum(len(p) for p in junk.values())
    left = retained_left(mqtt_probe(broker).connect(), topics.node_tree_filter())
    assert left == {topics.status("edge0"): b"online"}


async def test_the_cloud_identity_may_clear_a_nodes_junk_in_production(
        production_broker, mqtt_probe):
    broker, creds = production_broker
    node_a = mqtt_probe(broker, creds.client("node-a")).connect()
    junk = topics.progress("node-a", "junk1")
    assert node_a.publish(junk, b"x" * 1000, retain=True).value in (0, 16)
    cloud_id = creds.client("cloud")
    settings = MqttSettings(url=broker.url, client_id="cloud-test", ca_file=cloud_id.ca,
                            cert_file=cloud_id.cert, key_file=cloud_id.key)
    sweeper = await sweep_once(settings)
    assert sweeper.stats.cleared == 1 and not sweeper.stats.last_error
    left = retained_left(mqtt_probe(broker, cloud_id).connect(), f"{topics.ROOT}/node/node-a/#")
    assert junk not in left
