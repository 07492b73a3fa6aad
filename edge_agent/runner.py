"""Runs worker processes for tasks and reports their progress.

A started task runs ``python {script_dir}/{boot_file}`` in ``script_dir``, in a process group of
its own (so that stopping it also stops whatever it spawned), with the environment the worker
contract defines (:mod:`protocol.worker_contract`): the manifest parameters, the task's injected
locations (``task.env``) and edgeloop's own variables. Output goes to one log file per task
attempt; the worker's JSON result file becomes ``TaskProgress.result``.

An inference worker is a service: when it dies or fails (a crash, a kill, a source it cannot
open: any exit but 0), the same attempt starts it again after a backoff pause
(:mod:`edge_agent.restart_policy`), with the task as it stands then, so with the model version
deployed last. A stop, a timeout or the agent's shutdown ends it for good, and so does exit code
0: the worker finished (a video file without ``loop`` ended, or it was asked to stop over the
channel). Train and eval workers run once.

Everything about a task attempt lives in ``<state>/tasks/<task id>/attempt-<n>/``: ``worker.log``,
``result.json`` and ``state.json`` (the last progress reported). ``state.json`` makes a repeated
Task message harmless even across agent restarts: the attempt is not run again, its last progress
is reported again instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from edge_agent.restart_policy import RestartPolicy
from edgeloop.durable import write_atomically
from protocol import worker_contract as contract
from protocol.messages import Task, TaskProgress, TaskState

log = logging.getLogger(__name__)

ProgressSink = Callable[[TaskProgress], Awaitable[None]]
ChannelUrlFor = Callable[[str], "str | None"]
#: Called (in a thread) before a task's worker starts; raises TaskSetupError to fail the task.
PrepareTask = Callable[[Task], None]
#: Called when a service worker (inference) exited by itself and is about to be started again.
OnWorkerExit = Callable[[str], None]

LOG_NAME = "worker.log"
RESULT_NAME = "result.json"
STATE_NAME = "state.json"
PID_NAME = "worker.pid"
LOG_TAIL_BYTES = 4096
PROGRESS_MIN_INTERVAL_S = 0.5
#: Workers of these roles are services: restarted when they exit by themselves.
SERVICE_ROLES = frozenset({"inference"})


class TaskSetupError(ValueError):
    """The task cannot be started as given (missing boot file, clashing parameters...)."""


@dataclass
class WorkerAttempt:
    """One attempt of one task while its process lives."""

    task: Task
    directory: Path
    seq: int = 0
    process: asyncio.subprocess.Process | None = None
    stop_reason: str | None = None
    supervisor: asyncio.Task[None] | None = None
    channel_result: dict | None = None
    last_progress_at: float = float("-inf")
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    #: set by stop(): ends the pause before a restart at once
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: the restarts of a service worker; None for a worker that runs once
    restarts: RestartPolicy | None = None
    started_at: float = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_NAME

    @property
    def result_path(self) -> Path:
        return self.directory / RESULT_NAME


def task_directory(state_dir: Path, task: Task) -> Path:
    return Path(state_dir) / "tasks" / task.task_id / f"attempt-{task.attempt}"


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_result(path: Path) -> tuple[dict, str | None]:
    """The worker's result and, when the file is there but unusable, why."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"result file {path}: {exc}"
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"result file {path} is not valid JSON: {exc}"
    if not isinstance(result, dict):
        return {}, f"result file {path} must hold a JSON object, not {type(result).__name__}"
    return result, None


def worker_environment(task: Task, result_path: Path, channel: str | None) -> dict[str, str]:
    """The variables added to the agent's environment for this task's worker.

    Precedence: manifest parameters < ``task.env`` (locations the cloud injects) < edgeloop's
    own variables, which nothing may override.
    """
    assert task.worker is not None
    own = {contract.TASK_ID: task.task_id, contract.RESULT: str(result_path)}
    if channel:
        own[contract.CHANNEL] = channel
    try:
        base = contract.WorkerEnvironment(parameters=dict(task.worker.parameters)).to_env()
    except ValidationError as exc:
        raise TaskSetupError(f"workerSpec.parameters: {exc.errors()[0]['msg']}") from None
    return {**base, **task.env, **own}


def _stop_leftover(pid_file: Path, grace_s: float = 2.0) -> bool:
    """Kill the process group recorded in ``pid_file`` if it still runs that worker's boot
    file (a recycled pid belongs to someone else and is left alone)."""
    try:
        pid_text, boot = pid_file.read_text().splitlines()[:2]
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    if boot.encode() not in cmdline:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
    return True


class WorkerRunner:
    """Starts, supervises and stops the worker processes of this node's tasks."""

    def __init__(
        self,
        node: str,
        state_dir: Path,
        publish: ProgressSink,
        *,
        channel_url_for: ChannelUrlFor | None = None,
        stop_grace_s: float = 5.0,
        python: str = sys.executable,
        prepare: PrepareTask | None = None,
        restart_policy: Callable[[], RestartPolicy] = RestartPolicy,
        on_worker_exit: OnWorkerExit | None = None,
    ) -> None:
        self.node = node
        self.state_dir = Path(state_dir)
        self.publish = publish
        self.channel_url_for = channel_url_for
        self.stop_grace_s = stop_grace_s
        self.python = python
        self.prepare = prepare
        self.restart_policy = restart_policy
        self.on_worker_exit = on_worker_exit
        self.running: dict[str, WorkerAttempt] = {}  # task id -> its live attempt
        self._seen: set[str] = set()  # task keys handled during this run of the agent

    # -- entry points ---------------------------------------------------------------------

    async def handle(self, task: Task) -> None:
        """A Task message from the cloud; duplicates (same key) are answered, not re-run."""
        if task.action == "stop":
            if task.key in self._seen:
                return
            self._seen.add(task.key)
            await self.stop(task.task_id, "stopped on request")
            return
        run = self.running.get(task.task_id)
        if run is not None and run.task.attempt == task.attempt:
            return  # already running this attempt
        if task.key in self._seen or (task_directory(self.state_dir, task) / STATE_NAME).exists():
            await self._report_again(task)
            return
        await self.start(task)

    async def ensure_running(self, task: Task) -> None:
        """The desired state lists ``task``: run it unless this attempt already runs now.

        Unlike :meth:`handle` this restarts an attempt that ran before the agent restarted:
        the desired state says what must be running, not what must be run once.
        """
        run = self.running.get(task.task_id)
        if run is not None and run.task.attempt == task.attempt:
            return
        await self.start(task)

    async def start(self, task: Task) -> WorkerAttempt:
        """Start ``task`` (stopping another attempt of it first) and supervise it."""
        if task.worker is None:
            raise TaskSetupError("worker: required to start a task")
        previous = self.running.get(task.task_id)
        if previous is not None:
            await self.stop(task.task_id, f"replaced by attempt {task.attempt}")
        self._seen.add(task.key)
        directory = task_directory(self.state_dir, task)
        directory.mkdir(parents=True, exist_ok=True)
        run = WorkerAttempt(task, directory, seq=self._last_seq(directory))
        if task.role in SERVICE_ROLES:
            run.restarts = self.restart_policy()
        self.running[task.task_id] = run
        await self._report(run, "Starting")
        try:
            await self._spawn(run)
        except (TaskSetupError, OSError) as exc:
            self.running.pop(task.task_id, None)
            await self._report(run, "Failed", message=f"cannot start the worker: {exc}")
            run.finished.set()
            return run
        # supervised before anything else can be awaited: a cancellation must not leave a
        # process that nobody waits for (a later stop would wait for it forever)
        run.supervisor = asyncio.create_task(self._supervise(run), name=f"task:{task.task_id}")
        await self._report(run, "Running", progress=0.0)
        return run

    async def stop(self, task_id: str, reason: str) -> bool:
        """Stop the task's process group (SIGTERM, then SIGKILL after the grace period), for
        good: a service worker waiting to be restarted is not restarted."""
        run = self.running.get(task_id)
        if run is None or run.process is None:
            return False
        run.stop_reason = reason
        run.stopping.set()
        if run.alive:  # a dead leader's pid may already belong to someone else
            self._signal(run, signal.SIGTERM)
        try:
            async with asyncio.timeout(self.stop_grace_s):
                await run.finished.wait()
        except TimeoutError:
            if run.alive:
                self._signal(run, signal.SIGKILL)
            await run.finished.wait()
        return True

    async def stop_all(self, reason: str) -> None:
        await asyncio.gather(*(self.stop(task_id, reason) for task_id in list(self.running)))

    def restart_counts(self) -> dict[str, int]:
        """Task id -> how many times its running service worker was started again."""
        return {
            task_id: run.restarts.restarts
            for task_id, run in self.running.items()
            if run.restarts is not None
        }

    def recover(self) -> list[TaskProgress]:
        """Close the attempts a previous run of the agent left unfinished (it was killed).

        Their workers, in process groups of their own, may have outlived it: they are stopped,
        so that the desired state cannot start a second copy beside them. Each such attempt
        gets a final ``Failed`` report, returned for publishing.
        """
        reports = []
        for state_file in sorted(self.state_dir.glob(f"tasks/*/attempt-*/{STATE_NAME}")):
            try:
                last = TaskProgress.model_validate_json(state_file.read_text(encoding="utf-8"))
            except (OSError, ValidationError):
                continue
            if last.state in ("Completed", "Failed"):
                continue
            directory = state_file.parent
            stopped = _stop_leftover(directory / PID_NAME)
            report = last.model_copy(
                update={
                    "seq": last.seq + 1,
                    "state": "Failed",
                    "progress": None,
                    "message": "the agent stopped while the task ran"
                    + ("; its worker was stopped" if stopped else ""),
                    "log_tail": log_tail(directory / LOG_NAME),
                    "ts": time.time(),
                }
            )
            self._save_state(directory, report)
            reports.append(report)
        return reports

    async def fail_before_start(self, task: Task, message: str) -> None:
        """Report that ``task`` could not even start (e.g. its model could not be had)."""
        self._seen.add(task.key)
        directory = task_directory(self.state_dir, task)
        directory.mkdir(parents=True, exist_ok=True)
        await self._report(
            WorkerAttempt(task, directory, seq=self._last_seq(directory)), "Failed", message=message
        )

    def retarget(self, task: Task) -> None:
        """The running attempt of ``task`` now stands for this version of it (after a
        hot-swap changed its model without a restart)."""
        run = self.running.get(task.task_id)
        if run is not None and run.task.attempt == task.attempt:
            run.task = task
            self._seen.add(task.key)

    async def report_progress(self, task_id: str, fraction: float, message: str = "") -> None:
        """Progress a worker sent over the local channel, at most one report per
        :data:`PROGRESS_MIN_INTERVAL_S` (a later report supersedes a skipped one)."""
        run = self.running.get(task_id)
        if run is None:
            return
        now = time.monotonic()
        if now - run.last_progress_at < PROGRESS_MIN_INTERVAL_S:
            return
        run.last_progress_at = now
        await self._report(run, "Running", progress=fraction, message=message)

    def note_result(self, task_id: str, result: dict) -> None:
        """A result a worker sent over the channel; used when it writes no result file."""
        run = self.running.get(task_id)
        if run is not None:
            run.channel_result = result

    # -- process ----------------------------------------------------------------------------

    async def _spawn(self, run: WorkerAttempt) -> None:
        task = run.task
        assert task.worker is not None
        script_dir = Path(task.worker.script_dir).expanduser()
        boot = script_dir / task.worker.boot_file
        if not boot.is_file():
            raise TaskSetupError(f"boot file {boot} not found (scriptDir/scriptBootFile)")
        if self.prepare is not None:
            await asyncio.to_thread(self.prepare, task)
        channel = self.channel_url_for(task.task_id) if self.channel_url_for else None
        env = {**os.environ, **worker_environment(task, run.result_path, channel)}
        run.result_path.unlink(missing_ok=True)
        with open(run.log_path, "ab") as log_file:
            log_file.write(f"--- edgeloop: starting {boot} (attempt {task.attempt})\n".encode())
            log_file.flush()
            run.process = await asyncio.create_subprocess_exec(
                self.python,
                "-u",
                str(boot.resolve()),
                cwd=str(script_dir),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() reaches its children
            )
        run.started_at = time.monotonic()
        (run.directory / PID_NAME).write_text(f"{run.process.pid}\n{boot.resolve()}\n")
        log.info("task %s attempt %d: pid %d", task.task_id, task.attempt, run.process.pid)

    async def _supervise(self, run: WorkerAttempt) -> None:
        timeout = run.task.timeout_s
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        exit_code: int | None = None
        try:
            while True:
                exit_code = await self._wait_exit(run, deadline)
                self._signal(run, signal.SIGKILL)  # leftovers of the group
                if run.stop_reason or run.restarts is None or exit_code == contract.EXIT_OK:
                    break  # asked to stop, runs once, or finished its work (a file source ended)
                if not await self._restart(run, exit_code):
                    break
        except Exception as exc:  # e.g. a full disk: end the attempt, never leave a stop hanging
            log.exception("task %s: supervision failed", run.task.task_id)
            run.stop_reason = run.stop_reason or f"supervision failed: {exc}"
            process = run.process
            if process is not None and process.returncode is None:
                self._signal(run, signal.SIGKILL)
                exit_code = await process.wait()
        await self._finish(run, exit_code)

    async def _wait_exit(self, run: WorkerAttempt, deadline: float | None) -> int:
        """The exit code of the worker's process; past the task's deadline it is stopped."""
        assert run.process is not None
        try:
            async with asyncio.timeout_at(deadline):
                return await run.process.wait()
        except TimeoutError:
            run.stop_reason = f"timed out after {run.task.timeout_s:g} s"
            self._signal(run, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_grace_s):
                    return await run.process.wait()
            except TimeoutError:
                self._signal(run, signal.SIGKILL)
                return await run.process.wait()

    async def _restart(self, run: WorkerAttempt, exit_code: int) -> bool:
        """Start the service worker of ``run`` again after its backoff pause; False when it is
        not to run any more (stopped meanwhile, or its task can no longer start)."""
        assert run.restarts is not None
        ran_for = time.monotonic() - run.started_at
        delay = run.restarts.next_delay(ran_for)
        why = f"worker exited with code {exit_code} after {ran_for:.1f} s"
        log.warning(
            "task %s: %s; restart %d in %.1f s", run.task.task_id, why, run.restarts.restarts, delay
        )
        if self.on_worker_exit is not None:
            self.on_worker_exit(run.task.task_id)
        await self._report(
            run, "Running", message=f"{why}; restart {run.restarts.restarts} in {delay:.1f} s"
        )
        await self._pause(run, delay)
        while not run.stop_reason:
            run.channel_result = None
            try:
                await self._spawn(run)
            except TaskSetupError as exc:
                run.stop_reason = f"cannot restart the worker: {exc}"
                return False
            except OSError as exc:
                delay = run.restarts.next_delay(0.0)
                log.warning(
                    "task %s: cannot restart the worker: %s; again in %.1f s",
                    run.task.task_id,
                    exc,
                    delay,
                )
                await self._pause(run, delay)
                continue
            if run.stop_reason:  # stopped while it was being spawned
                self._signal(run, signal.SIGTERM)
            return True
        return False

    @staticmethod
    async def _pause(run: WorkerAttempt, seconds: float) -> None:
        """Wait ``seconds``, or less if the task is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await run.stopping.wait()

    async def _finish(self, run: WorkerAttempt, exit_code: int | None) -> None:
        """The final report of the attempt: Completed, or Failed with why."""
        result, problem = read_result(run.result_path)
        if not result and run.channel_result:
            result = run.channel_result
        if run.stop_reason:
            state: TaskState = "Failed"
            message = run.stop_reason
        elif exit_code != contract.EXIT_OK:
            state = "Failed"
            message = f"worker exited with code {exit_code}" + (
                " (bad parameters or input)" if exit_code == contract.EXIT_BAD_INPUT else ""
            )
        elif problem:
            state, message = "Failed", problem
        else:
            state, message = "Completed", ""
        self.running.pop(run.task.task_id, None)
        try:
            await self._report(
                run,
                state,
                message=message,
                exit_code=exit_code,
                result=result,
                progress=1.0 if state == "Completed" else None,
            )
        finally:
            run.finished.set()

    @staticmethod
    def _signal(run: WorkerAttempt, sig: signal.Signals) -> None:
        if run.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.process.pid, sig)

    # -- reporting --------------------------------------------------------------------------

    async def _report(
        self,
        run: WorkerAttempt,
        state: TaskState,
        *,
        progress: float | None = None,
        message: str = "",
        exit_code: int | None = None,
        result: dict | None = None,
    ) -> None:
        run.seq += 1
        final = state in ("Completed", "Failed")
        try:
            report = TaskProgress(
                node=self.node,
                task_id=run.task.task_id,
                attempt=run.task.attempt,
                seq=run.seq,
                state=state,
                progress=progress,
                message=message[-4096:],
                log_tail=log_tail(run.log_path) if final else "",
                exit_code=exit_code,
                result=result or {},
            )
        except ValidationError as exc:  # e.g. a result that is not JSON-like
            report = TaskProgress(
                node=self.node,
                task_id=run.task.task_id,
                attempt=run.task.attempt,
                seq=run.seq,
                state="Failed",
                message=f"unusable result: {exc.errors()[0]['msg']}"[:4096],
                log_tail=log_tail(run.log_path),
                exit_code=exit_code,
            )
        self._save_state(run.directory, report)
        try:
            await self.publish(report)
        except Exception:  # reporting must never break supervision
            log.exception("cannot report progress of task %s", run.task.task_id)

    async def _report_again(self, task: Task) -> None:
        state_file = task_directory(self.state_dir, task) / STATE_NAME
        try:
            report = TaskProgress.model_validate_json(state_file.read_text(encoding="utf-8"))
        except (OSError, ValidationError):
            return
        log.info(
            "task %s attempt %d was handled already; reporting %s again",
            task.task_id,
            task.attempt,
            report.state,
        )
        await self.publish(report)

    @staticmethod
    def _save_state(directory: Path, report: TaskProgress) -> None:
        write_atomically(directory / STATE_NAME, report.model_dump_json().encode())

    @staticmethod
    def _last_seq(directory: Path) -> int:
        try:
            return TaskProgress.model_validate_json((directory / STATE_NAME).read_text()).seq
        except (OSError, ValidationError):
            return 0
