"""A launcher class loaded by import path (``launcher: launcher_classes:RecordingLauncher``),
as a Kubernetes Job or Ray launcher would be: its handle is no local process group (``pid`` is
None), and it records what the agent gave it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edge_agent.launchers import LaunchSpec, WorkerHandle


class RemoteHandle:
    """A worker the agent cannot signal as a process group: it asks its launcher instead."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int | None:
        return None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    def terminate(self) -> None:
        if self._process.returncode is None:
            self._process.terminate()

    def kill(self) -> None:
        if self._process.returncode is None:
            self._process.kill()


class RecordingLauncher:
    """Runs the worker's command with exactly the contract's variables (nothing of the agent's
    own environment, as on another machine) and appends each launch to ``record``."""

    def __init__(self, record: str) -> None:
        self.record = Path(record)

    async def start(self, spec: LaunchSpec) -> WorkerHandle:
        with self.record.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"worker": spec.worker_id, "role": spec.task.role,
                                "env": dict(spec.env), "directory": str(spec.directory)}) + "\n")
        with open(spec.log_path, "ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *spec.command, cwd=spec.cwd, env=dict(spec.env),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
            )
        return RemoteHandle(process)


class FailingLauncher:
    """A launcher whose cluster refuses every worker."""

    async def start(self, spec: LaunchSpec) -> WorkerHandle:
        raise RuntimeError(f"quota exceeded for {spec.worker_id}")
