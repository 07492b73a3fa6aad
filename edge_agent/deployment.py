"""Puts the model versions a task needs where its worker reads them.

For each :class:`~protocol.messages.ModelRef` of a task, every artifact is downloaded and verified
(:mod:`edge_agent.downloads`), then linked under ``<state>/models/<namespace>/<job>/v<version>/``
(every version stays there: a rollback needs no download). The file a worker serves — the LiteRT
file if the version has one, else its first artifact, as the cloud chooses it — is also copied
to the task's ``MODEL_URL`` when it sets one, atomically, so that a worker (re)started later
loads the same version it would be hot-swapped to.

A ``.tflite`` is load-checked (:mod:`edge_agent.model_check`) before it is placed: one that is
not a model LiteRT can load is discarded, counted, and the task fails with the reason.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_agent.downloads import ArtifactDownloader
from edge_agent.model_check import TFLITE_SUFFIX, tflite_problem
from edge_agent.task_paths import resolve_task_path
from protocol import worker_contract as contract
from protocol.messages import ArtifactRef, ModelRef, Task


@dataclass(frozen=True)
class PreparedModel:
    """The version a task's worker should serve and its local file."""

    job: str
    version: int
    path: Path
    sha256: str


def serving_artifact(model: ModelRef) -> ArtifactRef:
    for artifact in model.artifacts:
        if artifact.name == contract.TFLITE_ARTIFACT:
            return artifact
    return model.artifacts[0]


def _safe_name(name: str) -> str:
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"artifact name {name!r} must be a plain file name")
    return name


def _link_or_copy(source: Path, target: Path) -> None:
    """Place ``source`` at ``target`` atomically (a hard link when possible, else a copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class ModelDeployer:
    def __init__(self, downloader: ArtifactDownloader, versions_dir: Path, *,
                 check_models: bool = True) -> None:
        self.downloader = downloader
        self.versions_dir = Path(versions_dir)
        self.check_models = check_models
        #: downloaded models that failed their load check and were discarded
        self.rejected = 0

    def version_dir(self, model: ModelRef) -> Path:
        return self.versions_dir.joinpath(*model.job.split("/"), f"v{model.version}")

    async def prepare(self, task: Task) -> PreparedModel | None:
        """Download and place the task's models; the one to serve, or None without models.

        Raises :class:`edge_agent.downloads.DownloadError` or ``ValueError`` when a model
        cannot be had.
        """
        if not task.models:
            return None
        for model in task.models:
            directory = self.version_dir(model)
            for artifact in model.artifacts:
                local = await self.downloader.fetch(artifact)
                target = directory / _safe_name(artifact.name)
                if not target.exists():
                    await self._check(model, artifact, local)
                    _link_or_copy(local, target)
        serving = next((m for m in task.models if m.job == task.job), task.models[0])
        chosen = serving_artifact(serving)
        path = self.version_dir(serving) / chosen.name
        model_url = task.env.get(contract.MODEL_URL)
        if model_url and task.role == "inference":
            script_dir = task.worker.script_dir if task.worker is not None else None
            destination = resolve_task_path(model_url, script_dir, contract.MODEL_URL)
            if destination.is_dir():
                destination = destination / chosen.name
            _link_or_copy(path, destination)
        return PreparedModel(serving.job, serving.version, path, chosen.sha256)

    async def _check(self, model: ModelRef, artifact: ArtifactRef, local: Path) -> None:
        """Raise ``ValueError`` (the download discarded) when a model file cannot be loaded."""
        if not self.check_models or not artifact.name.endswith(TFLITE_SUFFIX):
            return
        problem = await tflite_problem(local)
        if problem is None:
            return
        self.rejected += 1
        local.unlink(missing_ok=True)
        raise ValueError(f"{model.job} version {model.version}: {artifact.name} ({artifact.sha256[:12]}) "
                         f"was discarded: {problem}")
