"""The demo's child processes: each in its own process group, each with its own log file.

The demo starts the cloud manager, two agents, the RTSP server, ffmpeg and training runs. A
Ctrl-C (or SIGTERM) must stop all of them and everything they started in turn (the agents'
workers live in process groups of their own, which the agents stop when asked to). So every
child is started in a new session; :meth:`ProcessSet.stop_all` sends SIGTERM to each group
(newest first, so the agents stop their workers before the broker goes), waits, then SIGKILLs
whatever is left. The set is also registered with ``atexit`` so an unexpected exception still
cleans up.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class ProcessFailed(RuntimeError):
    """A child the demo needs exited; the message names it and quotes its log's tail."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    #: Seconds between SIGTERM and SIGKILL for this child.
    grace_s: float = 10.0
    expected_exit: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, limit: int = 2000) -> str:
        try:
            data = self.log.read_bytes()[-limit:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a recycled group id owned by someone else
        return False
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcessSet:
    """Children started in order, stopped in reverse order; stopping twice is harmless."""

    def __init__(self, log_dir: Path, registry: Path | None = None) -> None:
        """``registry``: a file that lists every child started (pid, command), so that a later
        run can stop what a killed (SIGKILL) run left behind: :func:`stop_leftovers`."""
        self.log_dir = log_dir
        self.registry = registry
        self.children: list[Child] = []
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        grace_s: float = 10.0,
    ) -> Child:
        """Start ``argv`` in a new session, stdout and stderr to ``logs/<name>.log`` (appended:
        a process restarted under the same name keeps one log)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, process, log, grace_s)
        with self._lock:
            self.children.append(child)
        self.register(process.pid, argv[0])
        return child

    def register(self, pid: int, command: str | None = None) -> None:
        """List a process group in the registry (also one started elsewhere, the broker, whose
        command is read from /proc: it has run for a while)."""
        if self.registry is None:
            return
        if command is None:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                return  # already gone
        self.registry.parent.mkdir(parents=True, exist_ok=True)
        with open(self.registry, "a", encoding="utf-8") as f:
            f.write(f"{pid} {command}\n")

    def check(self) -> None:
        """Raise :class:`ProcessFailed` when a child that should still run has exited."""
        for child in list(self.children):
            if not child.expected_exit and not child.running():
                raise ProcessFailed(
                    f"{child.name} (pid {child.pid}) exited with code {child.process.returncode}; "
                    f"end of {child.log}:\n{child.log_tail()}"
                )

    def stop(self, child: Child, grace_s: float | None = None) -> int | None:
        """SIGTERM the child's process group, SIGKILL it after the grace period."""
        child.expected_exit = True
        grace = child.grace_s if grace_s is None else grace_s
        pgid = child.pid  # a session leader's group id is its pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if child.process.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=5)
        with self._lock:
            if child in self.children:
                self.children.remove(child)
        return child.process.returncode

    def stop_all(self) -> None:
        """Stop every child, newest first. Idempotent; called at exit too."""
        with self._lock:
            children = list(reversed(self.children))
        for child in children:
            self.stop(child)


def stop_leftovers(registry: Path) -> list[int]:
    """SIGKILL the process groups of a previous run's children that still run the command they
    were started with (a pid reused by an unrelated process is left alone)."""
    if not registry.exists():
        return []
    killed = []
    for line in registry.read_text().splitlines():
        pid_text, _, command = line.partition(" ")
        try:
            pid = int(pid_text)
            # the program, or the script an interpreter runs (rtsp-server-perl is perl's)
            head = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]
        except (OSError, ValueError):
            continue
        if command and command.encode() in head:
            _signal_group(pid, signal.SIGKILL)
            killed.append(pid)
    return killed
