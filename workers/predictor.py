"""One interface over a Keras checkpoint or a LiteRT file: load, warm, predict a frame.

Inference, evaluation, hot-swap and the benchmarks all go through :class:`Predictor`, so the
two runtimes are interchangeable and produce boxes through the same decoding code.
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.detector import DetectorSpec, to_model_input
from workers.mining import Detections
from workers.postprocess import decode

#: Model file suffixes a predictor can load.
MODEL_SUFFIXES = (".keras", ".tflite")


class ModelLoadError(ValueError):
    """A model file is missing, of an unknown type, corrupt, or not a detector."""


@dataclass(frozen=True)
class DecodeSettings:
    obj_threshold: float = 0.3
    nms_threshold: float = 0.4

    def __post_init__(self) -> None:
        for name in ("obj_threshold", "nms_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")


def default_threads() -> int:
    """Threads for one model: all cores, as inference runs one model at a time."""
    return max(1, os.cpu_count() or 1)


def inference_threads() -> int:
    """Model threads for a video loop: one core is left to the decode thread.

    Measured on 2 cores (bench/inference.py): int8 LiteRT gives the same FPS with 1 model thread
    as with 2, and a hot-swap's background warm-up disturbs the stream less.
    """
    return max(1, default_threads() - 1)


def configure_runtime(threads: int | None = None) -> None:
    """Quiet TensorFlow's C++ logs and size its thread pools for a small machine.

    One intra-op pool of ``threads`` (default: all cores) and a single inter-op thread: the
    detector is one chain of ops, so parallel ops would only contend for the same cores. Must run
    before TensorFlow executes anything. On an edge box without TensorFlow (LiteRT only) there is
    nothing to configure: each LiteRT interpreter gets its thread count when it is loaded.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if importlib.util.find_spec("tensorflow") is None:
        return
    import tensorflow as tf

    n = threads or default_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: keep what is set
        pass


class Predictor(ABC):
    """A loaded detector. Not thread-safe: one thread predicts at a time."""

    kind: str = ""
    #: Whether a hot-swap should run :meth:`warm` before the first real frame. Worth it only
    #: when the first call is much slower than the next ones (a Keras graph is traced then).
    warm_before_serving: bool = True

    def __init__(self, path: Path, spec: DetectorSpec, settings: DecodeSettings, version: str):
        self.path = Path(path)
        self.spec = spec
        self.settings = settings
        self.version = version

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw output grid ``(1, H/4, W/4, K+4)`` for one uint8 ``(1, H, W, 3)`` input."""

    def warm(self) -> None:
        """Run once on a blank frame so the first real frame does not pay for graph set-up."""
        h, w = self.spec.input_hw
        self.run(np.zeros((1, h, w, 3), dtype=np.uint8))

    def predict(
        self,
        frame_bgr: np.ndarray,
        obj_threshold: float | None = None,
        prepared: np.ndarray | None = None,
    ) -> Detections:
        """Detect on one BGR frame of any size; boxes come back in that frame's pixels.

        ``prepared`` is the frame already resized to the model input (done ahead, in the decode
        thread); it is ignored if its size is not this model's (e.g. after a swap to a model
        with another input size).
        """
        if prepared is not None and prepared.shape[:2] == self.spec.input_hw:
            model_input = prepared
        else:
            model_input = to_model_input(frame_bgr, self.spec.input_hw)
        grid = self.run(model_input[None])
        return decode(
            grid,
            self.settings.obj_threshold if obj_threshold is None else obj_threshold,
            self.settings.nms_threshold,
            self.spec.input_hw,
            frame_bgr.shape[:2],
        )


class KerasPredictor(Predictor):
    kind = "keras"

    def __init__(self, path: Path, settings: DecodeSettings, version: str):
        import tensorflow as tf

        from workers.detector import load_detector, spec_of

        try:
            self.model = load_detector(path)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        super().__init__(path, spec_of(self.model), settings, version)
        h, w = self.spec.input_hw
        signature = [tf.TensorSpec((1, h, w, 3), tf.float32)]
        self._call = tf.function(lambda x: self.model(x, training=False), input_signature=signature)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._call(batch.astype(np.float32)).numpy()


class LiteRTPredictor(Predictor):
    kind = "tflite"
    # XNNPACK packs the weights in allocate_tensors(): measured on 2 cores, the first invoke
    # of the int8 detector takes 3.5 ms against 3.0 ms for the next ones, while a warm-up run
    # during a hot-swap would take a whole inference of CPU from the busy stream.
    warm_before_serving = False

    def __init__(self, path: Path, settings: DecodeSettings, version: str, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # the runtime raises ValueError/RuntimeError for bad files
            raise ModelLoadError(f"cannot load LiteRT model {path}: {exc}") from exc
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"{path}: expected one input and one output, not a detector")
        self._in, self._out = inputs[0], outputs[0]
        _, h, w, c = (int(v) for v in self._in["shape"])
        channels = int(self._out["shape"][-1])
        if c != 3 or channels < 5:
            raise ModelLoadError(
                f"{path}: input {self._in['shape']} / output "
                f"{self._out['shape']} do not look like a detector"
            )
        super().__init__(path, DetectorSpec((h, w), channels - 4), settings, version)
        self._in_dtype = self._in["dtype"]
        self._in_quant = self._in.get("quantization", (0.0, 0))
        self._out_quant = self._out.get("quantization", (0.0, 0))

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._in_dtype == np.float32:
            data = batch.astype(np.float32)
        elif self._in_dtype == np.uint8 and self._in_quant == (1.0, 0):
            data = batch.astype(np.uint8)
        else:
            scale, zero = self._in_quant
            info = np.iinfo(self._in_dtype)
            data = np.clip(np.round(batch / scale + zero), info.min, info.max).astype(
                self._in_dtype
            )
        self.interpreter.set_tensor(self._in["index"], data)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._out["index"])
        if out.dtype != np.float32:
            scale, zero = self._out_quant
            out = (out.astype(np.float32) - zero) * scale
        return out


def load_predictor(
    path: Path | str,
    settings: DecodeSettings | None = None,
    version: str | None = None,
    threads: int | None = None,
) -> Predictor:
    """Load a ``.keras`` or ``.tflite`` detector; raises :class:`ModelLoadError` when unusable."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file {path} is empty")
    settings = settings or DecodeSettings()
    version = version or path.stem
    kind = model_kind(path)
    if kind == ".keras":
        if importlib.util.find_spec("tensorflow") is None:
            raise ModelLoadError(
                f"model file {path} is a Keras model: serving it needs TensorFlow, which this "
                "machine lacks (pip install 'edgeloop[train]'); an edge box serves .tflite files"
            )
        return KerasPredictor(path, settings, version)
    if kind == ".tflite":
        return LiteRTPredictor(path, settings, version, threads or default_threads())
    raise ModelLoadError(
        f"model file {path}: unknown type; expected a Keras (.keras) or LiteRT (.tflite) file"
    )


def model_kind(path: Path) -> str | None:
    """``.keras`` or ``.tflite`` by the file's content, else by its suffix, else None.

    Manifests name model files however their authors like (the seed's deploy model is
    ``/deploy/model.pb``) and the agent copies the served file to that name, so the suffix alone
    cannot be trusted: a LiteRT flatbuffer carries ``TFL3`` at byte 4, a ``.keras`` file is a zip.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return ".tflite"
    if head[:4] == b"PK\x03\x04":
        return ".keras"
    return path.suffix if path.suffix in MODEL_SUFFIXES else None
