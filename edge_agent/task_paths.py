"""Where a task's files may go: paths from a task (``MODEL_URL``, the ``EDGELOOP_SPLIT`` files)
become places the agent writes, so none may lead out of where it is meant to write.

A relative path is the worker's: it is read from the task's ``scriptDir`` (the worker's working
directory) and must stay inside it once ``..`` and symbolic links are resolved; without a
``scriptDir`` there is nothing for it to be relative to. An absolute path is the manifest's
own choice (Sedna's ``/deploy/model.tflite``, ``/output``) and is taken as written, but a ``..``
in it is refused: a path that climbs is a mistake or a trick, never what a manifest means.
"""

from __future__ import annotations

from pathlib import Path


class TaskPathError(ValueError):
    """A path from a task that the agent will not use; the message names it and why."""


def resolve_task_path(value: str, script_dir: str | Path | None, what: str) -> Path:
    """The absolute path ``value`` (named ``what`` in errors) stands for, or :class:`TaskPathError`."""
    path = Path(value).expanduser()
    if path.is_absolute():
        if ".." in path.parts:
            raise TaskPathError(f"{what}: {value!r} climbs with '..'; give the path without it")
        return path
    if script_dir is None:
        raise TaskPathError(f"{what}: {value!r} is relative but the task has no scriptDir")
    base = Path(script_dir).expanduser().resolve()
    resolved = (base / path).resolve()
    if not resolved.is_relative_to(base):
        raise TaskPathError(f"{what}: {value!r} leads to {resolved}, outside the worker's "
                            f"directory {base}")
    return resolved
