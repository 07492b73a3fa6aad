"""How the agent starts a worker: the launcher seam.

The worker contract (:mod:`protocol.worker_contract`) is process-level: a worker is a command
run in its script folder with some environment variables, which writes a result file and exits
with a code. The runner (:mod:`edge_agent.runner`) decides *when* a worker starts, stops or
restarts and what it reports; a :class:`WorkerLauncher` decides only *where and how* the command
runs. The agent's ``launcher`` setting picks one:

``process`` (default)
    :class:`ProcessLauncher`: a child process of the agent, in a process group of its own.
``command``
    :class:`CommandLauncher`: the same command run through a wrapper the settings give
    (``launcher_command``), e.g. ``systemd-run --scope`` or ``docker run``.
``package.module:ClassName``
    any class implementing :class:`WorkerLauncher` (a Kubernetes Job or Ray launcher, see
    docs/scaling.md "Training nodes"), built with the ``launcher_options`` settings as keyword
    arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from protocol.messages import Task

#: the ``launcher_command`` element replaced by the worker's own command (several arguments)
COMMAND_PLACEHOLDER = "{command}"
#: the file :class:`CommandLauncher` writes the worker's variables to when its template names
#: ``{env_file}`` (``KEY=value`` lines, as ``docker run --env-file`` reads them)
ENV_FILE_NAME = "worker.env"
BUILTIN_LAUNCHERS = ("process", "command")


class LauncherError(ValueError):
    """A launcher setting is unusable, or a launcher cannot run this worker; the message says
    which and why."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a launcher needs to run one worker; what it must give back is a
    :class:`WorkerHandle` whose exit code follows the worker contract."""

    worker_id: str  #: the task id, or ``<task id>@<camera>``
    task: Task
    #: the worker's own command: ``python -u <boot file>``
    command: tuple[str, ...]
    #: the task's script folder, the worker's working directory
    cwd: Path
    #: the worker-contract variables (parameters, injected locations, ``EDGELOOP_*``), without
    #: the agent's own environment: a launcher that runs the worker elsewhere passes exactly these
    env: Mapping[str, str]
    #: the attempt's folder (``worker.log``, ``result.json``): the result file is read from here
    directory: Path
    log_path: Path


@runtime_checkable
class WorkerHandle(Protocol):
    """A started worker, as the runner supervises it."""

    @property
    def pid(self) -> int | None:
        """The local process id (recorded so that a restarted agent can stop a worker it left
        behind), or None when the worker does not run as a local process."""

    @property
    def returncode(self) -> int | None:
        """The exit code once the worker ended, else None."""

    async def wait(self) -> int:
        """Wait for the worker to end; its exit code (0 done, 2 bad input, other: failed)."""

    def terminate(self) -> None:
        """Ask the worker to stop (SIGTERM); it gets the agent's ``stop_grace_s`` to do so."""

    def kill(self) -> None:
        """Stop the worker and whatever it started, now; harmless once it has ended."""


class WorkerLauncher(Protocol):
    """Starts workers; one class per way of running them (process, wrapper, cluster)."""

    async def start(self, spec: LaunchSpec) -> WorkerHandle:
        """Start the worker of ``spec``; raise :class:`LauncherError` (or OSError) when it
        cannot start: the task then fails with that message."""


class ProcessHandle:
    """A worker that is a local process group (the process and whatever it spawned)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


class ProcessLauncher:
    """Runs the worker as a child process of the agent, in a process group of its own (so that
    stopping it also stops whatever it spawned), its output appended to the attempt's log."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def argv(self, spec: LaunchSpec) -> list[str]:
        """The command line actually run."""
        return list(spec.command)

    async def start(self, spec: LaunchSpec) -> WorkerHandle:
        env = {**os.environ, **spec.env}
        with open(spec.log_path, "ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *self.argv(spec),
                cwd=str(spec.cwd),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        return ProcessHandle(process)


#: what a ``launcher_command`` element may name, besides ``{command}``
TEMPLATE_NAMES = frozenset(
    {"task_id", "worker_id", "job", "role", "attempt", "script_dir", "directory", "env_file"}
)


def template_values(spec: LaunchSpec, env_file: Path) -> dict[str, str]:
    """The values of :data:`TEMPLATE_NAMES` for this worker."""
    return {
        "task_id": spec.task.task_id,
        "worker_id": spec.worker_id,
        "job": spec.task.job,
        "role": spec.task.role,
        "attempt": str(spec.task.attempt),
        "script_dir": str(spec.cwd),
        "directory": str(spec.directory),
        "env_file": str(env_file),
    }


def check_template(template: Sequence[str]) -> None:
    """Raise :class:`LauncherError` naming what is wrong with a ``launcher_command``."""
    if not template:
        raise LauncherError("launcher_command: required when launcher is 'command'")
    if COMMAND_PLACEHOLDER not in template:
        raise LauncherError(
            f"launcher_command: one element must be {COMMAND_PLACEHOLDER!r} (the worker's "
            "command goes there)"
        )
    names = TEMPLATE_NAMES
    for element in template:
        if element == COMMAND_PLACEHOLDER:
            continue
        try:
            element.format_map({name: "" for name in names})
        except (KeyError, ValueError, IndexError) as exc:
            raise LauncherError(
                f"launcher_command: element {element!r} is not usable ({exc!r}); it may name "
                f"{', '.join('{' + n + '}' for n in sorted(names))}"
            ) from None


class CommandLauncher(ProcessLauncher):
    """Runs the worker's command through a wrapper, e.g.
    ``["systemd-run", "--user", "--scope", "-p", "MemoryMax=4G", "{command}"]`` or
    ``["docker", "run", "--rm", "--env-file", "{env_file}", "-v", "{directory}:{directory}",
    "image", "{command}"]``. The wrapper runs like a worker of :class:`ProcessLauncher` (same
    environment, log, process group); its exit code is taken as the worker's, so a wrapper must
    pass that code on (``exec`` does)."""

    def __init__(self, template: Sequence[str], python: str = sys.executable) -> None:
        check_template(template)
        super().__init__(python)
        self.template = list(template)

    def argv(self, spec: LaunchSpec) -> list[str]:
        env_file = spec.directory / ENV_FILE_NAME
        values = template_values(spec, env_file)
        if any("{env_file}" in element for element in self.template):
            write_env_file(env_file, spec.env)
        argv: list[str] = []
        for element in self.template:
            if element == COMMAND_PLACEHOLDER:
                argv.extend(spec.command)
            else:
                argv.append(element.format_map(values))
        return argv


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """``KEY=value`` lines; a value with a line break cannot be written so and is refused."""
    for key, value in env.items():
        if "\n" in value or "\r" in value:
            raise LauncherError(f"{key}: a line break cannot go into the env file {path}")
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")


def make_launcher(
    kind: str,
    command: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    python: str = sys.executable,
) -> WorkerLauncher:
    """The launcher the agent's settings name (see the module's docstring)."""
    if kind == "process":
        return ProcessLauncher(python)
    if kind == "command":
        return CommandLauncher(command, python)
    cls = check_launcher_class(kind, options)
    try:
        launcher: WorkerLauncher = cls(**dict(options or {}))
    except TypeError as exc:
        raise LauncherError(f"launcher {kind!r}: launcher_options do not fit: {exc}") from None
    return launcher


def check_launcher_class(kind: str, options: Mapping[str, Any] | None = None) -> type:
    """The launcher class ``package.module:ClassName`` names, checked without building it (a
    launcher may connect to a cluster when built): it loads, has ``start``, and takes
    ``options`` as keyword arguments."""
    module_name, sep, class_name = kind.partition(":")
    if not sep or not module_name or not class_name:
        raise LauncherError(
            f"launcher: {kind!r} is neither one of {', '.join(BUILTIN_LAUNCHERS)} nor "
            "'package.module:ClassName'"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise LauncherError(f"launcher: cannot load {kind!r}: {exc}") from None
    if not isinstance(cls, type) or not callable(getattr(cls, "start", None)):
        raise LauncherError(f"launcher {kind!r}: not a class with a start(spec) method")
    try:
        inspect.signature(cls).bind(**dict(options or {}))
    except TypeError as exc:
        raise LauncherError(f"launcher {kind!r}: launcher_options do not fit: {exc}") from None
    return cls
