"""Training: image loading, replay mixing, batches with targets, and the fit loop with progress.

The boot file :mod:`workers.train` wires this to the worker contract; this module knows nothing
about environment variables, so it can be driven from tests and benchmarks directly.

Incremental rounds fight forgetting with *replay*: a random sample of earlier training data is
mixed into the new samples (``replay_ratio`` times as many, capped), so each batch keeps
reminding the model of the old domains while it learns the new one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from protocol.dataset_index import Sample, image_size
from workers.detector import DetectorSpec, compile_detector, encode_targets, to_model_input

log = logging.getLogger(__name__)

#: ``(fraction 0..1, message)``; called from the training thread.
ProgressCallback = Callable[[float, str], None]

#: Decoded training images are kept in memory up to this many bytes (then read per batch).
IMAGE_CACHE_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class TrainSettings:
    """Knobs of one training run. Defaults suit a from-scratch run on a few thousand images."""

    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 6e-3
    warmup_fraction: float = 0.05
    flip: bool = True
    #: Train on random crops of this (height, width) instead of whole images; None: whole.
    crop_hw: tuple[int, int] | None = None
    seed: int = 0
    #: Most optimizer steps (0: no cap): a round with many samples trains fewer epochs, so its
    #: time stays bounded however many hard examples were labelled meanwhile.
    max_steps: int = 0
    #: Names of layers whose weights stay as they are (a pretrained trunk's early blocks).
    frozen: tuple[str, ...] = ()

    def epochs_for(self, steps_per_epoch: int) -> int:
        """The epochs to run: ``epochs``, fewer when ``max_steps`` caps them (never 0)."""
        if self.max_steps <= 0 or steps_per_epoch <= 0:
            return self.epochs
        return max(1, min(self.epochs, self.max_steps // steps_per_epoch))

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")


@dataclass
class FitResult:
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    steps: int = 0
    epochs_done: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


# --- replay ------------------------------------------------------------------------------------


def replay_count(new_count: int, available: int, ratio: float, cap: int) -> int:
    """How many earlier samples to mix with ``new_count`` new ones."""
    if ratio < 0:
        raise ValueError(f"replay_ratio must be >= 0, got {ratio}")
    return int(min(available, cap, round(new_count * ratio)))


def select_replay(
    earlier: Sequence[Sample],
    new: Sequence[Sample],
    ratio: float,
    cap: int,
    seed: int = 0,
) -> list[Sample]:
    """A random sample of ``earlier`` for replay, excluding images that are also in ``new``."""
    new_images = {s.image for s in new}
    pool = [s for s in earlier if s.image not in new_images]
    n = replay_count(len(new), len(pool), ratio, cap)
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(picks)]


# --- images ------------------------------------------------------------------------------------


def read_resized(path, input_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as BGR and resize it to ``input_hw``; returns it with its original (h, w)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return to_model_input(image, input_hw), image.shape[:2]


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Boxes ``(N, 5)`` in ``from_hw`` pixels -> float32 in ``to_hw`` pixels (class kept)."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 5).copy()
    out[:, [0, 2]] *= to_hw[1] / from_hw[1]
    out[:, [1, 3]] *= to_hw[0] / from_hw[0]
    return out


class TrainingImages:
    """Samples resized to the model input, decoded once and kept in memory when they fit.

    Decoding a JPEG costs about as much as a training step on it, so re-reading every epoch would
    double the run time; above :data:`IMAGE_CACHE_BYTES` images are read per batch instead.
    Boxes are scaled to the model input up front (reading only each image's header).
    """

    def __init__(self, samples: Sequence[Sample], input_hw: tuple[int, int], threads: int = 2):
        self.samples = list(samples)
        self.input_hw: tuple[int, int] = (int(input_hw[0]), int(input_hw[1]))
        self.boxes = [self._scaled_boxes(s) for s in self.samples]
        self._cache: np.ndarray | None = None
        h, w = self.input_hw
        if len(self.samples) * h * w * 3 <= IMAGE_CACHE_BYTES:
            cache = np.empty((len(self.samples), h, w, 3), dtype=np.uint8)
            with ThreadPoolExecutor(max(1, threads)) as pool:  # cv2 releases the GIL
                for i, image in enumerate(pool.map(self._read, range(len(self.samples)))):
                    cache[i] = image
            self._cache = cache

    def _scaled_boxes(self, sample: Sample) -> np.ndarray:
        size = image_size(sample.image)
        if size is None:
            raise ValueError(f"cannot read the size of image {sample.image}")
        width, height = size
        return scale_boxes(sample.boxes, (height, width), self.input_hw)

    def _read(self, i: int) -> np.ndarray:
        return read_resized(self.samples[i].image, self.input_hw)[0]

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> np.ndarray:
        if self._cache is not None:
            return self._cache[i]
        return self._read(i)


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def crop_boxes(boxes: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """Boxes moved into a crop's coordinates; those whose centre falls outside are dropped by
    :func:`encode_targets`, the others keep their full size (the model learns whole objects)."""
    out = boxes.copy()
    out[:, [0, 2]] -= x0
    out[:, [1, 3]] -= y0
    return out


def make_batches(images: TrainingImages, spec: DetectorSpec, settings: TrainSettings):
    """A ``keras.utils.PyDataset`` of ``(images, targets)`` shuffled each epoch, with flips
    and, when ``settings.crop_hw`` is set, random crops (``spec`` is then the crop's spec)."""
    import keras

    class DetectionBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(settings.seed)
            self.order = self.rng.permutation(len(images))

        def __len__(self) -> int:
            return math.ceil(len(images) / settings.batch_size)

        def __getitem__(self, index: int):
            ids = self.order[index * settings.batch_size : (index + 1) * settings.batch_size]
            h, w = spec.input_hw
            x = np.empty((len(ids), h, w, 3), dtype=np.float32)
            y = np.empty((len(ids), *spec.grid_hw, spec.output_channels + 1), dtype=np.float32)
            full_h, full_w = images.input_hw
            for j, i in enumerate(ids):
                image = images.image(int(i))
                boxes = images.boxes[int(i)]
                if (h, w) != (full_h, full_w):
                    y0 = int(self.rng.integers(0, full_h - h + 1))
                    x0 = int(self.rng.integers(0, full_w - w + 1))
                    image = image[y0 : y0 + h, x0 : x0 + w]
                    boxes = crop_boxes(boxes, y0, x0)
                if settings.flip and self.rng.random() < 0.5:
                    image = image[:, ::-1]
                    boxes = flip_boxes(boxes, w)
                x[j] = image
                y[j] = encode_targets(boxes, spec)
            return x, y

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(images))

    return DetectionBatches()


# --- fit ---------------------------------------------------------------------------------------


def _progress_callback(
    total_steps: int, epochs: int, on_progress: ProgressCallback | None, should_stop
):
    import keras

    class Progress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.epoch = 0
            self.epoch_losses: list[float] = []
            self.losses: list[float] = []
            self.last_report = 0.0
            self.started = time.monotonic()

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.epoch = epoch
            self.epoch_losses = []

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.step += 1
            loss = float((logs or {}).get("loss", float("nan")))
            self.epoch_losses.append(loss)
            now = time.monotonic()
            if on_progress and (now - self.last_report >= 1.0 or self.step == total_steps):
                self.last_report = now
                elapsed = now - self.started
                eta = elapsed / self.step * (total_steps - self.step)
                on_progress(
                    self.step / total_steps,
                    f"epoch {self.epoch + 1}/{epochs} step {self.step}/{total_steps} "
                    f"loss {loss:.3f} eta {eta:.0f}s",
                )
            if should_stop is not None and should_stop():
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None) -> None:
            # Keras reports a running mean; keep the epoch's own mean of batch losses.
            finite = [v for v in self.epoch_losses if math.isfinite(v)]
            self.losses.append(float(np.mean(finite)) if finite else float("nan"))
            log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, self.losses[-1])

    return Progress()


def freeze(model, frozen: Sequence[str]) -> None:
    """Keep the layers named in ``frozen`` fixed, train all others. A frozen batch norm also
    keeps its statistics (Keras runs it in inference mode)."""
    names = set(frozen)
    unknown = names - {layer.name for layer in model.layers}
    if unknown:
        raise ValueError(f"cannot freeze {sorted(unknown)[0]}: the model has no such layer")
    for layer in model.layers:
        layer.trainable = layer.name not in names


def fit(
    model,
    images: TrainingImages,
    settings: TrainSettings,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``images``: Adam, linear warm-up then cosine decay."""
    import keras

    from workers.detector import backbone_of, build_detector, spec_of

    if len(images) == 0:
        raise ValueError("no training samples")
    spec = spec_of(model)
    if tuple(images.input_hw) != spec.input_hw:
        raise ValueError(f"images are {images.input_hw} but the model expects {spec.input_hw}")
    freeze(model, settings.frozen)
    train_model = model
    if settings.crop_hw is not None and tuple(settings.crop_hw) != spec.input_hw:
        crop = DetectorSpec(tuple(settings.crop_hw), spec.num_classes)
        if crop.input_hw[0] > spec.input_hw[0] or crop.input_hw[1] > spec.input_hw[1]:
            raise ValueError(f"crop {crop.input_hw} is larger than the input {spec.input_hw}")
        # Fully convolutional: a model built for the crop size shares all weights.
        train_model = build_detector(crop, backbone=backbone_of(model))
        freeze(train_model, settings.frozen)
        train_model.set_weights(model.get_weights())
        spec = crop
    batches = make_batches(images, spec, settings)
    steps_per_epoch = len(batches)
    epochs = settings.epochs_for(steps_per_epoch)
    total = steps_per_epoch * epochs
    warmup = max(1, int(total * settings.warmup_fraction))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=settings.learning_rate * 0.1,
        decay_steps=max(1, total - warmup),
        alpha=0.02,
        warmup_target=settings.learning_rate,
        warmup_steps=warmup,
    )
    compile_detector(train_model, schedule)
    progress = _progress_callback(total, epochs, on_progress, should_stop)
    started = time.monotonic()
    train_model.fit(batches, epochs=epochs, verbose=0, callbacks=[progress])
    if train_model is not model:
        model.set_weights(train_model.get_weights())
    return FitResult(
        losses=progress.losses,
        steps=progress.step,
        epochs_done=len(progress.losses),
        stopped_early=progress.step < total,
        seconds=time.monotonic() - started,
    )
