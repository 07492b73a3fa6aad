"""The labelling console's time per hard example on the demo's data, with the shortcut path.

What runs: a real mosquitto, the cloud manager in-process with the seed's job, a real agent
(``cloud0``) that uploads the hard examples and holds the Dataset, the console, and a headless
Chromium driven by Playwright. The hard examples are the demo's: synthetic frames of a domain
the demo's camera shows (``day``, ``night``, ``new-colors``, from ``demo/scenes.py``) that the
job's mining keeps, with the demo's base model's detections as the proposals (``--model``, the
LiteRT file ``make demo`` caches under ``demo-workdir/cache/base-model-*/``).

Two things are measured:

- **the console's own time per example**: from the accept key to the next example shown (its
  image drawn and its boxes listed), for each of three keyboard paths in turn: accept as
  proposed (``a``), one class change (click the box, ``2``, ``a``), one box deleted (click,
  ``Delete``, ``a``). Baseline in the same run: the same save sent straight through the API
  (``label_import``, what ``edgeloop label import`` sends), without browser or console.
- **the actions a person needs per example on that data**: the proposals against the frames'
  ground truth, counted as the editor's actions (accept 1; a wrong class: click + key 2; a
  false box: click + Delete 2; a loose box, IoU 0.5-0.7: one corner drag 1; a missed object:
  one drag, plus a class key unless it is the new-box class 0).

No person is timed here: the numbers are the machine's share and an action count, not a
human's labelling speed.

Usage::

    .venv/bin/python bench/console_review.py [--examples 30] [--model PATH] [--domains day,night]

Prints a table and writes ``bench/results/console_review.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from agent_cloud import agent_config  # noqa: E402
from running_cloud import cloud  # noqa: E402
from test_cloud_daemon import DATASET, JOB, NODE, NS, setup_job, wait_for  # noqa: E402
from test_live_view import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

from console.app import ConsoleSettings  # noqa: E402
from console.auth import Users, hash_password  # noqa: E402
from console.cloud import CloudLink, JobRef  # noqa: E402
from console.server import Listen, running  # noqa: E402
from edge_agent.daemon import Agent  # noqa: E402
from edgeloop.connection import ConnectionOptions  # noqa: E402
from edgeloop.ports import free_port  # noqa: E402
from mosquitto.launcher import Broker  # noqa: E402
from protocol.dataset_index import read_index  # noqa: E402
from protocol.messages import HardExampleSidecar  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "console_review.json"
USER, PASSWORD = "bench", "bench-password"
PATHS = ("accept as proposed", "one class change", "one box deleted")
#: IoU at or above which a proposal is the same object as a ground-truth box...
SAME_OBJECT = 0.5
#: ...and at or above which it needs no corner drag.
TIGHT = 0.7
#: The class the editor gives new boxes until the person picks another.
NEW_BOX_CLASS = 0
#: Frames generated per hard example wanted, per domain (most frames are not hard).
POOL = 2


# --- the actions a person needs (pure) ---------------------------------------------------------


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class Edits:
    """What turns an example's proposals into its ground truth, in the editor's actions."""

    kept: int = 0
    relabelled: int = 0
    resized: int = 0
    deleted: int = 0
    added: int = 0
    added_other_class: int = 0
    no_objects: bool = False

    @property
    def actions(self) -> int:
        return (1 + 2 * self.relabelled + self.resized + 2 * self.deleted + self.added
                + self.added_other_class)


def edits(proposals: np.ndarray, classes: np.ndarray, truth: np.ndarray) -> Edits:
    """Greedy one-to-one matching by IoU (highest first), as a person pairs what they see."""
    pairs = sorted(((iou(p, t[:4]), i, j) for i, p in enumerate(proposals)
                    for j, t in enumerate(truth)), reverse=True)
    used_p: set[int] = set()
    used_t: set[int] = set()
    kept = relabelled = resized = 0
    for overlap, i, j in pairs:
        if overlap < SAME_OBJECT or i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        wrong_class = int(classes[i]) != int(truth[j][4])
        relabelled += wrong_class
        resized += overlap < TIGHT
        kept += not wrong_class and overlap >= TIGHT
    missed = [j for j in range(len(truth)) if j not in used_t]
    return Edits(kept=kept, relabelled=relabelled, resized=resized,
                 deleted=len(proposals) - len(used_p), added=len(missed),
                 added_other_class=sum(int(truth[j][4]) != NEW_BOX_CLASS for j in missed),
                 no_objects=len(truth) == 0)


# --- the data ----------------------------------------------------------------------------------


@dataclass
class Example:
    frame: np.ndarray
    sidecar: HardExampleSidecar
    truth: np.ndarray
    domain: str


def hard_examples(folder: Path, model: Path, domains: list[str], count: int) -> list[Example]:
    """``count`` hard examples, as the demo's edge node mines them from its camera: frames of
    each domain in turn that the job's rule (the seed's ``IBT``, Sedna's defaults) finds hard,
    or on which the model sees nothing (blind-spot mining's ``empty-frame``; the node samples
    only some of those, this takes any), each with the model's detections as its proposals."""
    import cv2

    from demo.scenes import generate_dataset
    from workers.mining import make_miner
    from workers.predictor import load_predictor

    predictor = load_predictor(model)
    miner = make_miner("IBT")
    per_domain: list[list[Example]] = []
    for d, domain in enumerate(domains):
        index = read_index(generate_dataset(folder / domain, POOL * count, domain, seed=11 + d))
        found_here = []
        for i, sample in enumerate(index.samples):
            frame = cv2.imread(str(sample.image))
            found = predictor.predict(frame)
            reason = "rule" if miner.is_hard(found) else "empty-frame" if not len(found) else None
            if reason is None:
                continue
            h, w = frame.shape[:2]
            sidecar = HardExampleSidecar(
                boxes=found.boxes.tolist(), scores=found.scores.tolist(),
                classes=[int(c) for c in found.classes], model_version=1, frame_index=i,
                mining="IBT", mining_reason=reason, width=w, height=h)
            found_here.append(Example(frame, sidecar, np.asarray(sample.boxes).reshape(-1, 5),
                                      domain))
        per_domain.append(found_here)
    mixed = [e for group in zip(*per_domain, strict=False) for e in group]
    return mixed[:count]


# --- the browser -------------------------------------------------------------------------------


async def shown(page: Any, previous: str) -> str:
    """The id of the example the editor shows once it is not ``previous`` (``""`` at the end)."""
    handle = await page.wait_for_function(
        "previous => { const c = document.querySelector('#canvas');"
        " if (document.querySelector('#title').textContent.includes('Nothing to label'))"
        " return '-';"
        " return c.dataset.id && c.dataset.id !== previous && c.dataset.scale ? c.dataset.id"
        " : false; }", arg=previous, timeout=60_000)
    value = await handle.json_value()
    return "" if value == "-" else str(value)


async def click_box(page: Any, which: int) -> bool:
    """Click the middle of the ``which``-th box listed (selecting it); False when absent."""
    rows = await page.eval_on_selector_all("#boxes tbody tr", "rs => rs.map(r => r.dataset.box)")
    if len(rows) <= which:
        return False
    x1, y1, x2, y2, _ = (float(v) for v in rows[which].split(","))
    scale = float(await page.get_attribute("#canvas", "data-scale"))
    box = await page.locator("#canvas").bounding_box()
    await page.mouse.click(box["x"] + (x1 + x2) / 2 * scale, box["y"] + (y1 + y2) / 2 * scale)
    return True


async def review(url: str, limit: int) -> list[dict[str, Any]]:
    """Review up to ``limit`` examples, cycling through :data:`PATHS`; per example, the path
    taken and the seconds from the accept key to the accept's answer and to the next example
    shown."""
    from playwright.async_api import async_playwright

    rows: list[dict[str, Any]] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(url + "/login")
            await page.fill("#user", USER)
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_selector("body[data-ready='1']")
            current = await shown(page, "")
            while current and len(rows) < limit:
                path = PATHS[len(rows) % len(PATHS)]
                boxes = await page.locator("#boxes tbody tr").count()
                if boxes == 0:
                    path = "no objects"
                    await page.keyboard.press("e")
                elif path == "one class change":
                    await click_box(page, 0)
                    await page.keyboard.press("2")
                elif path == "one box deleted" and boxes >= 2:
                    await click_box(page, boxes - 1)
                    await page.keyboard.press("Delete")
                elif path == "one box deleted":
                    path = "accept as proposed"  # one box: deleting it would leave none
                async with page.expect_response("**/api/accept") as answer:
                    started = time.perf_counter()
                    await page.keyboard.press("a")
                response = await answer.value
                answered = time.perf_counter() - started
                if response.status != 200:
                    raise RuntimeError(f"accept refused: {await response.text()}")
                following = await shown(page, current)
                rows.append({"id": current, "path": path, "answer_s": answered,
                             "next_shown_s": time.perf_counter() - started})
                current = following
        finally:
            await browser.close()
    return rows


async def direct_saves(options: ConnectionOptions, cache: Path, items: list[dict[str, Any]],
                       class_count: int) -> list[float]:
    """The baseline: each example's proposals saved straight through the API, as the console
    saves them, with no browser or web request in between."""
    from cloud_manager.hardex_export import proposals

    times = []
    job = JobRef(NS, JOB)
    async with CloudLink(options, cache) as link:
        for item in items:
            image = await link.image(job, item)
            boxes, _, _ = proposals(item, image.width, image.height, class_count)
            lines = [[round(v) for v in box[:4]] + [int(box[4])] for box in boxes] or []
            started = time.perf_counter()
            outcome = await link.save(job, image, lines, "bench")
            times.append(time.perf_counter() - started)
            if outcome.status != "added":
                raise RuntimeError(f"baseline save: {outcome.status} {outcome.reason}")
    return times


# --- the run -----------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "median_ms": 1000 * statistics.median(ordered),
            "p90_ms": 1000 * ordered[math.ceil(0.9 * len(ordered)) - 1],  # nearest rank
            "mean_ms": 1000 * statistics.fmean(ordered)}


async def measure(args: argparse.Namespace, tmp: Path, broker_url: str) -> dict[str, Any]:
    from workers.hardex_store import HardExampleStore

    total = args.examples + args.baseline
    examples = hard_examples(tmp / "scenes", args.model, args.domains.split(","), total)
    if len(examples) < total:
        raise RuntimeError(f"only {len(examples)} hard examples among the frames generated; "
                           "ask for fewer")
    counted = [(e.domain, edits(np.asarray(e.sidecar.boxes).reshape(-1, 4),
                                np.asarray(e.sidecar.classes), e.truth)) for e in examples]
    data = tmp / "data" / "data.txt"
    data.parent.mkdir(parents=True)
    data.touch()
    options = ConnectionOptions(broker=broker_url)
    async with cloud(broker_url, tmp / "state") as daemon:
        await setup_job(broker_url, tmp, threshold=1_000_000)  # label, never train
        store = HardExampleStore(tmp / "hardex-out", quota_bytes=512 * 2**20)
        saved = [s for s in (store.save(e.frame, e.sidecar) for e in examples) if s]
        config = agent_config(broker_url, tmp / "node", node=NODE, datasets={DATASET: data},
                              hardex_dirs={f"{NS}/{JOB}": tmp / "hardex-out"})
        async with Agent(config):
            inbox = daemon.manager.inbox
            await wait_for(lambda: inbox.count(f"{NS}/{JOB}") == len(saved), timeout=120,
                           what="the hard examples in the cloud's inbox")
            async with CloudLink(options, tmp / "peek") as link:
                listing = await link.examples(JobRef(NS, JOB))
            items = sorted(listing.items, key=lambda i: i.get("time") or 0)
            baseline_items = items[-args.baseline:] if args.baseline else []
            baseline = await direct_saves(options, tmp / "baseline-cache", baseline_items,
                                          len(listing.class_names or []))
            users = Users({USER: hash_password(PASSWORD)})
            listen = Listen(port=free_port())
            async with running(options, users, listen, tmp / "console-cache",
                               tmp / "console-state",
                               ConsoleSettings(default_job=f"{NS}/{JOB}")):
                rows = await review(listen.url, args.examples)
    return {"rows": rows, "baseline_s": baseline, "edits": counted, "saved": len(saved)}


def report(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    rows, baseline = result["rows"], result["baseline_s"]
    base = summary(baseline) if baseline else None
    by_path = {}
    for path in sorted({r["path"] for r in rows}):
        mine = [r for r in rows if r["path"] == path]
        by_path[path] = {"answer": summary([r["answer_s"] for r in mine]),
                         "next_shown": summary([r["next_shown_s"] for r in mine])}
    overall = summary([r["next_shown_s"] for r in rows])
    counted: list[Edits] = [e for _, e in result["edits"]]
    actions = [e.actions for e in counted]
    per_domain = {}
    for domain in sorted({d for d, _ in result["edits"]}):
        mine = [e.actions for d, e in result["edits"] if d == domain]
        per_domain[domain] = {"examples": len(mine), "mean": statistics.fmean(mine),
                              "accept_only_share": sum(a == 1 for a in mine) / len(mine)}
    out = {
        "model": str(args.model), "domains": args.domains, "examples_reviewed": len(rows),
        "baseline_saves": len(baseline), "by_path": by_path, "overall_next_shown": overall,
        "baseline_direct_save": base,
        "ratio_console_to_direct_save": (overall["median_ms"] / base["median_ms"]
                                         if base else None),
        "actions_per_example": {
            "examples": len(actions), "mean": statistics.fmean(actions),
            "median": statistics.median(actions),
            "accept_only_share": sum(a == 1 for a in actions) / len(actions),
            "histogram": dict(sorted(Counter(actions).items())),
            "proposals_kept": sum(e.kept for e in counted),
            "relabelled": sum(e.relabelled for e in counted),
            "resized": sum(e.resized for e in counted),
            "deleted": sum(e.deleted for e in counted),
            "added": sum(e.added for e in counted),
            "per_domain": per_domain,
        },
        "note": "machine time only: no person was timed",
    }
    print(f"\nconsole review, {len(rows)} hard examples ({args.domains}, proposals of "
          f"{args.model.name}); times from the key to the next example shown")
    print(f"{'path':<22}{'n':>4}{'answer med ms':>15}{'next shown med ms':>19}{'p90 ms':>9}")
    for path, values in by_path.items():
        print(f"{path:<22}{values['next_shown']['n']:>4}{values['answer']['median_ms']:>15.0f}"
              f"{values['next_shown']['median_ms']:>19.0f}{values['next_shown']['p90_ms']:>9.0f}")
    print(f"{'all':<22}{overall['n']:>4}{'':>15}{overall['median_ms']:>19.0f}"
          f"{overall['p90_ms']:>9.0f}")
    if base:
        print(f"{'direct API save (base)':<22}{base['n']:>4}{base['median_ms']:>15.0f}"
              f"{'':>19}{base['p90_ms']:>9.0f}")
        print(f"ratio console (key to next shown) / direct save: "
              f"{out['ratio_console_to_direct_save']:.2f}")
    a = out["actions_per_example"]
    print(f"\nactions a person needs per example ({a['examples']} examples): mean "
          f"{a['mean']:.2f}, median {a['median']}, accept only {100 * a['accept_only_share']:.0f}%;"
          f" histogram {a['histogram']}")
    print(f"  proposals kept {a['proposals_kept']}, relabelled {a['relabelled']}, resized "
          f"{a['resized']}, deleted {a['deleted']}; objects added {a['added']}")
    for domain, values in per_domain.items():
        print(f"  {domain:<12} {values['examples']:>3} examples, mean {values['mean']:.2f} actions,"
              f" accept only {100 * values['accept_only_share']:.0f}%")
    print("no person was timed: these are the console's own times and an action count")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=30, help="examples reviewed in Chromium")
    parser.add_argument("--baseline", type=int, default=10,
                        help="examples saved straight through the API (the baseline)")
    parser.add_argument("--domains", default="day,night,new-colors",
                        help="the camera's domains, as the demo shows them (demo/scenes.py)")
    default_model = next(iter(sorted((ROOT / "demo-workdir" / "cache").glob(
        "base-model-*/model.tflite"))), None)
    parser.add_argument("--model", type=Path, default=default_model,
                        help="the demo's base model (.tflite); default: make demo's cache")
    args = parser.parse_args()
    if args.model is None or not args.model.exists():
        parser.error("no base model: run `make demo` once (it caches one) or give --model")
    if not CHROMIUM.exists():
        parser.error(f"needs Debian's chromium ({CHROMIUM})")
    with tempfile.TemporaryDirectory() as folder, Broker(Path(folder) / "broker") as broker:
        result = asyncio.run(measure(args, Path(folder), broker.url))
    out = report(args, result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
