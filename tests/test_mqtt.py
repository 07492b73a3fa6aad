"""The MQTT client layer against a real mosquitto: round trips, limits, faults, request/response,
reliable send across a broker crash."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest
from message_samples import samples

from edgeloop.backoff import Backoff
from edgeloop.mqtt import (
    Delivery,
    MqttClient,
    MqttSettings,
    Redeliver,
    RequestTimeout,
    new_client_id,
)
from edgeloop.reliable import Acknowledger, Deduper, ReliableSender
from protocol import topics
from protocol.codec import PayloadTooLarge
from protocol.messages import (
    ApiRequest,
    ApiResponse,
    HardExample,
    HardExampleSidecar,
    NodeStatus,
    Refusal,
    SampleReport,
)
from protocol.topics import Kind

pytestmark = pytest.mark.broker


def settings(url: str, client_id: str, **overrides) -> MqttSettings:
    return MqttSettings(url=url, client_id=client_id, backoff_max=0.5, **overrides)


class Inbox:
    """Collects deliveries and lets a test wait for a count."""

    def __init__(self) -> None:
        self.items: list[Delivery] = []
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.items.append(delivery)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        async def wait() -> None:
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.items


async def test_every_message_kind_round_trips_through_the_broker(broker):
    inbox = Inbox()
    receiver = MqttClient(settings(broker.url, "receiver"))
    receiver.subscribe(f"{topics.ROOT}/#", inbox)
    sample_messages = samples()
    async with receiver, MqttClient(settings(broker.url, "sender")) as sender:
        await receiver.wait_connected(5)
        await sender.wait_connected(5)
        for topic, message in sample_messages.values():
            assert await sender.publish(topic, message)
        await inbox.wait_for(len(sample_messages))
    received = {d.topic: d.message for d in inbox.items}
    for kind, (topic, message) in sample_messages.items():
        assert received[topic] == message, kind


async def test_oversize_publish_is_refused_in_the_client_and_the_connection_stays_up(broker):
    inbox = Inbox()
    small = settings(broker.url, "edge0", max_payload=64 * 1024)
    receiver = MqttClient(settings(broker.url, "cloud"))
    receiver.subscribe(topics.node_filter(Kind.HARDEX), inbox)
    image = random.Random(1).randbytes(100 * 1024)
    big = HardExample(
        node="edge0",
        job="ns/job",
        sha256=hashlib.sha256(image).hexdigest(),
        image=image,
        sidecar=HardExampleSidecar(),
    )
    async with receiver, MqttClient(small) as sender:
        await receiver.wait_connected(5)
        await sender.wait_connected(5)
        with pytest.raises(PayloadTooLarge, match="over the 65536 byte"):
            await sender.publish(topics.hardex("edge0"), big)
        assert sender.stats.refused_oversize == 1
        # still connected on the same connection, and it still works
        small_image = image[:1000]
        ok = big.model_copy(
            update={"image": small_image, "sha256": hashlib.sha256(small_image).hexdigest()}
        )
        assert await sender.publish(topics.hardex("edge0"), ok)
        await inbox.wait_for(1)
        assert sender.connected and sender.stats.connects == 1
    assert [d.message.key for d in inbox.items] == [ok.key]


async def test_malformed_messages_are_counted_and_the_loop_goes_on(broker):
    inbox = Inbox()
    receiver = MqttClient(settings(broker.url, "cloud"))
    receiver.subscribe(topics.node_filter(Kind.STATUS), inbox)
    good = NodeStatus(node="edge0", state="online", boot_id="b1")
    async with receiver, MqttClient(settings(broker.url, "edge0")) as sender:
        await receiver.wait_connected(5)
        await sender.wait_connected(5)
        await sender.publish_bytes(topics.status("edge0"), b"\xc1 not msgpack")
        await sender.publish_bytes(topics.status("edge1"), b"\x81\xa1v\x07")
        await sender.publish(topics.status("edge0"), good)
        await inbox.wait_for(1)
        assert receiver.stats.protocol_errors == 2
    assert [d.message for d in inbox.items] == [good]


async def test_request_response_with_correlation_data(broker):
    server = MqttClient(settings(broker.url, "cloud"))

    async def answer(delivery: Delivery) -> None:
        request = delivery.message
        await server.reply(
            delivery,
            ApiResponse(request_id=request.request_id, ok=True, data={"verb": request.verb}),
        )

    server.subscribe(topics.api_request_filter(), answer)
    cli = MqttClient(settings(broker.url, new_client_id("cli"), session_expiry=0))
    async with server, cli:
        await server.wait_connected(5)
        response = await cli.request(
            topics.api_request("get"), ApiRequest(request_id="r-1", resource="jobs"), timeout=5
        )
        assert response.ok and response.request_id == "r-1"
        assert response.data == {"verb": "get"}


async def test_request_without_a_responder_times_out_clearly(broker):
    async with MqttClient(settings(broker.url, new_client_id("cli"), session_expiry=0)) as cli:
        with pytest.raises(RequestTimeout, match="is the cloud manager running"):
            await cli.request(topics.api_request("get"), ApiRequest(request_id="r"), timeout=0.5)


async def test_reliable_send_survives_a_broker_kill(broker):
    """kill -9 of the broker in the middle of a stream: the clients reconnect and re-subscribe by
    themselves and every message sent with the reliable send arrives (duplicates deduped)."""
    total = 300
    received: set[str] = set()
    dedupe = Deduper()
    all_arrived = asyncio.Event()

    cloud = MqttClient(settings(broker.url, "cloud"))
    acks = Acknowledger(cloud)

    async def on_report(delivery: Delivery) -> None:
        message = delivery.message
        if not dedupe.seen(message.key):
            received.add(message.key)
        acks.ack(message.node, message.key)  # durable here: it is in `received`
        if len(received) == total:
            all_arrived.set()

    cloud.subscribe(topics.node_filter(Kind.SAMPLES), on_report)
    edge = MqttClient(settings(broker.url, "edge0"))
    sender = ReliableSender(edge, topics.ack("edge0"), resend_after=1.0)
    sent: list[str] = []
    async with cloud, edge, sender:
        await cloud.wait_connected(5)
        await edge.wait_connected(5)
        for seq in range(total):
            report = SampleReport(node="edge0", boot_id="b1", seq=seq)
            sent.append(await sender.send(topics.samples("edge0"), report))
            if seq == total // 3:
                broker.kill()
            if seq == total // 2:
                broker.restart()
            await asyncio.sleep(0.002)
        await asyncio.wait_for(all_arrived.wait(), 30)
        await sender.wait_drained(10)
        assert edge.stats.connects >= 2 and cloud.stats.connects >= 2
    assert received == set(sent)
    assert sender.pending == 0


def test_backoff_grows_with_jitter_and_resets():
    backoff = Backoff(initial=0.1, maximum=2.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert backoff.cap() == 2.0
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    backoff.reset()
    assert backoff.cap() == pytest.approx(0.1)


def test_deduper_forgets_oldest_beyond_capacity():
    dedupe = Deduper(capacity=2)
    assert [dedupe.seen(k) for k in "aab"] == [False, True, False]
    dedupe.seen("c")  # evicts "a"
    assert dedupe.seen("a") is False
    assert dedupe.duplicates == 1


async def test_a_slow_handler_slows_the_broker_down_instead_of_losing_messages(broker):
    """The client stops reading while its queue is full and acknowledges after the handler: the
    incoming queue stays bounded and nothing is dropped, however far the handler falls behind."""
    total, high_water = 300, 8
    inbox = Inbox()

    async def slow(delivery: Delivery) -> None:
        await asyncio.sleep(0.002)
        await inbox(delivery)

    receiver = MqttClient(settings(broker.url, "cloud", incoming_high_water=high_water))
    receiver.subscribe(topics.node_filter(Kind.SAMPLES), slow)
    async with receiver, MqttClient(settings(broker.url, "edge0")) as sender:
        await receiver.wait_connected(5)
        await sender.wait_connected(5)
        await asyncio.gather(
            *(
                sender.publish(topics.samples("edge0"), SampleReport(node="edge0", boot_id="b", seq=i))
                for i in range(total)
            )
        )
        await inbox.wait_for(total, timeout=30)
    assert sorted(d.message.seq for d in inbox.items) == list(range(total))
    # one socket read may decode a few packets past the mark before reading pauses
    assert receiver.stats.queue_high_water <= 2 * high_water


async def test_a_batch_subscription_gets_what_arrived_together_in_order(broker):
    """Messages that wait while the handler is busy come as one batch (never over max_batch),
    in arrival order; a message for a plain subscription in between is delivered in its turn."""
    batches: list[list[int]] = []
    order: list[str] = []
    first = asyncio.Event()

    async def on_batch(deliveries: list[Delivery]) -> None:
        if not batches:
            await first.wait()  # busy: the rest piles up meanwhile
        batches.append([d.message.seq for d in deliveries])
        order.extend(f"s{d.message.seq}" for d in deliveries)

    async def on_status(delivery: Delivery) -> None:
        order.append("status")

    receiver = MqttClient(settings(broker.url, "cloud"))
    receiver.subscribe_batch(topics.node_filter(Kind.SAMPLES), on_batch, max_batch=16)
    receiver.subscribe(topics.node_filter(Kind.STATUS), on_status)
    async with receiver, MqttClient(settings(broker.url, "edge0")) as sender:
        await receiver.wait_connected(5)
        await sender.wait_connected(5)
        def report(seq: int) -> SampleReport:
            return SampleReport(node="edge0", boot_id="b", seq=seq)

        assert await sender.publish(topics.samples("edge0"), report(0))
        for i in range(1, 41):
            assert await sender.publish(topics.samples("edge0"), report(i))
        assert await sender.publish(topics.status("edge0"),
                                    NodeStatus(node="edge0", state="online", boot_id="b"))
        for i in range(41, 61):
            assert await sender.publish(topics.samples("edge0"), report(i))
        first.set()
        async with asyncio.timeout(10):
            while sum(map(len, batches)) < 61:
                await asyncio.sleep(0.01)
    assert [seq for batch in batches for seq in batch] == list(range(61))
    assert max(map(len, batches)) <= 16 and max(map(len, batches)) > 1
    assert order.index("status") == order.index("s40") + 1


async def test_a_handler_that_cannot_take_its_messages_gets_them_again(broker):
    """Redeliver: nothing of the batch is acknowledged, the client reconnects and the broker
    sends the lot again."""
    seen: list[int] = []
    refused: list[int] = []

    async def on_batch(deliveries: list[Delivery]) -> None:
        if not refused:
            refused.extend(d.message.seq for d in deliveries)
            raise Redeliver("store unavailable")
        seen.extend(d.message.seq for d in deliveries)

    receiver = MqttClient(settings(broker.url, "cloud"))
    receiver.subscribe_batch(topics.node_filter(Kind.SAMPLES), on_batch)
    async with receiver, MqttClient(settings(broker.url, "edge0")) as sender:
        await receiver.wait_connected(5)
        await sender.wait_connected(5)
        for i in range(20):
            assert await sender.publish(topics.samples("edge0"),
                                        SampleReport(node="edge0", boot_id="b", seq=i))
        async with asyncio.timeout(10):
            while set(seen) != set(range(20)):
                await asyncio.sleep(0.01)
    assert refused and set(refused) <= set(seen)
    assert receiver.stats.redeliveries == 1 and receiver.stats.connects == 2


async def test_the_subscriptions_a_topic_goes_to_follow_new_subscriptions():
    """What a topic matched is remembered per topic, and forgotten when a subscription is added."""
    client = MqttClient(settings("mqtt://127.0.0.1:1", "matcher"))
    inbox, other = Inbox(), Inbox()
    client.subscribe(topics.node_filter(Kind.SAMPLES), inbox)
    topic = topics.samples("node-1")
    first = client._matching(topic)
    assert [sub.handler for sub in first] == [inbox]
    assert client._matching(topic) is first
    assert client._matching(topics.status("node-1")) == []
    client.subscribe(topics.samples("node-1"), other)
    assert [sub.handler for sub in client._matching(topic)] == [inbox, other]
    assert [sub.handler for sub in client._matching(topics.samples("node-2"))] == [inbox]


async def test_acknowledgements_queued_while_a_flush_publishes_go_out_too():
    """An ack or refusal added while the acknowledger is publishing the previous ones is not
    left behind (the sender would wait for its resend timeout)."""
    sent: list[tuple[list[str], list[str]]] = []
    release = asyncio.Event()
    publishing, all_sent = asyncio.Event(), asyncio.Event()

    class Client:
        async def publish(self, topic: str, message) -> bool:  # noqa: ANN001
            publishing.set()
            await release.wait()
            sent.append((list(message.keys), list(message.refused)))
            if len(sent) == 3:
                all_sent.set()
            return True

    acknowledger = Acknowledger(Client(), linger=0)  # type: ignore[arg-type]
    acknowledger.ack("node-1", "k1")
    await publishing.wait()  # the first flush is publishing k1
    acknowledger.ack("node-1", "k2")
    acknowledger.refuse("node-1", "k3", Refusal(reason="no such job"))
    release.set()
    await asyncio.wait_for(all_sent.wait(), 10)
    assert sent == [(["k1"], []), (["k2"], []), ([], ["k3"])]


async def test_a_shared_subscription_is_matched_by_its_filter_and_a_stale_one_dropped(broker):
    """``$share/GROUP/FILTER`` delivers on the message's own topic, routed by FILTER; a filter
    an earlier run left in the persistent session (``drop_stale``) is unsubscribed first, so a
    message arrives once, not once per subscription."""
    node_samples = topics.node_filter(Kind.SAMPLES)
    earlier = MqttClient(settings(broker.url, "manager"))
    earlier.subscribe(node_samples, Inbox())
    async with earlier:
        await earlier.wait_connected(5)
    inbox = Inbox()
    now = MqttClient(settings(broker.url, "manager"))
    now.subscribe_batch(f"$share/g/{node_samples}", lambda batch: _each(inbox, batch))
    now.drop_stale(node_samples)
    async with now, MqttClient(settings(broker.url, "node-x")) as node:
        await now.wait_connected(5)
        await node.wait_connected(5)
        for seq in (1, 2):
            await node.publish(topics.samples("node-x"),
                               SampleReport(node="node-x", boot_id="b", seq=seq))
        await inbox.wait_for(2)
    assert [d.message.seq for d in inbox.items[:2]] == [1, 2]  # not 1 twice


async def _each(inbox: Inbox, batch: list[Delivery]) -> None:
    for delivery in batch:
        await inbox(delivery)
