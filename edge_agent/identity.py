"""Who this node is for the cloud: its boot id, its capabilities and its status messages.

A boot id names one run of the agent, so the cloud can tell a restart (new boot id) from a
reconnection (same boot id) and key the node's messages ``(node, boot_id, seq)``.
"""

from __future__ import annotations

import os
import platform
import secrets
import time
from dataclasses import dataclass, field
from importlib import metadata

from pydantic import JsonValue

from edgeloop import __version__
from protocol.messages import CameraStatus, NodeStatus, TaskHealth


def new_boot_id() -> str:
    """Time-ordered and unique: ``<unix seconds, hex>-<8 random hex>``."""
    return f"{int(time.time()):x}-{secrets.token_hex(4)}"


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def capabilities() -> dict[str, JsonValue]:
    """What the cloud may want to know before placing work here. Versions are read from package
    metadata: importing TensorFlow would cost seconds and hundreds of MiB."""
    return {
        "cpus": os.cpu_count() or 1,
        "memory_bytes": memory_bytes(),
        "tensorflow": _package_version("tensorflow"),
        "litert": _package_version("ai-edge-litert"),
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
    }


@dataclass
class NodeIdentity:
    """This run of the agent on this node; numbers its status messages."""

    node: str
    boot_id: str = field(default_factory=new_boot_id)
    capabilities: dict[str, JsonValue] = field(default_factory=capabilities)
    #: the node's labels from its settings, in every status (the last will too: a node that
    #: drops off keeps matching its jobs' selectors, so its task waits for it)
    labels: dict[str, str] = field(default_factory=dict)
    _seq: int = 0

    def status(
        self,
        state: str,
        *,
        outbox_backlog: int = 0,
        serving: dict[str, int] | None = None,
        worker_restarts: dict[str, int] | None = None,
        cameras: dict[str, dict[str, CameraStatus]] | None = None,
        health: dict[str, TaskHealth] | None = None,
    ) -> NodeStatus:
        self._seq += 1
        return NodeStatus(
            node=self.node,
            state=state,  # type: ignore[arg-type]
            boot_id=self.boot_id,
            seq=self._seq,
            agent_version=__version__,
            capabilities=self.capabilities,
            serving=serving or {},
            outbox_backlog=outbox_backlog,
            worker_restarts=worker_restarts or {},
            health=health or {},
            labels=self.labels,
            cameras=cameras or {},
        )

    def last_will(self) -> NodeStatus:
        """Published by the broker when the connection dies without a clean goodbye."""
        return NodeStatus(
            node=self.node,
            state="lost",
            boot_id=self.boot_id,
            seq=0,
            agent_version=__version__,
            capabilities=self.capabilities,
            labels=self.labels,
        )
