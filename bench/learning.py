"""The learning acceptance run: base model from scratch, domain shift, one incremental round with
replay, and the fine-tune-without-replay baseline beside it.

Every step runs a boot file (workers/train.py, workers/eval.py) as a subprocess configured only
through the worker contract's environment variables, exactly as the edge agent runs it, and is
timed from the outside.

1. base: train from scratch on N synthetic ``day`` images; eval on held-out day, night and
   new-colors images. Targets: <= 15 min, day mAP@0.5 >= 0.85, helmet-off recall >= 0.8, and
   precision on a shifted domain >= 0.15 below day.
2. replay round: from the base model, 500 labelled shifted-domain images + replay of the day
   training data. Targets: <= 5 min, shifted precision +0.1, day mAP@0.5 down by <= 0.02.
3. no-replay round: the same without replay (the forgetting baseline).

    .venv/bin/python bench/learning.py [--shift night] [--base-images 2000] [--work DIR]

Heavy (about 25 minutes on 2 cores): run it once, not in a loop. Models are kept under
bench/results/learning-models/ for the other benchmarks; writes bench/results/learning.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import worker_contract as contract

RESULTS = ROOT / "bench" / "results"
MODELS = RESULTS / "learning-models"
SCRIPTS = ROOT / "workers"
CLASS_NAMES = "person,helmet,helmet-on,helmet-off"

TARGETS = {
    "base_minutes_max": 15.0,
    "base_day_map50_min": 0.85,
    "base_helmet_off_recall_min": 0.8,
    "shift_precision_drop_min": 0.15,
    "round_minutes_max": 5.0,
    "round_shift_precision_gain_min": 0.1,
    "round_day_map50_drop_max": 0.02,
}


def make_data(work: Path, base_images: int, shift: str) -> dict[str, Path]:
    from demo.scenes import generate_dataset

    plan = {
        "day-train": ("day", base_images, 101),
        "day-test": ("day", 500, 102),
        "night-test": ("night", 500, 104),
        "new-colors-test": ("new-colors", 500, 105),
        f"{shift}-train": (shift, 500, 103),
    }
    out = {}
    for name, (domain, count, seed) in plan.items():
        index = work / name / "data.txt"
        marker = work / name / f".complete-{count}"
        if not marker.exists():
            started = time.monotonic()
            generate_dataset(work / name, count, domain, seed=seed)
            marker.touch()
            print(
                f"  generated {name}: {count} images in {time.monotonic() - started:.0f}s",
                flush=True,
            )
        out[name] = index
    return out


def run_worker(script: str, env: dict[str, str], log: Path) -> tuple[dict, float]:
    """Run a boot file as the agent would; returns (result, wall seconds)."""
    result_path = log.with_suffix(".result.json")
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
    return result, seconds


def evaluate(models: dict[str, Path], index: Path, log: Path) -> dict[str, dict]:
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


def summary(metrics: dict) -> dict:
    return {
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "map50": metrics["map50"],
        "map": metrics["map"],
        "helmet_off_recall": metrics["per_class"]["helmet-off"]["recall"],
        "per_class_map50": {k: v["map50"] for k, v in metrics["per_class"].items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shift", default="night", choices=["night", "new-colors"])
    parser.add_argument("--base-images", type=int, default=2000)
    parser.add_argument("--base-epochs", type=int, default=20)
    parser.add_argument("--round-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-learning"
    )
    parser.add_argument(
        "--skip-base", action="store_true", help="reuse the base model of a previous run"
    )
    args = parser.parse_args()

    work = args.work
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"datasets under {work}", flush=True)
    data = make_data(work, args.base_images, args.shift)
    common = {"input_shape": "352,640", "batch_size": str(args.batch_size)}

    base_dir = MODELS / "base"
    base_path = base_dir / "model.tflite"
    if args.skip_base and base_path.exists():
        base_result = json.loads((RESULTS / "learning.json").read_text())["base"]["train"]
        base_seconds = base_result["wall_s"]
    else:
        print(f"training the base model on {args.base_images} day images ...", flush=True)
        base_result, base_seconds = run_worker(
            "train.py",
            common
            | {
                "epochs": str(args.base_epochs),
                contract.TRAIN_DATASET_URL: str(data["day-train"]),
                contract.MODEL_URL: str(base_dir),
            },
            logs / "train-base.log",
        )
        base_result["wall_s"] = base_seconds
    print(f"  base: {base_seconds / 60:.1f} min, loss {base_result['loss']:.3f}", flush=True)

    base_eval = {}
    for test in ("day-test", "night-test", "new-colors-test"):
        base_eval[test] = evaluate({"base": base_path}, data[test], logs / f"eval-base-{test}.log")[
            "base"
        ]
        print(
            f"  base on {test}: precision {base_eval[test]['precision']:.3f} "
            f"map50 {base_eval[test]['map50']:.3f}",
            flush=True,
        )

    rounds = {}
    for name, ratio in (("replay", "1.0"), ("no-replay", "0")):
        print(f"incremental round '{name}' on 500 {args.shift} images ...", flush=True)
        result, seconds = run_worker(
            "train.py",
            common
            | {
                "epochs": str(args.round_epochs),
                "replay_ratio": ratio,
                contract.BASE_MODEL_URL: str(base_dir / "model.keras"),
                contract.TRAIN_DATASET_URL: str(data[f"{args.shift}-train"]),
                contract.REPLAY_INDEX: str(data["day-train"]),
                contract.MODEL_URL: str(MODELS / name),
            },
            logs / f"train-{name}.log",
        )
        result["wall_s"] = seconds
        rounds[name] = result
        print(f"  {name}: {seconds / 60:.1f} min, {result['samples']}", flush=True)

    models = {
        "replay": MODELS / "replay" / "model.tflite",
        "no-replay": MODELS / "no-replay" / "model.tflite",
    }
    after = {
        test: evaluate(models, data[test], logs / f"eval-rounds-{test}.log")
        for test in ("day-test", f"{args.shift}-test")
    }

    day0, shift0 = base_eval["day-test"], base_eval[f"{args.shift}-test"]
    drops = {
        d: day0["precision"] - base_eval[f"{d}-test"]["precision"] for d in ("night", "new-colors")
    }
    report = {
        "benchmark": "learning",
        "shift_domain": args.shift,
        "settings": vars(args) | {"work": str(work)},
        "targets": TARGETS,
        "base": {
            "train": {
                k: base_result.get(k)
                for k in ("loss", "losses", "samples", "epochs", "fit_s", "duration_s")
            }
            | {"wall_s": base_seconds},
            "eval": {test: summary(m) for test, m in base_eval.items()},
            "precision_drop": drops,
        },
        "rounds": {},
    }
    for name, result in rounds.items():
        day1, shift1 = after["day-test"][name], after[f"{args.shift}-test"][name]
        report["rounds"][name] = {
            "train": {
                k: result.get(k) for k in ("loss", "samples", "epochs", "fit_s", "duration_s")
            }
            | {"wall_s": result["wall_s"]},
            "eval": {"day-test": summary(day1), f"{args.shift}-test": summary(shift1)},
            "shift_precision_gain": shift1["precision"] - shift0["precision"],
            "day_map50_drop": day0["map50"] - day1["map50"],
        }
    replay = report["rounds"]["replay"]
    checks = {
        "base_minutes": (base_seconds / 60, base_seconds / 60 <= TARGETS["base_minutes_max"]),
        "base_day_map50": (day0["map50"], day0["map50"] >= TARGETS["base_day_map50_min"]),
        "base_helmet_off_recall": (
            day0["per_class"]["helmet-off"]["recall"],
            (day0["per_class"]["helmet-off"]["recall"] or 0)
            >= TARGETS["base_helmet_off_recall_min"],
        ),
        f"precision_drop_{args.shift}": (
            drops[args.shift],
            drops[args.shift] >= TARGETS["shift_precision_drop_min"],
        ),
        "round_minutes": (
            replay["train"]["wall_s"] / 60,
            replay["train"]["wall_s"] / 60 <= TARGETS["round_minutes_max"],
        ),
        "round_shift_precision_gain": (
            replay["shift_precision_gain"],
            replay["shift_precision_gain"] >= TARGETS["round_shift_precision_gain_min"],
        ),
        "round_day_map50_drop": (
            replay["day_map50_drop"],
            replay["day_map50_drop"] <= TARGETS["round_day_map50_drop_max"],
        ),
    }
    report["checks"] = {k: {"value": v, "ok": ok} for k, (v, ok) in checks.items()}

    print()
    print(
        f"{'model':<12}{'test set':<18}{'precision':>10}{'recall':>8}{'mAP50':>8}{'mAP':>8}{'off-rec':>9}"
    )
    rows = [("base", t, base_eval[t]) for t in base_eval]
    rows += [(n, t, after[t][n]) for n in ("replay", "no-replay") for t in after]
    for model, test, m in rows:
        off = m["per_class"]["helmet-off"]["recall"]
        print(
            f"{model:<12}{test:<18}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['map50']:>8.3f}"
            f"{m['map']:>8.3f}{(off or 0):>9.3f}"
        )
    print(
        f"\nbase training {base_seconds / 60:.1f} min; rounds: "
        + ", ".join(f"{n} {r['wall_s'] / 60:.1f} min" for n, r in rounds.items())
    )
    print(f"\n{'check':<32}{'value':>10}  ok")
    for name, (value, ok) in checks.items():
        print(f"{name:<32}{value:>10.3f}  {'yes' if ok else 'NO'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "learning.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
