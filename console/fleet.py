"""The fleet page's view, without I/O: one row per node from the cloud's ``get nodes`` answer and
each job's ``describe`` targets.

The cloud's rows grow as the project does (per-camera serving versions and FPS, rollout stages):
whatever a row carries beyond the fields named here is passed on under ``extra`` and shown as it
is, so a new field appears on the page without a change here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: The node-row fields the page shows in their own columns.
NODE_FIELDS = ("name", "state", "boot_id", "agent_version", "outbox_backlog", "updated",
               "labels")
#: The target-row fields shown as "serving v (wants d)".
TARGET_FIELDS = ("node", "state", "desired", "serving", "health", "seen", "labels")
#: Where a node row may carry the address of its live-view page.
LIVE_VIEW_FIELDS = ("live_view_url", "live_view")


@dataclass
class JobOnNode:
    """What one job wants a node to serve, and what the node says it serves."""

    job: str
    desired: Any = None
    serving: Any = None
    health: str = ""
    #: the target row's other fields (a rollout stage, per-camera versions...)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class NodeRow:
    name: str
    state: str = "unknown"
    updated: float | None = None
    agent_version: str = ""
    outbox_backlog: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    live_view: str | None = None
    cameras: Any = None
    jobs: list[JobOnNode] = field(default_factory=list)
    #: the node row's other fields
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def live_view_of(row: Mapping[str, Any]) -> str | None:
    """The node's live-view address when its row gives one as an http(s) URL; anything else
    is not made a link."""
    for key in LIVE_VIEW_FIELDS:
        value = row.get(key)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value
    capabilities = row.get("capabilities")
    if isinstance(capabilities, Mapping):
        return live_view_of(capabilities)
    return None


def fleet(nodes: Iterable[Mapping[str, Any]],
          targets: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[NodeRow]:
    """Every node the cloud knows or a job targets, by name, with each job's version on it.

    ``targets`` maps a job (``namespace/name``) to its ``describe`` target rows."""
    rows: dict[str, NodeRow] = {}
    for node in nodes:
        name = str(node.get("name") or "")
        if not name:
            continue
        rows[name] = NodeRow(
            name=name, state=str(node.get("state") or "unknown"),
            updated=node.get("updated"), agent_version=str(node.get("agent_version") or ""),
            outbox_backlog=node.get("outbox_backlog"), labels=dict(node.get("labels") or {}),
            live_view=live_view_of(node), cameras=node.get("cameras"),
            extra={k: v for k, v in node.items()
                   if k not in NODE_FIELDS and k not in LIVE_VIEW_FIELDS and k != "cameras"})
    for job, job_targets in sorted(targets.items()):
        for target in job_targets:
            name = str(target.get("node") or "")
            if not name:
                continue
            row = rows.setdefault(name, NodeRow(name=name, state="never seen"))
            row.jobs.append(JobOnNode(
                job=job, desired=target.get("desired"), serving=target.get("serving"),
                health=str(target.get("health") or ""),
                extra={k: v for k, v in target.items() if k not in TARGET_FIELDS}))
    return [rows[name] for name in sorted(rows)]


def job_summary(job: str, described: Mapping[str, Any]) -> dict[str, Any]:
    """A job's line on the fleet page: its stage and deployed version, and whatever the cloud
    says of its rollout (any field named ``rollout...``, in the describe answer or its
    status)."""
    status = described.get("status") or {}
    rollout = {k: v for source in (described, status) for k, v in source.items()
               if k.startswith("rollout")}
    return {"job": job, "stage": status.get("stage"), "state": status.get("state"),
            "round": status.get("round"), "deployed_version": status.get("deployed_version"),
            "rollout": rollout}
