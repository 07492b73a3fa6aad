"""A downloaded ``.tflite`` whose sha256 matches but that LiteRT cannot load is not put in place:
the download is discarded, counted, and the task's model is unavailable with the reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from model_files import tiny_tflite, truncated, write

from edge_agent.deployment import ModelDeployer
from edge_agent.model_check import identifier_problem, tflite_problem
from protocol import worker_contract as contract
from protocol.messages import ArtifactRef, ModelRef, Task, WorkerSpec

pytestmark = [pytest.mark.ml, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def good_model() -> bytes:
    return tiny_tflite()


def test_the_identifier_is_checked_first():
    assert identifier_problem(b"\x1c\x00\x00\x00TFL3rest") is None
    assert "no TFL3 identifier" in identifier_problem(b"PK\x03\x04 a zip file")
    assert "no TFL3 identifier" in identifier_problem(b"")


async def test_litert_loads_the_good_model_and_not_a_broken_one(tmp_path, good_model):
    assert await tflite_problem(write(tmp_path / "good.tflite", good_model)) is None
    problem = await tflite_problem(write(tmp_path / "cut.tflite", truncated(good_model)))
    assert problem is not None and problem.startswith("LiteRT cannot load it")
    assert "no TFL3 identifier" in await tflite_problem(write(tmp_path / "x.tflite", b"\0" * 64))


class Downloaded:
    """Stands in for the downloader: each artifact is already in its store, by sha256."""

    def __init__(self, store: Path) -> None:
        self.store = store

    async def fetch(self, artifact: ArtifactRef) -> Path:
        return self.store / artifact.sha256


async def test_a_corrupt_model_is_discarded_and_never_placed(tmp_path, good_model):
    store = tmp_path / "artifacts"
    deployer = ModelDeployer(Downloaded(store), tmp_path / "models")  # type: ignore[arg-type]
    serving = tmp_path / "code" / "deploy"

    def task_for(version: int, data: bytes) -> Task:
        sha = hashlib.sha256(data).hexdigest()
        write(store / sha, data)
        ref = ModelRef(job="ns/job", version=version,
                       artifacts=[ArtifactRef(name="model.tflite", sha256=sha, size=len(data))])
        return Task(task_id="t-inf", job="ns/job", role="inference", models=[ref],
                    worker=WorkerSpec(script_dir=str(tmp_path / "code"), boot_file="w.py"),
                    env={contract.MODEL_URL: str(serving / "model.tflite")})

    prepared = await deployer.prepare(task_for(1, good_model))
    assert prepared is not None and (serving / "model.tflite").read_bytes() == good_model

    broken = truncated(good_model)
    with pytest.raises(ValueError, match=r"ns/job version 2: model.tflite .* was discarded: LiteRT"):
        await deployer.prepare(task_for(2, broken))
    assert deployer.rejected == 1
    assert not (store / hashlib.sha256(broken).hexdigest()).exists()  # the download is discarded
    assert not (tmp_path / "models" / "ns" / "job" / "v2").exists()
    assert (serving / "model.tflite").read_bytes() == good_model  # version 1 keeps serving
