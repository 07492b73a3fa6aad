"""Train boot file: one training round of the helmet detector.

Run by the edge agent as ``python train.py`` with the worker contract in the environment
(docs/workers.md), or by hand: ``python workers/train.py --help``.

Starts from ``BASE_MODEL_URL`` (a ``.keras`` checkpoint) when given, from scratch otherwise;
trains on ``TRAIN_DATASET_URL`` mixed with a replay sample of ``EDGELOOP_REPLAY_INDEX``; writes
``MODEL_URL/model.keras`` and ``MODEL_URL/model.tflite`` and a JSON result with the loss, the
sample counts, the duration and the artifacts' sha256.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: keep this folder's module names off sys.path
    sys.path[:] = [
        p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
    ]

import logging
import time
from typing import Any

from protocol import worker_contract as contract
from workers import sdk

log = logging.getLogger("edgeloop.train")

DESCRIPTION = "Train the detector on TRAIN_DATASET_URL (+ replay) and write MODEL_URL/model.*"
LR_FROM_SCRATCH = 6e-3
#: A pretrained trunk starts near a good solution: a third of the from-scratch peak keeps the
#: first steps (random FPN and heads) from wrecking it.
LR_FROM_PRETRAINED = 2e-3
LR_FROM_BASE = 1e-3
#: Images that calibrate the activation ranges of an int8 export.
CALIBRATION_IMAGES = 100
#: Share of the progress bar spent on loading images and exporting (the rest is fitting).
LOAD_SHARE, FIT_SHARE = 0.05, 0.90


def _read_samples(index: str, num_classes: int, what: str):
    from protocol.dataset_index import read_index

    path = Path(index)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    result = read_index(path, num_classes=num_classes)
    for problem in result.problems[:20]:
        log.warning("%s line %d skipped: %s", path.name, problem.line_no, problem.reason)
    if len(result.problems) > 20:
        log.warning("%s: %d more lines skipped", path.name, len(result.problems) - 20)
    return result


def _start_model(
    base: str | None,
    input_hw: tuple[int, int],
    num_classes: int,
    seed: int,
    backbone: str = "scratch",
    backbone_weights: str | None = None,
):
    """The base model (reshaped to ``input_hw`` if needed) or a fresh one on ``backbone``."""
    from workers.backbones import copy_trunk_weights, default_weights
    from workers.detector import (
        DetectorSpec,
        at_input,
        backbone_of,
        build_detector,
        load_detector,
        spec_of,
    )

    spec = DetectorSpec(input_hw, num_classes)
    if not base:
        weights = backbone_weights or default_weights(backbone)
        log.info("no BASE_MODEL_URL: a new %s detector, trunk weights %s", backbone, weights)
        model = build_detector(spec, seed=seed, backbone=backbone)
        if backbone != "scratch":
            copy_trunk_weights(model, weights)
        return model
    path = Path(base)
    if path.suffix == ".tflite" and path.with_suffix(".keras").is_file():
        path = path.with_suffix(".keras")  # a LiteRT file cannot be trained; use its checkpoint
    model = load_detector(path)
    base_spec = spec_of(model)
    if base_spec.num_classes != num_classes:
        raise ValueError(
            f"BASE_MODEL_URL {path} predicts {base_spec.num_classes} classes but class_names "
            f"lists {num_classes}"
        )
    if base_spec.input_hw != spec.input_hw:
        # Fully convolutional: the same weights work at another input size.
        log.info("base model input %s -> %s", base_spec.input_hw, spec.input_hw)
        model = at_input(model, spec.input_hw)
    log.info("starting from base model %s (%s trunk)", path, backbone_of(model))
    return model


def _crop(value: str | None, input_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The ``train_crop`` parameter: None (whole images) for "0" or a crop not smaller than the input."""
    from workers.detector import parse_input_shape

    if not value or value.strip() == "0":
        return None
    try:
        crop = parse_input_shape(value)
    except ValueError as exc:
        raise sdk.ParameterError(f"train_crop: {exc}") from exc
    if crop[0] >= input_hw[0] and crop[1] >= input_hw[1]:
        return None
    return min(crop[0], input_hw[0]), min(crop[1], input_hw[1])


def train(params: sdk.Parameters, session: sdk.WorkerSession) -> dict[str, Any]:
    import numpy as np

    from workers.export import PRECISIONS, export_tflite, save_keras
    from edgeloop.checksum import file_sha256
    from workers.predictor import configure_runtime

    started = time.monotonic()
    env = params.env
    if not env.train_dataset_url:
        raise sdk.ParameterError(f"{contract.TRAIN_DATASET_URL} is required")
    if not env.model_url:
        raise sdk.ParameterError(f"{contract.MODEL_URL} (output folder) is required")
    input_hw = params.input_shape
    class_names = params.class_names
    epochs = params.int("epochs", minimum=1)
    batch_size = params.int("batch_size", minimum=1)
    replay_ratio = params.float("replay_ratio", minimum=0.0)
    replay_max = params.int("replay_max", minimum=0)
    max_steps = params.int("max_steps", minimum=0)
    seed = params.int("seed")
    backbone = params.get("backbone") or "scratch"
    backbone_weights = params.get("backbone_weights") or None
    from workers.detector import BACKBONES

    if backbone not in BACKBONES:
        raise sdk.ParameterError(f"backbone={backbone!r}: expected one of {', '.join(BACKBONES)}")
    precision = params.get("export_precision")
    if precision not in PRECISIONS:
        raise sdk.ParameterError(f"export_precision={precision!r}: expected one of {PRECISIONS}")
    out_dir = Path(env.model_url)
    if out_dir.suffix in (".keras", ".tflite"):
        raise sdk.ParameterError(
            f"{contract.MODEL_URL} must be a folder for training, got {out_dir}"
        )
    configure_runtime(params.threads)

    from workers.training import TrainingImages, TrainSettings, fit, select_replay

    new = _read_samples(env.train_dataset_url, len(class_names), contract.TRAIN_DATASET_URL)
    if not new.samples:
        raise ValueError(
            f"{contract.TRAIN_DATASET_URL} {env.train_dataset_url} has no usable samples"
        )
    replay = []
    if env.replay_index and replay_ratio > 0:
        earlier = _read_samples(env.replay_index, len(class_names), contract.REPLAY_INDEX)
        replay = select_replay(earlier.samples, new.samples, replay_ratio, replay_max, seed)
    log.info("training on %d new + %d replay samples", len(new.samples), len(replay))
    session.report_progress(0.0, f"loading {len(new.samples) + len(replay)} images")

    images = TrainingImages(new.samples + replay, input_hw)
    from workers.backbones import BackboneError, frozen_layers
    from workers.detector import backbone_of

    try:
        model = _start_model(
            env.base_model_url, input_hw, len(class_names), seed, backbone, backbone_weights
        )
    except BackboneError as exc:
        raise sdk.ParameterError(str(exc)) from exc
    if env.base_model_url:
        default_lr = LR_FROM_BASE
    else:
        default_lr = LR_FROM_SCRATCH if backbone == "scratch" else LR_FROM_PRETRAINED
    lr = params.float("learning_rate", minimum=0.0) or default_lr
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        crop_hw=_crop(params.get("train_crop"), input_hw),
        max_steps=max_steps,
        frozen=frozen_layers(model),
    )
    session.report_progress(LOAD_SHARE, "training")
    fitted = fit(
        model,
        images,
        settings,
        on_progress=lambda f, msg: session.report_progress(LOAD_SHARE + FIT_SHARE * f, msg),
        should_stop=session.stop_requested.is_set,
    )
    session.report_progress(LOAD_SHARE + FIT_SHARE, "exporting")

    keras_path = save_keras(model, out_dir / contract.KERAS_ARTIFACT)

    def representative():
        """Calibration images for int8, spread over new and replay samples alike."""
        for i in sorted(set(np.linspace(0, len(images) - 1, CALIBRATION_IMAGES).astype(int))):
            yield images.image(int(i))

    tflite_path = export_tflite(
        model, out_dir / contract.TFLITE_ARTIFACT, precision, representative
    )
    artifacts = [
        {"name": p.name, "path": str(p), "sha256": file_sha256(p), "size": p.stat().st_size}
        for p in (tflite_path, keras_path)
    ]
    session.report_progress(1.0, "done")
    return {
        "status": "stopped"
        if fitted.stopped_early and session.stop_requested.is_set()
        else "completed",
        "loss": fitted.final_loss,
        "losses": fitted.losses,
        "epochs": fitted.epochs_done,
        "steps": fitted.steps,
        "samples": {
            "new": len(new.samples),
            "replay": len(replay),
            "skipped_lines": len(new.problems),
        },
        "base_model": env.base_model_url,
        "backbone": backbone_of(model),
        "frozen_layers": len(settings.frozen),
        "learning_rate": lr,
        "export_precision": precision,
        "train_crop": list(settings.crop_hw) if settings.crop_hw else None,
        "duration_s": round(time.monotonic() - started, 2),
        "fit_s": round(fitted.seconds, 2),
        "artifacts": artifacts,
        "parameters": params.as_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    return sdk.run("train", train, DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
