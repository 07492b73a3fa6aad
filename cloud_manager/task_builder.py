"""The Task messages a job sends to nodes, with the worker contract's variables injected. Pure.

Where files live on the dataset's node, for round ``r`` of a job with ``outputDir`` ``OUT``:

- ``OUT/r/``            train's ``MODEL_URL``: the round's model files (model.tflite, model.keras)
- ``OUT/r/train.txt``   ``TRAIN_DATASET_URL``: the round's new samples on the train side of the split
- ``OUT/r/eval.txt``    ``TEST_DATASET_URL``: the round's new samples held out for eval
- ``OUT/r/replay.txt``  ``EDGELOOP_REPLAY_INDEX``: train-side samples of earlier rounds

The three index files are written on the node from the dataset index before the worker starts;
train and eval tasks say how in ``EDGELOOP_SPLIT`` (JSON, see :class:`SampleSplit`), and
:func:`protocol.sample_split.plan_round_indexes` says what goes in each.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from cloud_manager.versions import Candidate, ModelVersion
from protocol import worker_contract as contract
from protocol.manifests import Dataset, IncrementalLearningJob, Model
from protocol.manifests import WorkerSpec as ManifestWorkerSpec
from protocol.messages import ArtifactRef, ModelRef, Task, TaskRole, WorkerSpec
from protocol.sample_split import (
    EVAL_INDEX,
    REPLAY_INDEX,
    SPLIT_VARIABLE,
    TRAIN_INDEX,
    SampleSplit,
)


@dataclass(frozen=True)
class JobInputs:
    """A job manifest with the resources it references, as the store holds them."""

    job: IncrementalLearningJob
    dataset: Dataset
    initial_model: Model
    deploy_model: Model
    initial_eval_model: Model | None = None

    @property
    def ref(self) -> str:
        return f"{self.job.metadata.namespace}/{self.job.metadata.name}"

    @property
    def dataset_node(self) -> str:
        return self.dataset.spec.node_name

    @property
    def deploy_node(self) -> str:
        return self.job.spec.deploy_spec.node_name

    def class_names(self) -> tuple[str, ...]:
        names = self.job.spec.class_names()
        if names is not None:
            return names
        default = next(p.default for p in contract.PARAMETERS if p.name == "class_names")
        return tuple((default or "").split(","))


def task_id(namespace: str, name: str, round_no: int, role: str) -> str:
    """A task id unique per job, round and role, short enough for a topic level."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:6]
    return f"{name[:36]}-{digest}-r{round_no}-{role}"


def round_dir(inputs: JobInputs, round_no: int) -> str:
    return f"{inputs.job.spec.output_dir.rstrip('/')}/{round_no}"


def worker_spec(spec: ManifestWorkerSpec) -> WorkerSpec:
    return WorkerSpec(
        script_dir=spec.script_dir,
        boot_file=spec.script_boot_file,
        framework_type=spec.framework_type or "",
        framework_version=spec.framework_version or "",
        parameters=spec.parameters_dict(),
    )


def artifact_path(model: Candidate | ModelVersion, name: str) -> str | None:
    """The node-side path of the artifact ``name`` of a trained model."""
    for artifact in model.artifacts:
        if artifact.name == name:
            return artifact.path or None
    return None


def serving_file(model: Candidate | ModelVersion | None, fallback: str) -> str:
    """The file eval and inference load for a trained model: its LiteRT file, else any file."""
    if model is None:
        return fallback
    path = artifact_path(model, contract.TFLITE_ARTIFACT)
    if path:
        return path
    return (model.artifacts[0].path or fallback) if model.artifacts else fallback


def sample_split(inputs: JobInputs, round_no: int, samples: tuple[int, int]) -> SampleSplit:
    out = round_dir(inputs, round_no)
    return SampleSplit(
        index=inputs.dataset.spec.url,
        start=samples[0],
        end=samples[1],
        train_prob=inputs.job.spec.dataset.train_prob,
        train=f"{out}/{TRAIN_INDEX}",
        eval=f"{out}/{EVAL_INDEX}",
        replay=f"{out}/{REPLAY_INDEX}",
    )


def build_train_task(
    inputs: JobInputs,
    round_no: int,
    attempt: int,
    samples: tuple[int, int],
    deployed: ModelVersion | None,
    timeout_s: float,
) -> Task:
    """Train from the deployed model (else the initial one) on the round's new samples."""
    spec = inputs.job.spec
    out = round_dir(inputs, round_no)
    base = (deployed and artifact_path(deployed, contract.KERAS_ARTIFACT)) or serving_file(
        deployed, inputs.initial_model.spec.url
    )
    split = sample_split(inputs, round_no, samples)
    env = {
        contract.BASE_MODEL_URL: base,
        contract.TRAIN_DATASET_URL: split.train,
        contract.MODEL_URL: out,
        contract.REPLAY_INDEX: split.replay,
        SPLIT_VARIABLE: split.to_json(),
    }
    return _round_task(
        inputs, "train", spec.train_spec.worker_spec, round_no, attempt, env, timeout_s
    )


def _round_task(
    inputs: JobInputs,
    role: TaskRole,
    worker: ManifestWorkerSpec,
    round_no: int,
    attempt: int,
    env: dict[str, str],
    timeout_s: float,
) -> Task:
    """A train or eval task of one round: the id says job, round and role."""
    ns, name = inputs.job.metadata.namespace, inputs.job.metadata.name
    return Task(
        task_id=task_id(ns, name, round_no, role),
        attempt=attempt,
        job=inputs.ref,
        role=role,
        round=round_no,
        worker=worker_spec(worker),
        env=env,
        timeout_s=timeout_s,
    )


def build_eval_task(
    inputs: JobInputs,
    round_no: int,
    attempt: int,
    candidate: Candidate | None,
    deployed: ModelVersion | None,
    timeout_s: float,
    split: SampleSplit | None = None,
) -> Task:
    """Evaluate the candidate and the serving model (candidate first) on the round's eval set."""
    spec = inputs.job.spec
    out = round_dir(inputs, round_no)
    reference_model = inputs.initial_eval_model or inputs.initial_model
    models = [
        serving_file(candidate, f"{out}/{contract.TFLITE_ARTIFACT}"),
        serving_file(deployed, reference_model.spec.url),
    ]
    env = {
        contract.MODEL_URLS: contract.MODEL_URLS_SEPARATOR.join(models),
        contract.TEST_DATASET_URL: f"{out}/{EVAL_INDEX}",
    }
    if split is not None:
        env[SPLIT_VARIABLE] = split.to_json()
    return _round_task(
        inputs, "eval", spec.eval_spec.worker_spec, round_no, attempt, env, timeout_s
    )


def model_ref(job_ref: str, version: ModelVersion) -> ModelRef:
    """The wire form of a registered model version."""
    return ModelRef(
        job=job_ref,
        version=version.version,
        artifacts=[ArtifactRef(name=a.name, sha256=a.sha256, size=a.size) for a in version.artifacts],
    )


def build_inference_task(inputs: JobInputs, deployed: ModelVersion | None) -> Task:
    """The deploy node's inference worker, serving the deployed version (else the initial
    model). ``MODEL_URL`` names where the node keeps the served model (the deploy Model's url);
    the node puts the downloaded version there before (re)starting or hot-swapping."""
    spec = inputs.job.spec.deploy_spec
    env = {contract.MODEL_URL: inputs.deploy_model.spec.url if deployed else inputs.initial_model.spec.url}
    models: list[ModelRef] = []
    if deployed is not None:
        env[contract.MODEL_VERSION] = str(deployed.version)
        models.append(model_ref(inputs.ref, deployed))
    else:
        env[contract.MODEL_VERSION] = contract.INITIAL_MODEL_VERSION
    if spec.hard_example_mining is not None:
        env[contract.HEM_NAME] = spec.hard_example_mining.name
        hem = spec.hard_example_mining.parameters_dict()
        if hem:
            env[contract.HEM_PARAMETERS] = json.dumps(hem, sort_keys=True)
    blind_spot = spec.blind_spot()
    if blind_spot is not None:
        env[contract.BLIND_SPOT] = contract.blind_spot_json(blind_spot)
    return Task(
        task_id=task_id(inputs.job.metadata.namespace, inputs.job.metadata.name, 0, "inference"),
        job=inputs.ref,
        role="inference",
        worker=worker_spec(spec.worker_spec),
        env=env,
        models=models,
        ts=0.0,
    )
