"""The agent's settings: a YAML file, overridden by command-line options.

Example file (all keys optional except ``node`` and ``broker`` when not given on the command
line)::

    node: edge-1
    broker: mqtts://cloud.example:8883
    state_dir: /var/lib/edgeloop
    ca: /etc/edgeloop/ca.crt
    cert: /etc/edgeloop/edge-1.crt
    key: /etc/edgeloop/edge-1.key
    datasets:                       # indexes whose sample counts the node reports
      default/helmet: /data/helmet/data.txt
    hardex_dirs:                    # HE_SAVED_URL folders to drain, per job
      default/helmet-job: /var/lib/edgeloop/hardex
    outbox_quota_mb: 1024
    outbox_eviction: oldest          # none (default), oldest or lowest-score
    upload_policy:                  # when and how much is sent (a job's uploadPolicy overrides)
      windows: ["22:00-06:00"]
      timezone: Europe/Paris
      bytes_per_second: 200000
      bytes_per_day: 500000000
      bytes_per_month: 2000000000
      condition_file: /run/edgeloop/on-wifi
    retention:                      # pruning of held hard examples and finished workers' logs
      held_max_age_days: 7
      task_logs_max_mb: 200
    live_view_port: 8080            # the live-view page; null turns it off
    labels:                         # jobs select nodes by these (deploySpec.nodeSelector)
      site: north
      line: "2"
    cameras:                        # every inference job runs each of them (one worker each)
      gate: rtsp://viewer:secret@192.168.1.64:554/stream1
      crane:
        url: rtsp://192.168.1.65/live
        realtime: "0"               # options: inference parameters for this camera only
    launcher: command               # how workers run: process (default), command, or
    launcher_command:               #   package.module:ClassName (with launcher_options)
      [systemd-run, --user, --scope, -p, MemoryMax=4G, "{command}"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.launchers import (
    BUILTIN_LAUNCHERS,
    LauncherError,
    WorkerLauncher,
    check_launcher_class,
    check_template,
    make_launcher,
)
from edge_agent.restart_policy import (
    DEFAULT_HEALTHY_S,
    DEFAULT_INITIAL_S,
    DEFAULT_MAXIMUM_S,
    RestartPolicy,
)
from edge_agent.retention import RetentionSettings
from edgeloop.fairness import Budget
from protocol.data_policies import EvictionOrder, UploadPolicy
from protocol.codec import describe_validation_error
from protocol.messages import JobRef, Name
from protocol.targets import LabelKey, LabelValue

DEFAULT_STATE_DIR = Path("/var/lib/edgeloop")


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and the file."""


#: Inference parameters a camera may set for itself; the rest (the model, mining, where hard
#: examples go) is the job's.
CAMERA_OPTIONS = frozenset(
    {"loop", "realtime", "frame_log", "max_frames", "threads", "obj_threshold", "nms_threshold"}
)


class Camera(BaseModel):
    """One camera of the node: its stream and the inference parameters it sets for itself."""

    model_config = ConfigDict(extra="allow", frozen=True)

    url: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _url_alone(cls, value: object) -> object:
        """``name: rtsp://...`` is short for ``name: {url: rtsp://...}``."""
        if isinstance(value, int):  # a camera index, ``0``
            return {"url": str(value)}
        if isinstance(value, dict) and isinstance(value.get("url"), int):
            return {**value, "url": str(value["url"])}
        return {"url": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known_options(self) -> Self:
        unknown = sorted(set(self.model_extra or {}) - CAMERA_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown camera option(s) {', '.join(unknown)}; a camera may set "
                f"{', '.join(sorted(CAMERA_OPTIONS))}"
            )
        return self

    @property
    def options(self) -> dict[str, str]:
        """The camera's own inference parameters, as strings (as a manifest gives them)."""
        return {k: str(v) for k, v in (self.model_extra or {}).items()}

    def parameters(self) -> dict[str, str]:
        """What this camera's worker gets over the job's parameters."""
        return {**self.options, "video_url": str(self.url)}


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node: Name
    broker: str = Field(pattern=r"^mqtts?://")
    state_dir: Path = DEFAULT_STATE_DIR
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    #: Dataset (namespace/name) -> path of its data.txt
    datasets: dict[JobRef, Path] = Field(default_factory=dict)
    #: Job (namespace/name) -> folder where its inference worker saves hard examples
    hardex_dirs: dict[JobRef, Path] = Field(default_factory=dict)
    #: Classes a valid index line may use (the watcher skips lines with a larger class index)
    num_classes: int = Field(default=4, ge=1)
    outbox_quota_mb: float = Field(default=1024, gt=0)
    #: what the outbox gives up when over its quota: none (it refuses new examples, which
    #: wait in their folder), oldest, or lowest-score (the mining score); each one counted
    outbox_eviction: EvictionOrder = "none"
    #: when and how much the node sends (protocol.data_policies.UploadPolicy); default: at once
    upload_policy: UploadPolicy = Field(default_factory=UploadPolicy)
    #: pruning of held hard examples and finished workers' logs (edge_agent.retention)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    #: Load every downloaded .tflite with LiteRT before a worker may use it (off only where the
    #: workers are stand-ins that never load a model)
    check_models: bool = True
    #: Seconds between scans of the hard-example folders (a worker's announcement is immediate)
    hardex_scan_s: float = Field(default=2.0, gt=0)
    #: Seconds a stopped worker gets between SIGTERM and SIGKILL
    stop_grace_s: float = Field(default=5.0, ge=0)
    #: First pause before an inference worker that exited by itself is started again; the
    #: pauses double (with jitter) up to ``restart_max_s``
    restart_initial_s: float = Field(default=DEFAULT_INITIAL_S, gt=0)
    restart_max_s: float = Field(default=DEFAULT_MAXIMUM_S, gt=0)
    #: A worker that ran this long before exiting restarts after a short pause again
    restart_healthy_s: float = Field(default=DEFAULT_HEALTHY_S, ge=0)
    keepalive: int = Field(default=15, ge=2)
    #: Longest wait between reconnection attempts (they back off exponentially up to it)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    #: Seconds to wait for a requested model chunk before asking for it again
    download_chunk_timeout_s: float = Field(default=10.0, gt=0)
    #: Port of the live-view page (0: any free port; null: no live view)
    live_view_port: int | None = Field(default=8080, ge=0, le=65535)
    #: Address the live-view page listens on (0.0.0.0 to reach it from other machines)
    live_view_host: str = "127.0.0.1"
    #: The live view's address as people reach it (a proxy, the machine's public name); the
    #: node reports it and the console's fleet page links to it. Default: where it listens
    live_view_url: str | None = Field(default=None, pattern=r"^https?://")
    #: Frames per second sent to the live view, per inference worker
    live_view_max_fps: float = Field(default=5.0, gt=0, le=30)
    #: Messages per second the node's topics may bring in; more are turned away and counted
    #: (edgeloop.fairness)
    node_budget_messages: int = Field(default=Budget.messages, ge=1)
    #: MiB per second the node's topics may bring in
    node_budget_mb: float = Field(default=Budget.bytes / 2**20, gt=0)
    #: Labels (Kubernetes syntax) sent in every status: a job whose deploySpec.nodeSelector
    #: matches them runs its inference worker here
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    #: Camera name -> its stream (an OpenCV source: rtsp:// URL, file, camera index) or
    #: ``{url: ..., <option>: ...}``: each inference task runs one worker per camera, instead of
    #: one on the job's ``video_url``
    cameras: dict[Name, Camera] = Field(default_factory=dict)
    #: How workers are started (edge_agent.launchers): ``process`` (a child process of the
    #: agent), ``command`` (through the ``launcher_command`` wrapper) or
    #: ``package.module:ClassName`` (built with ``launcher_options`` as keyword arguments)
    launcher: str = Field(default="process", pattern=r"^(process|command|[\w.]+:\w+)$")
    #: The wrapper of the ``command`` launcher; its ``"{command}"`` element becomes the worker's
    #: command, other elements may name {task_id}, {worker_id}, {job}, {role}, {attempt},
    #: {script_dir}, {directory} and {env_file}
    launcher_command: list[str] = Field(default_factory=list)
    launcher_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _launcher_settings_fit(self) -> Self:
        if self.launcher == "command":
            try:
                check_template(self.launcher_command)
            except LauncherError as exc:
                raise ValueError(str(exc)) from None
        elif self.launcher_command:
            raise ValueError(f"launcher_command: only used when launcher is 'command', not "
                             f"{self.launcher!r}")
        if self.launcher_options and self.launcher in BUILTIN_LAUNCHERS:
            raise ValueError(f"launcher_options: only used by a launcher class, not "
                             f"{self.launcher!r}")
        return self

    def make_launcher(self) -> WorkerLauncher:
        """The launcher these settings name; LauncherError when it cannot be built."""
        return make_launcher(self.launcher, self.launcher_command, self.launcher_options)

    @model_validator(mode="after")
    def _restart_pauses_ordered(self) -> Self:
        if self.restart_initial_s > self.restart_max_s:
            raise ValueError(
                f"restart_initial_s ({self.restart_initial_s}) must not exceed restart_max_s "
                f"({self.restart_max_s})"
            )
        return self

    def camera_parameters(self) -> dict[str, dict[str, str]]:
        """Camera name -> the parameters its inference worker gets over the job's."""
        return {name: camera.parameters() for name, camera in self.cameras.items()}

    def restart_policy(self) -> RestartPolicy:
        """A fresh restart policy for one inference worker."""
        return RestartPolicy(
            initial_s=self.restart_initial_s,
            maximum_s=self.restart_max_s,
            healthy_s=self.restart_healthy_s,
        )

    @property
    def outbox_quota_bytes(self) -> int:
        return int(self.outbox_quota_mb * 2**20)


def parse_mapping(pairs: list[str], what: str) -> dict[str, str]:
    """``["ns/name=/path", ...]`` -> ``{"ns/name": "/path"}``, with a clear error."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{what}: {pair!r} is not of the form namespace/name=/path")
        mapping[name.strip()] = path.strip()
    return mapping


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``["site=north", ...]`` (``--label``) -> ``{"site": "north"}``; the syntax of each key and
    value is checked with the other settings."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--label: {pair!r} is not of the form key=value")
        labels[key.strip()] = value.strip()
    return labels


def load_config(file: Path | None, overrides: dict[str, object]) -> AgentConfig:
    """Read ``file`` (if any) and apply ``overrides`` (None values are ignored; mappings are
    merged)."""
    data: dict[str, object] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {file}: must be a mapping of settings")
        data.update(loaded or {})
    for key, value in overrides.items():
        if value is None or value == {}:
            continue
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # type: ignore[dict-item]
        else:
            data[key] = value
    if (data.get("cert") is None) != (data.get("key") is None):
        raise ConfigError("cert and key: give both (the node's certificate identity) or neither")
    where = f"config file {file}: " if file else "settings: "
    try:
        settings = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(where + describe_validation_error(exc)) from None
    try:  # a launcher class that cannot be loaded is a setting error, said before starting
        if settings.launcher not in BUILTIN_LAUNCHERS:
            check_launcher_class(settings.launcher, settings.launcher_options)
    except LauncherError as exc:
        raise ConfigError(where + str(exc)) from None
    return settings
