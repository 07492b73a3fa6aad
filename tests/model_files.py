"""Model files for tests: a real (tiny) LiteRT model, and broken ones that still match their
sha256 because they are what was registered."""

from __future__ import annotations

from pathlib import Path


def tiny_tflite() -> bytes:
    """A LiteRT model of one dense layer, converted by TensorFlow (seconds, imported lazily)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def model(x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, tf.ones([4, 2])) + 1.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    return bytes(converter.convert())


def truncated(model: bytes) -> bytes:
    """The identifier survives, the flatbuffer does not."""
    return model[: len(model) // 2]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
