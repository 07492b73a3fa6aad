"""Export a trained Keras detector to LiteRT (``.tflite``) for the edge.

Conversion goes through a SavedModel (``model.export(..., format="tf_saved_model")`` then
``tf.lite.TFLiteConverter.from_saved_model``), the path TensorFlow supports for Keras 3 models.

Precisions (measured side by side by ``bench/inference.py``; see docs/workers.md for figures):

* ``fp32`` - float weights and activations; the Keras maths to float rounding.
* ``fp16`` - float16 weights, dequantised to fp32 at load on CPU: smaller file, same speed.
* ``dynamic-int8`` - int8 weights, activations quantised on the fly per op.
* ``int8`` - full integer model calibrated on representative images; uint8 input, float
  output. The default of train.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edgeloop.checksum import file_sha256

PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")
#: What train.py writes unless the ``export_precision`` parameter says otherwise: full int8 is
#: the fastest here (bench/inference.py) at no measured accuracy cost (docs/workers.md).
DEFAULT_PRECISION = "int8"


def export_tflite(
    model,
    out_path: Path,
    precision: str = "fp32",
    representative_images: Callable[[], Iterable[np.ndarray]] | None = None,
) -> Path:
    """Convert ``model`` to a ``.tflite`` file at ``out_path`` (written atomically).

    ``representative_images`` yields uint8 BGR images already at the model input size; it is
    required for ``int8`` (calibration of activation ranges), ignored otherwise.
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"export precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "int8" and representative_images is None:
        raise ValueError("int8 export needs representative images for calibration")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeloop-export-") as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "dynamic-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif precision == "int8":
            assert representative_images is not None

            def representative():
                for image in representative_images():
                    yield [np.asarray(image, dtype=np.float32)[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.float32
        flatbuffer = converter.convert()
    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name, dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(flatbuffer)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; keep the usual mode
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_keras(model, out_path: Path) -> Path:
    """Save a ``.keras`` checkpoint atomically (a reader never sees half a file)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".partial.keras")
    model.save(str(tmp))
    shutil.move(str(tmp), str(out_path))
    return out_path
