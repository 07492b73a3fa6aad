"""A job's trained models as values: the round's candidate and the registered model versions.

The job state holds them (:class:`cloud_manager.state_machine.JobState`), the store keeps the
versions (:meth:`cloud_manager.store.Store.model_versions`), and task building reads their files
(:mod:`cloud_manager.task_builder`). Their JSON form is the one the store has always held:
``to_dict`` writes it and ``from_dict`` reads it back, also as older builds wrote it (a version
without ``collected``, an artifact without ``path``). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: The metrics a registered version keeps of its eval result.
VERSION_METRICS = ("precision", "recall", "f1", "map50", "map")


@dataclass(frozen=True)
class Artifact:
    """A file of a trained model: what the train result declared, and where it lies on the
    node that trained it."""

    name: str
    sha256: str
    size: int
    path: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifact:
        return cls(name=data["name"], sha256=data["sha256"], size=int(data["size"]),
                   path=data.get("path") or "")


@dataclass(frozen=True)
class Candidate:
    """The model a round trained, until eval decides whether it becomes a version."""

    artifacts: tuple[Artifact, ...]
    #: the small part of the train result worth keeping (loss, epochs, samples, duration_s)
    result: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(artifacts=tuple(Artifact.from_dict(a) for a in data.get("artifacts", [])),
                   result=dict(data.get("result") or {}))


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version of a job: the candidate of round ``round`` that the deploy
    trigger let through."""

    version: int
    round: int
    artifacts: tuple[Artifact, ...]
    #: the candidate's eval metrics (:data:`VERSION_METRICS`); None: the eval did not give it
    metrics: dict[str, float | None]
    #: why the deploy trigger held
    decision: str
    time: float
    #: whether its files reached the registry (None: not known yet)
    collected: bool | None = None
    collect_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelVersion:
        return cls(
            version=int(data["version"]),
            round=int(data["round"]),
            artifacts=tuple(Artifact.from_dict(a) for a in data.get("artifacts", [])),
            metrics={str(k): metric_value(v) for k, v in (data.get("metrics") or {}).items()},
            decision=data.get("decision") or "",
            time=float(data["time"]),
            collected=data.get("collected"),
            collect_error=data.get("collect_error"),
        )


def metric_value(value: object) -> float | None:
    """A metric as a number; anything else (missing, null, text) is None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
