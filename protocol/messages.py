"""Message models: one pydantic model per kind of topic in :mod:`protocol.topics`.

Every message carries the schema version ``v`` and exposes an idempotency ``key``: receivers
treat every message as possibly duplicated and drop one whose key they have already handled.
Keys are derived from content (task id + attempt, ``(node, boot_id, seq)``, image sha256) so a
sender cannot make them inconsistent.

Models are tolerant readers: unknown fields are ignored so that a newer sender within the same
schema version can add optional fields without breaking older receivers.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PlainSerializer, model_validator

from protocol.data_policies import UploadStatus
from protocol.topics import NAME_PATTERN, Kind

SCHEMA_VERSION: Final = 1

#: The largest chunk of an artifact in one message (ARCHITECTURE.md: chunks <= 256 KiB).
MAX_CHUNK_BYTES = 256 * 1024

Name = Annotated[str, Field(pattern=rf"^{NAME_PATTERN}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
JobRef = Annotated[str, Field(pattern=rf"^{NAME_PATTERN}/{NAME_PATTERN}$")]  # namespace/name
Count = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
#: JSON validated as pydantic's ``JsonValue`` and written out as it is: the same output, without
#: ``JsonValue``'s serializer calling back into Python for every value (an API answer listing a
#: hundred nodes has over a thousand)
JsonData = Annotated[JsonValue, PlainSerializer(lambda value: value, return_type=Any)]


def now() -> float:
    return time.time()


class Message(BaseModel):
    """Base of every wire message."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    kind: ClassVar[Kind]
    v: Literal[1] = SCHEMA_VERSION

    @property
    def key(self) -> str:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


# --- node lifecycle -------------------------------------------------------------------------


class CameraStatus(BaseModel):
    """One camera's inference stream on a node: the model version it serves and its frame rate,
    or why it serves nothing (its URL does not open, its worker is restarting)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int | None = None  # None: the job's initial model, or nothing when ``error`` is set
    serving: bool = False  # its worker said which model it serves and has not exited since
    fps: float = Field(default=0.0, ge=0.0)
    error: str = Field(default="", max_length=1024)


class TaskHealth(BaseModel):
    """How a node's inference worker of a task does: the evidence of a staged rollout."""

    model_config = ConfigDict(extra="ignore")

    #: the model version it serves (None: the initial model, or not known yet)
    version: int | None = None
    #: False while the worker waits to be started again
    up: bool = True
    frames: Count = 0
    #: frames per second of the version serving now
    fps: Annotated[float, Field(ge=0.0)] = 0.0
    hard_examples: Count = 0
    #: agreement of the serving version with the previous one on the frames compared beside
    #: it: F1 of their boxes matched at IoU 0.5 (None: no frame compared)
    agreement: Fraction | None = None
    compared: Count = 0
    #: whether a comparison runs (asked for, with a previous model beside the serving one)
    shadow: bool = False
    #: why the last model the worker was given would not load ("" when none)
    error: str = Field(default="", max_length=1024)


class NodeStatus(Message):
    """Retained on ``node/{node}/status``; the broker publishes the ``offline``/``lost`` form as
    the node's last will."""

    kind: ClassVar[Kind] = Kind.STATUS
    node: Name
    state: Literal["online", "offline", "lost"]
    boot_id: Name
    seq: Count = 0
    agent_version: str = ""
    capabilities: dict[str, JsonValue] = Field(default_factory=dict)
    #: task id -> model version the node is serving for it
    serving: dict[str, int] = Field(default_factory=dict)
    outbox_backlog: Count = 0
    #: task id -> restarts of its inference worker since the task started (a camera or model
    #: that keeps crashing shows up here before anyone reads a log)
    worker_restarts: dict[str, Count] = Field(default_factory=dict)
    #: inference task id -> how its worker does (FPS, shadow agreement): staged rollouts read it
    health: dict[str, TaskHealth] = Field(default_factory=dict)
    #: the labels the node's settings declare (``site: north``): jobs select nodes by them
    labels: dict[str, str] = Field(default_factory=dict)
    #: the node's uploads: waiting, sent, evicted, skipped by rule, bytes against the caps
    uploads: UploadStatus | None = None
    #: task id -> camera name -> what that camera's inference stream does, on a node whose
    #: settings declare cameras (``serving`` then holds the oldest version among them)
    cameras: dict[str, dict[str, CameraStatus]] = Field(default_factory=dict)
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return f"{self.node}/{self.boot_id}/{self.seq}"


class ArtifactRef(BaseModel):
    """A content-addressed file: what a node must download or has produced."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1, max_length=255)  # file name, e.g. "model.tflite"
    sha256: Sha256
    size: Count


class ModelRef(BaseModel):
    """One registered model version of a job and the files it is made of."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job: JobRef
    version: Annotated[int, Field(ge=1)]
    artifacts: list[ArtifactRef] = Field(min_length=1)


class WorkerSpec(BaseModel):
    """The manifest's ``workerSpec`` as it travels to a node."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    script_dir: str
    boot_file: str
    framework_type: str = ""
    framework_version: str = ""
    parameters: dict[str, str] = Field(default_factory=dict)


TaskRole = Literal["train", "eval", "inference"]


class Task(Message):
    """Start or stop one worker on a node (``node/{node}/task/{task}``)."""

    kind: ClassVar[Kind] = Kind.TASK
    task_id: Name
    attempt: Annotated[int, Field(ge=1)] = 1
    action: Literal["start", "stop"] = "start"
    job: JobRef
    role: TaskRole
    round: Count = 0
    worker: WorkerSpec | None = None
    #: injected locations and settings, passed to the worker as environment variables
    env: dict[str, str] = Field(default_factory=dict)
    #: models the node must have locally before starting (downloaded as chunks)
    models: list[ModelRef] = Field(default_factory=list)
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return f"{self.task_id}#{self.attempt}#{self.action}"

    @model_validator(mode="after")
    def _start_needs_worker(self) -> Task:
        if self.action == "start" and self.worker is None:
            raise ValueError("worker: required when action is 'start'")
        return self


class DesiredState(Message):
    """Retained on ``node/{node}/desired``: what the node should be running right now.

    ``generation`` grows with every change in the cloud's store; a node ignores a generation
    older than the one it has applied.
    """

    kind: ClassVar[Kind] = Kind.DESIRED
    node: Name
    generation: Count
    tasks: list[Task] = Field(default_factory=list)
    #: job -> model version the node should serve for it
    models: list[ModelRef] = Field(default_factory=list)
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return f"{self.node}/desired/{self.generation}"


TaskState = Literal["Starting", "Running", "Completed", "Failed"]


class TaskProgress(Message):
    """A worker's state, progress and, once finished, its result (``.../task/{task}/progress``)."""

    kind: ClassVar[Kind] = Kind.PROGRESS
    node: Name
    task_id: Name
    attempt: Annotated[int, Field(ge=1)] = 1
    seq: Count = 0
    state: TaskState
    progress: Fraction | None = None
    message: str = Field(default="", max_length=4096)
    log_tail: str = Field(default="", max_length=16384)
    exit_code: int | None = None
    result: dict[str, JsonValue] = Field(default_factory=dict)
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return f"{self.task_id}#{self.attempt}#{self.seq}"


class DatasetSamples(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    dataset: JobRef  # namespace/name of the Dataset resource
    url: str
    samples: Count
    #: set when the index could not be read (missing file, unreadable); samples is then 0
    error: str | None = None


class SampleReport(Message):
    """Sample counts of the dataset indexes a node watches (``node/{node}/samples``)."""

    kind: ClassVar[Kind] = Kind.SAMPLES
    node: Name
    boot_id: Name
    seq: Count
    datasets: list[DatasetSamples] = Field(default_factory=list)
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return f"{self.node}/{self.boot_id}/{self.seq}"


class HardExampleSidecar(BaseModel):
    """What the model saw on a hard frame. Boxes are pixel ``x1, y1, x2, y2`` in the frame."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    boxes: list[Annotated[list[float], Field(min_length=4, max_length=4)]] = Field(
        default_factory=list
    )
    scores: list[float] = Field(default_factory=list)
    classes: list[int] = Field(default_factory=list)
    class_names: list[str] = Field(default_factory=list)
    model_version: int | None = None
    frame_index: Count = 0
    time: float = Field(default_factory=now)
    source: str = ""
    #: the camera (a name from the node's settings) whose stream the frame is from; empty for
    #: a node that runs the job's single ``video_url``
    camera: str = Field(default="", max_length=63)
    mining: str = ""
    #: why the frame was kept: ``rule`` (the hardExampleMining rule judged it hard),
    #: ``empty-frame`` or ``detection-drop`` (blind-spot mining); empty in older sidecars
    mining_reason: str = Field(default="", max_length=64)
    width: Count = 0
    height: Count = 0
    #: how much the frame is worth labelling, in [0, 1] (workers.capture_policy.example_score):
    #: the outbox's ``lowest-score`` eviction drops the lowest first
    score: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _same_lengths(self) -> HardExampleSidecar:
        if not len(self.boxes) == len(self.scores) == len(self.classes):
            raise ValueError(
                f"boxes, scores and classes must have the same length "
                f"(got {len(self.boxes)}, {len(self.scores)}, {len(self.classes)})"
            )
        return self


ImageFormat = Literal["jpg", "png"]


class HardExample(Message):
    """One mined frame with its sidecar (``node/{node}/hardex``), keyed by the image's sha256."""

    kind: ClassVar[Kind] = Kind.HARDEX
    node: Name
    job: JobRef
    sha256: Sha256
    image: bytes = Field(min_length=1)
    image_format: ImageFormat = "jpg"
    sidecar: HardExampleSidecar
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return self.sha256

    @model_validator(mode="after")
    def _sha_matches(self) -> HardExample:
        actual = hashlib.sha256(self.image).hexdigest()
        if actual != self.sha256:
            raise ValueError(f"sha256: {self.sha256} does not match the image (is {actual})")
        return self


AckKey = Annotated[str, Field(min_length=1, max_length=256)]


class Refusal(BaseModel):
    """Why a receiver will not keep a reliable message. ``temporary``: the same message may be
    accepted later (a quota has no room now), so the sender holds it and tries again; otherwise
    it never will be (no such job, not an image), so the sender sets it aside."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: str = Field(min_length=1, max_length=1024)
    temporary: bool = False


class Ack(Message):
    """Application-level acknowledgement of reliable messages, by their keys (``node/{node}/ack``).

    Sent only once the receiver has made the message durable; the sender keeps a message until
    its key is acknowledged. ``refused`` names the keys the receiver will not keep, with the
    reason; an acknowledgement of an earlier build (keys only) still decodes.
    """

    kind: ClassVar[Kind] = Kind.ACK
    node: Name
    keys: list[AckKey] = Field(default_factory=list, max_length=1000)
    refused: dict[AckKey, Refusal] = Field(default_factory=dict, max_length=1000)
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        names = [*self.keys, *(f"refused:{k}" for k in sorted(self.refused))]
        return "ack:" + hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

    @model_validator(mode="after")
    def _not_empty(self) -> Ack:
        if not self.keys and not self.refused:
            raise ValueError("keys: an acknowledgement names at least one key, kept or refused")
        return self


# --- labels (cloud -> node) -------------------------------------------------------------------

#: ``x1, y1, x2, y2, cls`` in integer pixels, as a line of the dataset index holds it.
LabelBox = Annotated[list[int], Field(min_length=5, max_length=5)]


class LabelledSample(Message):
    """One labelled image for a Dataset's index, sent to the node that holds the index
    (``node/{node}/labels``). Keyed by dataset and image sha256: however often it arrives, the
    node adds it to that index once."""

    kind: ClassVar[Kind] = Kind.LABELS
    node: Name
    dataset: JobRef  # namespace/name of the Dataset resource
    sha256: Sha256
    image: bytes = Field(min_length=1)
    image_format: ImageFormat = "jpg"
    boxes: list[LabelBox] = Field(default_factory=list)
    #: where the label came from (file and line), repeated in the node's answer and logs
    source: str = Field(default="", max_length=1024)
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.sha256}"

    @model_validator(mode="after")
    def _valid(self) -> LabelledSample:
        actual = hashlib.sha256(self.image).hexdigest()
        if actual != self.sha256:
            raise ValueError(f"sha256: {self.sha256} does not match the image (is {actual})")
        for i, (x1, y1, x2, y2, cls) in enumerate(self.boxes, start=1):
            if x1 < 0 or y1 < 0 or x2 <= x1 or y2 <= y1 or cls < 0:
                raise ValueError(f"boxes.{i}: {[x1, y1, x2, y2, cls]} is not x1,y1,x2,y2,cls with "
                                 "x2 > x1 >= 0, y2 > y1 >= 0 and cls >= 0")
        return self


class LabelOutcome(BaseModel):
    """What became of one labelled sample on the node."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["added", "present", "rejected"]  # present: already in the index
    reason: str = Field(default="", max_length=1024)


class LabelReceipt(Ack):
    """The node's answer to labelled samples (``node/{node}/labels/ack``): an :class:`Ack` of the
    keys it is done with (added, already present, or rejected for good) and each one's outcome."""

    kind: ClassVar[Kind] = Kind.LABEL_ACK
    outcomes: dict[str, LabelOutcome] = Field(default_factory=dict)


# --- artifacts --------------------------------------------------------------------------------


class ChunkRequest(Message):
    """Ask for chunk ``index`` of an artifact: ``artifact/request`` (node downloads) and
    ``artifact/pull`` (cloud uploads from the node) share this shape."""

    kind: ClassVar[Kind] = Kind.ARTIFACT_REQUEST
    node: Name
    sha256: Sha256
    index: Count
    chunk_size: Annotated[int, Field(gt=0, le=MAX_CHUNK_BYTES)] = MAX_CHUNK_BYTES

    @property
    def key(self) -> str:
        return f"{self.sha256}:{self.index}"


class Chunk(Message):
    """Chunk ``index`` of ``total`` of an artifact of ``size`` bytes: ``artifact/chunk`` and
    ``artifact/push``. ``error`` says why the sender cannot serve it (``data`` is then empty)."""

    kind: ClassVar[Kind] = Kind.ARTIFACT_CHUNK
    node: Name
    sha256: Sha256
    index: Count
    total: Count
    size: Count
    data: bytes = Field(default=b"", max_length=MAX_CHUNK_BYTES)
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.sha256}:{self.index}"


class ArtifactWant(Message):
    """A node is about to download an artifact (``artifact/want``): the cloud may publish the
    whole file once on ``models/<sha256>`` for every node that wants it. The node pulls
    whatever that does not bring it chunk by chunk, as before."""

    kind: ClassVar[Kind] = Kind.ARTIFACT_WANT
    node: Name
    sha256: Sha256

    @property
    def key(self) -> str:
        return self.sha256


class ModelChunk(Message):
    """Chunk ``index`` of ``total`` of the model file ``sha256`` (``size`` bytes), published
    once on the shared ``models/<sha256>`` topic. ``data_sha256`` lets a node check the chunk
    on its own, before the whole file can be checked."""

    kind: ClassVar[Kind] = Kind.MODEL_CHUNK
    sha256: Sha256
    index: Count
    total: Count
    size: Count
    chunk_size: Annotated[int, Field(gt=0, le=MAX_CHUNK_BYTES)] = MAX_CHUNK_BYTES
    data: bytes = Field(max_length=MAX_CHUNK_BYTES)
    data_sha256: Sha256

    @property
    def key(self) -> str:
        return f"{self.sha256}:{self.index}"


class ErrorReport(Message):
    """A node tells the cloud about something it refused or failed at (``node/{node}/error``)."""

    kind: ClassVar[Kind] = Kind.ERROR
    node: Name
    code: str = Field(min_length=1, max_length=64)  # e.g. "protocol", "model_rejected"
    reason: str = Field(max_length=4096)
    about: str = ""  # topic or key of the message concerned
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return f"{self.node}/{self.code}/{self.about}/{self.ts}"


# --- API (CLI <-> cloud manager), MQTT v5 request/response -----------------------------------


class ApiRequest(Message):
    """A CLI request (``api/{verb}``). The reply goes to the v5 response-topic, matched by
    correlation data; ``request_id`` repeats it for clients without v5 properties."""

    kind: ClassVar[Kind] = Kind.API_REQUEST
    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    verb: str = ""  # filled from the topic by the codec
    resource: str = ""  # e.g. "jobs", "datasets", "IncrementalLearningJob"
    namespace: str = "default"
    name: str = ""
    #: manifest text (YAML or JSON) for apply, or structured arguments
    body: str = ""
    args: dict[str, JsonValue] = Field(default_factory=dict)
    #: binary parts by name (images of ``label_import``), msgpack ``bin`` on the wire
    attachments: dict[str, bytes] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.request_id


class ApiResponse(Message):
    kind: ClassVar[Kind] = Kind.API_RESPONSE
    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    ok: bool
    code: int = 200  # HTTP-like: 200 ok, 201 created, 400 bad request, 404 not found, 409 conflict
    message: str = ""
    errors: list[str] = Field(default_factory=list)
    data: JsonData = None
    #: binary parts by name (image bytes of ``hardex_export``)
    attachments: dict[str, bytes] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.request_id


class JobCondition(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    stage: Literal["Train", "Eval", "Deploy"]
    state: Literal["Waiting", "Ready", "Starting", "Running", "Completed", "Failed"]
    round: Count = 0
    reason: str = ""
    time: float = Field(default_factory=now)


class JobStatus(Message):
    """Retained on ``job/{ns}/{name}/status`` so that a dashboard can subscribe."""

    kind: ClassVar[Kind] = Kind.JOB_STATUS
    namespace: Name
    name: Name
    revision: Count
    stage: Literal["Train", "Eval", "Deploy"]
    state: Literal["Waiting", "Ready", "Starting", "Running", "Completed", "Failed"]
    round: Count = 0
    deployed_version: int | None = None
    samples: Count = 0
    paused: bool = False
    conditions: list[JobCondition] = Field(default_factory=list)
    ts: float = Field(default_factory=now)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}/{self.revision}"


#: The one model each topic kind carries. ``artifact/pull`` and ``artifact/push`` share the
#: shapes of ``artifact/request`` and ``artifact/chunk``.
MESSAGE_FOR_KIND: dict[Kind, type[Message]] = {
    Kind.STATUS: NodeStatus,
    Kind.DESIRED: DesiredState,
    Kind.TASK: Task,
    Kind.PROGRESS: TaskProgress,
    Kind.SAMPLES: SampleReport,
    Kind.HARDEX: HardExample,
    Kind.ACK: Ack,
    Kind.ARTIFACT_REQUEST: ChunkRequest,
    Kind.ARTIFACT_CHUNK: Chunk,
    Kind.ARTIFACT_PULL: ChunkRequest,
    Kind.ARTIFACT_PUSH: Chunk,
    Kind.ERROR: ErrorReport,
    Kind.API_REQUEST: ApiRequest,
    Kind.API_RESPONSE: ApiResponse,
    Kind.JOB_STATUS: JobStatus,
    Kind.LABELS: LabelledSample,
    Kind.LABEL_ACK: LabelReceipt,
    Kind.ARTIFACT_WANT: ArtifactWant,
    Kind.MODEL_CHUNK: ModelChunk,
}
