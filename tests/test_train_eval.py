"""train.py -> eval.py -> inference.py as the edge agent runs them: subprocesses configured only
through the environment variables of the worker contract, on a real tiny dataset and model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import workers
from protocol import worker_contract as contract
from demo.scenes import generate_dataset, render_video

pytestmark = [
    pytest.mark.ml,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

SCRIPTS = Path(workers.__file__).parent
TINY = {"input_shape": "64,96", "batch_size": "4", "epochs": "1", "threads": "2"}


def run_worker(script: str, env: dict[str, str], tmp: Path, *args: str) -> tuple[int, dict, str]:
    """Run a boot file the way the agent does; returns (exit code, JSON result, log)."""
    result_path = tmp / f"{script}-{len(list(tmp.glob('*.result.json')))}.result.json"
    full_env = {k: v for k, v in os.environ.items() if k not in contract.LOCATION_VARIABLES}
    full_env |= {contract.RESULT: str(result_path), contract.TASK_ID: f"test-{script}"} | env
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        env=full_env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    return proc.returncode, result, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "day": generate_dataset(root / "day", 12, "day", seed=1, size=(128, 72)),
        "night": generate_dataset(root / "night", 8, "night", seed=2, size=(128, 72)),
        "test": generate_dataset(root / "test", 6, "day", seed=3, size=(128, 72)),
        "video": render_video(root / "clip.mp4", [("day", 1.0)], seed=4, fps=10, size=(128, 72)),
        "root": root,
    }


@pytest.fixture(scope="module")
def base_model(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("round0")
    code, result, log = run_worker(
        "train.py",
        # fp32 so that eval can compare the .tflite with the .keras of the same weights.
        TINY
        | {
            contract.TRAIN_DATASET_URL: str(data["day"]),
            contract.MODEL_URL: str(out),
            "export_precision": "fp32",
        },
        out,
    )
    assert code == 0, log
    assert result["status"] == "completed"
    assert result["samples"] == {"new": 12, "replay": 0, "skipped_lines": 0}
    assert result["base_model"] is None
    return out


def test_train_from_scratch_writes_both_artifacts_with_checksums(base_model: Path) -> None:
    from edgeloop.checksum import file_sha256

    result = json.loads(next(base_model.glob("train.py-*.result.json")).read_text())
    names = {a["name"]: a for a in result["artifacts"]}
    assert set(names) == {contract.KERAS_ARTIFACT, contract.TFLITE_ARTIFACT}
    for artifact in names.values():
        path = Path(artifact["path"])
        assert path.parent == base_model
        assert artifact["sha256"] == file_sha256(path) and artifact["size"] == path.stat().st_size
    assert result["loss"] is not None and result["loss"] > 0
    assert result["parameters"]["input_shape"] == "64,96"


def test_incremental_round_loads_the_base_model_and_mixes_replay(
    data: dict[str, Path], base_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "round1"
    code, result, log = run_worker(
        "train.py",
        TINY
        | {
            contract.BASE_MODEL_URL: str(base_model / contract.KERAS_ARTIFACT),
            contract.TRAIN_DATASET_URL: str(data["night"]),
            contract.REPLAY_INDEX: str(data["day"]),
            contract.MODEL_URL: str(out),
            "replay_ratio": "0.5",
            # 12 samples in batches of 4: 3 steps an epoch, so 3 steps cap 3 epochs to one
            "epochs": "3",
            "max_steps": "3",
        },
        tmp_path,
    )
    assert code == 0, log
    assert result["export_precision"] == "int8"  # the default
    assert result["samples"]["new"] == 8 and result["samples"]["replay"] == 4
    assert result["epochs"] == 1
    assert result["base_model"].endswith("model.keras")
    assert "starting from base model" in log
    assert (out / contract.TFLITE_ARTIFACT).is_file()


def test_eval_scores_every_model_of_model_urls(
    data: dict[str, Path], base_model: Path, tmp_path: Path
) -> None:
    urls = [str(base_model / contract.TFLITE_ARTIFACT), str(base_model / contract.KERAS_ARTIFACT)]
    code, result, log = run_worker(
        "eval.py",
        {**TINY, contract.MODEL_URLS: ";".join(urls), contract.TEST_DATASET_URL: str(data["test"])},
        tmp_path,
    )
    assert code == 0, log
    assert [m["url"] for m in result["models"]] == urls
    assert result["images"] == 6
    lite, keras = (m["metrics"] for m in result["models"])
    for metrics in (lite, keras):
        assert set(metrics) >= {"precision", "recall", "f1", "map50", "map", "per_class"}
        assert set(metrics["per_class"]) == {"person", "helmet", "helmet-on", "helmet-off"}
        assert 0.0 <= metrics["recall"] <= 1.0
    # The same weights in both formats score the same.
    assert lite["map50"] == pytest.approx(keras["map50"], abs=0.02)
    assert lite["per_class"]["person"]["tp"] == keras["per_class"]["person"]["tp"]


def test_inference_reads_every_frame_and_saves_hard_examples(
    data: dict[str, Path], base_model: Path, tmp_path: Path
) -> None:
    he_dir = tmp_path / "he"
    code, result, log = run_worker(
        "inference.py",
        {
            **TINY,
            contract.MODEL_URL: str(base_model / contract.TFLITE_ARTIFACT),
            contract.MODEL_VERSION: "3",
            contract.HEM_NAME: "Random",
            contract.HEM_PARAMETERS: json.dumps({"random_ratio": "1.0"}),
            "video_url": str(data["video"]),
            "HE_SAVED_URL": str(he_dir),
            "he_dedup_distance": "0",
        },
        tmp_path,
    )
    assert code == 0, log
    assert result["frames"] == 10  # 1 s at 10 fps: every frame read was processed
    assert result["frames_per_version"] == {"3": 10}
    assert result["mined"] == 10
    sidecars = sorted(he_dir.glob("*.json"))
    assert len(sidecars) == result["hard_examples"] >= 1
    assert len(sidecars) + result["skipped_duplicate"] == 10
    sidecar = json.loads(sidecars[0].read_text())
    assert sidecar["model_version"] == 3 and sidecar["source"] == str(data["video"])
    assert (he_dir / sidecar["image"]).is_file() and sidecar["width"] == 128
    assert sidecar["class_names"] == ["person", "helmet", "helmet-on", "helmet-off"]


def test_boot_files_explain_themselves_and_reject_bad_input(
    data: dict[str, Path], tmp_path: Path
) -> None:
    for script in ("train.py", "eval.py", "inference.py"):
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / script), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0 and "--input_shape" in proc.stdout, proc.stderr

    code, result, _ = run_worker(
        "train.py",
        TINY | {contract.TRAIN_DATASET_URL: str(data["day"]), "batch_size": "many"},
        tmp_path,
        "--MODEL_URL",
        str(tmp_path / "out"),
    )
    assert code == contract.EXIT_BAD_INPUT
    assert result == {"status": "failed", "error": "batch_size='many' is not an integer"}

    code, result, _ = run_worker(
        "eval.py",
        {
            contract.MODEL_URLS: str(tmp_path / "missing.tflite"),
            contract.TEST_DATASET_URL: str(data["test"]),
        },
        tmp_path,
    )
    assert code == contract.EXIT_BAD_INPUT and "missing.tflite does not exist" in result["error"]


# --- replay and crops (pure) ----------------------------------------------------------------------


def test_replay_selection_is_capped_random_and_never_repeats_new_images(tmp_path: Path) -> None:
    import numpy as np

    from protocol.dataset_index import Sample
    from workers.training import select_replay

    def samples(names: list[str]) -> list[Sample]:
        return [Sample(image=tmp_path / n, boxes=np.zeros((0, 5), np.int32)) for n in names]

    earlier = samples([f"old{i}.jpg" for i in range(100)] + ["shared.jpg"])
    new = samples([f"new{i}.jpg" for i in range(30)] + ["shared.jpg"])
    picked = select_replay(earlier, new, ratio=1.0, cap=1000, seed=1)
    assert len(picked) == 31 and len({s.image for s in picked}) == 31
    assert tmp_path / "shared.jpg" not in {s.image for s in picked}
    assert select_replay(earlier, new, ratio=1.0, cap=1000, seed=1) == picked  # seeded
    assert len(select_replay(earlier, new, ratio=5.0, cap=40, seed=1)) == 40
    assert select_replay(earlier, new, ratio=0.0, cap=40) == []
    with pytest.raises(ValueError, match="replay_ratio"):
        select_replay(earlier, new, ratio=-1.0, cap=40)


def test_max_steps_shrinks_the_epochs_of_a_large_round_never_to_zero() -> None:
    from workers.training import TrainSettings

    assert TrainSettings(epochs=12).epochs_for(40) == 12  # no cap
    assert TrainSettings(epochs=12, max_steps=180).epochs_for(8) == 12  # a small round: all
    assert TrainSettings(epochs=12, max_steps=180).epochs_for(39) == 4
    assert TrainSettings(epochs=12, max_steps=180).epochs_for(500) == 1
    with pytest.raises(ValueError, match="max_steps"):
        TrainSettings(max_steps=-1)


def test_crops_keep_whole_boxes_whose_centre_is_inside() -> None:
    import numpy as np

    from workers.detector import DetectorSpec, encode_targets
    from workers.training import crop_boxes

    spec = DetectorSpec((64, 96), 4)
    boxes = np.array([[40, 40, 80, 60, 0], [0, 0, 10, 10, 3]], np.float32)
    moved = crop_boxes(boxes, 32, 32)
    np.testing.assert_array_equal(moved[0], [8, 8, 48, 28, 0])
    target = encode_targets(moved, spec)
    assert target[..., 4 + 4].sum() == 1.0  # only the first box has its centre in the crop


def test_eval_scores_every_model_on_each_earlier_round_too(
    data: dict[str, Path], base_model: Path, tmp_path: Path
) -> None:
    """EDGELOOP_EARLIER_TEST_URLS: each model is also scored on every earlier round's held-out
    samples, in the shape the deploy gate reads; a round whose index is gone is not scored."""
    from cloud_manager import triggers
    from protocol.manifests import DeployCondition

    urls = [str(base_model / contract.TFLITE_ARTIFACT), str(base_model / contract.KERAS_ARTIFACT)]
    earlier = {1: str(data["day"]), 2: str(data["night"]), 3: str(tmp_path / "gone.txt")}
    code, result, log = run_worker(
        "eval.py",
        {**TINY, contract.MODEL_URLS: ";".join(urls), contract.TEST_DATASET_URL: str(data["test"]),
         contract.EARLIER_TEST_URLS: contract.earlier_test_urls_json(earlier)},
        tmp_path,
    )
    assert code == 0, log
    assert result["images"] == 6 and [m["url"] for m in result["models"]] == urls
    rounds = {r["round"]: r for r in result["rounds"]}
    assert sorted(rounds) == [1, 2, 3]
    assert (rounds[1]["images"], rounds[2]["images"], rounds[3]["images"]) == (12, 8, 0)
    assert [m["url"] for m in rounds[2]["models"]] == urls
    assert rounds[3]["models"] == []
    assert "sedna_precision" in rounds[1]["models"][0]["metrics"]
    condition = DeployCondition(metric="precision_delta", operator=">", threshold=0.1)
    scores = triggers.round_scores(condition, result["rounds"], ("person", "helmet",
                                                                 "helmet-on", "helmet-off"))
    assert scores is not None and [s.round for s in scores] == [1, 2, 3]
    assert scores[2].change is None  # nothing to compare on round 3
    # the same weights in two formats forget nothing
    decision = triggers.forgetting_decision(condition, 0.02, scores)
    assert decision.holds, decision.reason
    assert "not compared, no value: round 3" in decision.reason
