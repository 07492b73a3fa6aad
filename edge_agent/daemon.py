"""The node daemon: one MQTT connection tying the node's parts to the cloud.

What it says: a retained ``online`` status at every connection (with the broker holding a
retained ``lost`` one as its last will), ``offline`` on a clean stop; sample counts of the
watched indexes; task progress; hard examples, through the durable outbox.

What it obeys: the retained desired state (applied once per generation, so the copy the broker
hands back at every reconnection changes nothing) and Task messages (run each attempt once);
before a train or eval worker starts it writes the round's sample indexes. What it serves: chunks
of the models its train tasks produced, when the cloud pulls them.

Incoming control messages are queued and applied one at a time by a task of their own, so a slow
stop of a worker never holds up the connection (acknowledgements of hard examples arrive on it).

This module is a shell: it turns what happens (a message, a worker's word, a connection, the
time passing) into events for :mod:`edge_agent.decisions`, which decides, and carries out the
actions that come back (publish, stop, start or retarget a worker, send a swap, report an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from edge_agent import cameras
from edge_agent import decisions as d
from edge_agent.artifact_upload import ArtifactUploader
from edge_agent.channel import ChannelHandlers, WorkerChannel
from edge_agent.config import AgentConfig
from edge_agent.deployment import ModelDeployer
from edge_agent.downloads import ArtifactDownloader, DownloadError
from edge_agent.hardex_intake import HardExampleIntake
from edge_agent.identity import NodeIdentity
from edge_agent.label_intake import LabelIntake
from edge_agent.live_view import LiveView
from edge_agent.outbox import DiskOutbox
from edge_agent.round_indexes import RoundIndexError, write_round_indexes
from edge_agent.retention import prune_held, prune_task_logs
from edge_agent.runner import TaskSetupError, WorkerRunner
from edge_agent.upload_policy import UploadGate
from edge_agent.watcher import DatasetWatcher
from edgeloop.cancellation import cancel_and_wait
from edgeloop.durable import write_atomically
from edgeloop.fairness import Budget, NodeBudgets
from edgeloop.mqtt import Delivery, MqttClient, MqttSettings, NotConnected
from edgeloop.reliable import ReliableSender
from protocol import topics
from protocol import worker_channel as wc
from protocol import worker_contract as contract
from protocol.data_policies import UploadStatus
from protocol.messages import (
    DatasetSamples,
    DesiredState,
    ErrorReport,
    SampleReport,
    Task,
    TaskProgress,
)
from protocol.topics import Kind

log = logging.getLogger(__name__)

HARDEX_FOLDERS_NAME = "hardex_dirs.json"
#: The variable naming where an inference worker saves hard examples (Sedna's name).
HE_SAVED_URL = "HE_SAVED_URL"
#: How often the agent looks whether its status must be published again.
STATUS_CHECK_S = 0.5
#: How often upload conditions are refreshed and the sender asked to look at the outbox again.
UPLOAD_CHECK_S = 1.0
CLOSE_TIMEOUT_S = 5.0


def mqtt_settings(config: AgentConfig) -> MqttSettings:
    return MqttSettings(
        url=config.broker,
        client_id=config.node,
        username=config.username,
        password=config.password,
        ca_file=config.ca,
        cert_file=config.cert,
        key_file=config.key,
        keepalive=config.keepalive,
        backoff_max=config.reconnect_max_s,
    )


def hardex_folder_of(task: Task) -> Path | None:
    """Where the task's worker will save hard examples, if it does (relative to scriptDir)."""
    value = task.env.get(HE_SAVED_URL) or (
        task.worker.parameters.get(HE_SAVED_URL) if task.worker else None
    )
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_absolute() and task.worker is not None:
        folder = Path(task.worker.script_dir).expanduser() / folder
    return folder.absolute()


def worker_views(runner: WorkerRunner) -> dict[str, d.WorkerView]:
    """The live workers, by worker id, as the decisions need to see them."""
    return {
        worker: d.WorkerView(
            run.task, run.alive, run.restarts.restarts if run.restarts is not None else None
        )
        for worker, run in runner.running.items()
    }


class Agent:
    """Use as ``async with Agent(config) as agent: ...``; leaving stops it cleanly."""

    def __init__(self, config: AgentConfig, identity: NodeIdentity | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: the wall clock the upload policy and retention read (tests and
        benchmarks pass one they move)."""
        self.config = config
        self.clock = clock
        self.node = config.node
        self.identity = identity or NodeIdentity(config.node, labels=dict(config.labels))
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

        self.budgets = NodeBudgets(Budget(messages=config.node_budget_messages,
                                          bytes=int(config.node_budget_mb * 2**20)))
        self.client = MqttClient(
            mqtt_settings(config), will=(topics.status(self.node), self.identity.last_will()),
            admission=self.budgets,
        )
        self.uploads = UploadGate(config.upload_policy, self.state_dir,
                                  meta=lambda key: self.outbox.meta(key), clock=clock)
        self.outbox = DiskOutbox(self.state_dir / "outbox", config.outbox_quota_bytes,
                                 rejected_dir=self.state_dir / "rejected",
                                 eviction=config.outbox_eviction, on_evict=self.uploads.evicted,
                                 in_flight=lambda: self.sender.in_flight)
        self.sender = ReliableSender(self.client, topics.ack(self.node), self.outbox,
                                     on_refused=lambda key, why: self.outbox.set_aside(key, why.reason),
                                     gate=self.uploads)
        self.intake = HardExampleIntake(self.node, self.sender, self.state_dir / "rejected")
        for job, folder in {**self._load_hardex_folders(), **config.hardex_dirs}.items():
            self.intake.add_folder(folder, job)
        self.watcher = DatasetWatcher(
            {k: Path(v) for k, v in config.datasets.items()},
            self.state_dir,
            self._publish_samples,
            num_classes=config.num_classes,
        )
        self.labels = LabelIntake(self.client, self.node, config.datasets, config.num_classes)
        self.runner = self._make_runner()
        self.channel = self._make_channel()
        self.live_view = self._make_live_view()
        self.downloader = ArtifactDownloader(
            self.client,
            self.node,
            self.state_dir / "artifacts",
            chunk_timeout=config.download_chunk_timeout_s,
        )
        self.deployer = ModelDeployer(self.downloader, self.state_dir / "models",
                                      check_models=config.check_models)
        self.uploader = ArtifactUploader(self.client, self.node, self.state_dir)
        self.state = d.NodeState(self.node, watches_datasets=bool(self.watcher.datasets))
        self._control: asyncio.Queue[DesiredState | Task] = asyncio.Queue()
        self._samples_seq = 0
        self._background: list[asyncio.Task[None]] = []

        self.client.subscribe(topics.desired(self.node), self._on_control)
        self.client.subscribe(topics.node_filter(Kind.TASK, self.node), self._on_control)
        self.client.on_connect(self._on_connect)

    def _make_runner(self) -> WorkerRunner:
        return WorkerRunner(
            self.node,
            self.state_dir,
            self._on_progress,
            channel_url_for=self._channel_url_for,
            stop_grace_s=self.config.stop_grace_s,
            prepare=self._prepare_task,
            restart_policy=self.config.restart_policy,
            on_worker_exit=self._on_worker_exit,
            camera_parameters=self.config.camera_parameters(),
            launcher=self.config.make_launcher(),
        )

    def _make_channel(self) -> WorkerChannel:
        return WorkerChannel(
            ChannelHandlers(
                hello=self._on_worker_hello,
                progress=self._on_worker_progress,
                result=self._on_worker_result,
                stats=self._on_worker_stats,
                hardex=self._on_worker_hardex,
                swapped=self._on_worker_swapped,
                frame=self._on_worker_frame,
            )
        )

    def _make_live_view(self) -> LiveView | None:
        """The live-view page, when a port is configured (it listens once the agent starts)."""
        if self.config.live_view_port is None:
            return None
        return LiveView(
            self.channel,
            node=self.node,
            backlog=lambda: len(self.outbox),
            uploads=lambda: self.upload_status().summary(),
            host=self.config.live_view_host,
            port=self.config.live_view_port,
            max_fps=self.config.live_view_max_fps,
        )

    @property
    def serving(self) -> dict[str, int]:
        """Inference task id -> the model version its worker serves."""
        return self.state.serving

    @property
    def worker_stats(self) -> dict[str, wc.Stats]:
        """Inference task id -> the last statistics its worker sent."""
        return self.state.worker_stats

    @property
    def applied_generation(self) -> int:
        return self.state.applied_generation

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._decide(d.Recovered(tuple(self.runner.recover())))  # published once connected
        await self.channel.__aenter__()
        await self._start_live_view()
        await self.intake.scan()  # what was saved while the agent was down, before anything new
        await self.client.__aenter__()
        await self.sender.__aenter__()
        for name, coro in (
            ("control", self._apply_control()),
            ("watcher", self.watcher.run()),
            ("intake", self._scan_hardex()),
            ("status", self._refresh_status()),
            ("upload conditions", self._check_upload_conditions()),
            ("retention", self._retain()),
        ):
            self._background.append(asyncio.create_task(coro, name=f"agent:{name}"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop workers, say ``offline`` (retained), disconnect cleanly; the outbox stays."""
        log.info("shutting down: %d worker(s) to stop", len(self.runner.running))
        self.watcher.close()
        await cancel_and_wait(*self._background)
        self._background.clear()
        await self.runner.stop_all("stopped: the agent is shutting down")
        log.debug("workers stopped")
        if self.live_view is not None:
            await self.live_view.__aexit__(None, None, None)
        await self.channel.__aexit__(None, None, None)
        if self.client.connected:
            with contextlib.suppress(Exception):
                await self.client.publish(
                    topics.status(self.node),
                    self.identity.status("offline", outbox_backlog=len(self.outbox)),
                    retain=True,
                    timeout=3,
                )
        await self._close_connection()
        self.uploads.close()

    async def _close_connection(self) -> None:
        # A cancellation can be lost inside the MQTT layer on Python 3.11 (see cancel_and_wait):
        # bound each step; the event loop's own shutdown cancels what is left once more.
        for what, closing in (
            ("reliable sender", lambda: self.sender.__aexit__(None, None, None)),
            ("MQTT client", self.client.close),
        ):
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await closing()
            except TimeoutError:
                log.warning("%s did not stop within %s s", what, CLOSE_TIMEOUT_S)

    async def _start_live_view(self) -> None:
        """The page is an aid: a port already taken costs the page, not the node."""
        if self.live_view is None:
            return
        try:
            await self.live_view.__aenter__()
            # in every status from the first: the console links a node to its page
            self.identity.capabilities["live_view"] = self.config.live_view_url or self.live_view.url
        except OSError as exc:
            log.error(
                "live view off: cannot listen on %s:%s: %s",
                self.config.live_view_host,
                self.config.live_view_port,
                exc,
            )
            self.live_view = None

    # -- decisions --------------------------------------------------------------------------

    def _decide(self, event: d.Event) -> list[d.Action]:
        """Feed ``event`` to the decisions with the world as it is now; keep the state."""
        ctx = d.Context(
            now=time.monotonic(),
            workers=worker_views(self.runner),
            backlog=len(self.outbox),
            connected=self.client.connected,
            uploads=self.upload_status(),
        )
        transition = d.handle(self.state, event, ctx)
        self.state = transition.state
        return transition.actions

    async def _act(self, event: d.Event) -> None:
        """Decide about ``event`` and carry out the actions, in order."""
        for action in self._decide(event):
            await self._carry_out(action)

    async def _carry_out(self, action: d.Action) -> None:
        match action:
            case d.QueueControl(message):
                self._control.put_nowait(message)
            case d.ReportError(code, reason, about):
                await self._report_error(code, reason, about)
            case d.StopWorker(task_id, reason):
                await self.runner.stop(task_id, reason)
            case d.HandleTask(task):
                await self.runner.handle(task)
            case d.EnsureRunning(task):
                await self.runner.ensure_running(task)
            case d.StartWorker(task, why):
                log.info("task %s: %s", task.task_id, why)
                await self.runner.start(task)
            case d.PrepareModels(task, from_desired):
                await self._prepare_models(task, from_desired)
            case d.FailTask(task, reason):
                await self.runner.fail_before_start(task, reason)
            case d.SendSwap(task, swap, camera):
                delivered = await self.channel.send(action.worker, swap)
                await self._act(d.SwapSent(task, swap, delivered, camera))
            case d.Retarget(task, why):
                log.info("task %s: %s", task.task_id, why)
                self.runner.retarget(task)
            case d.CloseTask(report):
                self._close_task(report)
            case d.PublishProgress(report):
                await self._send_progress(report)
            case d.PublishStatus():
                await self._publish_status(action)
            case d.PublishSamples():
                await self._publish_samples(self.watcher.current or await self.watcher.refresh())
            case d.RecordGeneration(generation, tasks):
                self._decide(d.GenerationApplied(generation, tasks))
                log.info("applied desired generation %d (%d task(s))", generation, len(tasks))

    # -- outgoing ---------------------------------------------------------------------------

    async def _on_connect(self) -> None:
        await self._act(d.Connected())

    async def _publish_status(self, action: d.PublishStatus) -> None:
        status = self.identity.status(
            "online",
            outbox_backlog=action.backlog,
            serving=action.serving,
            worker_restarts=action.restarts,
            health=action.health,
            cameras=action.cameras,
        ).model_copy(update={"uploads": action.uploads})
        if await self.client.publish(topics.status(self.node), status, retain=True):
            self._decide(d.StatusPublished(action.backlog, action.serving, action.restarts,
                                           action.health, action.uploads, action.cameras))

    async def _refresh_status(self) -> None:
        """Republish the status when what it says changed (the decisions say when)."""
        while True:
            await asyncio.sleep(STATUS_CHECK_S)
            with contextlib.suppress(NotConnected):
                await self._act(d.StatusDue())

    async def _publish_samples(self, datasets: list[DatasetSamples]) -> None:
        self._samples_seq += 1
        report = SampleReport(
            node=self.node, boot_id=self.identity.boot_id, seq=self._samples_seq, datasets=datasets
        )
        try:
            await self.client.publish(topics.samples(self.node), report)
        except NotConnected:
            pass  # the connect hook reports current counts

    async def _on_progress(self, report: TaskProgress) -> None:
        """A report of the worker runner; a final one missed by an outage is sent again at the
        next connection."""
        await self._act(d.ProgressReported(report))

    async def _send_progress(self, report: TaskProgress) -> None:
        try:
            delivered = await self.client.publish(
                topics.progress(self.node, report.task_id), report
            )
        except NotConnected:
            delivered = False
        self._decide(d.ProgressSent(report, delivered))

    def _close_task(self, report: TaskProgress) -> None:
        self.uploader.note(report)
        if self.live_view is not None:
            for worker in cameras.workers_of(report.task_id, list(self.live_view.tasks)):
                self.live_view.forget(worker)

    async def _report_error(self, code: str, reason: str, about: str = "") -> None:
        log.error("%s: %s", code, reason)
        with contextlib.suppress(Exception):
            await self.client.publish(
                topics.node_topic(Kind.ERROR, self.node),
                ErrorReport(node=self.node, code=code, reason=reason[:4096], about=about),
            )

    # -- incoming ---------------------------------------------------------------------------

    async def _on_control(self, delivery: Delivery) -> None:
        await self._act(d.ControlReceived(delivery.topic, delivery.message))

    async def _apply_control(self) -> None:
        while True:
            message = await self._control.get()
            event: d.Event = (
                d.DesiredReceived(message)
                if isinstance(message, DesiredState)
                else d.TaskReceived(message)
            )
            try:
                actions = self._decide(event)
                if not actions:
                    log.debug("%s changes nothing (generation already applied)", message.key)
                for action in actions:
                    await self._carry_out(action)
            except Exception as exc:  # one bad message must not end the loop
                log.exception("cannot apply %s", message.key)
                await self._report_error(
                    "apply_failed", f"{type(exc).__name__}: {exc}", message.key
                )

    async def _prepare_models(self, task: Task, from_desired: bool) -> None:
        """Get the task's models, then let the decisions start it or hot-swap its worker."""
        self._note_hardex_folder(task)
        try:
            prepared = await self.deployer.prepare(task)
        except (DownloadError, ValueError, OSError) as exc:
            await self._act(d.ModelUnavailable(task, f"model not available: {exc}"))
            return
        await self._act(d.ModelReady(task, prepared, from_desired))

    def _prepare_task(self, task: Task) -> None:
        """Before a train or eval worker starts: write the round's sample indexes
        (``EDGELOOP_SPLIT``). Runs in a thread: the dataset index may be large."""
        if task.role not in ("train", "eval"):
            return
        try:
            written = write_round_indexes(task, self.config.num_classes)
        except RoundIndexError as exc:
            raise TaskSetupError(str(exc)) from None
        if written is not None:
            log.info("task %s: %d train, %d eval, %d replay samples", task.task_id,
                     written.train, written.eval, written.replay)

    # -- hard examples ----------------------------------------------------------------------

    def upload_status(self) -> UploadStatus:
        """What the status and the live view say of the node's uploads."""
        skipped: dict[str, int] = {}
        held = 0
        for stats in self.state.worker_stats.values():
            capture = stats.extra.get("capture")
            if not isinstance(capture, dict):
                continue
            for rule, count in (capture.get("skipped") or {}).items():  # type: ignore[union-attr]
                if isinstance(count, int):
                    skipped[rule] = skipped.get(rule, 0) + count
            waiting = capture.get("held_waiting")
            held += waiting if isinstance(waiting, int) else 0
        return self.uploads.status(len(self.outbox), self.outbox.used_bytes, skipped, held)

    async def _check_upload_conditions(self) -> None:
        """Keep the answers of the upload condition commands fresh; let the sender look again
        when the policy may have changed its mind (a window opened, a day began)."""
        while True:
            try:
                await self.uploads.check_conditions()
            except Exception:
                log.exception("upload condition check failed")
            if self.uploads.limited:
                self.sender.nudge()
            await asyncio.sleep(UPLOAD_CHECK_S)

    async def _retain(self) -> None:
        """Prune held hard examples and finished workers' logs (the ``retention`` settings)."""
        settings = self.config.retention
        while True:
            try:
                now = self.clock()
                self.uploads.pruned(prune_held(self.intake.folders, settings, now))
                running = [run.log_path.parent for run in self.runner.running.values()]
                prune_task_logs(self.state_dir, running, settings, now)
            except Exception:
                log.exception("retention pass failed")
            await asyncio.sleep(settings.check_s)

    def _note_hardex_folder(self, task: Task) -> None:
        if task.role == "inference" and task.action == "start":
            self._note_upload_policy(task)
        folder = hardex_folder_of(task)
        if folder is None or task.action != "start":
            return
        if self.intake.folders.get(folder.resolve()) == task.job:
            return
        self.intake.add_folder(folder, task.job)
        known = self._load_hardex_folders()
        known[task.job] = folder
        path = self.state_dir / HARDEX_FOLDERS_NAME
        write_atomically(path, json.dumps({k: str(v) for k, v in known.items()}).encode())

    def _note_upload_policy(self, task: Task) -> None:
        """The job's ``uploadPolicy`` over the node's, for its examples from now on."""
        try:
            override = contract.parse_upload_policy(task.env.get(contract.UPLOAD_POLICY, ""))
        except ValueError as exc:
            log.error("task %s: %s; the node's upload policy applies", task.task_id, exc)
            override = None
        self.uploads.set_job_policy(task.job, override)

    def _load_hardex_folders(self) -> dict[str, Path]:
        """Folders of earlier tasks: drained at start-up even before any task runs again."""
        try:
            raw = json.loads((self.state_dir / HARDEX_FOLDERS_NAME).read_text(encoding="utf-8"))
            return {str(k): Path(v) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", HARDEX_FOLDERS_NAME, exc)
            return {}

    async def _scan_hardex(self) -> None:
        while True:
            try:
                await self.intake.scan()
            except Exception:
                log.exception("hard-example scan failed")
            await asyncio.sleep(self.config.hardex_scan_s)

    # -- local channel ----------------------------------------------------------------------

    def _channel_url_for(self, task_id: str) -> str | None:
        return self.channel.url_for(task_id) if self.channel.port else None

    async def _on_worker_hello(self, task_id: str, message: wc.Hello) -> None:
        await self._act(d.WorkerHello(task_id, message.model_version))
        if self.live_view is not None:
            await self.live_view.on_worker_hello(task_id, message)

    async def _on_worker_frame(self, task_id: str, message: wc.Frame) -> None:
        if self.live_view is not None:
            await self.live_view.on_frame(task_id, message)

    async def _on_worker_progress(self, task_id: str, message: wc.Progress) -> None:
        await self.runner.report_progress(task_id, message.fraction, message.message)

    async def _on_worker_result(self, task_id: str, message: wc.Result) -> None:
        self.runner.note_result(task_id, message.result)

    async def _on_worker_stats(self, task_id: str, message: wc.Stats) -> None:
        await self._act(d.WorkerStats(task_id, message))
        if self.live_view is not None:
            await self.live_view.on_stats(task_id, message)

    async def _on_worker_hardex(self, task_id: str, message: wc.HardExample) -> None:
        path = Path(message.sidecar_path)
        run = self.runner.running.get(task_id)
        if not path.is_absolute() and run is not None and run.task.worker is not None:
            path = Path(run.task.worker.script_dir).expanduser() / path  # the worker's cwd
        await self.intake.take_file(path)

    async def _on_worker_swapped(self, task_id: str, message: wc.Swapped) -> None:
        if self.live_view is not None:
            await self.live_view.on_swapped(task_id, message)
        if message.ok:
            log.info("task %s now serves model %s", task_id, message.version)
        await self._act(d.WorkerSwapped(task_id, message))

    def _on_worker_exit(self, worker: str, reason: str) -> None:
        """An inference worker died and will be started again: until its successor says hello
        (with the version it loaded), the node serves nothing for that task (or camera)."""
        self._decide(d.WorkerExited(worker, reason))


async def run_agent(config: AgentConfig, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set (SIGTERM in the command), then shut down cleanly."""
    async with Agent(config):
        await stop.wait()
