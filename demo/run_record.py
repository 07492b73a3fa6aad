"""What one demo run leaves behind: where (:class:`RunPaths`, everything under the work
directory) and what (:class:`Outcome`, read by the report and written to summary.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.manifests import JOB, NAMESPACE


@dataclass
class RunPaths:
    """Everything under the work directory."""

    workdir: Path

    @property
    def cache(self) -> Path:
        return self.workdir / "cache"

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def plots(self) -> Path:
        return self.workdir / "plots"

    @property
    def cloud_state(self) -> Path:
        return self.run / "cloud"

    def agent_state(self, node: str) -> Path:
        return self.run / "agents" / node

    @property
    def dataset_index(self) -> Path:
        return self.run / "dataset" / "data.txt"

    @property
    def frame_log(self) -> Path:
        return self.run / "frames.jsonl"

    def node_frame_log(self, node: str) -> Path:
        """The per-frame log of an edge node's camera: edge0's is :attr:`frame_log` (the job's
        parameter), another node's its camera's ``frame_log`` option."""
        from demo.manifests import EDGE_NODE

        return self.frame_log if node == EDGE_NODE else self.run / f"frames-{node}.jsonl"

    @property
    def inbox(self) -> Path:
        return self.cloud_state / "hardex" / NAMESPACE / JOB


@dataclass
class Outcome:
    """What the run produced, for the report and summary.json."""

    ok: bool = False
    error: str | None = None
    durations: dict[str, float] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    base_train: dict[str, Any] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    live_view_url: str = ""
    #: the labelling console's address, with ``--annotator browser``
    console_url: str = ""
    camera_switches: list[dict[str, Any]] = field(default_factory=list)
    #: ``edgeloop describe il`` data at the end: status, conditions, versions, tasks
    job: dict[str, Any] = field(default_factory=dict)
