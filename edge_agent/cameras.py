"""The node's cameras as its inference workers: one worker per camera and inference task.

A node whose settings declare ``cameras:`` runs, for each inference task, one worker per camera,
with ``video_url`` set to the camera's stream and ``EDGELOOP_CAMERA`` to its name. Each such
worker has its own id, ``<task id>@<camera>`` (``@`` is in no name, so the id splits back), under
which the runner supervises it, the local channel admits it and the decisions track what it
serves. A node without cameras runs one worker per task on the job's ``video_url``, under the
task id itself, as before.

Pure: names and the per-camera part of the node status, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from protocol.messages import CameraStatus

SEPARATOR = "@"


def worker_id(task_id: str, camera: str | None) -> str:
    """The id of the worker that runs ``task_id`` on ``camera`` (None: the job's video_url)."""
    return task_id if camera is None else f"{task_id}{SEPARATOR}{camera}"


def task_of(worker: str) -> str:
    return worker.partition(SEPARATOR)[0]


def camera_of(worker: str) -> str | None:
    task, sep, camera = worker.partition(SEPARATOR)
    return camera if sep else None


def workers_of(task_id: str, workers: Iterable[str]) -> list[str]:
    """The ids among ``workers`` that run ``task_id`` (on any camera)."""
    return [w for w in workers if task_of(w) == task_id]


def serving_by_task(serving: Mapping[str, int]) -> dict[str, int]:
    """Worker id -> version, as the status's ``serving`` (task id -> version) says it: a task on
    several cameras reports its oldest version, the one every camera serves at least."""
    out: dict[str, int] = {}
    for worker, version in serving.items():
        task = task_of(worker)
        out[task] = min(version, out.get(task, version))
    return out


def camera_statuses(
    workers: Iterable[str],
    serving: Mapping[str, int | None],
    fps: Mapping[str, float],
    errors: Mapping[str, str],
) -> dict[str, dict[str, CameraStatus]]:
    """Task id -> camera -> its stream's status, for the camera workers among ``workers``.

    ``serving`` holds the workers that said which model they serve (None: the initial model);
    ``errors`` why a worker serves nothing (its camera does not open, it crashed)."""
    out: dict[str, dict[str, CameraStatus]] = {}
    for worker in sorted(workers):
        camera = camera_of(worker)
        if camera is None:
            continue
        error = errors.get(worker, "")
        live = worker in serving and not error
        out.setdefault(task_of(worker), {})[camera] = CameraStatus(
            version=serving.get(worker) if live else None,
            serving=live,
            fps=round(fps.get(worker, 0.0), 1) if live else 0.0,
            error=error[-1024:],
        )
    return out
