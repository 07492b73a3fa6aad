"""Paths from a task never lead the agent to write outside the worker's directory: a relative
``MODEL_URL`` or ``EDGELOOP_SPLIT`` file that climbs out is refused with an error naming it,
and nothing is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_agent_round_indexes import make_index

from edge_agent.deployment import ModelDeployer
from edge_agent.round_indexes import RoundIndexError, write_round_indexes
from edge_agent.task_paths import TaskPathError, resolve_task_path
from protocol import worker_contract as contract
from protocol.messages import ArtifactRef, ModelRef, Task, WorkerSpec
from protocol.sample_split import SPLIT_VARIABLE, SampleSplit


def test_relative_paths_stay_in_the_script_dir(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    assert resolve_task_path("out/model.tflite", code, "MODEL_URL") == code / "out/model.tflite"
    assert resolve_task_path("/deploy/model.tflite", code, "MODEL_URL") == Path("/deploy/model.tflite")
    with pytest.raises(TaskPathError, match=r"MODEL_URL: '../../../tmp/x.tflite' leads to .* outside"):
        resolve_task_path("../../../tmp/x.tflite", code, "MODEL_URL")
    (code / "link").symlink_to(tmp_path)
    with pytest.raises(TaskPathError, match="outside the worker's directory"):
        resolve_task_path("link/elsewhere.txt", code, "MODEL_URL")
    with pytest.raises(TaskPathError, match="climbs"):
        resolve_task_path("/deploy/../etc/x", code, "MODEL_URL")
    with pytest.raises(TaskPathError, match="no scriptDir"):
        resolve_task_path("model.tflite", None, "MODEL_URL")


def test_a_split_file_outside_the_worker_directory_is_refused(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    index = make_index(tmp_path / "data", 10)
    split = SampleSplit(index=str(index), start=0, end=10, train_prob=0.5,
                        train="../escaped/train.txt", eval="out/eval.txt", replay="out/replay.txt")
    task = Task(task_id="t-train", job="ns/job", role="train",
                worker=WorkerSpec(script_dir=str(code), boot_file="w.py"),
                env={SPLIT_VARIABLE: split.to_json()})
    with pytest.raises(RoundIndexError, match=f"{SPLIT_VARIABLE}.train: '../escaped/train.txt'"):
        write_round_indexes(task, num_classes=4)
    assert not (tmp_path / "escaped").exists() and not (code / "out").exists()


class LocalFiles:
    """Stands in for the downloader: the artifact is already here."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def fetch(self, artifact: ArtifactRef) -> Path:
        return self.path


async def test_a_model_url_that_climbs_out_is_refused_and_nothing_is_written(tmp_path):
    code = tmp_path / "a" / "b" / "code"
    code.mkdir(parents=True)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3 model")
    ref = ModelRef(job="ns/job", version=1, artifacts=[ArtifactRef(
        name="model.tflite", sha256=hashlib.sha256(model.read_bytes()).hexdigest(), size=10)])
    deployer = ModelDeployer(LocalFiles(model), tmp_path / "state" / "models",  # type: ignore[arg-type]
                             check_models=False)  # about paths: the bytes are no model
    task = Task(task_id="t-inf", job="ns/job", role="inference", models=[ref],
                worker=WorkerSpec(script_dir=str(code), boot_file="w.py"),
                env={contract.MODEL_URL: "../../../x.tflite"})
    with pytest.raises(ValueError, match="MODEL_URL: '../../../x.tflite' leads to"):
        await deployer.prepare(task)
    assert not (tmp_path / "x.tflite").exists()
    inside = task.model_copy(update={"env": {contract.MODEL_URL: "deploy/model.tflite"}})
    (code / "deploy").mkdir()
    await deployer.prepare(inside)
    assert (code / "deploy" / "model.tflite").read_bytes() == b"TFL3 model"
