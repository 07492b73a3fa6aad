"""Runs worker processes for tasks and reports their progress.

A started task runs ``python {script_dir}/{boot_file}`` in ``script_dir`` through the node's
launcher (:mod:`edge_agent.launchers`; by default a child process in a process group of its own,
so that stopping it also stops whatever it spawned), with the environment the worker contract
defines (:mod:`protocol.worker_contract`): the manifest parameters, the task's injected
locations (``task.env``) and edgeloop's own variables. Output goes to one log file per task
attempt; the worker's JSON result file becomes ``TaskProgress.result``.

On a node whose settings declare cameras, an inference task runs one worker per camera
(:mod:`edge_agent.cameras`), each supervised, restarted and stopped on its own under the id
``<task id>@<camera>``, in ``attempt-<n>/camera-<name>/``; the task's progress reports are one
sequence for all of them, and the task ends when its last camera worker ends.

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

from edge_agent import cameras
from edge_agent.launchers import (
    LauncherError,
    LaunchSpec,
    ProcessLauncher,
    WorkerHandle,
    WorkerLauncher,
)
from edge_agent.restart_policy import RestartPolicy
from edgeloop.durable import write_atomically
from protocol import worker_contract as contract
from protocol.messages import Task, TaskProgress, TaskState

log = logging.getLogger(__name__)

ProgressSink = Callable[[TaskProgress], Awaitable[None]]
ChannelUrlFor = Callable[[str], "str | None"]
#: Called (in a thread) before a task's worker starts; raises TaskSetupError to fail the task.
PrepareTask = Callable[[Task], None]
#: Called with the worker's id and why, when a service worker (inference) exited by itself and is
#: about to be started again.
OnWorkerExit = Callable[[str, str], None]

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
class ProgressSequence:
    """The ``seq`` of one task attempt's progress reports, shared by its camera workers, and
    the cameras that ended badly before the last one."""

    seq: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # camera -> why it ended

    def next(self) -> int:
        self.seq += 1
        return self.seq


@dataclass
class WorkerAttempt:
    """One worker process of one task attempt while it lives (one per camera, or the one)."""

    task: Task
    directory: Path
    progress: ProgressSequence = field(default_factory=ProgressSequence)
    camera: str | None = None
    #: the camera's parameters over the job's (its ``video_url`` and options)
    camera_parameters: dict[str, str] = field(default_factory=dict)
    #: the started worker (a local process for the default launcher)
    process: WorkerHandle | None = None
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
    def worker_id(self) -> str:
        return cameras.worker_id(self.task.task_id, self.camera)

    @property
    def attempt_directory(self) -> Path:
        """Where the attempt's ``state.json`` is (a camera worker's directory is inside)."""
        return self.directory if self.camera is None else self.directory.parent

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


def worker_environment(
    task: Task,
    result_path: Path,
    channel: str | None,
    camera: str | None = None,
    camera_parameters: dict[str, str] | None = None,
) -> dict[str, str]:
    """The variables added to the agent's environment for this task's worker.

    Precedence: manifest parameters < the camera's (its ``video_url`` and options) <
    ``task.env`` (locations the cloud injects) < edgeloop's own variables, which nothing may
    override.
    """
    assert task.worker is not None
    own = {contract.TASK_ID: task.task_id, contract.RESULT: str(result_path)}
    if channel:
        own[contract.CHANNEL] = channel
    if camera is not None:
        own[contract.CAMERA] = camera
    parameters = {**task.worker.parameters, **(camera_parameters or {})}
    try:
        base = contract.WorkerEnvironment(parameters=parameters).to_env()
    except ValidationError as exc:
        raise TaskSetupError(f"workerSpec.parameters: {exc.errors()[0]['msg']}") from None
    return {**base, **task.env, **own}


def _camera_prefix(run: WorkerAttempt) -> str:
    return "" if run.camera is None else f"camera {run.camera}: "


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
        camera_parameters: dict[str, dict[str, str]] | None = None,
        launcher: WorkerLauncher | None = None,
    ) -> None:
        """``camera_parameters``: camera name -> the parameters its worker gets over the
        job's (``video_url``, options); each inference task runs one worker per camera.
        ``launcher``: how a worker's command is run (default: a local process group)."""
        self.node = node
        self.state_dir = Path(state_dir)
        self.publish = publish
        self.channel_url_for = channel_url_for
        self.stop_grace_s = stop_grace_s
        self.python = python
        self.prepare = prepare
        self.restart_policy = restart_policy
        self.on_worker_exit = on_worker_exit
        self.camera_parameters = dict(camera_parameters or {})
        self.launcher: WorkerLauncher = launcher or ProcessLauncher(python)
        #: worker id (the task id, or ``<task id>@<camera>``) -> its live worker
        self.running: dict[str, WorkerAttempt] = {}
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
        if self._runs_attempt(task):
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
        if self._runs_attempt(task):
            return
        await self.start(task)

    async def start(self, task: Task) -> WorkerAttempt:
        """Start ``task`` (stopping another attempt of it first) and supervise it: one worker,
        or one per camera for an inference task on a node with cameras."""
        if task.worker is None:
            raise TaskSetupError("worker: required to start a task")
        if self.workers_of(task.task_id):
            await self.stop(task.task_id, f"replaced by attempt {task.attempt}")
        self._seen.add(task.key)
        directory = task_directory(self.state_dir, task)
        directory.mkdir(parents=True, exist_ok=True)
        progress = ProgressSequence(self._last_seq(directory))
        runs = [
            WorkerAttempt(task, directory if camera is None else directory / f"camera-{camera}",
                          progress, camera, parameters)
            for camera, parameters in self._streams(task)
        ]
        for run in runs:
            run.directory.mkdir(parents=True, exist_ok=True)
            if task.role in SERVICE_ROLES:
                run.restarts = self.restart_policy()
            self.running[run.worker_id] = run
        await self._report(runs[0], "Starting")
        for run in runs:
            try:
                await self._spawn(run)
            except (TaskSetupError, LauncherError, OSError) as exc:
                await self._abandon(runs, f"cannot start the worker: {exc}")
                return runs[0]
            # supervised before anything else can be awaited: a cancellation must not leave a
            # process that nobody waits for (a later stop would wait for it forever)
            run.supervisor = asyncio.create_task(
                self._supervise(run), name=f"task:{run.worker_id}"
            )
        await self._report(runs[0], "Running", progress=0.0)
        return runs[0]

    def _streams(self, task: Task) -> list[tuple[str | None, dict[str, str]]]:
        """The workers a task runs: one per camera for inference on a node with cameras, else
        the one (camera None) on the job's own parameters."""
        if task.role != "inference" or not self.camera_parameters:
            return [(None, {})]
        return sorted(self.camera_parameters.items())

    async def _abandon(self, runs: list[WorkerAttempt], message: str) -> None:
        """A worker of the attempt could not start: the attempt fails, its started workers
        are stopped."""
        for run in runs:
            run.stop_reason = message
            run.stopping.set()
            self._signal(run, signal.SIGKILL)
        for run in runs:
            if run.supervisor is not None:
                await run.finished.wait()
        for run in runs:
            self.running.pop(run.worker_id, None)
            run.finished.set()
        await self._report(runs[0], "Failed", message=message)

    def workers_of(self, task_id: str) -> list[WorkerAttempt]:
        """The task's live workers (several on a node with cameras)."""
        return [self.running[w] for w in cameras.workers_of(task_id, self.running)]

    def _runs_attempt(self, task: Task) -> bool:
        return any(run.task.attempt == task.attempt for run in self.workers_of(task.task_id))

    async def stop(self, task_id: str, reason: str) -> bool:
        """Stop the task's workers (SIGTERM to each process group, then SIGKILL after the grace
        period), for good: a service worker waiting to be restarted is not restarted."""
        runs = [run for run in self.workers_of(task_id) if run.process is not None]
        stopped = await asyncio.gather(*(self._stop_worker(run, reason) for run in runs))
        return any(stopped)

    async def _stop_worker(self, run: WorkerAttempt, reason: str) -> bool:
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
        await asyncio.gather(*(self._stop_worker(run, reason) for run in list(self.running.values())
                               if run.process is not None))

    def restart_counts(self) -> dict[str, int]:
        """Worker id -> how many times that running service worker was started again."""
        return {
            worker: run.restarts.restarts
            for worker, run in self.running.items()
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
            stopped = any([_stop_leftover(pid_file) for pid_file in
                           (directory / PID_NAME, *directory.glob(f"camera-*/{PID_NAME}"))])
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
            WorkerAttempt(task, directory, ProgressSequence(self._last_seq(directory))),
            "Failed",
            message=message,
        )

    def retarget(self, task: Task) -> None:
        """The running attempt of ``task`` now stands for this version of it (after a
        hot-swap changed its model without a restart)."""
        for run in self.workers_of(task.task_id):
            if run.task.attempt == task.attempt:
                run.task = task
                self._seen.add(task.key)

    async def report_progress(self, worker: str, fraction: float, message: str = "") -> None:
        """Progress a worker sent over the local channel, at most one report per
        :data:`PROGRESS_MIN_INTERVAL_S` (a later report supersedes a skipped one)."""
        run = self.running.get(worker)
        if run is None:
            return
        now = time.monotonic()
        if now - run.last_progress_at < PROGRESS_MIN_INTERVAL_S:
            return
        run.last_progress_at = now
        await self._report(run, "Running", progress=fraction, message=message)

    def note_result(self, worker: str, result: dict) -> None:
        """A result a worker sent over the channel; used when it writes no result file."""
        run = self.running.get(worker)
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
        channel = self.channel_url_for(run.worker_id) if self.channel_url_for else None
        env = worker_environment(task, run.result_path, channel, run.camera,
                                 run.camera_parameters)
        run.result_path.unlink(missing_ok=True)
        with open(run.log_path, "ab") as log_file:
            log_file.write(f"--- edgeloop: starting {boot} (attempt {task.attempt})\n".encode())
        spec = LaunchSpec(
            worker_id=run.worker_id,
            task=task,
            command=(self.python, "-u", str(boot.resolve())),
            cwd=script_dir,
            env=env,
            directory=run.directory,
            log_path=run.log_path,
        )
        try:
            run.process = await self.launcher.start(spec)
        except (LauncherError, OSError):
            raise
        except Exception as exc:  # a launcher class's own failure (a cluster API's error...)
            log.exception("task %s: the launcher failed", run.worker_id)
            raise LauncherError(f"the launcher failed: {type(exc).__name__}: {exc}") from exc
        run.started_at = time.monotonic()
        pid = run.process.pid
        if pid is not None:  # lets a restarted agent stop a worker it left behind
            (run.directory / PID_NAME).write_text(f"{pid}\n{boot.resolve()}\n")
        log.info("task %s attempt %d: started (pid %s)", run.worker_id, task.attempt, pid)

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
        error = read_result(run.result_path)[0].get("error")
        if error:
            why += f": {error}"
        log.warning(
            "task %s: %s; restart %d in %.1f s", run.worker_id, why, run.restarts.restarts, delay
        )
        if self.on_worker_exit is not None:
            self.on_worker_exit(run.worker_id, str(error or why))
        await self._report(
            run, "Running", message=f"{_camera_prefix(run)}{why}; restart "
                                    f"{run.restarts.restarts} in {delay:.1f} s"
        )
        await self._pause(run, delay)
        while not run.stop_reason:
            run.channel_result = None
            try:
                await self._spawn(run)
            except (TaskSetupError, LauncherError) as exc:
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
        """The final report of the attempt (Completed, or Failed with why), once its last
        worker ended; a camera worker that ends before the others is reported as such."""
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
        self.running.pop(run.worker_id, None)
        if run.camera is not None:
            if state == "Failed":
                run.progress.failed[run.camera] = message
            if any(other.task.attempt == run.task.attempt
                   for other in self.workers_of(run.task.task_id)):
                try:  # the task runs on with its other cameras
                    await self._report(run, "Running", message=f"{_camera_prefix(run)}ended: "
                                                               f"{message or 'completed'}")
                finally:
                    run.finished.set()
                return
            if run.progress.failed and not run.stop_reason:
                state = "Failed"
                message = "; ".join(f"camera {c}: {m}" for c, m in
                                    sorted(run.progress.failed.items()))
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
        """SIGTERM asks the worker to stop; SIGKILL stops it and whatever it started."""
        if run.process is None:
            return
        if sig == signal.SIGKILL:
            run.process.kill()
        else:
            run.process.terminate()

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
        seq = run.progress.next()
        final = state in ("Completed", "Failed")
        try:
            report = TaskProgress(
                node=self.node,
                task_id=run.task.task_id,
                attempt=run.task.attempt,
                seq=seq,
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
                seq=seq,
                state="Failed",
                message=f"unusable result: {exc.errors()[0]['msg']}"[:4096],
                log_tail=log_tail(run.log_path),
                exit_code=exit_code,
            )
        self._save_state(run.attempt_directory, report)
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
