"""A stand-in for the cloud manager in edge-agent tests: records what a node publishes and
acknowledges hard examples like the real inbox does (after "storing" them)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

from edge_agent.config import AgentConfig
from edgeloop.mqtt import Delivery, MqttClient, MqttSettings
from edgeloop.reliable import Acknowledger
from protocol import topics
from protocol.messages import HardExample, Message, NodeStatus, SampleReport, TaskProgress

M = TypeVar("M", bound=Message)
R = TypeVar("R")


def agent_config(url: str, state: Path, **overrides) -> AgentConfig:
    values = {
        "node": "edge-1",
        "broker": url,
        "state_dir": state,
        "reconnect_max_s": 0.5,
        "stop_grace_s": 2.0,
        "hardex_scan_s": 0.5,
        "live_view_port": 0,
    }
    values.update(overrides)
    return AgentConfig(**values)


class FakeCloud:
    """Subscribes to every node topic; ``wait_for`` waits for a condition on what arrived."""

    def __init__(self, url: str, *, ack_hardex: bool = True) -> None:
        self.client = MqttClient(MqttSettings(url=url, client_id="cloud", backoff_max=0.5))
        self.client.subscribe(f"{topics.ROOT}/node/+/#", self._on_message)
        self.acknowledger = Acknowledger(self.client)
        self.ack_hardex = ack_hardex
        self.messages: list[Delivery] = []
        self.hardex_deliveries: Counter[str] = Counter()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        await self.client.wait_connected(10)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()

    async def _on_message(self, delivery: Delivery) -> None:
        self.messages.append(delivery)
        message = delivery.message
        if isinstance(message, HardExample):
            self.hardex_deliveries[message.key] += 1
            if self.ack_hardex:
                self.acknowledger.ack(message.node, message.key)
        self._changed.set()

    def of_type(self, kind: type[M]) -> list[M]:
        return [d.message for d in self.messages if isinstance(d.message, kind)]

    def statuses(self) -> list[NodeStatus]:
        return self.of_type(NodeStatus)

    def progress(self, task_id: str) -> list[TaskProgress]:
        return [p for p in self.of_type(TaskProgress) if p.task_id == task_id]

    def samples(self) -> list[SampleReport]:
        return self.of_type(SampleReport)

    async def wait_for(self, condition: Callable[[], R], timeout: float = 15.0) -> R:
        """Wait until ``condition()`` is truthy and return its value (checked on every message
        and every 0.1 s)."""

        async def wait() -> R:
            while True:
                self._changed.clear()
                value = condition()
                if value:
                    return value
                with contextlib.suppress(TimeoutError):  # also re-check conditions on files
                    await asyncio.wait_for(self._changed.wait(), 0.1)

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"condition not met within {timeout} s; received: "
                + ", ".join(f"{type(d.message).__name__}@{d.topic}" for d in self.messages[-20:])
            ) from None
