"""The learning claim, measured over seeds: day -> night -> new-colors rounds with replay, against
two baselines trained in the same run.

Every step runs a boot file (workers/train.py, workers/eval.py) as a subprocess configured only
through the worker contract's environment variables, exactly as the edge agent runs it.

For each seed (the ``seed`` parameter of training: initialisation, shuffling, replay choice):

1. base: train on ``day`` images;
2. round 1: from the model before it, the new ``night`` samples; round 2: ``new-colors``.
   Three variants side by side:

   * ``replay``     - the product's round: new samples + replay of all earlier training data;
   * ``no-replay``  - fine-tune on the new samples only (the forgetting baseline);
   * ``no-update``  - the base model throughout.

Every model is scored on held-out day, night and new-colors images; the table gives per domain
the mean and spread (min..max over seeds) of precision and mAP@0.5 after each round, and how
often a replay round misses the deploy gate (precision on the round's domain up by more than
0.1 over the model it replaces, as the demo's manifest asks).

    .venv/bin/python bench/learning.py [--seeds 0,1,2] [--quick] [--work DIR]

Default budget: under an hour on 2 busy shared cores (input 192x320, 300 day images, 100 per
round, the three seeds side by side); ``--quick`` is a smoke run of a few minutes. Writes bench/results/learning.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import worker_contract as contract

RESULTS = ROOT / "bench" / "results"
SCRIPTS = ROOT / "workers"
CLASS_NAMES = "person,helmet,helmet-on,helmet-off"
DOMAINS = ("day", "night", "new-colors")
ROUNDS = ("night", "new-colors")
VARIANTS = ("replay", "no-replay", "no-update")
#: The demo's deploy trigger: precision_delta > 0.1.
GATE = 0.1
#: Default work folder: the data and every trained model (``models/s{seed}-{step}/model.keras``).
WORK = Path(tempfile.gettempdir()) / "edgeloop-learning"


def trained_models(work: Path = WORK, seed: int = 0) -> tuple[Path, Path] | None:
    """Seed ``seed``'s base model and its night round with replay, as a run in ``work`` left
    them (other benchmarks use them as a real model and its update); None if not there."""
    base = work / "models" / f"s{seed}-base" / contract.KERAS_ARTIFACT
    night = work / "models" / f"s{seed}-night-replay" / contract.KERAS_ARTIFACT
    return (base, night) if base.is_file() and night.is_file() else None


def make_data(work: Path, base_images: int, round_images: int, test_images: int) -> dict:
    """Training and held-out sets, generated once per size (reproducible from their seeds)."""
    from demo.scenes import generate_dataset

    plan = {"day-train": ("day", base_images, 101)}
    plan |= {f"{d}-train": (d, round_images, 103 + i) for i, d in enumerate(ROUNDS)}
    plan |= {f"{d}-test": (d, test_images, 110 + i) for i, d in enumerate(DOMAINS)}
    out = {}
    for name, (domain, count, seed) in plan.items():
        folder = work / f"{name}-{count}"
        marker = folder / ".complete"
        if not marker.exists():
            generate_dataset(folder, count, domain, seed=seed)
            marker.touch()
        out[name] = folder / "data.txt"
    return out


def run_worker(script: str, env: dict[str, str], log: Path) -> tuple[dict, float]:
    """Run a boot file as the agent would; returns (result, wall seconds).

    A training step whose model and result a previous run of the same work folder left is not
    run again (an interrupted benchmark resumes where it stopped)."""
    result_path = log.with_suffix(".result.json")
    model_dir = env.get(contract.MODEL_URL)
    if script == "train.py" and model_dir and (Path(model_dir) / "model.tflite").is_file():
        if result_path.is_file():
            done = json.loads(result_path.read_text())
            return done, float(done.get("wall_s", done.get("duration_s", 0.0)))
    full = {k: v for k, v in os.environ.items() if k not in contract.LOCATION_VARIABLES}
    full |= {
        contract.RESULT: str(result_path),
        contract.TASK_ID: log.stem,
        "class_names": CLASS_NAMES,
    }
    full |= env
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.call(
            [sys.executable, str(SCRIPTS / script)], env=full, stdout=out, stderr=subprocess.STDOUT
        )
    seconds = time.monotonic() - started
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if code != 0:
        raise SystemExit(f"{script} failed ({code}): {result.get('error')}; see {log}")
    if script == "train.py":
        result_path.write_text(json.dumps(result | {"wall_s": seconds}))
    return result, seconds


def evaluate(models: dict[str, Path], index: Path, log: Path) -> dict[str, dict]:
    """Every model on one held-out set, in one eval worker (one start-up for all)."""
    result, _ = run_worker(
        "eval.py",
        {
            contract.MODEL_URLS: ";".join(str(p) for p in models.values()),
            contract.TEST_DATASET_URL: str(index),
        },
        log,
    )
    by_url = {m["url"]: m["metrics"] for m in result["models"]}
    return {name: by_url[str(path)] for name, path in models.items()}


def concat_indexes(indexes: list[Path], out: Path) -> Path:
    """One replay index of all earlier training data (paths in the indexes are absolute)."""
    lines: list[str] = []
    for index in indexes:
        base = index.parent
        for line in index.read_text().splitlines():
            if line.strip():
                path, _, rest = line.partition(" ")
                full = path if Path(path).is_absolute() else str(base / path)
                lines.append(f"{full} {rest}".rstrip())
    out.write_text("\n".join(lines) + "\n")
    return out


def train_base(args, seed: int, data: dict, common: dict, models_dir: Path, logs: Path) -> dict:
    """The base model of one seed; returns its path and wall time."""
    base_dir = models_dir / f"s{seed}-base"
    _, seconds = run_worker(
        "train.py",
        common
        | {
            "epochs": str(args.base_epochs),
            "seed": str(seed),
            contract.TRAIN_DATASET_URL: str(data["day-train"]),
            contract.MODEL_URL: str(base_dir),
        },
        logs / f"train-s{seed}-base.log",
    )
    print(f"  seed {seed}: base in {seconds / 60:.1f} min", flush=True)
    return {"dir": base_dir, "seconds": seconds}


def train_rounds(
    args, seed: int, variant: str, data: dict, common: dict, models_dir: Path, logs: Path
) -> dict:
    """Both rounds of one trained variant, each from the model before it."""
    ratio = "1.0" if variant == "replay" else "0"
    previous = models_dir / f"s{seed}-base"
    earlier = [data["day-train"]]
    paths, timings = {}, {}
    for domain in ROUNDS:
        out = models_dir / f"s{seed}-{domain}-{variant}"
        replay = concat_indexes(earlier, models_dir / f"s{seed}-{domain}-{variant}-replay.txt")
        _, seconds = run_worker(
            "train.py",
            common
            | {
                "epochs": str(args.round_epochs),
                "seed": str(seed),
                "replay_ratio": ratio,
                contract.BASE_MODEL_URL: str(previous / "model.keras"),
                contract.TRAIN_DATASET_URL: str(data[f"{domain}-train"]),
                contract.REPLAY_INDEX: str(replay),
                contract.MODEL_URL: str(out),
            },
            logs / f"train-s{seed}-{domain}-{variant}.log",
        )
        timings[f"{domain}-{variant}"] = seconds
        print(f"  seed {seed}: {domain} round, {variant}: {seconds / 60:.1f} min", flush=True)
        paths[(domain, variant)] = out / "model.tflite"
        earlier.append(data[f"{domain}-train"])
        previous = out
    return {"paths": paths, "timings": timings}


def model_at(paths: dict, stage: str, variant: str) -> Path:
    """The model a variant serves after ``stage`` (no-update: the base model throughout)."""
    if stage == "base" or variant == "no-update":
        return paths[("base", "no-update")]
    return paths[(stage, variant)]


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--base-images", type=int, default=300)
    parser.add_argument("--round-images", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--base-epochs", type=int, default=8)
    parser.add_argument("--round-epochs", type=int, default=5)
    parser.add_argument(
        "--jobs", type=int, default=6, help="chains of training steps run side by side"
    )
    parser.add_argument("--input-shape", default="192,320")
    parser.add_argument("--backbone", default=None, help="worker parameter (default: the worker's)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (minutes)")
    parser.add_argument(
        "--work", type=Path, default=WORK
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "learning.json")
    args = parser.parse_args()
    if args.quick:
        args.base_images, args.round_images, args.test_images = 48, 24, 24
        args.base_epochs, args.round_epochs, args.input_shape = 2, 1, "96,160"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    work = args.work
    logs = work / "logs"
    models_dir = work / "models"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = make_data(work, args.base_images, args.round_images, args.test_images)
    common = {
        "input_shape": args.input_shape,
        "batch_size": "16",
        "train_crop": "0",  # whole images: the input is already small
        # fp32 files: the comparison is about learning, and an int8 calibration per model would
        # double the export time (docs/workers.md measures int8 against fp32 separately).
        "export_precision": "fp32",
    }
    if args.backbone:
        common["backbone"] = args.backbone

    from concurrent.futures import ThreadPoolExecutor

    # Each chain of steps is a sequence of subprocesses; chains run side by side: first the
    # seeds' base models, then the (seed, variant) chains of rounds.
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        bases = dict(
            zip(seeds, pool.map(lambda s: train_base(args, s, data, common, models_dir, logs), seeds))
        )
        chains = [(s, v) for s in seeds for v in ("replay", "no-replay")]
        done = list(
            pool.map(
                lambda sv: train_rounds(args, sv[0], sv[1], data, common, models_dir, logs), chains
            )
        )
    trained: dict[int, dict] = {
        s: {
            "paths": {("base", "no-update"): bases[s]["dir"] / "model.tflite"},
            "timings": {"base": bases[s]["seconds"]},
        }
        for s in seeds
    }
    for (seed, _), chain in zip(chains, done):
        trained[seed]["paths"] |= chain["paths"]
        trained[seed]["timings"] |= chain["timings"]

    # One eval worker per held-out set, every model of every seed at once.
    models = {
        f"s{seed}:{stage}:{variant}": model_at(t["paths"], stage, variant)
        for seed, t in trained.items()
        for stage in ("base", *ROUNDS)
        for variant in VARIANTS
    }
    unique = {str(p): p for p in models.values()}
    scores = {}
    for domain in DOMAINS:
        by_path = evaluate(unique, data[f"{domain}-test"], logs / f"eval-{domain}.log")
        scores[domain] = {name: by_path[str(path)] for name, path in models.items()}

    table = []
    for stage in ("base", *ROUNDS):
        for variant in VARIANTS if stage != "base" else ("no-update",):
            for domain in DOMAINS:
                ms = [scores[domain][f"s{seed}:{stage}:{variant}"] for seed in seeds]
                table.append(
                    {
                        "after": stage,
                        "variant": "base" if stage == "base" else variant,
                        "domain": domain,
                        "precision": spread([m["precision"] for m in ms]),
                        "map50": spread([m["map50"] for m in ms]),
                    }
                )

    gates = []
    for seed in seeds:
        for i, domain in enumerate(ROUNDS):
            serving = "base" if i == 0 else ROUNDS[i - 1]
            variant = "replay"
            candidate = scores[domain][f"s{seed}:{domain}:{variant}"]["precision"]
            before_key = (
                f"s{seed}:base:no-update" if serving == "base" else f"s{seed}:{serving}:{variant}"
            )
            before = scores[domain][before_key]["precision"]
            gates.append(
                {
                    "seed": seed,
                    "round": domain,
                    "delta": candidate - before,
                    "passed": candidate - before > GATE,
                }
            )

    print(f"\nmean [min..max] over seeds {seeds}; held-out {args.test_images} images per domain")
    print(f"{'after':<12}{'variant':<11}{'domain':<12}{'precision':>24}{'mAP@0.5':>24}")
    for row in table:
        p, m = row["precision"], row["map50"]
        print(
            f"{row['after']:<12}{row['variant']:<11}{row['domain']:<12}"
            f"{p['mean']:>8.3f} [{p['min']:.3f}..{p['max']:.3f}]"
            f"{m['mean']:>8.3f} [{m['min']:.3f}..{m['max']:.3f}]"
        )
    missed = [g for g in gates if not g["passed"]]
    print(f"\ndeploy gate (precision on the round's domain +{GATE}):")
    for g in gates:
        print(f"  seed {g['seed']} {g['round']:<11} delta {g['delta']:+.3f} {'ok' if g['passed'] else 'MISSED'}")
    print(f"  missed {len(missed)} of {len(gates)} replay rounds")
    elapsed = time.monotonic() - started
    print(f"total {elapsed / 60:.1f} min")

    report = {
        "benchmark": "learning",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": seeds,
        "table": table,
        "gate": {"threshold": GATE, "rounds": gates, "missed": len(missed), "of": len(gates)},
        "timings_s": {str(s): t["timings"] for s, t in trained.items()},
        "wall_s": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
