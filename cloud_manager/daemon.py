"""``edgeloop cloud``: the cloud manager process, wiring :class:`Manager` to the broker.

Subscriptions: the API (``api/+``), every node's status, sample reports, task progress and
hard examples (acknowledged to the node once durably in the inbox), model chunk requests
(served from the registry) and pushed chunks of trained models it pulls into the registry.
Each message is handled in one store transaction and what it produced is published after the
commit; the broker's message is acknowledged only after its handler ran (see
:mod:`edgeloop.mqtt`), so a crash mid-handler means the broker redelivers it and the store's
processed keys stop it from counting twice. A clock tick drives periodic trigger checks, task
deadlines and retries.

Manifests published as plain text (``mosquitto_pub -t edgeloop/v1/api/apply -f job.yaml``) have
no MQTT v5 response topic: their answer goes to ``edgeloop/v1/reply/mqtt-text``
(:data:`TEXT_REPLY_TOPIC`), where ``mosquitto_sub`` can read it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cloud_manager.artifact_pull import ArtifactPuller, PullError
from cloud_manager.manager import Manager, Pull
from cloud_manager.outgoing import Outgoing
from cloud_manager.registry import RegistryError
from edgeloop.mqtt import Delivery, MqttClient, MqttSettings, NotConnected
from edgeloop.reliable import Acknowledger
from protocol import topics
from protocol.messages import (
    ApiRequest,
    ApiResponse,
    ChunkRequest,
    HardExample,
    NodeStatus,
    SampleReport,
    TaskProgress,
)

log = logging.getLogger("edgeloop.cloud")

TEXT_REPLY_CLIENT = "mqtt-text"
TEXT_REPLY_TOPIC = topics.api_response(TEXT_REPLY_CLIENT)
TICK_SECONDS = 1.0


class CloudDaemon:
    def __init__(
        self,
        settings: MqttSettings,
        manager: Manager,
        *,
        tick_s: float = TICK_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        self.client = MqttClient(settings)
        self.tick_s = tick_s
        self.clock = clock
        self._lock = asyncio.Lock()  # one event at a time: the store has one writer
        self.client.subscribe(topics.api_request_filter(), self._on_api)
        self.client.subscribe(topics.node_filter(topics.Kind.STATUS), self._on_status)
        self.client.subscribe(topics.node_filter(topics.Kind.SAMPLES), self._on_samples)
        self.client.subscribe(topics.node_filter(topics.Kind.PROGRESS), self._on_progress)
        self.acknowledger = Acknowledger(self.client)
        if manager.inbox is not None:
            self.client.subscribe(topics.node_filter(topics.Kind.HARDEX), self._on_hardex)
        self.puller: ArtifactPuller | None = None
        self._pull_tasks: set[asyncio.Task[None]] = set()
        if manager.registry is not None:
            self.puller = ArtifactPuller(self.client, manager.registry)
            self.client.subscribe(topics.node_filter(topics.Kind.ARTIFACT_REQUEST), self._on_chunk_request)
        self.client.on_connect(self._on_connect)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or forever)."""
        stop = stop or asyncio.Event()
        async with self.client:
            ticker = asyncio.create_task(self._tick_loop(stop), name="cloud-tick")
            try:
                await stop.wait()
            finally:
                ticker.cancel()
                for task in self._pull_tasks:
                    task.cancel()
                await asyncio.gather(ticker, *self._pull_tasks, return_exceptions=True)

    async def publish(self, messages: list[Outgoing]) -> None:
        for out in messages:
            try:
                if out.message is None:
                    await self.client.publish_bytes(out.topic, b"", retain=out.retain)
                else:
                    await self.client.publish(out.topic, out.message, retain=out.retain)
            except NotConnected:
                # Everything is in the store; the resync after reconnecting sends it again.
                log.info("not connected: %s will be re-sent on reconnect", out.topic)
                return

    async def _run(self, what: str, work: Callable[[], list[Outgoing]]) -> None:
        async with self._lock:
            try:
                messages = work()
            except Exception:
                log.exception("handling %s failed; state unchanged", what)
                return
        await self.publish(messages)
        self._start_pulls()

    def _start_pulls(self) -> None:
        for pull in self.manager.take_pulls():
            if self.puller is None:
                continue
            task = asyncio.create_task(self._pull(pull), name=f"pull:{pull.name}:{pull.version}")
            self._pull_tasks.add(task)
            task.add_done_callback(self._pull_tasks.discard)

    async def _pull(self, pull: Pull) -> None:
        assert self.puller is not None
        ok, reason = True, ""
        try:
            for artifact in pull.artifacts:
                await self.puller.pull(pull.node, artifact["name"], artifact["sha256"], artifact["size"])
        except (PullError, RegistryError, OSError) as exc:
            ok, reason = False, str(exc)
            log.warning("%s/%s version %d: %s", pull.namespace, pull.name, pull.version, reason)
        await self._run(f"pull of {pull.name} version {pull.version}",
                        lambda: self.manager.on_collected(pull, ok, reason, self.clock()))

    # -- handlers --

    async def _on_connect(self) -> None:
        await self._run("resync", lambda: self.manager.resync(self.clock()))
        log.info("cloud manager connected to %s and in sync", self.client.settings.url)

    async def _on_api(self, delivery: Delivery) -> None:
        request = delivery.message
        if not isinstance(request, ApiRequest):
            return
        async with self._lock:
            try:
                response, messages = self.manager.on_api(request, self.clock())
            except Exception as exc:
                log.exception("API %s failed", request.verb)
                response, messages = ApiResponse(
                    request_id=request.request_id, ok=False, code=500,
                    message=f"internal error: {type(exc).__name__}: {exc}"), []
        log.info("api %s %s %s/%s: %s %s", request.verb, request.resource, request.namespace,
                 request.name, response.code, response.message)
        try:
            if delivery.response_topic:
                await self.client.reply(delivery, response)
            else:
                await self.client.publish(TEXT_REPLY_TOPIC, response)
        except NotConnected:
            log.info("API answer to %s lost: not connected", request.request_id)
        await self.publish(messages)
        self._start_pulls()

    async def _on_status(self, delivery: Delivery) -> None:
        if isinstance(delivery.message, NodeStatus):
            status = delivery.message
            await self._run(f"status of {status.node}",
                            lambda: self.manager.on_status(status, self.clock()))

    async def _on_samples(self, delivery: Delivery) -> None:
        if isinstance(delivery.message, SampleReport):
            report = delivery.message
            await self._run(f"samples of {report.node}",
                            lambda: self.manager.on_samples(report, self.clock()))

    async def _on_progress(self, delivery: Delivery) -> None:
        if isinstance(delivery.message, TaskProgress):
            progress = delivery.message
            await self._run(f"progress of {progress.task_id}",
                            lambda: self.manager.on_progress(progress, self.clock()))

    async def _on_hardex(self, delivery: Delivery) -> None:
        example = delivery.message
        inbox = self.manager.inbox
        if not isinstance(example, HardExample) or inbox is None:
            return
        try:
            stored = await asyncio.to_thread(inbox.store, example)
        except OSError as exc:
            # Not acknowledged: the node keeps it and sends it again later.
            log.error("hard example %s from %s not stored: %s", example.sha256[:12], example.node, exc)
            return
        if stored.new:
            log.debug("hard example %s from %s stored", example.sha256[:12], example.node)
        self.acknowledger.ack(example.node, example.key)

    async def _on_chunk_request(self, delivery: Delivery) -> None:
        request = delivery.message
        registry = self.manager.registry
        if not isinstance(request, ChunkRequest) or registry is None:
            return
        chunk = await asyncio.to_thread(registry.chunk, request.node, request)
        if chunk.error:
            log.info("chunk %d of %s for %s: %s", request.index, request.sha256[:12], request.node,
                     chunk.error)
        try:
            await self.client.publish(topics.node_topic(topics.Kind.ARTIFACT_CHUNK, request.node), chunk)
        except NotConnected:
            pass  # the node asks again

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.tick_s)
            await self._run("tick", lambda: self.manager.tick(self.clock()))
