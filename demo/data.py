"""The demo's synthetic data and its base model, cached in the work directory.

Everything here is generated (demo/scenes.py), never downloaded: the day training set of the
base model, the held-out test sets of the three domains (generated once, never trained on), and
one camera video per domain with its per-frame ground truth. Each item lives in a folder named
by a hash of the parameters that make it, with a ``.complete`` marker written last, so a second
run reuses it and a changed size makes a new one instead of mixing two.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from demo.processes import ProcessSet
from protocol import worker_contract as contract

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ROOT / "workers"
CLASS_NAMES = "person,helmet,helmet-on,helmet-off"
INPUT_SHAPE = "352,640"
#: The domain the camera starts in, then one new domain per round.
DOMAINS = ("day", "night", "new-colors")
VIDEO_SIZE = (640, 360)
VIDEO_FPS = 25
COMPLETE = ".complete"


@dataclass(frozen=True)
class DemoSizes:
    """How big the demo is. ``threshold`` replaces the seed's ``num_of_samples > 500``."""

    base_images: int
    base_epochs: int
    batch_size: int
    heldout_images: int
    round_epochs: int
    threshold: int
    video_shots: int
    shot_seconds: float
    #: peak learning rate of a round ("": train.py's default for training from a base, 1e-3)
    round_learning_rate: str = ""
    #: replayed earlier samples per new sample ("": train.py's default, 1.0)
    replay_ratio: str = ""
    #: how many of the base model's day images data.txt starts with (0: all); round 1 retrains
    #: on them, and a retrain rarely passes the deploy gate: fewer make that round shorter
    dataset_images: int = 0
    #: cap on a round's optimizer steps ("": none): hard examples keep coming while a round
    #: trains, so the next round may hold several times the threshold; the cap keeps its time
    #: near the first round's instead of growing with it
    round_max_steps: str = ""
    #: the deploy gate's margin on earlier rounds (None: the product's default, 0.02); the fast
    #: demo's rounds of a few hundred images on a 120-image replay forget day by 0.1-0.2 while
    #: they learn night by 0.4
    forgetting_margin: float | None = None
    #: how long a new version bakes on the canary (edge0) before edge1 gets it
    bake_seconds: float = 60.0
    #: frames per second of edge1's camera: the second stream is there to show the rollout, and
    #: a low rate keeps its CPU small beside training on a 2-core machine
    second_camera_fps: float = 2.0
    seed: int = 7

    def base_key(self) -> str:
        return _key({"images": self.base_images, "epochs": self.base_epochs,
                     "batch": self.batch_size, "seed": self.seed, "input": INPUT_SHAPE})

    @property
    def video_seconds(self) -> float:
        """How long one camera video plays before it loops."""
        return self.video_shots * self.shot_seconds

    def round_parameters(self) -> dict[str, str]:
        """The train workerSpec parameters the demo sets (the seed's epochs=1 learns nothing
        from a few hundred samples)."""
        out = {"epochs": str(self.round_epochs), "batch_size": str(self.batch_size)}
        if self.round_learning_rate:
            out["learning_rate"] = self.round_learning_rate
        if self.replay_ratio:
            out["replay_ratio"] = self.replay_ratio
        if self.round_max_steps:
            out["max_steps"] = self.round_max_steps
        return out


#: Replay ratio 3: with 1, a night round cost ``day`` 0.05-0.09 precision (docs/demo.md).
FULL = DemoSizes(base_images=800, base_epochs=20, batch_size=16, heldout_images=150,
                 round_epochs=8, threshold=100, video_shots=40, shot_seconds=3.0,
                 replay_ratio="3")

FAST = DemoSizes(base_images=240, base_epochs=14, batch_size=16, heldout_images=40,
                 round_epochs=12, threshold=60, video_shots=12, shot_seconds=2.0,
                 round_learning_rate="2e-3", dataset_images=120, round_max_steps="180",
                 forgetting_margin=0.25, bake_seconds=15.0)


def _key(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def _cached(folder: Path, make: Callable[[Path], None]) -> tuple[Path, bool]:
    """``folder`` made by ``make`` unless a complete copy exists; (folder, was cached)."""
    if (folder / COMPLETE).exists():
        return folder, True
    folder.mkdir(parents=True, exist_ok=True)
    make(folder)
    (folder / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return folder, False


@dataclass(frozen=True)
class DomainVideo:
    domain: str
    video: Path
    ground_truth: Path
    variant: int = 0

    @property
    def key(self) -> str:
        """Names this video among the domain's videos (the simulated annotator's index)."""
        return self.domain if self.variant == 0 else f"{self.domain}#{self.variant}"


def base_dataset(cache: Path, sizes: DemoSizes) -> tuple[Path, bool]:
    """The day images the base model learns from; returns (data.txt, was cached)."""
    from demo.scenes import generate_dataset

    key = _key({"images": sizes.base_images, "seed": sizes.seed, "domain": "day"})
    folder, cached = _cached(
        cache / f"base-data-{key}",
        lambda f: generate_dataset(f, sizes.base_images, "day", seed=sizes.seed),
    )
    return folder / "data.txt", cached


def heldout_sets(cache: Path, sizes: DemoSizes) -> tuple[dict[str, Path], bool]:
    """One held-out test index per domain (seeds disjoint from every training set)."""
    from demo.scenes import generate_dataset

    out: dict[str, Path] = {}
    all_cached = True
    for n, domain in enumerate(DOMAINS):
        key = _key({"images": sizes.heldout_images, "domain": domain, "seed": 900 + n})
        folder, cached = _cached(
            cache / f"heldout-{domain}-{key}",
            lambda f, d=domain, s=900 + n: generate_dataset(f, sizes.heldout_images, d, seed=s),
        )
        out[domain] = folder / "data.txt"
        all_cached &= cached
    return out, all_cached


def domain_video(cache: Path, sizes: DemoSizes, domain: str, variant: int = 0) -> tuple[DomainVideo, bool]:
    """One camera video of ``domain``, many short shots so that frames vary; ``variant`` > 0
    gives another video of the same domain (other scenes). Returns (video, was cached)."""
    from demo.scenes import render_video

    seed = 500 + DOMAINS.index(domain) + 100 * variant
    key = _key({"shots": sizes.video_shots, "seconds": sizes.shot_seconds, "domain": domain,
                "size": VIDEO_SIZE, "fps": VIDEO_FPS, "seed": seed})
    folder, cached = _cached(
        cache / f"video-{domain}-{key}",
        lambda f: render_video(f / f"{domain}.mp4", [(domain, sizes.shot_seconds)] * sizes.video_shots,
                               seed=seed, fps=VIDEO_FPS, size=VIDEO_SIZE),
    )
    video = folder / f"{domain}.mp4"
    return DomainVideo(domain, video, video.with_suffix(".gt.jsonl"), variant), cached


#: edge1's camera shows another site: other scenes of the same domains, a variant that no
#: round's retry reaches
SECOND_SITE_VARIANT = 9


def second_site_videos(cache: Path, sizes: DemoSizes) -> tuple[dict[str, DomainVideo], bool]:
    """edge1's camera videos, one per domain: the same domains as edge0's camera shows, at
    another site (:data:`SECOND_SITE_VARIANT`), so that both nodes' hard examples of a round
    come from the domain it learns. Returns (videos, all were cached)."""
    out: dict[str, DomainVideo] = {}
    all_cached = True
    for domain in DOMAINS:
        out[domain], cached = domain_video(cache, sizes, domain, SECOND_SITE_VARIANT)
        all_cached &= cached
    return out, all_cached


def domain_videos(cache: Path, sizes: DemoSizes) -> tuple[dict[str, DomainVideo], bool]:
    """The first camera video of every domain."""
    out: dict[str, DomainVideo] = {}
    all_cached = True
    for domain in DOMAINS:
        out[domain], cached = domain_video(cache, sizes, domain)
        all_cached &= cached
    return out, all_cached


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment a boot file gets when the demo runs it itself, as the agent would."""
    env = {k: v for k, v in os.environ.items() if k not in contract.LOCATION_VARIABLES}
    env.update({"class_names": CLASS_NAMES, "input_shape": INPUT_SHAPE})
    env.update(extra)
    return env


def _follow_progress(log: Path, offset: int, on_progress: Callable[[float, str], None]) -> int:
    """Pass the progress lines written to ``log`` since ``offset``; returns the new offset."""
    from workers.sdk import parse_progress_line

    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except OSError:
        return offset
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
    for line in complete.decode(errors="replace").splitlines():
        found = parse_progress_line(line)
        if found is not None:
            on_progress(*found)
    return offset + len(complete)


def run_boot_file(
    processes: ProcessSet,
    name: str,
    script: str,
    env: dict[str, str],
    result: Path,
    on_progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Run ``workers/<script>`` as its own process (killed with the demo); its JSON result.
    ``on_progress`` gets each progress line the worker logs (fraction, message)."""
    result.unlink(missing_ok=True)
    child = processes.start(
        name, [sys.executable, "-u", str(WORKERS / script)],
        env=worker_env(env | {contract.RESULT: str(result), contract.TASK_ID: name}),
        cwd=WORKERS,
    )
    read = 0
    while child.process.poll() is None:
        time.sleep(0.5)
        if on_progress is not None:
            read = _follow_progress(child.log, read, on_progress)
    child.expected_exit = True
    outcome = json.loads(result.read_text()) if result.exists() else {}
    if child.process.returncode != 0:
        raise RuntimeError(
            f"{script} failed (exit {child.process.returncode}): {outcome.get('error')}; "
            f"see {child.log}"
        )
    return outcome


def base_model(
    cache: Path, sizes: DemoSizes, processes: ProcessSet,
    on_progress: Callable[[float, str], None] | None = None,
) -> tuple[Path, dict[str, Any], bool]:
    """Train the base model on the day set unless cached: (model.tflite, train result, cached).

    ``model.keras`` sits beside the ``.tflite``: rounds train from it.
    """
    index, _ = base_dataset(cache, sizes)
    folder = cache / f"base-model-{sizes.base_key()}"

    def train(out: Path) -> None:
        outcome = run_boot_file(
            processes, "base-train", "train.py",
            {
                contract.TRAIN_DATASET_URL: str(index),
                contract.MODEL_URL: str(out),
                "epochs": str(sizes.base_epochs),
                "batch_size": str(sizes.batch_size),
                "seed": str(sizes.seed),
            },
            out / "result.json",
            on_progress,
        )
        (out / "train.json").write_text(json.dumps(outcome, indent=1))

    folder, cached = _cached(folder, train)
    result = json.loads((folder / "train.json").read_text())
    return folder / "model.tflite", result, cached


def evaluate(
    processes: ProcessSet,
    models: dict[str, Path],
    index: Path,
    result: Path,
) -> dict[str, dict[str, Any]]:
    """Metrics of each named model on one test index (one eval.py run for all of them)."""
    outcome = run_boot_file(
        processes, f"eval-{result.stem}", "eval.py",
        {
            contract.MODEL_URLS: contract.MODEL_URLS_SEPARATOR.join(str(p) for p in models.values()),
            contract.TEST_DATASET_URL: str(index),
        },
        result,
    )
    by_url = {m["url"]: m["metrics"] for m in outcome["models"]}
    return {name: by_url[str(path)] for name, path in models.items()}


def sizes_dict(sizes: DemoSizes) -> dict[str, Any]:
    return asdict(sizes)
