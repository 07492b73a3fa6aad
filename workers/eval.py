"""Eval boot file: score each model of ``MODEL_URLS`` on the same ``TEST_DATASET_URL`` index.

Run by the edge agent as ``python eval.py`` with the worker contract in the environment
(docs/workers.md), or by hand: ``python workers/eval.py --help``.

The first model is the candidate, the others are the ones it is compared with (usually the
deployed model). Each gets precision, recall and F1 at ``obj_threshold`` and COCO mAP@0.5 and
mAP@0.5:0.95, overall and per class name. Accepts ``.keras`` and ``.tflite`` files.

With ``EDGELOOP_EARLIER_TEST_URLS`` (the held-out samples of earlier rounds, sent by the cloud)
every model is also scored on each earlier round's samples, reported under ``rounds`` so that
the deploy gate can see a candidate that learned the new domain and forgot an old one.
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
from collections.abc import Callable, Sequence
from typing import Any

from protocol import worker_contract as contract
from workers import sdk

log = logging.getLogger("edgeloop.eval")

DESCRIPTION = (
    "Evaluate each model of MODEL_URLS (';'-separated, candidate first) on TEST_DATASET_URL"
)
#: Detections are kept down to this score for mAP, which needs the low-score tail.
MAP_SCORE_FLOOR = 0.01


def evaluate_model(
    path: Path,
    samples: Sequence,
    class_names: Sequence[str],
    obj_threshold: float,
    nms_threshold: float,
    threads: int | None = None,
    on_image: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Metrics of one model file on ``samples`` (``protocol.dataset_index.Sample``)."""
    import cv2

    from workers.metrics import evaluate
    from workers.predictor import DecodeSettings, load_predictor

    predictor = load_predictor(path, DecodeSettings(obj_threshold, nms_threshold), threads=threads)
    if predictor.spec.num_classes != len(class_names):
        raise ValueError(
            f"model {path} predicts {predictor.spec.num_classes} classes but class_names "
            f"lists {len(class_names)}"
        )
    predictor.warm()
    predictions, truths = [], []
    for i, sample in enumerate(samples):
        image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read test image {sample.image}")
        predictions.append(
            predictor.predict(image, obj_threshold=min(MAP_SCORE_FLOOR, obj_threshold))
        )
        truths.append(sample.boxes)
        if on_image:
            on_image(i)
    return evaluate(predictions, truths, class_names, obj_threshold)


def run_eval(params: sdk.Parameters, session: sdk.WorkerSession) -> dict[str, Any]:
    from protocol.dataset_index import read_index
    from workers.predictor import configure_runtime

    started = time.monotonic()
    env = params.env
    urls = list(env.model_urls) or ([env.model_url] if env.model_url else [])
    if not urls:
        raise sdk.ParameterError(f"{contract.MODEL_URLS} is required (';'-separated model files)")
    if not env.test_dataset_url:
        raise sdk.ParameterError(f"{contract.TEST_DATASET_URL} is required")
    for url in urls:
        if not Path(url).is_file():
            raise FileNotFoundError(f"model {url} does not exist")
    index = Path(env.test_dataset_url)
    if not index.is_file():
        raise FileNotFoundError(f"{contract.TEST_DATASET_URL} {index} does not exist")
    class_names = params.class_names
    obj, nms = params.obj_threshold, params.nms_threshold
    configure_runtime(params.threads)

    read = read_index(index, num_classes=len(class_names))
    for problem in read.problems[:20]:
        log.warning("%s line %d skipped: %s", index.name, problem.line_no, problem.reason)
    if not read.samples:
        raise ValueError(f"{contract.TEST_DATASET_URL} {index} has no usable samples")
    earlier = _earlier_samples(env.earlier_test_urls, len(class_names))
    sets = [read.samples, *(samples for _, _, samples in earlier)]
    total = len(urls) * sum(len(samples) for samples in sets)
    done = 0
    models = []
    scored: list[list[dict[str, Any]]] = [[] for _ in earlier]
    for url in urls:
        for k, samples in enumerate(sets):
            if not samples:
                continue
            what = "the round's" if k == 0 else f"round {earlier[k - 1][0]}'s"
            log.info("evaluating %s on %s %d images", url, what, len(samples))

            def on_image(i: int, start: int = done, url: str = url, n: int = len(samples)) -> None:
                if (start + i + 1) % 25 == 0 or start + i + 1 == total:
                    session.report_progress(
                        (start + i + 1) / total, f"{Path(url).name}: image {i + 1}/{n}"
                    )

            metrics = evaluate_model(
                Path(url), samples, class_names, obj, nms, params.threads, on_image
            )
            done += len(samples)
            log.info("%s on %s: precision %.3f recall %.3f map50 %s", url, what,
                     metrics["precision"], metrics["recall"], metrics["map50"])
            (models if k == 0 else scored[k - 1]).append({"url": url, "metrics": metrics})
    rounds = [
        {"round": number, "test_dataset": path, "images": len(samples), "models": scored[k]}
        for k, (number, path, samples) in enumerate(earlier)
    ]
    return {
        "models": models,
        "rounds": rounds,
        "test_dataset": str(index),
        "images": len(read.samples),
        "skipped_lines": len(read.problems),
        "obj_threshold": obj,
        "duration_s": round(time.monotonic() - started, 2),
        "parameters": params.as_dict(),
    }


def _earlier_samples(urls: dict[int, str], num_classes: int) -> list[tuple[int, str, list]]:
    """Each earlier round's held-out samples, by round: a missing or empty index gives no
    samples (that round is reported with 0 images and not compared), never a failed eval."""
    from protocol.dataset_index import read_index

    earlier = []
    for number, path in sorted(urls.items()):
        index = Path(path)
        if not index.is_file():
            log.warning("round %d's held-out index %s does not exist: not scored", number, index)
            earlier.append((number, path, []))
            continue
        read = read_index(index, num_classes=num_classes)
        for problem in read.problems[:20]:
            log.warning("%s line %d skipped: %s", index.name, problem.line_no, problem.reason)
        earlier.append((number, path, list(read.samples)))
    return earlier


def main(argv: list[str] | None = None) -> int:
    return sdk.run("eval", run_eval, DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
