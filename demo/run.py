"""``edgeloop demo``: the seed guide's helmet loop, for real, on one machine.

What runs, each as its own process with its own log under ``WORKDIR/logs/``: a production
broker (TLS, one certificate per identity, the generated ACL), the cloud manager, the agent
``cloud0`` (holds the dataset, trains, evaluates) and the agent ``edge0`` (inference), an RTSP
server fed by ``ffmpeg -re`` (the camera). The seed's manifests are applied over the API with
only the adaptations :mod:`demo.manifests` lists. The demo itself plays the parts a
person plays in production: it moves the camera to a new domain for each round, and its
SIMULATED ANNOTATOR labels the hard examples that reach the cloud's inbox.

Rounds: data.txt holds the base model's day data when the job starts, so round 1 retrains on
it (the seed's "download the dataset to cloud0" step); it becomes a version only if it beats the
base model by the deploy gate, which a retrain on the same data rarely does. The camera shows
night, then new-colors, and each becomes a version once its round passes the gate. While a round
learns one domain the camera already shows the next one to learn (the round's samples are
fixed); a round that is not deployed sends the camera back to its domain (:mod:`demo.schedule`).
A domain the base model is blind to still gives hard examples: the product's blind-spot mining
samples frames without detections (:mod:`workers.blind_spot`), so the camera never has to
change video to feed the trigger.

``WORKDIR/cache/`` (data, videos, base model) is kept between runs; ``WORKDIR/run/`` and
``WORKDIR/logs/`` are fresh every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live

from demo import data
from edgeloop.cancellation import cancel_and_wait
from edgeloop.ports import free_port, port_is_free
from demo.camera import CAPTURE_OPTIONS, Camera
from demo.manifests import (
    CLOUD_NODE,
    DATASET,
    EDGE_NODE,
    EDGE_NODE_2,
    EDGE_NODES,
    FLEET_LABELS,
    JOB,
    NAMESPACE,
    DemoPaths,
    adapt,
    load_seed,
)
from demo.processes import ProcessFailed, ProcessSet, stop_leftovers
from demo.progress import (
    JobWatch,
    LoopView,
    Transition,
    follow_live_view,
    is_rollout_step,
    render,
)
from demo.report import ReportInputs, gate_rows, round_eval_result, write_report
from demo.run_record import Outcome, RunPaths
from demo.schedule import DomainPlan

CLOUD = "cloud"
#: Seconds the camera stays on day once edge0 shows frames, before the first shift.
DAY_SECONDS = 8.0
#: Every child the demo starts, for the next run to clean up after a SIGKILL.
PIDS_FILE = "children.pids"
#: Seconds edge0 keeps serving the last version before the demo stops everything.
FINAL_SECONDS = 5.0
#: How long the loop waits with a person labelling: a round needs its threshold of labels.
BROWSER_DEADLINE_S = 4 * 3600.0


class DemoInterrupted(BaseException):
    """SIGINT or SIGTERM: stop everything. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it."""


@dataclass
class DemoSettings:
    workdir: Path
    fast: bool = False
    live_view_port: int = 8080
    #: seconds the loop may take once the processes are up (None: 1800 fast, 5400 full; with
    #: a person labelling, BROWSER_DEADLINE_S)
    deadline: float | None = None
    #: who labels the hard examples: "simulated" (the demo's annotator) or "browser" (a person
    #: in the labelling console)
    annotator: str = "simulated"
    console_port: int = 8090

    @property
    def sizes(self) -> data.DemoSizes:
        return data.FAST if self.fast else data.FULL

    @property
    def deadline_s(self) -> float:
        """Longest the loop may take once the processes are up, before the demo gives up: a
        slower machine than the defaults assume can ask for more."""
        if self.deadline is not None:
            return self.deadline
        if self.annotator == "browser":
            return BROWSER_DEADLINE_S
        return 1800.0 if self.fast else 5400.0


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's CUDA probing is not an error on a CPU box
        "OPENCV_FFMPEG_CAPTURE_OPTIONS": CAPTURE_OPTIONS,
    })
    return env


def _agent_config(paths: RunPaths, node: str, broker_url: str, identity: Any,
                  live_view_port: int | None, datasets: dict[str, str],
                  labels: dict[str, str] | None = None,
                  cameras: dict[str, Any] | None = None) -> Path:
    config: dict[str, Any] = {
        "node": node,
        "broker": broker_url,
        "state_dir": str(paths.agent_state(node)),
        "ca": str(identity.ca),
        "cert": str(identity.cert),
        "key": str(identity.key),
        "datasets": datasets,
        "live_view_port": live_view_port,
        "hardex_scan_s": 1,
        "reconnect_max_s": 2,
    }
    if labels:
        config["labels"] = labels
    if cameras:
        config["cameras"] = cameras
    path = paths.run / f"{node}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fill_dataset(index: Path, base_index: Path, count: int = 0) -> int:
    """The Dataset's data.txt starts as the base model's training data (absolute paths), its
    first ``count`` samples when ``count`` is set."""
    from protocol.dataset_index import append_samples, read_index

    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text("")
    samples = read_index(base_index).samples
    return append_samples(index, samples[:count] if count else samples)


def _kill_leftover_workers(paths: RunPaths) -> list[int]:
    """Worker process groups the agents left behind (an agent killed before it could stop
    them): any ``worker.pid`` whose process still runs one of our boot files."""
    killed = []
    for pid_file in paths.run.glob("agents/*/tasks/*/attempt-*/worker.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if str(data.WORKERS) in cmdline or "workers/" in cmdline:
            try:
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
    return killed


class Demo:
    def __init__(self, settings: DemoSettings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.paths = RunPaths(settings.workdir.absolute())
        self.sizes = settings.sizes
        self.outcome = Outcome()
        self.view = LoopView()
        self.processes: ProcessSet | None = None
        self.camera: Camera | None = None
        #: edge1's camera: another site, at a low frame rate
        self.camera_2: Camera | None = None
        #: edge1's videos: the same domains as edge0's camera, another site
        self.videos_2: dict[str, data.DomainVideo] = {}
        self.broker: Any = None
        self.credentials: Any = None
        self.annotator: Any = None
        self.videos: dict[str, data.DomainVideo] = {}
        self.heldout: dict[str, Path] = {}
        self.base_model: Path | None = None
        self.camera_domain: str | None = None
        self.plan = DomainPlan(data.DOMAINS[0], data.DOMAINS[1:])
        self.registered = 0
        self.started = time.monotonic()

    # --- small helpers -----------------------------------------------------------------

    def say(self, text: str) -> None:
        self.console.print(text)

    def step(self, name: str) -> None:
        self.view.step = name
        self.view.notify()
        self.say(f"[bold cyan]▶ {name}[/]")

    def timed(self, name: str, started: float) -> None:
        self.outcome.durations[name] = round(time.monotonic() - started, 1)

    def connection(self) -> Any:
        from edgeloop.connection import ConnectionOptions

        identity = self.credentials.client(CLOUD)
        return ConnectionOptions(broker=self.broker.url, ca=identity.ca, cert=identity.cert,
                                 key=identity.key)

    # --- the run -----------------------------------------------------------------------

    def prepare_workdir(self) -> None:
        """Fresh state for this run; what a killed earlier run left running is stopped first."""
        left = stop_leftovers(self.paths.workdir / PIDS_FILE)
        left += _kill_leftover_workers(self.paths)  # their agents were killed before them
        if left:
            self.say(f"  stopped {len(left)} process(es) a previous run left behind")
        (self.paths.workdir / PIDS_FILE).unlink(missing_ok=True)
        for stale in (self.paths.run, self.paths.logs, self.paths.plots):
            if stale.exists():
                shutil.rmtree(stale)
        for fresh in (self.paths.run, self.paths.logs, self.paths.cache):
            fresh.mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "summary.json"):
            (self.paths.workdir / name).unlink(missing_ok=True)

    def start_broker(self) -> None:
        from mosquitto.creds import generate_credentials
        from mosquitto.launcher import Broker

        started = time.monotonic()
        self.credentials = generate_credentials(self.paths.run / "creds",
                                                [CLOUD_NODE, *EDGE_NODES], cloud=CLOUD)
        self.broker = Broker(self.paths.run / "broker", credentials=self.credentials)
        self.broker.start()
        if self.broker.pid is not None:
            self.processes.register(self.broker.pid)
        self.timed("broker", started)
        self.say(f"  broker {self.broker.url} (TLS, a certificate per identity: {CLOUD}, "
                 f"{CLOUD_NODE}, {', '.join(EDGE_NODES)}; generated ACL); log {self.broker.log_path}")

    def prepare_data(self) -> None:
        started = time.monotonic()
        cache, sizes = self.paths.cache, self.sizes
        self.heldout, c1 = data.heldout_sets(cache, sizes)
        self.videos, c2 = data.domain_videos(cache, sizes)
        base_index, c3 = data.base_dataset(cache, sizes)
        self.videos_2, c4 = data.second_site_videos(cache, sizes)
        self.outcome.cached["data"] = c1 and c2 and c3 and c4
        self.timed("data", started)
        self.say(f"  synthetic data ({'cached' if c1 and c2 and c3 else 'generated'}): "
                 f"{sizes.base_images} day training images, {sizes.heldout_images} held-out images "
                 f"per domain, camera videos of {sizes.video_shots} shots for "
                 f"{', '.join(data.DOMAINS)}")
        started = time.monotonic()
        self.step(f"base model: {sizes.base_images} day images, {sizes.base_epochs} epochs")
        self.base_model, self.outcome.base_train, cached = data.base_model(
            cache, sizes, self.processes,
            on_progress=lambda f, msg: self.view.report_progress("base model training", f, msg))
        self.view.progress_done()
        self.outcome.cached["base_model"] = cached
        self.timed("base_model", started)
        self.say(f"  base model {'cached' if cached else 'trained'}: {self.base_model} "
                 f"(loss {self.outcome.base_train.get('loss')})")
        samples = _fill_dataset(self.paths.dataset_index, base_index, sizes.dataset_images)
        self.say(f"  the Dataset's data.txt starts with the {samples} day samples the base "
                 "model learned from (replay material for every round)")

    def start_camera(self) -> None:
        self.camera = Camera(self.processes, free_port(), free_port())
        self.camera.start()
        self.play("day")
        self.camera.wait_stream()
        self.say(f"  camera (simulated): {self.camera.url} <- ffmpeg -re "
                 f"{self.videos['day'].video.name} (loop)")
        fps = self.sizes.second_camera_fps
        self.camera_2 = Camera(self.processes, free_port(), free_port(), name=EDGE_NODE_2, fps=fps)
        self.camera_2.start()
        self.camera_2.play(self.videos_2["day"].video)
        self.camera_2.wait_stream()
        self.say(f"  {EDGE_NODE_2}'s camera (simulated, another site of the same scenes, "
                 f"{fps:g} FPS, follows edge0's domain): {self.camera_2.url} <- "
                 f"{self.videos_2['day'].key} (loop)")

    def play(self, domain: str) -> None:
        """Show ``domain``: its next video when a round of it failed (see DomainPlan.variant)."""
        variant = self.plan.variant(domain)
        playing = self.videos.get(domain)
        if domain == self.camera_domain and playing is not None and playing.variant == variant:
            return
        assert self.camera is not None
        if playing is None or playing.variant != variant:
            playing, _ = data.domain_video(self.paths.cache, self.sizes, domain, variant)
            self.videos[domain] = playing
        if self.annotator is not None:  # before the camera shows it: examples may come at once
            self.annotator.add_video(domain, playing.video, playing.ground_truth, playing.key)
        self.camera.play(playing.video)
        self.play_second_site(domain)
        self.camera_domain = domain
        self.view.domain = playing.key
        self.outcome.camera_switches.append({"time": time.time(), "domain": domain,
                                             "video": playing.key})
        self.view.notify()

    def play_second_site(self, domain: str) -> None:
        """edge1's camera follows edge0's to ``domain``, at its own site: both nodes' hard
        examples of a round then come from the domain the round learns."""
        second = self.videos_2.get(domain)
        if self.camera_2 is None or second is None or self.camera_2.playing == second.video:
            return
        if self.annotator is not None:
            self.annotator.add_video(domain, second.video, second.ground_truth, second.key)
        self.camera_2.play(second.video)

    def start_nodes(self) -> None:
        assert self.processes is not None
        env = _child_env()
        cloud = self.credentials.client(CLOUD)
        self.processes.start(
            "cloud",
            [sys.executable, "-m", "edgeloop", "cloud", "--state", str(self.paths.cloud_state),
             "--broker", self.broker.url, "--ca", str(cloud.ca), "--cert", str(cloud.cert),
             "--key", str(cloud.key)],
            env=env, grace_s=10.0,
        )
        datasets = {f"{NAMESPACE}/{DATASET}": str(self.paths.dataset_index)}
        port = self.settings.live_view_port or free_port()
        if not port_is_free(port):
            free = free_port()
            self.say(f"  port {port} is taken; {EDGE_NODE}'s live view uses {free} instead")
            port = free
        assert self.camera_2 is not None
        yard = {"yard": {"url": self.camera_2.url,
                         "frame_log": str(self.paths.node_frame_log(EDGE_NODE_2))}}
        agents: list[tuple[str, int | None, dict[str, str], dict[str, str], dict[str, Any]]] = [
            (CLOUD_NODE, None, datasets, {}, {}),
            (EDGE_NODE, port, {}, FLEET_LABELS, {}),
            (EDGE_NODE_2, None, {}, FLEET_LABELS, yard),
        ]
        for node, live, sets, labels, cameras in agents:
            config = _agent_config(self.paths, node, self.broker.url,
                                   self.credentials.client(node), live, sets, labels, cameras)
            self.processes.start(node, [sys.executable, "-m", "edgeloop", "agent", "--config",
                                        str(config)], env=env, grace_s=20.0)
        self.outcome.live_view_url = f"http://127.0.0.1:{port}/"
        self.say(f"  processes: cloud manager, agent {CLOUD_NODE} (dataset, train, eval), "
                 f"agents {EDGE_NODE} and {EDGE_NODE_2} (inference; labels {FLEET_LABELS}, "
                 f"{EDGE_NODE_2} with camera yard); logs in {self.paths.logs}")
        self.say(f"  [bold]live view of {EDGE_NODE}: {self.outcome.live_view_url}[/]")

    async def api(self, verb: str, timeout: float = 30.0, **fields: Any) -> Any:
        """One API call, retried while the cloud manager is still starting."""
        from cloud_manager.api_client import call, new_request
        from edgeloop.mqtt import NotConnected, RequestTimeout

        deadline = time.monotonic() + timeout
        while True:
            try:
                (response,) = await call(self.connection(), verb, new_request(**fields),
                                         timeout=5.0)
                return response
            except (NotConnected, RequestTimeout):
                if time.monotonic() > deadline:
                    raise
                self.processes.check()
                await asyncio.sleep(0.5)

    async def apply_manifests(self) -> None:
        paths = DemoPaths(
            dataset_index=self.paths.dataset_index,
            initial_model=self.base_model,
            deploy_model=self.paths.run / "deploy" / "model.tflite",
            script_dir=data.WORKERS,
            output_dir=self.paths.run / "output",
            hardex_dir=self.paths.run / "he",
            video_url=self.camera.url,
            frame_log=self.paths.frame_log,
        )
        adapted = adapt(load_seed(), paths, self.sizes.threshold, self.sizes.round_parameters(),
                        self.sizes.forgetting_margin, self.sizes.bake_seconds)
        self.outcome.changes = adapted.changes
        self.say("  seed manifests (examples/helmet/*.yaml) adapted for one machine:")
        for change in adapted.changes:
            self.say(f"    • {change}")
        response = await self.api("create_namespace", name=NAMESPACE, namespace=NAMESPACE)
        if not response.ok and response.code != 409:
            raise RuntimeError(f"create namespace {NAMESPACE}: {response.message}")
        self.say(f"  namespace/{NAMESPACE} {response.message}")
        for manifest in adapted.manifests:
            meta = manifest["metadata"]
            response = await self.api("apply", resource=manifest["kind"],
                                      namespace=meta["namespace"], name=meta["name"],
                                      body=json.dumps(manifest))
            if not response.ok:
                raise RuntimeError(f"apply {manifest['kind']}/{meta['name']}: {response.message} "
                                   f"{'; '.join(response.errors)}")
            self.say(f"  {manifest['kind']}/{meta['namespace']}/{meta['name']} {response.message}")

    def say_decision(self, t: Transition) -> None:
        """Every condition the cloud adds, as it comes: each decision is seen where it is made."""
        style = "red" if t.state == "Failed" else "bold"
        if is_rollout_step(t.reason):
            style = "red" if "failed" in t.reason else "bold yellow"
            self.say(f"  [{style}]rollout[/]: {t.reason}")
            return
        self.say(f"  [{style}]{t.stage}/{t.state}[/] round {t.round}: {t.reason}")
        if (t.stage, t.state) == ("Eval", "Completed"):
            self.say_gate(t.round)

    def say_gate(self, round_no: int) -> None:
        """The gate's table with its decision: the round's own eval set and each earlier one."""
        result = round_eval_result(self.paths, round_no)
        for row in gate_rows(round_no, result or {}, self.plan.round_domain):
            change = "-" if row["change"] is None else f"{row['change']:+.3f}"
            domain = f" ({row['domain']})" if row["domain"] else ""
            self.say(f"    {row['set']}{domain}: {row['images']} images, candidate "
                     f"{row['candidate'] if row['candidate'] is None else round(row['candidate'], 3)}"
                     f" vs serving "
                     f"{row['serving'] if row['serving'] is None else round(row['serving'], 3)}"
                     f" ({change})")

    async def print_job_table(self) -> None:
        """What ``edgeloop get il -n neptune-test`` prints now."""
        from cloud_manager.render import table

        try:
            response = await self.api("get", timeout=10.0, resource="il", namespace=NAMESPACE,
                                      name="")
        except Exception as exc:  # the table is a courtesy; the loop goes on
            self.say(f"  [dim](edgeloop get il: {exc})[/]")
            return
        self.say(f"[dim]$ edgeloop get il -n {NAMESPACE}[/]")
        self.console.print(table(response.data["kind"], response.data["items"]))

    async def collect_job_record(self) -> None:
        """The job's history and versions, while the cloud manager still runs."""
        try:
            response = await self.api("describe", timeout=10.0, resource="il",
                                      namespace=NAMESPACE, name=JOB)
            if response.ok:
                self.outcome.job = response.data
        except Exception as exc:  # the report says what it lacks
            self.say(f"  [dim](edgeloop describe il: {exc})[/]")

    @contextlib.asynccontextmanager
    async def labelling(self) -> AsyncIterator[None]:
        """Who labels the hard examples while the block runs: the simulated annotator, or with
        ``--annotator browser`` a person in the labelling console the demo starts."""
        if self.settings.annotator != "browser":
            task = asyncio.create_task(self.annotate_forever(), name="demo-annotator")
            try:
                yield
            finally:
                await cancel_and_wait(task)
            return
        from demo.browser_annotator import LabelTally, console_for_a_person, watch_labels

        port = self.settings.console_port or free_port()
        if not port_is_free(port):
            free = free_port()
            self.say(f"  port {port} is taken; the labelling console uses {free} instead")
            port = free
        tally = LabelTally()

        def counted(labels: list[Any]) -> None:
            self.plan.add_labels([(time.time(), label.domain) for label in labels
                                  if label.domain])
            self.view.labelled = dict(tally.per_domain)
            self.view.notify()

        async with console_for_a_person(self.connection(), self.paths.run / "console", port,
                                        f"{NAMESPACE}/{JOB}") as (console, account):
            self.outcome.console_url = account.url + "/"
            self.say(f"  [bold]labelling console: open {account.url}/ and log in as "
                     f"{account.user}, password {account.password}[/] (shown once; a new one "
                     "each run)")
            self.say(f"  [bold]the demo waits for you[/]: each round trains once "
                     f"{self.sizes.threshold} new labelled samples are in data.txt (keys: a "
                     "accept, 1-4 class, Delete, e no objects, s skip)")
            task = asyncio.create_task(watch_labels(
                console, NAMESPACE, JOB, tally, lambda: self.outcome.camera_switches, counted),
                name="demo-label-watch")
            try:
                yield
            finally:
                await cancel_and_wait(task)

    async def annotate_forever(self) -> None:
        while True:
            try:
                records = await asyncio.to_thread(self.annotator.run_once)
            except Exception as exc:  # a bad example must not stop the labelling
                self.say(f"  [red]simulated annotator: {type(exc).__name__}: {exc}[/]")
                records = []
            if records:
                now = time.time()
                self.plan.add_labels([(now, r.domain) for r in records
                                      if r.refused is None and r.domain])
                self.view.labelled = self.annotator.counts()
                self.view.refused = self.annotator.refusals()
                self.view.notify()
            await asyncio.sleep(1.0)

    def follow_rounds(self, t: Transition) -> None:
        """Which domain each round learns, and which are learned (demo/schedule.py)."""
        if t.stage == "Train" and t.state in ("Ready", "Starting", "Running"):
            if t.round not in self.plan.round_domain:
                domain = self.plan.round_begins(t.round, t.time)
                self.say(f"  round {t.round} learns [bold]{domain}[/]")
        elif "not deployed" in t.reason:  # Eval/Completed, or the Train/Waiting that follows
            self.plan.round_failed(t.round if t.stage == "Eval" else t.round - 1)
        if t.stage == "Deploy" and t.state == "Running" and t.round not in self.plan.deployed_rounds:
            self.plan.round_deployed(t.round)
            self.registered += 1  # Deploy/Running: "model version N registered", N = 1, 2, ...
        elif (t.deployed_version or 0) > self.registered:  # the Deploy step came in one update
            self.plan.round_deployed(t.round if t.stage == "Deploy" else t.round - 1)
            self.registered = t.deployed_version or 0

    def finished(self) -> bool:
        """Every shifted domain learned, and every edge node serves the last version registered
        (the rollout is through)."""
        return (self.plan.done and self.registered > 0 and self.view.serving == self.registered
                and all(self.view.node_serving.get(n) == self.registered for n in EDGE_NODES))

    def say_serving(self, node: str, version: int | None) -> None:
        """A node other than edge0 serves another version (edge0's own line is the loop's)."""
        if node != EDGE_NODE and version:
            self.say(f"[bold green]✓ {node} serves model version {version}[/] (rollout: "
                     f"{time.monotonic() - self.started:.0f} s since the demo started)")

    async def steer_camera(self, day_until: float) -> None:
        while True:
            if time.monotonic() >= day_until:
                domain = self.plan.camera(self.view.stage, self.view.state, self.view.round,
                                          self.camera_domain or "day")
                current = self.videos.get(domain)
                if domain != self.camera_domain or (
                        current is not None and current.variant != self.plan.variant(domain)):
                    variant = self.plan.variant(domain)
                    self.say(f"[bold magenta]camera → {domain}[/] (simulated domain shift"
                             f"{f', video {variant + 1}' if variant else ''})")
                    await asyncio.to_thread(self.play, domain)
            self.view.changed.clear()
            try:
                await asyncio.wait_for(self.view.changed.wait(), 1.0)
            except TimeoutError:
                pass

    async def run_loop(self) -> None:
        from cloud_manager.task_builder import task_id
        from demo.annotator import SimulatedAnnotator

        inference_task = task_id(NAMESPACE, JOB, 0, "inference")
        if self.settings.annotator != "browser":
            self.annotator = SimulatedAnnotator(self.paths.inbox, self.paths.dataset_index,
                                                self.paths.run / "annotator.jsonl")
            self.annotator.add_video("day", self.videos["day"].video,
                                     self.videos["day"].ground_truth)
            if "day" in self.videos_2:  # edge1's camera: its examples are labelled too
                second = self.videos_2["day"]
                self.annotator.add_video("day", second.video, second.ground_truth, second.key)
        pending: set[asyncio.Task] = set()

        def on_transition(t: Transition) -> None:
            self.follow_rounds(t)
            self.say_decision(t)
            if t.state not in ("Completed", "Failed"):
                return  # the table once per finished stage, not at every condition
            task = asyncio.get_running_loop().create_task(self.print_job_table())
            pending.add(task)
            task.add_done_callback(pending.discard)

        identity = self.credentials.client(CLOUD)
        from edgeloop.mqtt import MqttSettings

        settings = MqttSettings(url=self.broker.url, client_id="edgeloop-demo-watch",
                                ca_file=identity.ca, cert_file=identity.cert,
                                key_file=identity.key, session_expiry=0)
        async with JobWatch(settings, NAMESPACE, JOB, EDGE_NODE, inference_task, self.view,
                            on_transition, dataset_node=CLOUD_NODE,
                            other_nodes=(EDGE_NODE_2,), on_serving=self.say_serving), \
                self.labelling():
            await self.apply_manifests()
            port = self.outcome.live_view_url.rsplit(":", 1)[1].strip("/")
            background = [
                asyncio.create_task(follow_live_view(f"ws://127.0.0.1:{port}/ws", self.view)),
            ]
            try:
                deadline = self.settings.deadline_s
                check = self.processes.check
                loop_started = time.monotonic()
                self.step(f"{EDGE_NODE} starts inference on the camera (base model)")
                await self.view.wait_for(lambda v: v.frames > 0, f"{EDGE_NODE} inference frames",
                                         120, check)
                self.timed("edge_first_frame", loop_started)
                background.append(asyncio.create_task(
                    self.steer_camera(time.monotonic() + DAY_SECONDS)))
                self.step("the job retrains on data.txt (round 1), then learns each new "
                          "domain from labelled hard examples")
                announced = 0
                started = time.monotonic()
                while True:
                    left = deadline - (time.monotonic() - loop_started)
                    await self.view.wait_for(
                        lambda v, n=announced: (v.serving or 0) > n or self.finished(),
                        f"the job to learn {', '.join(self.plan.shifted)} and {EDGE_NODE} to "
                        "serve the result", left, check)
                    if (self.view.serving or 0) > announced:
                        announced = self.view.serving or 0
                        self.timed(f"version_{announced}", started)
                        self.say(f"[bold green]✓ {EDGE_NODE} serves model version {announced}[/] "
                                 f"(hot-swapped; {time.monotonic() - started:.0f} s since the job "
                                 f"started; learned so far: {', '.join(self.plan.learned)})")
                    if self.finished():
                        break
                self.step(f"{EDGE_NODE} serves version {announced}; finishing")
                await asyncio.sleep(FINAL_SECONDS)
                await self.print_job_table()
                self.outcome.ok = True
            except DemoInterrupted:
                raise
            except Exception:
                await self.collect_job_record()
                raise
            else:
                await self.collect_job_record()
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
        if self.annotator is not None:
            self.view.labelled = self.annotator.counts()

    def report_inputs(self) -> ReportInputs:
        return ReportInputs(
            paths=self.paths, outcome=self.outcome, view=self.view, fast=self.settings.fast,
            sizes=self.sizes, base_model=self.base_model, heldout=self.heldout,
            processes=self.processes, round_domain=self.plan.round_domain,
        )

    def stop_edge(self) -> None:
        """Stop the edge nodes first, so their inference workers finish cleanly and write their
        results."""
        if self.processes is None:
            return
        for child in list(self.processes.children):
            if child.name in EDGE_NODES:
                self.processes.stop(child)

    def shutdown(self) -> None:
        if self.processes is not None:
            self.processes.stop_all()
        _kill_leftover_workers(self.paths)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


def _raise_interrupt(signum: int, frame: object) -> None:
    raise DemoInterrupted(signal.Signals(signum).name)


def run_demo(settings: DemoSettings, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code (0: the loop closed twice or more)."""
    from demo.camera import missing_programs

    console = console or Console(width=None if sys.stdout.isatty() else 120)
    demo = Demo(settings, console)
    missing = missing_programs()
    if missing:
        console.print(f"[red]edgeloop demo needs: {'; '.join(missing)}[/] (make demo installs them)")
        return 2
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 1
    try:
        demo.prepare_workdir()
        demo.processes = ProcessSet(demo.paths.logs, demo.paths.workdir / PIDS_FILE)
        console.print(f"[bold]edgeloop demo[/] {'--fast ' if settings.fast else ''}"
                      f"in {demo.paths.workdir}")
        with Live(render(demo.view), console=console, refresh_per_second=2,
                  get_renderable=lambda: render(demo.view), transient=True):
            demo.step("credentials and the production broker")
            demo.start_broker()
            demo.step("synthetic data")
            demo.prepare_data()
            demo.step("camera mock: RTSP server + ffmpeg")
            demo.start_camera()
            demo.step("cloud manager and agents")
            demo.start_nodes()
            demo.step("applying the seed's manifests over the API")
            started = time.monotonic()
            asyncio.run(demo.run_loop())
            demo.timed("loop", started)
        code = 0 if demo.outcome.ok else 1
    except DemoInterrupted as exc:
        demo.outcome.error = f"interrupted ({exc})"
        console.print(f"[yellow]interrupted ({exc}): stopping every process the demo started[/]")
        code = 130
    except KeyboardInterrupt:
        demo.outcome.error = "interrupted (SIGINT)"
        console.print("[yellow]interrupted: stopping every process the demo started[/]")
        code = 130
    except (ProcessFailed, TimeoutError, RuntimeError, OSError, ValueError) as exc:
        demo.outcome.error = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]demo failed: {exc}[/]")
        code = 1
    finally:
        # Ctrl-C during the shutdown must not leave processes behind: ignore it until done.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            demo.stop_edge()
            demo.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if code != 130:
        try:
            write_report(demo.report_inputs(), console)
        except Exception as exc:  # a report that fails must still leave the exit code right
            console.print(f"[red]report failed: {type(exc).__name__}: {exc}[/]")
            code = code or 1
    console.print(f"exit {code}; logs in {demo.paths.logs}")
    return code
