"""The contract between the edge agent and a worker process it launches.

The agent runs ``python {scriptDir}/{scriptBootFile}`` with a set of environment variables and
nothing else; this module names them once, so the agent that writes them and the worker (or a
user's own script, through :mod:`workers.sdk`) that reads them cannot drift apart. No I/O here.

Three groups of variables (documented for users in docs/workers.md):

1. Every manifest ``workerSpec.parameters`` entry, with its key as the variable name, exactly as
   Sedna passes them (``batch_size``, ``input_shape``, ``HE_SAVED_URL``, ...), including keys
   this module does not know.
2. Locations injected under Sedna's names, so existing scripts keep working:
   ``BASE_MODEL_URL``, ``TRAIN_DATASET_URL``, ``TEST_DATASET_URL``, ``MODEL_URL``,
   ``MODEL_URLS``, ``HEM_NAME``, ``HEM_PARAMETERS``.
3. edgeloop's own: ``EDGELOOP_TASK_ID``, ``EDGELOOP_RESULT``, ``EDGELOOP_CHANNEL``,
   ``EDGELOOP_MODEL_VERSION``, ``EDGELOOP_REPLAY_INDEX``, ``EDGELOOP_BLIND_SPOT``,
   ``EDGELOOP_CAMERA``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.data_policies import CapturePolicy, UploadPolicy
from protocol.manifests import BlindSpotMining

Role = Literal["train", "eval", "inference"]

# --- injected locations (Sedna's names) --------------------------------------------------------

BASE_MODEL_URL = "BASE_MODEL_URL"  # train: model to start from (absent: from scratch)
TRAIN_DATASET_URL = "TRAIN_DATASET_URL"  # train: index (data.txt) of the new samples
TEST_DATASET_URL = "TEST_DATASET_URL"  # eval: index of the held-out samples
MODEL_URL = "MODEL_URL"  # train: output dir of this round; inference: model file to serve
MODEL_URLS = "MODEL_URLS"  # eval: ';'-separated model files, the first is the candidate
HEM_NAME = "HEM_NAME"  # inference: hard-example mining rule (IBT, CrossEntropy, ...)
HEM_PARAMETERS = "HEM_PARAMETERS"  # inference: the rule's parameters, JSON (see hem_parameters_json)

# --- edgeloop's own ----------------------------------------------------------------------------

TASK_ID = "EDGELOOP_TASK_ID"
RESULT = "EDGELOOP_RESULT"  # file the worker writes its JSON result to
CHANNEL = "EDGELOOP_CHANNEL"  # ws://127.0.0.1:PORT/... ; absent when run by hand
MODEL_VERSION = "EDGELOOP_MODEL_VERSION"  # version of the model in MODEL_URL (inference)
REPLAY_INDEX = "EDGELOOP_REPLAY_INDEX"  # train: index of earlier training data for replay
#: eval: held-out indexes of earlier rounds, JSON {"round": path}; see earlier_test_urls_json
EARLIER_TEST_URLS = "EDGELOOP_EARLIER_TEST_URLS"
# --- Sedna's job identity and dataset, set as its controller sets them ----------------------------

ORIGINAL_DATASET_URL = "ORIGINAL_DATASET_URL"  # train / eval: the Dataset's own index (data.txt)
NAMESPACE = "NAMESPACE"  # every role: the job's namespace
JOB_NAME = "JOB_NAME"  # every role: the job's name
WORKER_NAME = "WORKER_NAME"  # every role: train-worker-xxxxx, eval-worker-xxxxx, inferworker-xxxxx
#: Prefix of WORKER_NAME per role, as Sedna's controller names its pods' workers.
WORKER_NAME_PREFIXES: dict[str, str] = {
    "train": "train-worker-", "eval": "eval-worker-", "inference": "inferworker-",
}
SEDNA_VARIABLES = (ORIGINAL_DATASET_URL, NAMESPACE, JOB_NAME, WORKER_NAME)

#: inference: JSON of the job's ``blindSpotMining`` (camelCase keys); absent while HEM_NAME is
#: set means its defaults, ``{"enabled": false}`` turns it off
BLIND_SPOT = "EDGELOOP_BLIND_SPOT"
#: inference on a rollout's canary: run the previous model beside the new one on one frame in
#: this many after a swap and report their agreement (absent or 0: no comparison)
SHADOW_EVERY = "EDGELOOP_SHADOW_EVERY"
#: inference: the name of the camera (from the agent's ``cameras:`` settings) whose stream
#: ``video_url`` is; the worker writes it into each hard example's sidecar and applies the
#: capture policy's settings for it. Absent for the job's single ``video_url``.
CAMERA = "EDGELOOP_CAMERA"
#: inference: JSON of the job's ``capturePolicy`` (camelCase keys); absent: save every mined frame
CAPTURE_POLICY = "EDGELOOP_CAPTURE_POLICY"
#: inference: JSON of the job's ``uploadPolicy``, read by the agent (over its own upload_policy)
UPLOAD_POLICY = "EDGELOOP_UPLOAD_POLICY"
#: The MODEL_VERSION of a job's initial model, served until a first version is deployed: frame
#: logs, live views and reports name it so instead of by its file name.
INITIAL_MODEL_VERSION = "initial"

LOCATION_VARIABLES = (
    BASE_MODEL_URL,
    TRAIN_DATASET_URL,
    TEST_DATASET_URL,
    MODEL_URL,
    MODEL_URLS,
    HEM_NAME,
    HEM_PARAMETERS,
    TASK_ID,
    RESULT,
    CHANNEL,
    MODEL_VERSION,
    REPLAY_INDEX,
    EARLIER_TEST_URLS,
    *SEDNA_VARIABLES,
    BLIND_SPOT,
    CAMERA,
    CAPTURE_POLICY,
    UPLOAD_POLICY,
)

#: Separator of MODEL_URLS.
MODEL_URLS_SEPARATOR = ";"

#: Boot file of each role in the bundled scripts (``workers/``).
BOOT_FILES: dict[str, str] = {"train": "train.py", "eval": "eval.py", "inference": "inference.py"}

#: Names of the artifacts train.py leaves in MODEL_URL.
KERAS_ARTIFACT = "model.keras"
TFLITE_ARTIFACT = "model.tflite"

#: Exit codes of a boot file: 0 done, 2 bad parameters or input (do not retry), 1 anything else.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


# --- HEM_PARAMETERS ------------------------------------------------------------------------------


def hem_parameters_json(parameters: Mapping[str, str]) -> str:
    """``HEM_PARAMETERS`` as Sedna's controller writes it: the manifest's list of
    ``{"key", "value"}``. Sedna's own parser (``Context.get_algorithm_from_api``) reads only this
    form and silently falls back to ``{}`` on anything else."""
    pairs = [{"key": key, "value": value} for key, value in parameters.items()]
    return json.dumps(pairs, separators=(",", ":"))


def parse_hem_parameters(text: str) -> dict[str, str]:
    """``HEM_PARAMETERS`` in either form: Sedna's list of ``{key, value}`` or a JSON object
    (``{"threshold_img": "0.9"}``, handy by hand). ``null`` (Sedna's empty list) is ``{}``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{HEM_PARAMETERS} is not valid JSON: {exc}") from exc
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(p, dict) and "key" in p for p in value):
        return {str(p["key"]): str(p.get("value", "")) for p in value}
    # ValueError like every other problem of the environment: callers catch one type.
    raise ValueError(  # noqa: TRY004
        f"{HEM_PARAMETERS} must be a JSON list of {{key, value}} or an object of strings"
    )


# --- EDGELOOP_EARLIER_TEST_URLS -------------------------------------------------------------------


def earlier_test_urls_json(urls: Mapping[int, str]) -> str:
    """``EDGELOOP_EARLIER_TEST_URLS``: each earlier round's held-out index, by round number."""
    return json.dumps({str(k): v for k, v in sorted(urls.items())}, separators=(",", ":"))


def parse_earlier_test_urls(text: str) -> dict[int, str]:
    """Read ``EDGELOOP_EARLIER_TEST_URLS`` back; ``ValueError`` says what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{EARLIER_TEST_URLS} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(
        k.isdigit() and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ValueError(  # noqa: TRY004
            f"{EARLIER_TEST_URLS} must be a JSON object of round number to index path"
        )
    return {int(k): v for k, v in value.items()}


# --- parameters --------------------------------------------------------------------------------


class ParameterInfo(BaseModel):
    """What a known parameter means; drives ``--help`` of the boot files."""

    model_config = ConfigDict(frozen=True)

    name: str
    default: str | None
    help: str
    roles: tuple[Role, ...]


_ALL: tuple[Role, ...] = ("train", "eval", "inference")

#: The parameters the bundled scripts understand, in ``--help`` order. Defaults are strings,
#: as they would appear in a manifest.
PARAMETERS: tuple[ParameterInfo, ...] = (
    ParameterInfo(
        name="input_shape", default="352,640", help="model input height,width", roles=_ALL
    ),
    ParameterInfo(
        name="class_names",
        default="person,helmet,helmet-on,helmet-off",
        help="comma-separated class names; box class i is the i-th name",
        roles=_ALL,
    ),
    ParameterInfo(name="obj_threshold", default="0.3", help="minimum box score", roles=_ALL),
    ParameterInfo(
        name="nms_threshold", default="0.4", help="IoU above which NMS drops a box", roles=_ALL
    ),
    ParameterInfo(
        name="batch_size", default="16", help="images per training step", roles=("train",)
    ),
    ParameterInfo(
        name="epochs", default="20", help="passes over new + replay samples", roles=("train",)
    ),
    ParameterInfo(
        name="learning_rate",
        default=None,
        help="peak learning rate (default 6e-3 from scratch, 1e-3 from a base model)",
        roles=("train",),
    ),
    ParameterInfo(
        name="replay_ratio",
        default="1.0",
        help="replay samples per new sample, drawn from EDGELOOP_REPLAY_INDEX",
        roles=("train",),
    ),
    ParameterInfo(
        name="replay_max", default="2000", help="cap on replay samples", roles=("train",)
    ),
    ParameterInfo(
        name="max_steps",
        default="0",
        help="cap on optimizer steps (0: none): a round with more samples runs fewer epochs",
        roles=("train",),
    ),
    ParameterInfo(
        name="train_crop",
        default="192,320",
        help="train on random crops of height,width (0: whole images); faster steps, same scale",
        roles=("train",),
    ),
    ParameterInfo(
        name="export_precision",
        default="int8",
        help="LiteRT precision of model.tflite: fp32, fp16, dynamic-int8 or int8",
        roles=("train",),
    ),
    ParameterInfo(
        name="seed", default="0", help="random seed of shuffling and replay", roles=("train",)
    ),
    ParameterInfo(
        name="backbone",
        default="scratch",
        help="trunk of a model trained without BASE_MODEL_URL: scratch or mobilenetv2",
        roles=("train",),
    ),
    ParameterInfo(
        name="backbone_weights",
        default=None,
        help="mobilenetv2's weights: ssdlite-person (default, offline), imagenet (downloaded "
        "by Keras), a weights file, or none",
        roles=("train",),
    ),
    ParameterInfo(
        name="video_url",
        default=None,
        help="OpenCV source: rtsp://..., a file, or a camera index",
        roles=("inference",),
    ),
    ParameterInfo(
        name="loop", default="0", help="1: restart a file source at its end", roles=("inference",)
    ),
    ParameterInfo(
        name="realtime",
        default="0",
        help="1: deliver a file source at its own frame rate, as a camera would",
        roles=("inference",),
    ),
    ParameterInfo(
        name="frame_log",
        default=None,
        help="JSONL file: one line per frame (index, times, model version)",
        roles=("inference",),
    ),
    ParameterInfo(
        name="HE_SAVED_URL", default=None, help="folder for hard examples", roles=("inference",)
    ),
    ParameterInfo(
        name="he_quota_mb",
        default="1024",
        help="size cap of HE_SAVED_URL in MiB",
        roles=("inference",),
    ),
    ParameterInfo(
        name="he_dedup_distance",
        default="4",
        help="hard examples within this perceptual-hash distance of a recent one are skipped",
        roles=("inference",),
    ),
    ParameterInfo(
        name="max_frames",
        default="0",
        help="stop after this many frames (0: never)",
        roles=("inference",),
    ),
    ParameterInfo(
        name="threads",
        default="0",
        help="CPU threads for the model (0: all cores; inference: all but one, for decoding)",
        roles=_ALL,
    ),
)

#: ``MODEL_URL`` etc. are also accepted as ``--MODEL_URL`` flags when a script runs by hand.
FLAG_VARIABLES = tuple(v for v in LOCATION_VARIABLES if v != CHANNEL)


def parameters_for(role: Role) -> tuple[ParameterInfo, ...]:
    return tuple(p for p in PARAMETERS if role in p.roles)


class WorkerEnvironment(BaseModel):
    """Everything the agent passes to one worker, and its mapping to environment variables.

    ``parameters`` holds the manifest parameters verbatim (strings); typed reading is the
    worker's job (:func:`workers.sdk.parameters`), so that an unknown key never fails here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str = ""
    result_path: str = ""
    channel: str | None = None
    model_version: str | None = None
    base_model_url: str | None = None
    train_dataset_url: str | None = None
    test_dataset_url: str | None = None
    model_url: str | None = None
    model_urls: tuple[str, ...] = ()
    hem_name: str | None = None
    hem_parameters: dict[str, str] = Field(default_factory=dict)
    replay_index: str | None = None
    earlier_test_urls: dict[int, str] = Field(default_factory=dict)
    blind_spot: BlindSpotMining | None = None
    camera: str | None = None
    parameters: dict[str, str] = Field(default_factory=dict)

    @field_validator("channel")
    @classmethod
    def _local_websocket(cls, value: str | None) -> str | None:
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError(f"{CHANNEL} must be a ws:// URL, got {value!r}")
        return value

    @field_validator("parameters")
    @classmethod
    def _no_clash(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(set(value) & set(LOCATION_VARIABLES))
        if clash:
            raise ValueError(f"parameters may not set injected variables: {', '.join(clash)}")
        return value

    def to_env(self) -> dict[str, str]:
        """The environment variables to add to the worker's environment."""
        env = dict(self.parameters)
        pairs = {
            TASK_ID: self.task_id,
            RESULT: self.result_path,
            CHANNEL: self.channel,
            MODEL_VERSION: self.model_version,
            BASE_MODEL_URL: self.base_model_url,
            TRAIN_DATASET_URL: self.train_dataset_url,
            TEST_DATASET_URL: self.test_dataset_url,
            MODEL_URL: self.model_url,
            MODEL_URLS: MODEL_URLS_SEPARATOR.join(self.model_urls) or None,
            HEM_NAME: self.hem_name,
            HEM_PARAMETERS: hem_parameters_json(self.hem_parameters) if self.hem_parameters else None,
            REPLAY_INDEX: self.replay_index,
            EARLIER_TEST_URLS: (earlier_test_urls_json(self.earlier_test_urls)
                                if self.earlier_test_urls else None),
            BLIND_SPOT: blind_spot_json(self.blind_spot) if self.blind_spot else None,
            CAMERA: self.camera,
        }
        env.update({k: v for k, v in pairs.items() if v})
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerEnvironment:
        """Read the contract back from an environment.

        ``parameters`` gets the known parameter names present in ``env``: extra manifest keys
        cannot be told apart from the process's ordinary environment, so a script reads its own
        extra keys directly (``os.environ`` or :func:`workers.sdk.parameters`).
        """
        hem = parse_hem_parameters(env[HEM_PARAMETERS]) if env.get(HEM_PARAMETERS) else {}
        urls = env.get(MODEL_URLS, "")
        earlier = (parse_earlier_test_urls(env[EARLIER_TEST_URLS])
                   if env.get(EARLIER_TEST_URLS) else {})
        try:
            return cls(
                task_id=env.get(TASK_ID, ""),
                result_path=env.get(RESULT, ""),
                channel=env.get(CHANNEL) or None,
                model_version=env.get(MODEL_VERSION) or None,
                base_model_url=env.get(BASE_MODEL_URL) or None,
                train_dataset_url=env.get(TRAIN_DATASET_URL) or None,
                test_dataset_url=env.get(TEST_DATASET_URL) or None,
                model_url=env.get(MODEL_URL) or None,
                model_urls=tuple(u.strip() for u in urls.split(MODEL_URLS_SEPARATOR) if u.strip()),
                hem_name=env.get(HEM_NAME) or None,
                hem_parameters=hem,
                replay_index=env.get(REPLAY_INDEX) or None,
                earlier_test_urls=earlier,
                blind_spot=parse_blind_spot(env.get(BLIND_SPOT) or ""),
                camera=env.get(CAMERA) or None,
                parameters={p.name: env[p.name] for p in PARAMETERS if p.name in env},
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ValueError(f"worker environment: {where}: {first['msg']}") from exc


def blind_spot_json(settings: BlindSpotMining) -> str:
    """The value of :data:`BLIND_SPOT`: the settings as the manifest spells them."""
    return settings.model_dump_json(by_alias=True)


def parse_blind_spot(text: str) -> BlindSpotMining | None:
    """:data:`BLIND_SPOT` read back (None when empty); a bad value is a ValueError naming it."""
    if not text.strip():
        return None
    try:
        return BlindSpotMining.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "value"
        raise ValueError(f"{BLIND_SPOT}: {where}: {first['msg']}") from None


def policy_json(policy: CapturePolicy | UploadPolicy) -> str:
    """The value of :data:`CAPTURE_POLICY` or :data:`UPLOAD_POLICY`: the manifest's spelling."""
    return policy.model_dump_json(by_alias=True, exclude_unset=True)


def parse_capture_policy(text: str) -> CapturePolicy | None:
    """:data:`CAPTURE_POLICY` read back (None when empty); a bad value is a ValueError naming it."""
    return _parse_policy(CapturePolicy, CAPTURE_POLICY, text)


def parse_upload_policy(text: str) -> UploadPolicy | None:
    """:data:`UPLOAD_POLICY` read back (None when empty); a bad value is a ValueError naming it."""
    return _parse_policy(UploadPolicy, UPLOAD_POLICY, text)


_Policy = TypeVar("_Policy", CapturePolicy, UploadPolicy)


def _parse_policy(kind: type[_Policy], name: str, text: str) -> _Policy | None:
    if not text.strip():
        return None
    try:
        return kind.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "value"
        raise ValueError(f"{name}: {where}: {first['msg']}") from None
