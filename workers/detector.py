"""The helmet detector: a small anchor-free, CenterNet-style single-stage model.

Why this design (see docs/workers.md for the longer story):

* Anchor-free centre heatmaps need no anchor tuning and no box-matching heuristics, which matters
  when a model is trained from scratch on a few thousand images and fine-tuned on a few hundred.
* Output stride 4 keeps the smallest heads (~12 px tall at 640x360) about three cells tall, so
  neighbouring heads do not collapse into one peak; a stride-8 grid would make them 1.5 cells.
* The backbone is depthwise-separable (MobileNet-like) down to stride 32, with a light FPN that
  upsamples back to stride 4. On two CPU cores this trains at roughly 30 ms per 352x640 image and
  runs in a few milliseconds under LiteRT/XNNPACK.

The model maps a BGR image with pixel values in 0..255 (float32, shape ``(H, W, 3)``) to one
tensor of shape ``(H/4, W/4, K + 4)``:

* channels ``0..K-1``: per-class centre heatmap, sigmoid probabilities;
* channels ``K, K+1``: log of the box width and height measured in grid cells;
* channels ``K+2, K+3``: sub-cell offset of the centre, sigmoid, in ``0..1``.

A single output keeps the Keras and LiteRT paths identical (LiteRT may reorder several outputs).
Decoding into boxes is numpy code in :mod:`workers.postprocess`, shared by both paths.

This module also owns the training targets (:func:`encode_targets`) and the loss
(:func:`centernet_loss`), because the three must agree on the same channel layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Output stride of the heatmap grid.
STRIDE = 4
#: Number of regression channels after the K heatmap channels: log w, log h, offset x, offset y.
REG_CHANNELS = 4
#: Width of the Gaussian around each centre relative to the box size (TTFNet's alpha).
GAUSSIAN_ALPHA = 0.54
#: Loss weights: heatmap focal loss is 1.
SIZE_LOSS_WEIGHT = 1.0
OFFSET_LOSS_WEIGHT = 1.0
#: Batch-norm statistics follow the data within tens of steps (Keras' 0.99 needs hundreds,
#: which a short fine-tuning round may not have).
BN_MOMENTUM = 0.9
#: Prior probability of an object at initialisation (CenterNet's bias trick, keeps early loss sane).
HEATMAP_PRIOR = 0.05


@dataclass(frozen=True)
class DetectorSpec:
    """What defines a detector's shape: input size and number of classes."""

    input_hw: tuple[int, int] = (352, 640)
    num_classes: int = 4

    def __post_init__(self) -> None:
        h, w = self.input_hw
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ValueError(
                f"input_shape {h},{w}: height and width must be positive multiples of 32 "
                "(the backbone downsamples five times)"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.input_hw[0] // STRIDE, self.input_hw[1] // STRIDE

    @property
    def output_channels(self) -> int:
        return self.num_classes + REG_CHANNELS


def parse_input_shape(value: str) -> tuple[int, int]:
    """Parse the manifest's ``input_shape`` parameter (``"352,640"`` = height, width)."""
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if len(parts) == 3 and parts[2] == "3":  # "352,640,3" is a common way to write it too
        parts = parts[:2]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"input_shape {value!r}: expected 'height,width', e.g. '352,640'")
    h, w = int(parts[0]), int(parts[1])
    DetectorSpec((h, w))  # validates
    return h, w


def to_model_input(image_bgr: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Resize a BGR uint8 image to the model input (still uint8; the model rescales itself).

    One function for training and inference so both see identically resampled pixels. Channels
    stay BGR as OpenCV reads them: the model never sees RGB, so no conversion is needed anywhere.
    """
    h, w = input_hw
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected a colour image (H, W, 3), got shape {image_bgr.shape}")
    if image_bgr.shape[:2] == (h, w):
        return image_bgr
    import cv2

    return cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_AREA)


# --- model -----------------------------------------------------------------------------------


def build_detector(spec: DetectorSpec, seed: int | None = None, backbone: str = "scratch"):
    """Build an untrained detector for ``spec`` (a ``keras.Model``) on ``backbone``.

    ``scratch``: edgeloop's own small trunk. ``mobilenetv2``: MobileNetV2 up to stride 16 (its
    weights come from :func:`workers.backbones.copy_trunk_weights`). Both share the FPN and the
    heads, so everything downstream (targets, loss, decoding, export) is the same.
    """
    import keras
    from keras import layers

    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
    if seed is not None:
        keras.utils.set_random_seed(seed)

    h, w = spec.input_hw
    image = keras.Input((h, w, 3), name="image")
    if backbone == "mobilenetv2":
        c4, c8, c16 = _mobilenetv2_trunk(image)
        p = _conv_bn_relu(c16, 96, 1, name="p16_reduce_in")
    else:
        c4, c8, c16, c32 = _scratch_trunk(image)
        p = _upsample_merge(c32, c16, 96, name="p16")
    p = _upsample_merge(p, c8, 64, name="p8")
    p = _upsample_merge(p, c4, 48, name="p4")
    p = _separable(p, 48, name="head")

    prior_bias = float(-np.log((1.0 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
    heat = layers.Conv2D(
        spec.num_classes,
        1,
        activation="sigmoid",
        bias_initializer=keras.initializers.Constant(prior_bias),
        name="heatmap",
    )(p)
    size = layers.Conv2D(2, 1, name="log_size")(p)
    offset = layers.Conv2D(2, 1, activation="sigmoid", name="offset")(p)
    out = layers.Concatenate(axis=-1, name="detections")([heat, size, offset])
    return keras.Model(image, out, name=MODEL_NAMES[backbone])


#: The trunks a detector can be built on (their weights: workers/backbones.py).
BACKBONES = ("scratch", "mobilenetv2")
#: MobileNetV2's layers the detector taps, at strides 4, 8 and 16 (the last ends the trunk).
TRUNK_TAPS = ("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")
#: Model name per backbone: how a loaded checkpoint tells which trunk it has.
MODEL_NAMES = {"scratch": "edgeloop_centernet", "mobilenetv2": "edgeloop_centernet_mobilenetv2"}


def backbone_of(model) -> str:
    """The backbone a built or loaded detector was made with."""
    for backbone, name in MODEL_NAMES.items():
        if model.name == name:
            return backbone
    return "scratch"


def _conv_bn_relu(x, channels: int, kernel: int = 1, strides: int = 1, name: str = ""):
    from keras import layers

    x = layers.Conv2D(
        channels, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _separable(x, channels: int, strides: int = 1, name: str = ""):
    from keras import layers

    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(
        x
    )
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dwbn")(x)
    x = layers.ReLU(name=f"{name}_dwrelu")(x)
    return _conv_bn_relu(x, channels, 1, name=f"{name}_pw")


def _residual(x, name: str):
    """A separable block with an identity shortcut: deeper without slower convergence."""
    from keras import layers

    return layers.Add(name=f"{name}_skip")([x, _separable(x, x.shape[-1], name=name)])


def _upsample_merge(top, lateral, channels: int, name: str):
    from keras import layers

    top = _conv_bn_relu(top, channels, 1, name=f"{name}_reduce")
    top = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up")(top)
    lateral = _conv_bn_relu(lateral, channels, 1, name=f"{name}_lateral")
    merged = layers.Add(name=f"{name}_add")([top, lateral])
    return _separable(merged, channels, name=f"{name}_smooth")


def _scratch_trunk(image):
    """edgeloop's own trunk, strides 4 to 32 (trained from scratch)."""
    from keras import layers

    x = layers.Rescaling(1.0 / 255.0, name="scale")(image)
    # Patchify stem: one 4x4 stride-4 convolution straight to the stride-4 grid. It skips the
    # half-resolution layers whose activations dominate training time on a CPU.
    x = _conv_bn_relu(x, 32, 4, strides=4, name="stem")
    c4 = _separable(x, 48, name="s4")  # stride 4
    x = _conv_bn_relu(c4, 64, 3, strides=2, name="s8a")  # a full conv: cheap here, rich features
    x = _separable(x, 96, name="s8b")
    c8 = _residual(x, name="s8c")  # stride 8
    x = _separable(c8, 128, strides=2, name="s16a")
    x = _residual(x, name="s16b")
    c16 = _residual(x, name="s16c")  # stride 16
    x = _separable(c16, 192, strides=2, name="s32a")
    x = _residual(x, name="s32b")
    c32 = _residual(x, name="s32c")  # stride 32: a receptive field for the largest persons
    return c4, c8, c16, c32


def _mobilenetv2_trunk(image):
    """MobileNetV2's layers up to stride 16, fed as its pretrained weights expect: ``-1..1``
    (the BGR -> RGB flip lives in the first kernel, see workers/backbones.py)."""
    import keras
    from keras import layers

    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(image)
    trunk = keras.applications.MobileNetV2(
        input_tensor=x, alpha=1.0, include_top=False, weights=None
    )
    for layer in trunk.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM  # follow the data within a short round, as the heads do
    return tuple(trunk.get_layer(name).output for name in TRUNK_TAPS)


def at_input(model, input_hw: tuple[int, int]):
    """``model`` with the same weights for another input size (the detector is fully
    convolutional): how a model trained at one size is trained or deployed at another."""
    spec = spec_of(model)
    hw = (int(input_hw[0]), int(input_hw[1]))
    if spec.input_hw == hw:
        return model
    resized = build_detector(DetectorSpec(hw, spec.num_classes), backbone=backbone_of(model))
    resized.set_weights(model.get_weights())
    return resized


def spec_of(model) -> DetectorSpec:
    """Read the spec back from a built or loaded model."""
    _, h, w, _ = model.input_shape
    channels = model.output_shape[-1]
    return DetectorSpec((int(h), int(w)), int(channels) - REG_CHANNELS)


# --- training targets --------------------------------------------------------------------------


def encode_targets(boxes: np.ndarray, spec: DetectorSpec) -> np.ndarray:
    """Dense training target for one image.

    ``boxes`` is ``(N, 5)`` ``x1, y1, x2, y2, cls`` in input-image pixels (already resized to
    ``spec.input_hw``). Returns float32 ``(H/4, W/4, K + 5)``: K Gaussian heatmaps (exactly 1.0 at
    each centre cell), log-size, offset, and a last channel that is 1 where a centre lies (the
    only cells where size and offset are supervised).
    """
    gh, gw = spec.grid_hw
    k = spec.num_classes
    target = np.zeros((gh, gw, k + REG_CHANNELS + 1), dtype=np.float32)
    if len(boxes) == 0:
        return target
    ys = np.arange(gh, dtype=np.float32)[:, None]
    xs = np.arange(gw, dtype=np.float32)[None, :]
    # Larger boxes first, so a small object's size/offset wins a shared centre cell.
    b = np.asarray(boxes, dtype=np.float32)
    order = np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    for x1, y1, x2, y2, cls in b[order]:
        c = int(cls)
        if not 0 <= c < k:
            raise ValueError(f"box class {c} is outside 0..{k - 1}")
        bw, bh = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
        if bw <= 0 or bh <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = int(cx), int(cy)
        if not (0 <= ix < gw and 0 <= iy < gh):
            continue
        sx = max(GAUSSIAN_ALPHA * bw / 6, 0.5)
        sy = max(GAUSSIAN_ALPHA * bh / 6, 0.5)
        # Evaluate the Gaussian only in a window of 3 sigma around the centre.
        rx, ry = int(3 * sx) + 1, int(3 * sy) + 1
        x0, x1w = max(ix - rx, 0), min(ix + rx + 1, gw)
        y0, y1w = max(iy - ry, 0), min(iy + ry + 1, gh)
        g = np.exp(
            -((xs[:, x0:x1w] - ix) ** 2) / (2 * sx * sx) - ((ys[y0:y1w] - iy) ** 2) / (2 * sy * sy)
        )
        np.maximum(target[y0:y1w, x0:x1w, c], g, out=target[y0:y1w, x0:x1w, c])
        target[iy, ix, c] = 1.0
        target[iy, ix, k : k + 2] = np.log(bw), np.log(bh)
        target[iy, ix, k + 2 : k + 4] = cx - ix, cy - iy
        target[iy, ix, k + 4] = 1.0
    return target


# --- loss --------------------------------------------------------------------------------------


def centernet_loss(y_true, y_pred):
    """Penalty-reduced focal loss on the heatmaps plus L1 on size and offset at centres.

    Normalised by the number of objects in the batch, as in CenterNet, so that images with many
    people do not dominate and an empty batch does not divide by zero.
    """
    from keras import ops

    k = ops.shape(y_pred)[-1] - REG_CHANNELS
    heat_true = y_true[..., :k]
    heat_pred = ops.clip(y_pred[..., :k], 1e-4, 1.0 - 1e-4)
    reg_true = y_true[..., k : k + REG_CHANNELS]
    reg_pred = y_pred[..., k:]
    mask = y_true[..., k + REG_CHANNELS :]

    positive = ops.cast(ops.greater_equal(heat_true, 1.0), "float32")
    pos_loss = ops.log(heat_pred) * ops.square(1.0 - heat_pred) * positive
    neg_weight = ops.power(1.0 - heat_true, 4.0)
    neg_loss = ops.log(1.0 - heat_pred) * ops.square(heat_pred) * neg_weight * (1.0 - positive)
    num_pos = ops.maximum(ops.sum(positive), 1.0)
    focal = -(ops.sum(pos_loss) + ops.sum(neg_loss)) / num_pos

    num_centres = ops.maximum(ops.sum(mask), 1.0)
    l1 = ops.abs(reg_true - reg_pred) * mask
    size_l1 = ops.sum(l1[..., :2]) / num_centres
    offset_l1 = ops.sum(l1[..., 2:]) / num_centres
    return focal + SIZE_LOSS_WEIGHT * size_l1 + OFFSET_LOSS_WEIGHT * offset_l1


def compile_detector(model, learning_rate) -> None:
    """Attach optimizer and loss. ``learning_rate`` may be a float or a Keras schedule."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=10.0),
        loss=centernet_loss,
        jit_compile=False,  # XLA on CPU is slower than the default kernels here
    )


def load_detector(path):
    """Load a ``.keras`` checkpoint for inference or further training (uncompiled)."""
    from pathlib import Path

    import keras

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    if path.suffix != ".keras":
        raise ValueError(f"model file {path}: expected a .keras checkpoint")
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises many types for a damaged archive
        raise ValueError(f"cannot load Keras model {path}: {exc}") from exc
    spec_of(model)  # raises on a model that is not a detector
    return model
