"""``label_import``: labelled samples from the CLI, forwarded to the node that holds the job's
dataset index, answered once that node has said what became of each.

The cloud keeps no copy of the samples: the node's index is where labels live (its watcher counts
them and the train trigger fires as for any new line). Each sample travels as one
:class:`LabelledSample` through a :class:`ReliableSender` (resent until the node's
:class:`LabelReceipt` names its key), so a lost message or a node reconnecting mid-import costs
nothing. The CLI's answer waits for those receipts, up to ``wait_s``; a sample not confirmed by
then is reported as pending and keeps being resent while the manager runs. Importing again is
always safe: the node adds a (dataset, sha256) once.

This runs beside the daemon's one-event-at-a-time handling, not inside it: receipts arrive on the
same connection while the answer waits for them. The store is read under the daemon's lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Self

from pydantic import ValidationError

from cloud_manager.api import ApiError, LabelTarget, to_json
from cloud_manager.manager import Manager
from edgeloop.mqtt import Delivery, MqttClient, NotConnected
from edgeloop.reliable import ReliableSender
from protocol import topics
from protocol.codec import PayloadTooLarge, describe_validation_error
from protocol.messages import ApiRequest, ApiResponse, LabelledSample, LabelReceipt
from protocol.topics import Kind

log = logging.getLogger("edgeloop.cloud.labels")

#: How long an answer waits for the node's receipts when the request does not say.
DEFAULT_WAIT_S = 30.0
MAX_WAIT_S = 600.0


class LabelForwarder:
    """Use as ``async with``: it runs the reliable sender's resend loop while entered."""

    def __init__(
        self,
        client: MqttClient,
        manager: Manager,
        lock: asyncio.Lock,
        text_reply_topic: str,
        *,
        resend_after: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.manager = manager
        self.lock = lock
        self.text_reply_topic = text_reply_topic
        self.clock = clock
        receipts = topics.node_filter(Kind.LABEL_ACK)
        self.sender = ReliableSender(client, receipts, resend_after=resend_after)
        client.subscribe(receipts, self._on_receipt)
        self._waiting: dict[str, list[asyncio.Future[dict[str, str]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.sender.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sender.__aexit__(*exc_info)

    def accept(self, delivery: Delivery) -> None:
        """Handle a ``label_import`` request in the background; it answers by itself."""
        task = asyncio.create_task(self._serve(delivery), name="label-import")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, delivery: Delivery) -> None:
        request = delivery.message
        assert isinstance(request, ApiRequest)
        try:
            response = await self.forward(request)
        except Exception as exc:  # the CLI gets an answer whatever happened
            log.exception("label import %s failed", request.request_id)
            response = ApiResponse(request_id=request.request_id, ok=False, code=500,
                                   message=f"internal error: {type(exc).__name__}: {exc}")
        log.info("api label_import %s/%s: %s %s", request.namespace, request.name, response.code,
                 response.message)
        try:
            if delivery.response_topic:
                await self.client.reply(delivery, response)
            else:
                await self.client.publish(self.text_reply_topic, response)
        except NotConnected:
            log.info("label import answer to %s lost: not connected", request.request_id)

    async def forward(self, request: ApiRequest) -> ApiResponse:
        """Send the request's samples to the dataset's node and say what became of each."""
        if not request.args.get("samples"):
            async with self.lock:
                response, _ = self.manager.on_api(request, self.clock())
            return response
        try:
            async with self.lock:
                with self.manager.store.transaction():
                    target = self.manager.api.label_target(request)
            messages, results = build_samples(request, target)
        except ApiError as exc:
            return ApiResponse(request_id=request.request_id, ok=False, code=exc.code,
                               message=exc.message, errors=exc.errors)
        if not target.online:
            return ApiResponse(
                request_id=request.request_id, ok=False, code=409,
                message=f"node {target.node}, which holds dataset {target.dataset}, is "
                        "offline; nothing was sent (import again once it is online)")
        wait_s = request.args.get("wait_s", DEFAULT_WAIT_S)
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float):
            wait_s = DEFAULT_WAIT_S
        outcomes = await self._send_and_wait(target.node, messages,
                                             min(max(float(wait_s), 0.1), MAX_WAIT_S))
        for sample in messages:
            results[sample.sha256] |= outcomes.get(
                sample.key, {"status": "pending",
                             "reason": f"node {target.node} has not confirmed it yet"})
        await asyncio.to_thread(self._mark_labelled, target, results)
        counts = {s: sum(1 for r in results.values() if r["status"] == s)
                  for s in ("added", "present", "rejected", "pending")}
        summary = (f"{counts['added']} added, {counts['present']} already in the dataset, "
                   f"{counts['rejected']} rejected, {counts['pending']} not confirmed")
        data = dataclasses.asdict(target) | {"counts": counts, "results": list(results.values())}
        return ApiResponse(request_id=request.request_id, ok=True, code=200, message=summary,
                           data=to_json(data))

    async def _send_and_wait(self, node: str, messages: list[LabelledSample],
                             wait_s: float) -> dict[str, dict[str, str]]:
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[dict[str, str]]] = {}
        outcomes: dict[str, dict[str, str]] = {}
        try:
            for message in messages:
                future: asyncio.Future[dict[str, str]] = loop.create_future()
                try:
                    await self.sender.send(topics.labels(node), message)
                except PayloadTooLarge as exc:
                    outcomes[message.key] = {"status": "rejected", "reason": exc.reason}
                    continue
                futures[message.key] = future
                self._waiting.setdefault(message.key, []).append(future)
            if futures:
                await asyncio.wait(futures.values(), timeout=wait_s)
        finally:
            for key, future in futures.items():
                if future.done() and not future.cancelled():
                    outcomes[key] = future.result()
                waiting = self._waiting.get(key, [])
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    self._waiting.pop(key, None)
        return outcomes

    async def _on_receipt(self, delivery: Delivery) -> None:
        receipt = delivery.message
        if not isinstance(receipt, LabelReceipt):
            return
        for key, outcome in receipt.outcomes.items():
            for future in self._waiting.get(key, []):
                if not future.done():
                    future.set_result({"status": outcome.status, "reason": outcome.reason})

    def _mark_labelled(self, target: LabelTarget, results: dict[str, dict[str, Any]]) -> None:
        inbox = self.manager.inbox
        if inbox is None:
            return
        now = self.clock()
        for sha256, result in results.items():
            if result["status"] in ("added", "present"):
                try:
                    inbox.mark_labelled(target.job, sha256, target.dataset, now)
                except OSError as exc:  # the label is in the dataset; only the note is missing
                    log.warning("cannot note %s as labelled: %s", sha256[:12], exc)


def build_samples(request: ApiRequest, target: LabelTarget
                  ) -> tuple[list[LabelledSample], dict[str, dict[str, Any]]]:
    """The messages for the request's samples, and a result row per sample (keyed by sha256):
    a sample that cannot become a message is rejected here with the reason."""
    samples = request.args.get("samples")
    if not isinstance(samples, list):
        raise ApiError(400, "samples: expected a list")
    messages: list[LabelledSample] = []
    results: dict[str, dict[str, Any]] = {}
    for i, sample in enumerate(samples):
        sha256 = sample.get("sha256") if isinstance(sample, dict) else None
        if not isinstance(sample, dict) or not isinstance(sha256, str):
            raise ApiError(400, f"samples.{i}: expected an object with sha256, format, boxes")
        source = str(sample.get("source", ""))[:1024]
        if sha256 in results:
            continue  # the same image twice: its first labels count
        row: dict[str, Any] = {"sha256": sha256, "source": source}
        results[sha256] = row
        image = request.attachments.get(sha256)
        if image is None:
            row |= {"status": "rejected", "reason": "its image is not attached to the request"}
            continue
        try:  # format and boxes come as the CLI sent them: the message model checks them
            messages.append(LabelledSample.model_validate({
                "node": target.node, "dataset": target.dataset, "sha256": sha256, "image": image,
                "image_format": sample.get("format", "jpg"), "boxes": sample.get("boxes", []),
                "source": source}))
        except ValueError as exc:
            row |= {"status": "rejected", "reason": _first_error(exc)}
    return messages, results


def _first_error(exc: ValueError) -> str:
    return describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
