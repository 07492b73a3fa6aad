"""Per-node budgets: the pure token buckets, and a flooding node over a real broker."""

from __future__ import annotations

import asyncio
import logging

import pytest
from running_cloud import api, cloud
from test_cloud_daemon import wait_for

from edgeloop.fairness import Budget, NodeBudgets
from edgeloop.flow_control import InflowQueue, Overflow
from edgeloop.mqtt import MqttClient, MqttSettings
from protocol import topics
from protocol.messages import SampleReport


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_node_over_its_message_budget_is_turned_away_and_others_are_not(caplog):
    clock = Clock()
    budgets = NodeBudgets(Budget(messages=3, bytes=10_000, interval_s=1.0), clock=clock)
    with caplog.at_level(logging.WARNING, logger="edgeloop.fairness"):
        admitted = [budgets.admit(topics.samples("edge0"), 10) for _ in range(5)]
        assert budgets.admit(topics.samples("edge1"), 10)  # another node has its own budget
    assert admitted == [True, True, True, False, False]
    assert budgets.refused == {"edge0": 2}
    assert len(caplog.records) == 1 and "edge0" in caplog.records[0].getMessage()
    clock.now = 1 / 3  # a third of an interval refills one message
    assert budgets.admit(topics.samples("edge0"), 10)
    assert not budgets.admit(topics.samples("edge0"), 10)


def test_bytes_count_too_and_topics_of_no_node_always_pass():
    clock = Clock()
    budgets = NodeBudgets(Budget(messages=100, bytes=1000), clock=clock)
    assert budgets.admit(topics.hardex("edge0"), 900)
    assert not budgets.admit(topics.hardex("edge0"), 200)
    assert budgets.admit(topics.api_request("get"), 10**6)
    assert budgets.admit("not/an/edgeloop/topic", 10**6)
    # a message larger than the whole budget passes once the bucket is full, never starves
    clock.now = 10
    assert budgets.admit(topics.hardex("edge0"), 5000)


def test_a_budget_must_allow_something():
    with pytest.raises(ValueError, match="messages >= 1"):
        Budget(messages=0)


def test_inflow_queue_pauses_at_the_high_mark_and_resumes_at_the_low_mark():
    queue: InflowQueue[int] = InflowQueue(4)
    assert [queue.push(i) for i in range(4)] == [True] * 4 and queue.paused
    assert queue.take(1) == [0] and not queue.resume_due()
    assert queue.take(10) == [1, 2, 3] and queue.resume_due() and not queue.paused
    assert queue.peak == 4 and queue.dropped == 0


def test_inflow_queue_that_drops_never_pauses_and_counts():
    queue: InflowQueue[int] = InflowQueue(2, Overflow.DROP)
    assert [queue.push(i) for i in range(4)] == [True, True, False, False]
    assert not queue.paused and queue.dropped == 2 and queue.take(5) == [0, 1]


@pytest.mark.broker
@pytest.mark.timeout(120)
async def test_a_flooding_node_is_held_to_its_budget_and_the_others_are_served(broker, tmp_path):
    """Node flood sends far over its budget; node calm's reports are all handled and the API
    answers; what flood had turned away is counted under its name."""
    async with cloud(broker.url, tmp_path / "state") as daemon:
        daemon.budgets.budget = Budget(messages=20, bytes=10**6, interval_s=3600)
        senders = {}
        for node in ("flood", "calm"):
            senders[node] = MqttClient(MqttSettings(url=broker.url, client_id=node,
                                                    session_expiry=0))
            await senders[node].__aenter__()
            await senders[node].wait_connected(10)
        try:
            flood = [senders["flood"].publish(topics.samples("flood"), SampleReport(
                node="flood", boot_id="b", seq=i)) for i in range(400)]
            calm = [senders["calm"].publish(topics.samples("calm"), SampleReport(
                node="calm", boot_id="b", seq=i)) for i in range(10)]
            assert all(await asyncio.gather(*flood, *calm))
            assert (await api(broker.url, "get", resource="nodes")).ok
            await wait_for(lambda: daemon.budgets.refused["flood"] >= 380
                           and daemon.sample_stats.reports >= 30,
                           "the flood turned away and the rest handled", 60)
        finally:
            for sender in senders.values():
                await sender.close()
    assert daemon.budgets.refused == {"flood": 380}
    assert daemon.client.stats.refused_budget == 380
    assert daemon.sample_stats.reports == 30  # 20 of flood's, all 10 of calm's
