"""The Task messages a job sends to nodes, with the worker contract's variables injected. Pure.

Where files live on the dataset's node, for round ``r`` of a job with ``outputDir`` ``OUT``:

- ``OUT/r/``            train's ``MODEL_URL``: the round's model files (model.tflite, model.keras)
- ``OUT/r/train.txt``   ``TRAIN_DATASET_URL``: the round's new samples on the train side of the split
- ``OUT/r/eval.txt``    ``TEST_DATASET_URL``: the round's new samples held out for eval
- ``OUT/r/replay.txt``  ``EDGELOOP_REPLAY_INDEX``: train-side samples of earlier rounds
- ``OUT/r/eval-round-k.txt`` eval's ``EDGELOOP_EARLIER_TEST_URLS``: the held-out samples of
  earlier round ``k`` (up to :data:`~protocol.sample_split.EARLIER_ROUNDS_WINDOW` rounds)

The three index files are written on the node from the dataset index before the worker starts;
train and eval tasks say how in ``EDGELOOP_SPLIT`` (JSON, see :class:`SampleSplit`), and
:func:`protocol.sample_split.plan_round_indexes` says what goes in each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cloud_manager.versions import Candidate, ModelVersion
from protocol import worker_contract as contract
from protocol.manifests import Dataset, IncrementalLearningJob, Model
from protocol.manifests import WorkerSpec as ManifestWorkerSpec
from protocol.messages import ArtifactRef, ModelRef, Task, TaskRole, WorkerSpec
from protocol.sample_split import (
    EARLIER_ROUNDS_WINDOW,
    EVAL_INDEX,
    REPLAY_INDEX,
    SPLIT_VARIABLE,
    TRAIN_INDEX,
    EarlierRound,
    SampleSplit,
    earlier_eval_index,
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
    def train_node(self) -> str:
        """Where train runs: the node the train stage names (pod-template form), else the
        dataset's node. Another node must see the dataset index and ``outputDir`` at the same
        paths (shared storage), as Sedna's pods on other nodes must."""
        return self.job.spec.stage_node("train") or self.dataset_node

    @property
    def eval_node(self) -> str:
        """Where eval runs; as :attr:`train_node`, and it reads the candidate train wrote."""
        return self.job.spec.stage_node("eval") or self.dataset_node

    @property
    def deploy_node(self) -> str | None:
        """The one node Sedna's ``nodeName`` names for inference; a job may deploy to more
        (``IncrementalLearningJobSpec.deploy_targets``)."""
        return self.job.spec.deploy_node

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


def sedna_identity(inputs: JobInputs, role: TaskRole, task: str, attempt: int) -> dict[str, str]:
    """``NAMESPACE``, ``JOB_NAME``, ``WORKER_NAME`` as Sedna's controller sets them for a worker
    (its lib reads them through ``BaseConfig``). Sedna's name ends in 5 random characters; here
    they come from the task and attempt, so that a re-sent task gets the same name."""
    suffix = hashlib.sha256(f"{task}/{attempt}".encode()).hexdigest()[:5]
    return {
        contract.NAMESPACE: inputs.job.metadata.namespace,
        contract.JOB_NAME: inputs.job.metadata.name,
        contract.WORKER_NAME: contract.WORKER_NAME_PREFIXES[role] + suffix,
    }


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


def earlier_rounds(
    inputs: JobInputs, round_no: int, trained: Sequence[Sequence[int]]
) -> tuple[EarlierRound, ...]:
    """The earlier rounds eval also scores: the last :data:`EARLIER_ROUNDS_WINDOW` rounds
    before ``round_no`` of ``trained`` (``[round, start, end]`` of each round that trained)."""
    out = round_dir(inputs, round_no)
    chosen = [r for r in trained if r[0] < round_no][-EARLIER_ROUNDS_WINDOW:]
    return tuple(EarlierRound(r[0], r[1], r[2], f"{out}/{earlier_eval_index(r[0])}")
                 for r in chosen)


def sample_split(
    inputs: JobInputs, round_no: int, samples: tuple[int, int],
    earlier: tuple[EarlierRound, ...] = (),
) -> SampleSplit:
    out = round_dir(inputs, round_no)
    return SampleSplit(
        index=inputs.dataset.spec.url,
        start=samples[0],
        end=samples[1],
        train_prob=inputs.job.spec.dataset.train_prob,
        train=f"{out}/{TRAIN_INDEX}",
        eval=f"{out}/{EVAL_INDEX}",
        replay=f"{out}/{REPLAY_INDEX}",
        earlier=earlier,
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
        contract.ORIGINAL_DATASET_URL: inputs.dataset.spec.url,
        SPLIT_VARIABLE: split.to_json(),
    }
    return _round_task(
        inputs, "train", spec.train_spec.worker(), round_no, attempt, env, timeout_s
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
    task = task_id(ns, name, round_no, role)
    return Task(
        task_id=task,
        attempt=attempt,
        job=inputs.ref,
        role=role,
        round=round_no,
        worker=worker_spec(worker),
        env={**sedna_identity(inputs, role, task, attempt), **env},
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
        contract.ORIGINAL_DATASET_URL: inputs.dataset.spec.url,
    }
    if split is not None:
        env[SPLIT_VARIABLE] = split.to_json()
        if split.earlier:
            env[contract.EARLIER_TEST_URLS] = contract.earlier_test_urls_json(
                {r.round: r.eval for r in split.earlier})
    return _round_task(
        inputs, "eval", spec.eval_spec.worker(), round_no, attempt, env, timeout_s
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
            env[contract.HEM_PARAMETERS] = contract.hem_parameters_json(hem)
    blind_spot = spec.blind_spot()
    if blind_spot is not None:
        env[contract.BLIND_SPOT] = contract.blind_spot_json(blind_spot)
    for name, policy in ((contract.CAPTURE_POLICY, spec.capture_policy),
                         (contract.UPLOAD_POLICY, spec.upload_policy)):
        if policy is not None:
            env[name] = contract.policy_json(policy)
    task = task_id(inputs.job.metadata.namespace, inputs.job.metadata.name, 0, "inference")
    env.update(sedna_identity(inputs, "inference", task, 1))
    return Task(
        task_id=task,
        job=inputs.ref,
        role="inference",
        worker=worker_spec(spec.worker()),
        env=env,
        models=models,
        ts=0.0,
    )
