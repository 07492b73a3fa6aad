"""One valid message of every kind, with the topic that carries it. Shared by codec tests, fuzzing
and the broker round-trip test so that a new message kind is covered everywhere at once."""

from __future__ import annotations

import hashlib

from protocol import topics
from protocol.messages import (
    Ack,
    ApiRequest,
    ApiResponse,
    ArtifactRef,
    ArtifactWant,
    Chunk,
    ChunkRequest,
    DatasetSamples,
    DesiredState,
    ErrorReport,
    HardExample,
    HardExampleSidecar,
    JobCondition,
    JobStatus,
    LabelledSample,
    LabelOutcome,
    LabelReceipt,
    Message,
    ModelChunk,
    ModelRef,
    NodeStatus,
    SampleReport,
    Task,
    TaskProgress,
    WorkerSpec,
)
from protocol.topics import Kind, node_topic

IMAGE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
SHA = hashlib.sha256(IMAGE).hexdigest()
MODEL = ModelRef(
    job="neptune-test/helmet-detection-demo",
    version=2,
    artifacts=[ArtifactRef(name="model.tflite", sha256=SHA, size=len(IMAGE))],
)
WORKER = WorkerSpec(
    script_dir="/code",
    boot_file="train.py",
    framework_type="tensorflow",
    parameters={"batch_size": "32", "epochs": "1"},
)
TASK = Task(
    task_id="helmet-detection-demo-train-1",
    attempt=1,
    job="neptune-test/helmet-detection-demo",
    role="train",
    round=1,
    worker=WORKER,
    env={"TRAIN_DATASET_URL": "/data/train.txt"},
    models=[MODEL],
    timeout_s=600,
)


def samples() -> dict[Kind, tuple[str, Message]]:
    node = "edge0"
    tid = TASK.task_id
    return {
        Kind.STATUS: (
            topics.status(node),
            NodeStatus(node=node, state="online", boot_id="b1", seq=3, capabilities={"cpus": 2}),
        ),
        Kind.DESIRED: (
            topics.desired(node),
            DesiredState(node=node, generation=7, tasks=[TASK], models=[MODEL]),
        ),
        Kind.TASK: (topics.task(node, tid), TASK),
        Kind.PROGRESS: (
            topics.progress(node, tid),
            TaskProgress(
                node=node,
                task_id=tid,
                seq=4,
                state="Completed",
                progress=1.0,
                exit_code=0,
                result={"loss": 0.25, "per_class": {"helmet": {"precision": 0.9}}},
                artifacts=list(MODEL.artifacts),
            ),
        ),
        Kind.SAMPLES: (
            topics.samples(node),
            SampleReport(
                node=node,
                boot_id="b1",
                seq=9,
                datasets=[DatasetSamples(dataset="neptune-test/ds", url="/d/data.txt", samples=501)],
            ),
        ),
        Kind.HARDEX: (
            topics.hardex(node),
            HardExample(
                node=node,
                job="neptune-test/helmet-detection-demo",
                sha256=SHA,
                image=IMAGE,
                sidecar=HardExampleSidecar(
                    boxes=[[1.0, 2.0, 30.0, 40.0]], scores=[0.31], classes=[3], model_version=1
                ),
            ),
        ),
        Kind.ACK: (topics.ack(node), Ack(node=node, keys=[SHA, "t#1#4"])),
        Kind.ARTIFACT_REQUEST: (
            node_topic(Kind.ARTIFACT_REQUEST, node),
            ChunkRequest(node=node, sha256=SHA, index=0),
        ),
        Kind.ARTIFACT_CHUNK: (
            node_topic(Kind.ARTIFACT_CHUNK, node),
            Chunk(node=node, sha256=SHA, index=0, total=1, size=len(IMAGE), data=IMAGE),
        ),
        Kind.ARTIFACT_PULL: (
            node_topic(Kind.ARTIFACT_PULL, node),
            ChunkRequest(node=node, sha256=SHA, index=1, chunk_size=65536),
        ),
        Kind.ARTIFACT_PUSH: (
            node_topic(Kind.ARTIFACT_PUSH, node),
            Chunk(node=node, sha256=SHA, index=1, total=2, size=9, data=b"abc"),
        ),
        Kind.ERROR: (
            node_topic(Kind.ERROR, node),
            ErrorReport(node=node, code="model_rejected", reason="sha256 mismatch", about=SHA),
        ),
        Kind.API_REQUEST: (
            topics.api_request("get"),
            ApiRequest(request_id="r1", verb="get", resource="jobs", namespace="neptune-test"),
        ),
        Kind.API_RESPONSE: (
            topics.api_response("cli-1"),
            ApiResponse(request_id="r1", ok=True, data=[{"name": "x"}], attachments={"x:0": IMAGE[:64]}),
        ),
        Kind.LABELS: (
            topics.labels(node),
            LabelledSample(
                node=node,
                dataset="neptune-test/incremental-dataset",
                sha256=SHA,
                image=IMAGE,
                boxes=[[1, 2, 30, 40, 3]],
                source="data.txt:4",
            ),
        ),
        Kind.LABEL_ACK: (
            topics.label_ack(node),
            LabelReceipt(
                node=node,
                keys=[f"neptune-test/incremental-dataset/{SHA}"],
                outcomes={
                    f"neptune-test/incremental-dataset/{SHA}": LabelOutcome(status="added")
                },
            ),
        ),
        Kind.JOB_STATUS: (
            topics.job_status("neptune-test", "helmet-detection-demo"),
            JobStatus(
                namespace="neptune-test",
                name="helmet-detection-demo",
                revision=5,
                stage="Train",
                state="Waiting",
                conditions=[JobCondition(stage="Train", state="Waiting", reason="created")],
            ),
        ),
        Kind.ARTIFACT_WANT: (
            node_topic(Kind.ARTIFACT_WANT, node),
            ArtifactWant(node=node, sha256=SHA),
        ),
        Kind.MODEL_CHUNK: (
            topics.model_chunks(SHA),
            ModelChunk(sha256=SHA, index=0, total=1, size=len(IMAGE), data=IMAGE,
                       data_sha256=hashlib.sha256(IMAGE).hexdigest()),
        ),
    }
