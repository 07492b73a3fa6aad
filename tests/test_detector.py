"""Detector model, target encoding, decoding/NMS, and the LiteRT export (tiny sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workers.detector import (
    STRIDE,
    DetectorSpec,
    build_detector,
    centernet_loss,
    encode_targets,
    parse_input_shape,
)
from workers.postprocess import decode, find_peaks, nms

SPEC = DetectorSpec((64, 96), 4)
# Keras converts tensors with np.array(x, copy=False)-style calls that numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def perfect_grid(boxes: np.ndarray, spec: DetectorSpec) -> np.ndarray:
    """What a perfect model would output for ``boxes``: the target minus its mask channel."""
    return encode_targets(boxes, spec)[..., : spec.output_channels]


def test_encode_then_decode_gives_the_boxes_back() -> None:
    boxes = np.array([[10, 8, 30, 40, 0], [12, 8, 22, 18, 3], [60, 30, 76, 44, 1]], np.float32)
    det = decode(perfect_grid(boxes, SPEC), 0.5, 0.4, SPEC.input_hw)
    order = np.argsort(det.classes)
    assert det.classes[order].tolist() == [0, 1, 3]
    np.testing.assert_allclose(det.boxes[order], boxes[[0, 2, 1], :4], atol=1e-3)
    assert np.all(det.scores == 1.0)
    # class_probs: the heatmap at each centre, normalised (CrossEntropy mining uses it).
    np.testing.assert_allclose(det.class_probs.sum(axis=1), 1.0, rtol=1e-6)


def test_decode_scales_boxes_to_the_frame() -> None:
    boxes = np.array([[16, 16, 48, 32, 2]], np.float32)
    det = decode(perfect_grid(boxes, SPEC), 0.5, 0.4, SPEC.input_hw, frame_hw=(128, 384))
    np.testing.assert_allclose(det.boxes[0], [64, 32, 192, 64], atol=1e-3)


def test_targets_mark_centres_and_gaussians() -> None:
    target = encode_targets(np.array([[20, 20, 44, 36, 2]], np.float32), SPEC)
    k = SPEC.num_classes
    assert target.shape == (*SPEC.grid_hw, k + 5)
    iy, ix = 28 // STRIDE, 32 // STRIDE
    assert target[iy, ix, 2] == 1.0 and target[..., 2].sum() > 1.0  # a peak plus its Gaussian
    assert target[..., k + 4].sum() == 1.0  # one supervised centre
    np.testing.assert_allclose(np.exp(target[iy, ix, k : k + 2]) * STRIDE, [24, 16], rtol=1e-6)
    assert target[..., [0, 1, 3]].max() == 0.0
    assert encode_targets(np.zeros((0, 5), np.float32), SPEC).sum() == 0.0


def test_targets_reject_a_class_outside_the_model() -> None:
    with pytest.raises(ValueError, match="class 4 is outside 0..3"):
        encode_targets(np.array([[0, 0, 8, 8, 4]], np.float32), SPEC)


def test_peaks_and_nms() -> None:
    heat = np.zeros((5, 5, 2), np.float32)
    heat[2, 2, 0], heat[2, 3, 0], heat[0, 0, 1] = 0.9, 0.8, 0.4
    ys, xs, cs = find_peaks(heat, 0.3)
    assert sorted(zip(ys.tolist(), xs.tolist(), cs.tolist())) == [(0, 0, 1), (2, 2, 0)]

    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    # Box 1 overlaps box 0 (same class) and goes; box 2 is another class and stays.
    assert nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]


def test_spec_and_input_shape_validation() -> None:
    assert parse_input_shape("352,640") == (352, 640)
    assert parse_input_shape(" 64, 96 ,3") == (64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        parse_input_shape("350,640")
    with pytest.raises(ValueError, match="expected 'height,width'"):
        parse_input_shape("352x640")


@pytest.mark.ml
def test_loss_prefers_the_right_answer() -> None:
    boxes = np.array([[10, 8, 30, 40, 0], [12, 8, 22, 18, 3]], np.float32)
    y_true = encode_targets(boxes, SPEC)[None]
    good = perfect_grid(boxes, SPEC)[None].copy()
    good[..., :4] = np.clip(good[..., :4], 0.01, 0.99)
    bad = good.copy()
    bad[..., :4] = 0.5
    assert float(centernet_loss(y_true, good)) < float(centernet_loss(y_true, bad))


@pytest.mark.ml
def test_model_output_layout_and_litert_export_agree(tmp_path: Path) -> None:
    """The exported .tflite gives the same grid and the same boxes as the Keras model."""
    from workers.detector import to_model_input
    from workers.export import export_tflite, save_keras
    from workers.predictor import DecodeSettings, load_predictor

    model = build_detector(SPEC, seed=1)
    assert model.output_shape == (None, 16, 24, 8)
    # A few steps on one scene so that scores spread out and the box comparison means something.
    from workers.detector import compile_detector
    from demo.scenes import render_scene
    from workers.training import scale_boxes

    scenes = [render_scene(np.random.default_rng(seed), "day", (128, 72)) for seed in range(4)]
    x = np.stack([to_model_input(image, SPEC.input_hw) for image, _ in scenes]).astype(np.float32)
    y = np.stack(
        [encode_targets(scale_boxes(b, (72, 128), SPEC.input_hw), SPEC) for _, b in scenes]
    )
    compile_detector(model, 1e-2)
    for _ in range(60):
        model.train_on_batch(x, y)
    scene = scenes[0][0]
    keras_path = save_keras(model, tmp_path / "m.keras")
    tflite_path = export_tflite(model, tmp_path / "m.tflite")
    settings = DecodeSettings(obj_threshold=0.1, nms_threshold=0.4)
    keras_p = load_predictor(keras_path, settings)
    lite_p = load_predictor(tflite_path, settings)
    assert (keras_p.kind, lite_p.kind) == ("keras", "tflite")
    assert lite_p.spec == keras_p.spec == SPEC

    frame = scene
    x = to_model_input(frame, SPEC.input_hw)[None]
    np.testing.assert_allclose(lite_p.run(x), keras_p.run(x), atol=1e-4)
    a, b = keras_p.predict(frame), lite_p.predict(frame)
    assert 0 < len(a) < 100 and len(a) == len(b)
    order_a, order_b = np.lexsort(a.boxes.T), np.lexsort(b.boxes.T)
    assert a.classes[order_a].tolist() == b.classes[order_b].tolist()
    np.testing.assert_allclose(a.boxes[order_a], b.boxes[order_b], atol=0.05)
    np.testing.assert_allclose(a.scores[order_a], b.scores[order_b], atol=1e-4)


@pytest.mark.parametrize("backbone", ["scratch", "mobilenetv2"])
def test_at_input_keeps_the_weights_at_another_size(backbone: str) -> None:
    """A model trained at one input size runs at another with the same weights (the detector is
    fully convolutional), on the same trunk."""
    from workers.detector import at_input, spec_of

    model = build_detector(SPEC, seed=3, backbone=backbone)
    assert at_input(model, SPEC.input_hw) is model
    bigger = at_input(model, (128, 192))
    assert spec_of(bigger) == DetectorSpec((128, 192), 4)
    assert spec_of(bigger).num_classes == spec_of(model).num_classes
    for a, b in zip(model.get_weights(), bigger.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert bigger.name == model.name  # the backbone is kept
