"""The manifest schemas: ``Dataset``, ``Model`` and ``IncrementalLearningJob``.

They accept the YAML of Sedna's (formerly Neptune's) helmet-detection guide unchanged, plus the
fields later Sedna versions added, with the same camelCase names: attributes are snake_case and
``model_dump(by_alias=True)`` gives back the YAML shape. Validation is stricter than Sedna's so
that mistakes surface when a manifest is applied, not hours later in a worker:

- an unknown field is an error naming it (a typo must not pass silently); a Kubernetes
  ``status:`` block and the metadata a Kubernetes server fills in are accepted and ignored, so
  ``kubectl get -o yaml`` output loads too;
- numbers are numbers: a quoted threshold is an error, not a string compared to a float;
- trigger operators, metric names (:mod:`protocol.metrics_names`), time windows and the hard
  example mining rule are checked against what edgeloop can actually evaluate.

Error messages are written for :func:`protocol.manifest_yaml.format_errors`, which turns a
pydantic ``ValidationError`` into ``path: message`` lines.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from protocol.data_policies import CapturePolicy, UploadPolicy
from protocol.manifest_base import ManifestPart, NonEmpty, extension_paths, invalid, show
from protocol.metrics_names import NUM_OF_SAMPLES, MetricRef, check_selector, parse_metric
from protocol.pod_template import PodTemplate, StageRuntime
from protocol.targets import DeployTargets, LabelSelector

API_VERSIONS: tuple[str, ...] = ("neptune.io/v1alpha1", "sedna.io/v1alpha1")
DEFAULT_NAMESPACE = "default"

#: Comparison operators of a trigger condition, symbol and word forms.
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
}

#: Hard example mining rules, named as in Sedna.
HARD_EXAMPLE_MINING_NAMES: tuple[str, ...] = ("IBT", "CrossEntropy", "Threshold", "Random")

#: How often a train trigger is re-checked when the manifest does not say (Sedna's default).
DEFAULT_CHECK_PERIOD_SECONDS = 60
DEFAULT_TRAIN_PROB = 0.8

#: The worker parameter that names the classes; metric class selectors refer to it.
CLASS_NAMES_PARAMETER = "class_names"

# Metadata a Kubernetes server adds to an object; accepted on input so that exported
# manifests load, and dropped because edgeloop keeps its own bookkeeping.
_SERVER_METADATA = frozenset(
    {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"}
)

# DNS-1123 as in Kubernetes, capped at 63 characters because names become MQTT topic levels,
# file names and ``namespace/name`` job references on the wire.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_NAMESPACE_RE = re.compile(rf"^{_DNS_LABEL}$")
MAX_NAME_LENGTH = 63

_TIME_RE = re.compile(r"^([0-9]{1,2}):([0-9]{2})$")


class ManifestError(ValueError):
    """A manifest, or a set of them, that cannot be accepted; ``errors`` holds every problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def unsupported_api_version(value: object) -> str:
    return f"{show(value)} is not supported; use {' or '.join(API_VERSIONS)}"


# --- reusable field types --------------------------------------------------------------------


def _one_of(*allowed: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in allowed:
            raise invalid(f"{show(value)} is not one of {', '.join(allowed)}")
        return value

    return AfterValidator(check)


def _dns_name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH or not _NAME_RE.match(value):
        raise invalid(
            f"{show(value)} is not a valid name: use at most {MAX_NAME_LENGTH} lowercase letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        )
    return value


def _dns_label(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH or not _NAMESPACE_RE.match(value):
        raise invalid(
            f"{show(value)} is not a valid namespace: use at most {MAX_NAME_LENGTH} lowercase "
            "letters, digits and '-', starting and ending with a letter or digit"
        )
    return value


def _number_as_text(value: Any) -> Any:
    """Sedna's parameter values are strings; ``value: 32`` unquoted means ``"32"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _time_of_day(allow_24: bool) -> list[Any]:
    """Validators for a ``HH:MM`` time.

    An int is what a YAML 1.1 loader makes of an unquoted ``20:00`` (base 60: 1200); it is
    turned back into the time it was written as. ``H:MM`` is normalised to ``HH:MM``.
    """
    latest = "24:00" if allow_24 else "23:59"

    def from_minutes(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return f"{value // 60:02d}:{value % 60:02d}"
        return value

    def check(value: str) -> str:
        match = _TIME_RE.match(value)
        if match:
            hours, minutes = int(match[1]), int(match[2])
            if hours < 24 and minutes < 60 or allow_24 and (hours, minutes) == (24, 0):
                return f"{hours:02d}:{minutes:02d}"
        raise invalid(f"{show(value)} is not a time of day; expected HH:MM from 00:00 to {latest}")

    return [BeforeValidator(from_minutes), AfterValidator(check)]


Name = Annotated[str, AfterValidator(_dns_name)]
Namespace = Annotated[str, AfterValidator(_dns_label)]
ParameterValue = Annotated[str, BeforeValidator(_number_as_text)]
StartTime = Annotated[str, *_time_of_day(allow_24=False)]
EndTime = Annotated[str, *_time_of_day(allow_24=True)]
Seconds = Annotated[int, Field(gt=0)]
Threshold = Annotated[float, Field(allow_inf_nan=False)]


# --- metadata and worker parameters ----------------------------------------------------------


class ObjectMeta(ManifestPart):
    name: Name
    namespace: Namespace = DEFAULT_NAMESPACE
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_server_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in _SERVER_METADATA}
        return data


class Parameter(ManifestPart):
    """One ``{key, value}`` pair; workers receive it as an environment variable."""

    key: NonEmpty
    value: ParameterValue


def parse_class_names(value: str) -> tuple[str, ...]:
    """Parse the comma-separated ``class_names`` parameter (``person,helmet,...``).

    Empty names and duplicates are errors: both would silently shift the meaning of every class
    index in the dataset.
    """
    if not value.strip():
        raise ValueError("class_names is empty; expected e.g. 'person,helmet,helmet-on,helmet-off'")
    names = tuple(part.strip() for part in value.split(","))
    for i, name in enumerate(names):
        if not name:
            raise ValueError(f"class_names {value!r}: name {i} is empty")
        if name in names[:i]:
            raise ValueError(f"class_names {value!r}: {name!r} appears more than once")
    return names


def _check_parameters(parameters: list[Parameter]) -> list[Parameter]:
    seen: dict[str, int] = {}
    for i, parameter in enumerate(parameters):
        if parameter.key in seen:
            raise invalid(
                f"key {parameter.key!r} appears twice (items {seen[parameter.key]} and {i})",
                path=f"[{i}].key",
            )
        seen[parameter.key] = i
        if parameter.key == CLASS_NAMES_PARAMETER:
            try:
                parse_class_names(parameter.value)
            except ValueError as exc:
                raise invalid(str(exc), path=f"[{i}].value") from None
    return parameters


Parameters = Annotated[list[Parameter], AfterValidator(_check_parameters)]


def parameters_dict(parameters: list[Parameter]) -> dict[str, str]:
    return {p.key: p.value for p in parameters}


class WorkerSpec(ManifestPart):
    """What a worker runs: ``scriptDir/scriptBootFile`` with ``parameters`` in its environment."""

    script_dir: NonEmpty
    script_boot_file: NonEmpty
    framework_type: str | None = None
    framework_version: str | None = None
    parameters: Parameters = Field(default_factory=list)

    def parameters_dict(self) -> dict[str, str]:
        return parameters_dict(self.parameters)

    def class_names(self) -> tuple[str, ...] | None:
        """The ``class_names`` parameter parsed, or None when the worker is not given one."""
        value = self.parameters_dict().get(CLASS_NAMES_PARAMETER)
        return None if value is None else parse_class_names(value)


# --- triggers --------------------------------------------------------------------------------


class Timer(ManifestPart):
    """A daily window ``[start, end]`` in the cloud manager's local time, both minutes included.

    As in Sedna, whose local controller compares ``HH:MM`` strings with ``start <= now <= end``:
    ``02:00``-``20:00`` still holds at 20:00:59, and ``start == end`` is that one minute. A
    window whose end is earlier than its start crosses midnight (22:00-04:00). ``24:00`` is
    accepted as an end meaning the end of the day.
    """

    start: StartTime
    end: EndTime

    @property
    def start_minute(self) -> int:
        return _minute_of_day(self.start)

    @property
    def end_minute(self) -> int:
        return _minute_of_day(self.end)

    def contains(self, minute_of_day: int) -> bool:
        """Whether the minute of the day (0..1439) falls inside the window."""
        start, end = self.start_minute, self.end_minute
        if start <= end:
            return start <= minute_of_day <= end
        return minute_of_day >= start or minute_of_day <= end


def _minute_of_day(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class Condition(ManifestPart):
    """``metric operator threshold``, e.g. ``num_of_samples > 500``."""

    operator: Annotated[str, _one_of(*OPERATORS)]
    threshold: Threshold
    metric: NonEmpty

    def holds(self, value: float) -> bool:
        """Whether ``value`` (the metric's current value) satisfies the condition."""
        return OPERATORS[self.operator](value, self.threshold)


class TrainCondition(Condition):
    @field_validator("metric")
    @classmethod
    def _counts_samples(cls, metric: str) -> str:
        if metric != NUM_OF_SAMPLES:
            raise invalid(
                f"{metric!r} is not a train trigger metric; a train trigger counts new samples: "
                f"use {NUM_OF_SAMPLES}"
            )
        return metric


class DeployCondition(Condition):
    edgeloop_extensions = ("custom_metric",)

    #: edgeloop extension: the metric is one an eval script of the user's own reports, so its
    #: name is not checked against the bundled eval's metrics (a round whose eval result lacks
    #: it fails, naming it).
    custom_metric: bool = False

    @model_validator(mode="after")
    def _known_metric(self) -> DeployCondition:
        try:
            self.ref()
        except ValueError as exc:
            raise invalid(str(exc), path="metric") from None
        return self

    def ref(self) -> MetricRef:
        """The parsed metric name."""
        return parse_metric(self.metric, custom=self.custom_metric)


class Trigger(ManifestPart):
    check_period_seconds: Seconds = DEFAULT_CHECK_PERIOD_SECONDS
    timer: Timer | None = None


class TrainTrigger(Trigger):
    condition: TrainCondition


#: How much an earlier round's metric may drop before a candidate counts as having forgotten it.
DEFAULT_FORGETTING_MARGIN = 0.02


class DeployTrigger(Trigger):
    edgeloop_extensions = ("forgetting_margin",)

    condition: DeployCondition
    #: edgeloop extension: the candidate is not deployed when, on the held-out samples of an
    #: earlier round, its value of the condition's metric is worse than the serving model's by
    #: more than this. 1 turns the check off for metrics in [0, 1].
    forgetting_margin: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = (
        DEFAULT_FORGETTING_MARGIN
    )


# --- the three kinds ---------------------------------------------------------------------------


class Resource(ManifestPart):
    """Fields every manifest has. ``status`` (as Kubernetes reports it) is accepted and dropped."""

    kind_name: ClassVar[str]

    api_version: str
    kind: str  # narrowed to a Literal by each kind; declared here for the field order
    metadata: ObjectMeta

    @model_validator(mode="before")
    @classmethod
    def _drop_status(cls, data: Any) -> Any:
        if isinstance(data, dict) and "status" in data:
            return {k: v for k, v in data.items() if k != "status"}
        return data

    @field_validator("api_version")
    @classmethod
    def _known_api_version(cls, value: str) -> str:
        if value not in API_VERSIONS:
            raise invalid(unsupported_api_version(value))
        return value

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind_name, self.metadata.namespace, self.metadata.name)


class DatasetSpec(ManifestPart):
    url: NonEmpty
    format: Annotated[str, _one_of("txt")]
    node_name: NonEmpty
    credential_name: str | None = None


class Dataset(Resource):
    """A dataset index file (``data.txt``) on a node, growing as hard examples are labelled."""

    kind_name: ClassVar[str] = "Dataset"
    kind: Literal["Dataset"]
    spec: DatasetSpec


class ModelSpec(ManifestPart):
    url: NonEmpty
    format: NonEmpty
    credential_name: str | None = None
    #: Sedna's CRD has it, snake_case; recorded only: edgeloop's workers pick their device.
    device_soc_versions: list[str] | None = Field(default=None, alias="device_soc_versions")


class Model(Resource):
    """A model: the initial one to train from, or the deployed one that rounds update."""

    kind_name: ClassVar[str] = "Model"
    kind: Literal["Model"]
    spec: ModelSpec


class ModelRef(ManifestPart):
    name: Name


class DatasetRef(ManifestPart):
    name: Name
    train_prob: Annotated[float, Field(gt=0.0, le=1.0)] = DEFAULT_TRAIN_PROB


class DeployModelRef(ModelRef):
    hot_update_enabled: bool | None = None
    poll_period_seconds: Seconds | None = None


class HardExampleMining(ManifestPart):
    name: Annotated[str, _one_of(*HARD_EXAMPLE_MINING_NAMES)]
    parameters: Parameters = Field(default_factory=list)

    def parameters_dict(self) -> dict[str, str]:
        return parameters_dict(self.parameters)


class BlindSpotMining(ManifestPart):
    """edgeloop's extension beside ``hardExampleMining``: also mine where the model is blind.

    Confidence rules never flag a frame without boxes, so a model that stops detecting after a
    domain shift would stop sending examples of exactly that shift. ``emptyFrameEvery``: sample
    one in this many frames without detections (0: never). ``dropRatio``: when the mean boxes
    per frame over the last ``windowFrames`` falls below this fraction of the node's own
    baseline (an average over about ``baselineFrames``), sample one frame in ``sampleEvery``
    whatever the model sees, until the rate is back to ``recoverRatio`` of the baseline and the
    drop lasted ``minDropFrames`` (a scene that varies from shot to shot must not flip the mode
    back and forth). A baseline under ``minBaseline`` boxes per frame never counts as a drop. On by default
    (:mod:`workers.blind_spot` has the mechanics).
    """

    enabled: bool = True
    empty_frame_every: Annotated[int, Field(ge=0)] = 50
    sample_every: Annotated[int, Field(ge=1)] = 10
    drop_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    recover_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    min_drop_frames: Annotated[int, Field(ge=0)] = 250
    window_frames: Annotated[int, Field(ge=1)] = 50
    baseline_frames: Annotated[int, Field(ge=1)] = 500
    min_baseline: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.5

    @model_validator(mode="after")
    def _consistent(self) -> BlindSpotMining:
        if self.recover_ratio < self.drop_ratio:
            raise invalid(
                f"recoverRatio {self.recover_ratio:g} is below dropRatio {self.drop_ratio:g}: "
                "the node would leave the drop before it entered it; use a recoverRatio >= "
                "dropRatio"
            )
        if self.baseline_frames < self.window_frames:
            raise invalid(
                f"baselineFrames {self.baseline_frames} is shorter than windowFrames "
                f"{self.window_frames}: the baseline must span more frames than the recent window"
            )
        return self


_SHARE = re.compile(r"^(\d+(?:\.\d+)?)%$")


def _share(value: object) -> int | str:
    """A node count (``1``) or a share of the targets (``"10%"``), checked."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise invalid(f"must be a node count (1) or a percentage (\"10%\"), not {show(value)}")
    if isinstance(value, int):
        if value < 1:
            raise invalid(f"must be at least 1 node, not {value}")
        return value
    match = _SHARE.match(value.strip())
    if match is None or not 0 < float(match.group(1)) <= 100:
        raise invalid(f"must be a node count (1) or a percentage between 0 and 100 (\"10%\"), "
                      f"not {show(value)}")
    return value.strip()


Share = Annotated[int | str, BeforeValidator(_share)]


def share_of(share: int | str, total: int) -> int:
    """How many of ``total`` nodes a share names: a count as is, a percentage rounded up, at
    least one node and at most ``total``."""
    if total <= 0:
        return 0
    if isinstance(share, int):
        count = share
    else:
        count = math.ceil(float(share.rstrip("%")) * total / 100 - 1e-9)
    return max(1, min(total, count))


class Rollout(ManifestPart):
    """edgeloop's extension under ``deploySpec``: how a deployed version reaches the nodes.

    ``canary`` nodes get it first (a count or a share of the targets) and run the previous
    version beside it on one frame in ``shadowEvery``; after ``bakeSeconds`` of healthy reports
    (worker up, no crash, FPS within ``maxFpsDrop`` of the previous version's, agreement with
    the previous version at least ``minAgreement``) the rest follows in waves of ``waveSize``.
    A canary that reports nothing of the new version within ``healthTimeoutSeconds`` while
    online fails the rollout; one that is offline is replaced by another node.
    """

    canary: Share = 1
    bake_seconds: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 300.0
    wave_size: Share = "25%"
    min_agreement: Annotated[float, Field(ge=0.0, le=1.0)] = 0.6
    max_fps_drop: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    health_timeout_seconds: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 600.0
    shadow_every: Annotated[int, Field(ge=1)] = 10


class StageSpec(ManifestPart):
    """A stage's worker, in either of Sedna's forms: the guide's ``workerSpec`` or the
    ``template`` (a Kubernetes pod template, :mod:`protocol.pod_template`) Sedna uses today."""

    worker_spec: WorkerSpec | None = None
    template: PodTemplate | None = None

    @model_validator(mode="after")
    def _one_form(self) -> StageSpec:
        if self.worker_spec is None and self.template is None:
            raise invalid("required field is missing", path="workerSpec")
        if self.worker_spec is not None and self.template is not None:
            raise invalid("give either workerSpec or template, not both", path="template")
        if self.template is not None:
            _template_worker(self.template)
        return self

    @property
    def form(self) -> str:
        return "workerSpec" if self.worker_spec is not None else "template"

    def worker(self) -> WorkerSpec:
        """The worker spec, given or read from the template."""
        if self.worker_spec is not None:
            return self.worker_spec
        assert self.template is not None
        return _template_worker(self.template)

    def runtime(self) -> StageRuntime:
        """Node, image and resources the template names (none in the workerSpec form)."""
        return StageRuntime(node=None) if self.template is None else StageRuntime.of(self.template)


def _template_worker(template: PodTemplate) -> WorkerSpec:
    container = template.container
    script_dir, boot_file = container.boot_location()
    try:
        return WorkerSpec.model_validate({
            "scriptDir": script_dir,
            "scriptBootFile": boot_file,
            "parameters": [{"key": e.name, "value": e.value} for e in container.env],
        })
    except ValidationError as exc:
        # the parameter checks (class_names): report them at the env entry they came from
        ctx = exc.errors()[0].get("ctx") or {}
        message = ctx.get("message") or str(exc.errors()[0]["msg"])
        raise invalid(message, path=f"template.spec.containers[0].env{ctx.get('path', '')}") from None


class TrainSpec(StageSpec):
    trigger: TrainTrigger


class EvalSpec(StageSpec):
    initial_eval_model: ModelRef | None = None


def _distinct_nodes(names: list[str]) -> list[str]:
    if not names:
        raise invalid("is empty: name at least one node, or leave nodeNames out")
    for i, name in enumerate(names):
        if name in names[:i]:
            raise invalid(f"node {name!r} appears twice (items {names.index(name)} and {i})",
                          path=f"[{i}]")
    return names


#: deploySpec.maxSourceShare when the manifest names none: one camera may hold at most half of
#: a job's hard examples waiting for labels (once it holds a few; cloud_manager.hardex_admission)
DEFAULT_MAX_SOURCE_SHARE = 0.5


class DeploySpec(StageSpec):
    edgeloop_extensions = (
        "node_names", "node_selector", "blind_spot_mining", "rollout", "capture_policy",
        "upload_policy", "max_source_share",
    )

    model: DeployModelRef
    trigger: DeployTrigger
    node_name: NonEmpty | None = None
    #: edgeloop extension: more nodes that run inference, beside nodeName (a union)
    node_names: Annotated[list[NonEmpty], AfterValidator(_distinct_nodes)] | None = None
    #: edgeloop extension: every node whose agent declares labels the selector matches
    node_selector: LabelSelector | None = None
    hard_example_mining: HardExampleMining | None = None
    #: edgeloop extension (not in Sedna): None means the defaults, on
    blind_spot_mining: BlindSpotMining | None = None
    #: edgeloop extension: staged rollout (canaries, bake, waves); None: every target at once
    rollout: Rollout | None = None
    #: edgeloop extension: what the inference worker saves of what it mines (protocol.data_policies)
    capture_policy: CapturePolicy | None = None
    #: edgeloop extension: when and how much this job's examples are sent (over the node's)
    upload_policy: UploadPolicy | None = None
    #: edgeloop extension: the largest share of the job's hard examples waiting for labels that
    #: one source (a node's camera) may hold, so that one busy camera cannot fill a round; 1
    #: turns the cap off; None means DEFAULT_MAX_SOURCE_SHARE
    max_source_share: Annotated[float, Field(gt=0, le=1)] | None = None

    @model_validator(mode="after")
    def _blind_spot_needs_mining(self) -> DeploySpec:
        for name, value in (("blindSpotMining", self.blind_spot_mining),
                            ("capturePolicy", self.capture_policy)):
            if value is not None and self.hard_example_mining is None:
                raise invalid(
                    f"{name} extends hardExampleMining, which is not set: add "
                    f"hardExampleMining (e.g. name: IBT) or remove {name}",
                    path=name,
                )
        return self

    def source_share(self) -> float:
        return DEFAULT_MAX_SOURCE_SHARE if self.max_source_share is None else self.max_source_share

    def blind_spot(self) -> BlindSpotMining | None:
        """The blind-spot settings the inference worker gets: the manifest's, else the defaults
        (on) whenever hard examples are mined at all; None when nothing is mined."""
        if self.hard_example_mining is None:
            return None
        return self.blind_spot_mining or BlindSpotMining()


STAGES = ("train", "eval", "deploy")


_NO_TARGET = ("the node that runs inference (or, as edgeloop extensions, deploySpec.nodeNames "
              "or deploySpec.nodeSelector)")


class IncrementalLearningJobSpec(ManifestPart):
    dataset: DatasetRef
    initial_model: ModelRef
    train_spec: TrainSpec
    eval_spec: EvalSpec
    deploy_spec: DeploySpec
    node_name: NonEmpty | None = None
    #: Sedna's secret for an S3 outputDir; accepted for compatibility, as on Dataset and Model.
    credential_name: str | None = None
    output_dir: NonEmpty

    def stage(self, name: str) -> StageSpec:
        return {"train": self.train_spec, "eval": self.eval_spec, "deploy": self.deploy_spec}[name]

    @property
    def form(self) -> str:
        """``workerSpec`` (the guide's form) or ``template`` (Sedna's pod-template form)."""
        return self.train_spec.form

    def stage_node(self, name: str) -> str | None:
        """The node the manifest names for a stage; None: train and eval where the dataset is,
        and a deploy that names its nodes only by ``nodeNames`` / ``nodeSelector``."""
        if self.form == "workerSpec":
            return self.deploy_spec.node_name if name == "deploy" else None
        return self.stage(name).runtime().node

    @property
    def deploy_node(self) -> str | None:
        """The one node Sedna's form names for inference (``nodeName``), if it names one."""
        return self.stage_node("deploy")

    def deploy_targets(self) -> DeployTargets:
        """Where inference runs: ``nodeName`` and ``nodeNames`` (a union, in that order) and
        ``nodeSelector``; :func:`protocol.targets.targets` turns it into nodes."""
        named = [self.deploy_node] if self.deploy_node else []
        named += [n for n in self.deploy_spec.node_names or () if n not in named]
        return DeployTargets(tuple(named), self.deploy_spec.node_selector)

    def class_names(self) -> tuple[str, ...] | None:
        """The classes metrics refer to: the eval worker's, else the train worker's."""
        for worker in (self.eval_spec.worker(), self.train_spec.worker()):
            names = worker.class_names()
            if names is not None:
                return names
        return None

    @model_validator(mode="after")
    def _nodes_of_the_form(self) -> IncrementalLearningJobSpec:
        """Each form names nodes its own way; mixing the forms would leave that ambiguous."""
        paths = {"train": "trainSpec", "eval": "evalSpec", "deploy": "deploySpec"}
        for name in ("eval", "deploy"):
            if self.stage(name).form != self.form:
                raise invalid(
                    f"uses {self.stage(name).form} while trainSpec uses {self.form}: write all "
                    "three stages in one form", path=f"{paths[name]}.{self.stage(name).form}")
        if self.form == "workerSpec":
            if self.node_name is None:
                raise invalid("required field is missing", path="nodeName")
            if not self.deploy_targets().names and self.deploy_spec.node_selector is None:
                raise invalid(f"required field is missing: {_NO_TARGET}",
                              path="deploySpec.nodeName")
            return self
        for path, value in (("nodeName", self.node_name),
                            ("deploySpec.nodeName", self.deploy_spec.node_name)):
            if value is not None:
                raise invalid("belongs to the workerSpec form; with templates, set "
                              "template.spec.nodeName of each stage", path=path)
        if not self.deploy_targets().names and self.deploy_spec.node_selector is None:
            raise invalid(f"required field is missing: {_NO_TARGET}",
                          path="deploySpec.template.spec.nodeName")
        return self

    @model_validator(mode="after")
    def _selector_names_a_class(self) -> IncrementalLearningJobSpec:
        names = self.class_names()
        if names is not None:
            try:
                check_selector(self.deploy_spec.trigger.condition.ref(), names)
            except ValueError as exc:
                raise invalid(str(exc), path="deploySpec.trigger.condition.metric") from None
        return self


class IncrementalLearningJob(Resource):
    """Train on new samples when the train trigger holds, evaluate, deploy when the deploy
    trigger holds; then wait for the train trigger again."""

    kind_name: ClassVar[str] = "IncrementalLearningJob"
    kind: Literal["IncrementalLearningJob"]
    spec: IncrementalLearningJobSpec

    def extensions(self) -> list[str]:
        """Paths of the fields this job sets that are edgeloop's, not Sedna's: a Sedna
        controller would refuse them, so ``edgeloop validate`` names them."""
        return extension_paths(self)

    def references(self) -> list[tuple[str, str, str]]:
        """Keys of the resources this job needs, in its own namespace."""
        ns, spec = self.metadata.namespace, self.spec
        refs = [("Dataset", ns, spec.dataset.name), ("Model", ns, spec.initial_model.name)]
        if spec.eval_spec.initial_eval_model is not None:
            refs.append(("Model", ns, spec.eval_spec.initial_eval_model.name))
        refs.append(("Model", ns, spec.deploy_spec.model.name))
        return refs


Manifest = Dataset | Model | IncrementalLearningJob

#: Manifest classes by ``kind``.
KINDS: dict[str, type[Dataset] | type[Model] | type[IncrementalLearningJob]] = {
    cls.kind_name: cls for cls in (Dataset, Model, IncrementalLearningJob)
}


def resource_key(manifest: Manifest) -> tuple[str, str, str]:
    """``(kind, namespace, name)``: what identifies a manifest in the store."""
    return manifest.key
