"""A real cloud manager daemon in the test's process, and the API as the CLI calls it; shared by
the cloud daemon tests and the cloud + agent integration test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cloud_manager import state_machine as sm
from cloud_manager.api_client import call, new_request
from cloud_manager.daemon import CloudDaemon
from cloud_manager.distribution import FanoutPolicy
from cloud_manager.hardex_admission import HardexQuotas
from cloud_manager.hardex_inbox import HardExampleInbox
from cloud_manager.manager import Manager
from cloud_manager.registry import ModelRegistry
from cloud_manager.store import Store
from edgeloop.connection import ConnectionOptions
from edgeloop.mqtt import MqttSettings
from protocol.messages import ApiResponse


@asynccontextmanager
async def cloud(url: str, state: Path, *, read_node_paths: bool = True,
                hardex_quotas: HardexQuotas | None = None,
                fanout: FanoutPolicy | None = None,
                store_url: str | None = None) -> AsyncIterator[CloudDaemon]:
    """Fast retries and ticks for tests. ``read_node_paths=False`` makes it behave as if on
    another machine: every trained file must be pulled from its node. ``store_url``: the store
    in that PostgreSQL database instead of the state directory."""
    store = Store(url=store_url) if store_url else Store(state)
    manager = Manager(store, settings=sm.MachineSettings(retry_initial_s=0.2, retry_max_s=1),
                      inbox=HardExampleInbox(state / "hardex"),
                      registry=ModelRegistry(state / "models"), read_node_paths=read_node_paths)
    daemon = CloudDaemon(MqttSettings(url=url, client_id="cloud", backoff_max=0.5), manager,
                         tick_s=0.05, hardex_quotas=hardex_quotas, fanout=fanout)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await daemon.client.wait_connected(10)
    try:
        yield daemon
    finally:
        stop.set()
        await runner
        store.close()


def job_state(daemon: CloudDaemon, namespace: str, name: str) -> sm.JobState:
    state = daemon.manager.store.load_job(namespace, name)
    assert state is not None
    return state


async def api(url: str, verb: str, **fields) -> ApiResponse:
    (response,) = await call(ConnectionOptions(broker=url), verb, new_request(**fields), timeout=10)
    return response
