"""Backlogs and floods over a real broker: a restarted cloud manager or agent works off what
queued for it while it was away, and a burst of requests on a running manager is answered in
full, without the connection stalling. Each test waits for answers; the overall timeouts only
fire on a real stall."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from agent_cloud import FakeCloud, agent_config
from running_cloud import api, cloud
from test_cloud_daemon import wait_for

from cloud_manager.api_client import new_request
from edge_agent.daemon import Agent
from edgeloop.mqtt import Delivery, MqttClient, MqttSettings
from protocol import topics
from protocol.messages import ApiResponse, Chunk, ChunkRequest

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

BACKLOG = 500
BURST = 300
STALL = 60.0  # seconds without an answer that only a stall explains
T = TypeVar("T")


async def answered(what: str, awaitable: Awaitable[T]) -> T:
    try:
        async with asyncio.timeout(STALL):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"stalled: {what}") from None


async def queue_garbage(url: str, topic: str, count: int) -> None:
    """``count`` QoS 1 messages that decode to nothing, as ``mosquitto_pub -l`` would send."""
    settings = MqttSettings(url=url, client_id="flooder", session_expiry=0)
    async with MqttClient(settings) as flooder:
        await flooder.wait_connected(10)
        results = await asyncio.gather(
            *(flooder.publish_bytes(topic, f"x{i}".encode()) for i in range(count)))
    assert all(results)


async def test_a_restarted_manager_works_off_its_backlog_and_answers(broker, tmp_path):
    async with cloud(broker.url, tmp_path / "state"):
        pass  # the manager's persistent session now exists; it is away from here on
    await queue_garbage(broker.url, topics.status("edge0"), BACKLOG)
    async with cloud(broker.url, tmp_path / "state") as daemon:
        response = await answered("get after the restart", api(broker.url, "get", resource="nodes"))
        assert response.ok
        await wait_for(lambda: daemon.client.stats.protocol_errors >= BACKLOG,
                       "the backlog worked off", STALL)
    assert daemon.client.stats.queue_high_water <= 2 * daemon.client.settings.incoming_high_water


async def test_a_restarted_agent_works_off_its_backlog_and_comes_online(broker, tmp_path):
    config = agent_config(broker.url, tmp_path / "state")
    async with FakeCloud(broker.url) as fake:
        async with Agent(config):
            await answered("first start", fake.wait_for(
                lambda: [s for s in fake.statuses() if s.state == "online"], timeout=STALL))
        await queue_garbage(broker.url, topics.labels(config.node), BACKLOG)
        fake.messages.clear()
        async with Agent(config) as agent:
            await answered("online after the restart", fake.wait_for(
                lambda: [s for s in fake.statuses() if s.state == "online"], timeout=STALL))
            await wait_for(lambda: agent.client.stats.protocol_errors >= BACKLOG,
                           "the backlog worked off", STALL)


async def test_a_burst_of_api_requests_is_answered_in_full(broker, tmp_path):
    async with cloud(broker.url, tmp_path / "state"):
        settings = MqttSettings(url=broker.url, client_id="burst", session_expiry=0)
        async with MqttClient(settings) as caller:
            await caller.wait_connected(10)
            requests = [new_request(verb="get", resource="nodes") for _ in range(BURST)]
            responses: list[ApiResponse] = await answered("the burst", asyncio.gather(
                *(caller.request(topics.api_request("get"), r, timeout=STALL) for r in requests)))
    assert len(responses) == BURST and all(r.ok for r in responses)


async def test_a_burst_of_chunk_requests_from_one_node_leaves_the_api_answering(broker, tmp_path):
    answers: list[Chunk] = []
    all_answered = asyncio.Event()

    async def on_chunk(delivery: Delivery) -> None:
        assert isinstance(delivery.message, Chunk)
        answers.append(delivery.message)
        if len(answers) >= BURST:
            all_answered.set()

    node = MqttClient(MqttSettings(url=broker.url, client_id="edge0", session_expiry=0))
    node.subscribe(topics.node_topic(topics.Kind.ARTIFACT_CHUNK, "edge0"), on_chunk)
    async with cloud(broker.url, tmp_path / "state"), node:
        await node.wait_connected(10)
        requests = [ChunkRequest(node="edge0", sha256="ab" * 32, index=i) for i in range(BURST)]
        sent = await asyncio.gather(*(node.publish(
            topics.node_topic(topics.Kind.ARTIFACT_REQUEST, "edge0"), r) for r in requests))
        assert all(sent)
        response = await answered("get during the burst", api(broker.url, "get", resource="nodes"))
        assert response.ok
        await answered("every chunk request", all_answered.wait())
    assert all(chunk.error for chunk in answers)  # no such artifact: each answered with why
