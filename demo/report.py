"""The demo's report: ``WORKDIR/report.md``, PNG plots under ``WORKDIR/plots/`` and
``WORKDIR/summary.json`` (what a test or a script reads).

Every number comes from a file the run left behind: the models edge0 received, the eval results
of each round (cloud0's task folders), the inference worker's per-frame log, the simulated
annotator's journal, and the job history read over the API before the cloud manager stopped.
The precision table is measured here, once, on held-out sets of each domain that no round ever
trained on. Pure summaries (:func:`frame_log_summary`, :func:`round_deltas`) are separate from
the file and plot writing.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo import data
from demo.annotator import refusal_kind
from demo.manifests import CLOUD_NODE, EDGE_NODE, EDGE_NODE_2, EDGE_NODES, JOB, NAMESPACE
from demo.processes import ProcessSet
from demo.progress import LoopView, is_rollout_step
from demo.run_record import Outcome, RunPaths

if TYPE_CHECKING:
    from rich.console import Console

SIMULATED = (
    ("the cameras: synthetic videos (demo/scenes.py) pushed by `ffmpeg -re` to local RTSP "
    f"servers: {EDGE_NODE}'s one video per domain, switched by the demo; {EDGE_NODE_2}'s the "
    "same domains at another site, at a low frame rate, switched with edge0's"),
    ("the annotator: the SIMULATED ANNOTATOR (demo/annotator.py) labels each hard "
    "example with the ground truth of the nearest video frame, where a person would label it"),
    ("the data: every image is generated (day, night, new-colors domains); the base model's "
    "training set and the held-out test sets are synthetic too"),
)


# --- pure summaries ----------------------------------------------------------------------


@dataclass
class FrameLogSummary:
    frames: int = 0
    runs: int = 0
    lost: int = 0
    #: version -> frames it served
    per_version: dict[str, int] = field(default_factory=dict)
    #: one entry per swap: {"frame", "from", "to", "gap_s", "median_gap_s", "lost"}
    swaps: list[dict[str, Any]] = field(default_factory=list)
    median_gap_s: float = 0.0


def frame_log_summary(records: Sequence[dict[str, Any]]) -> FrameLogSummary:
    """Frames per version, frames lost (holes in the frame numbers of one worker run) and the
    inter-frame gap at each swap. A frame number that goes back means the worker restarted."""
    out = FrameLogSummary()
    if not records:
        return out
    gaps: list[float] = []
    out.runs = 1
    previous: dict[str, Any] | None = None
    for record in records:
        version = str(record.get("version"))
        out.frames += 1
        out.per_version[version] = out.per_version.get(version, 0) + 1
        if previous is not None:
            if record["frame"] <= previous["frame"]:
                out.runs += 1
            else:
                hole = record["frame"] - previous["frame"] - 1
                gap = float(record["t"]) - float(previous["t"])
                gaps.append(gap)
                if version != str(previous.get("version")):
                    out.swaps.append({"frame": record["frame"], "from": previous.get("version"),
                                      "to": record.get("version"), "gap_s": round(gap, 4),
                                      "lost": hole, "time": record["t"]})
                out.lost += hole
        previous = record
    if gaps:
        ordered = sorted(gaps)
        out.median_gap_s = ordered[len(ordered) // 2]
        for swap in out.swaps:
            swap["median_gap_s"] = round(out.median_gap_s, 4)
    return out


def rollout_timeline(node_history: Sequence[tuple[float, str, int | None]],
                     conditions: Sequence[dict[str, Any]], start: float) -> list[dict[str, Any]]:
    """Which node served which version when, and the rollout's steps between, in time order:
    rows of {"t" (s since ``start``), "node", "serves", "step"} (one of node/serves or step
    set). ``node_history`` is the demo's record of the nodes' statuses, ``conditions`` the job's
    (only the rollout's count here)."""
    rows: list[dict[str, Any]] = []
    for when, node, version in node_history:
        rows.append({"t": round(when - start, 1), "node": node,
                     "serves": f"v{version}" if version else "initial model", "step": None})
    for c in conditions:
        reason = str(c.get("reason", ""))
        if is_rollout_step(reason):
            rows.append({"t": round(float(c.get("time", 0.0)) - start, 1), "node": None,
                         "serves": None, "step": reason})
    # a step before the status it causes when both carry the same second
    return sorted(rows, key=lambda r: (r["t"], r["step"] is None))


def rollout_markdown(rows: Sequence[dict[str, Any]], nodes: Sequence[str]) -> list[str]:
    """The timeline as a table, one column per node (what it serves from then on) and one for
    the rollout's step."""
    lines = ["| t (s) | " + " | ".join(nodes) + " | rollout step |",
             "|---|" + "---|" * len(nodes) + "---|"]
    for row in rows:
        cells = [row["serves"] if row["node"] == node else "" for node in nodes]
        step = str(row["step"] or "").replace("|", "/")
        lines.append(f"| {row['t']:.0f} | " + " | ".join(cells) + f" | {step} |")
    return lines


def round_deltas(eval_result: dict[str, Any]) -> dict[str, float] | None:
    """Candidate and reference precision of one round's eval result, and their difference."""
    models = eval_result.get("models") or []
    if len(models) < 2:
        return None
    candidate = models[0].get("metrics", {}).get("precision")
    reference = models[1].get("metrics", {}).get("precision")
    if not isinstance(candidate, int | float) or not isinstance(reference, int | float):
        return None
    return {"candidate": candidate, "reference": reference, "delta": candidate - reference,
            "images": eval_result.get("images")}


def gate_rows(round_no: int, eval_result: dict[str, Any], round_domain: Mapping[int, str],
              metric: str = "precision") -> list[dict[str, Any]]:
    """The deploy gate's view of one round: the candidate and the serving model on the round's
    own held-out set, then on each earlier round's (the forgetting check), with the change."""
    sets = [(round_no, eval_result.get("images"), eval_result.get("models"))]
    for entry in eval_result.get("rounds") or []:
        if isinstance(entry, dict):
            sets.append((entry.get("round"), entry.get("images"), entry.get("models")))
    rows = []
    for k, (scored, images, models) in enumerate(sets):
        values = [m.get("metrics", {}).get(metric) if isinstance(m, dict) else None
                  for m in ((models or []) + [None, None])[:2]]
        candidate, serving = (v if isinstance(v, int | float) else None for v in values)
        rows.append({
            "round": round_no,
            "set": "this round" if k == 0 else f"round {scored}",
            "domain": round_domain.get(scored) if isinstance(scored, int) else None,
            "images": images,
            "candidate": candidate,
            "serving": serving,
            "change": None if candidate is None or serving is None else candidate - serving,
        })
    return rows


def gate_markdown(rows: Sequence[dict[str, Any]], decisions: Mapping[int, str]) -> list[str]:
    """The per-round gate table of report.md: each round's eval sets and the decision."""
    if not rows:
        return []
    lines = ["", "## Deploy gate per round", "",
             "precision of the candidate and of the model serving, on the round's own held-out "
             "samples and on those of each earlier round (the forgetting check: no earlier round "
             "may drop by more than `forgettingMargin`, 0.02 by default)", "",
             "| round | eval set | domain | images | candidate | serving | change | decision |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        decision = decisions.get(row["round"], "") if row["set"] == "this round" else ""
        lines.append(
            f"| {row['round']} | {row['set']} | {row['domain'] or '-'} | {_fmt(row['images'])} | "
            f"{_fmt(row['candidate'])} | {_fmt(row['serving'])} | {'-' if row['change'] is None else format(row['change'], '+.3f')} | "
            f"{decision.replace('|', '/')} |")
    return lines


def round_eval_result(paths: RunPaths, round_no: int) -> dict[str, Any] | None:
    """The eval result of ``round_no`` as the dataset node kept it (its last attempt)."""
    from cloud_manager.task_builder import task_id

    return _last_attempt_result(paths.agent_state(CLOUD_NODE) / "tasks",
                                task_id(NAMESPACE, JOB, round_no, "eval"))


def gate_decisions(conditions: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Each round's deploy decision, as the Eval/Completed condition gave it."""
    return {int(c["round"]): str(c.get("reason", "")) for c in conditions
            if (c.get("stage"), c.get("state")) == ("Eval", "Completed")
            and isinstance(c.get("round"), int)}


@dataclass
class ReportInputs:
    """What the report reads of a finished run, besides the files it left."""

    paths: RunPaths
    outcome: Outcome
    view: LoopView
    fast: bool
    sizes: data.DemoSizes
    base_model: Path | None
    #: domain -> held-out index that no round trained on
    heldout: dict[str, Path]
    #: runs the evaluation of every model (None: the run never started its processes)
    processes: ProcessSet | None
    #: round -> the domain it learned
    round_domain: dict[int, str]


# --- collecting files ----------------------------------------------------------------------


def _last_attempt_result(tasks_dir: Path, task: str) -> dict[str, Any] | None:
    attempts = sorted((tasks_dir / task).glob("attempt-*/result.json"),
                      key=lambda p: int(p.parent.name.split("-")[1]))
    for path in reversed(attempts):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def _served_models(run: ReportInputs) -> dict[str, Path]:
    """The initial model (the base model trained on day scenes) and every version file edge0
    received, in version order."""
    models: dict[str, Path] = {}
    if run.base_model is not None and run.base_model.exists():
        models["initial"] = run.base_model
    folder = run.paths.agent_state(EDGE_NODE) / "models" / NAMESPACE / JOB
    found = []
    for path in folder.glob("v*/model.tflite"):
        try:
            found.append((int(path.parent.name[1:]), path))
        except ValueError:
            continue
    for number, path in sorted(found):
        models[f"v{number}"] = path
    return models


def _read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mining_reasons(journal: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Labelled hard examples per domain and mining reason (rule, empty-frame, detection-drop):
    how each domain reached the dataset, the blind ones included."""
    out: dict[str, dict[str, int]] = {}
    for record in journal:
        if record.get("refused") or not record.get("domain"):
            continue
        per_domain = out.setdefault(record["domain"], {})
        reason = record.get("reason") or "unknown"
        per_domain[reason] = per_domain.get(reason, 0) + 1
    return out


def _refusals(journal: list[dict[str, Any]]) -> dict[str, int]:
    kinds = [refusal_kind(r["refused"]) for r in journal if r.get("refused")]
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


# --- plots ------------------------------------------------------------------------------------


def _plots(out: Path, precision: dict[str, dict[str, float]], run: ReportInputs,
           journal: list[dict[str, Any]], frames: list[dict[str, Any]],
           summary: FrameLogSummary) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    start = run.view.started

    if precision:
        fig, ax = plt.subplots(figsize=(8.5, 4))
        names = list(precision)
        width = 0.8 / max(1, len(data.DOMAINS))
        for i, domain in enumerate(data.DOMAINS):
            values = [precision[m].get(domain, 0.0) for m in names]
            ax.bar([x + i * width for x in range(len(names))], values, width, label=domain)
        ax.set_xticks([x + width for x in range(len(names))], names)
        ax.set_ylim(0, 1)
        ax.set_ylabel("precision (held-out)")
        ax.set_title("Precision per domain for each model version")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="held-out domain")
        fig.tight_layout()  # the legend sits right of the axes, never over a bar
        fig.savefig(out / "precision.png", dpi=100)
        plt.close(fig)
        written.append("precision.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    history = run.view.sample_history
    if history:
        ax.step([t - start for t, _ in history], [n for _, n in history], where="post",
                label="samples in data.txt (cloud's count)")
    for domain in data.DOMAINS:
        times = sorted(r["time"] for r in journal if r.get("domain") == domain and r.get("time"))
        if times:
            ax.plot([t - start for t in times], range(1, len(times) + 1),
                    label=f"labelled {domain} hard examples")
    for t in run.view.transitions:
        if t.stage == "Train" and t.state == "Running":
            ax.axvline(t.time - start, color="grey", linestyle=":", linewidth=1)
    for switch in run.outcome.camera_switches:
        ax.axvline(switch["time"] - start, color="purple", linestyle="--", linewidth=1)
    ax.set_xlabel("seconds since start (dotted: a round starts training; dashed: camera switch)")
    ax.set_ylabel("samples")
    ax.set_title("Samples over time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=100)
    plt.close(fig)
    written.append("samples.png")

    if frames:
        fig, ax = plt.subplots(figsize=(8, 3))
        order = {v: i for i, v in enumerate(sorted({str(r.get("version")) for r in frames},
                                                   key=lambda v: (v.isdigit(), v.zfill(6))))}
        ax.scatter([r["t"] - start for r in frames], [order[str(r.get("version"))] for r in frames],
                   s=1)
        ax.set_yticks(list(order.values()), [("v" + v if v.isdigit() else f"{v} model")
                                             for v in order])
        ax.set_xlabel("seconds since start")
        ax.set_title(f"Model version serving each frame on {EDGE_NODE} ({summary.frames} frames)")
        fig.tight_layout()
        fig.savefig(out / "served_version.png", dpi=100)
        plt.close(fig)
        written.append("served_version.png")

        fig, ax = plt.subplots(figsize=(8, 3))
        ts = [r["t"] for r in frames]
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(ts)]
        ax.plot([t - start for t in ts[1:]], gaps, linewidth=0.5)
        for swap in summary.swaps:
            ax.axvline(swap["time"] - start, color="red", linestyle="--", linewidth=1)
        for switch in run.outcome.camera_switches:
            ax.axvline(switch["time"] - start, color="purple", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_ylabel("gap between frames (ms)")
        ax.set_xlabel(f"seconds since start (red: hot-swap; purple: camera switch, the stream "
                      f"reconnects; frames lost: {summary.lost})")
        ax.set_title("Inter-frame gaps and swaps")
        fig.tight_layout()
        fig.savefig(out / "swap_gaps.png", dpi=100)
        plt.close(fig)
        written.append("swap_gaps.png")
    return written


# --- the report ---------------------------------------------------------------------------


def write_report(run: ReportInputs, console: Console) -> dict[str, Any]:
    """Evaluate every model on the held-out sets, draw the plots, write report.md and
    summary.json; returns the summary."""
    from cloud_manager.task_builder import task_id

    paths, outcome = run.paths, run.outcome
    console.print("[bold cyan]▶ report: evaluating every model version on held-out sets[/]")
    started = time.monotonic()
    models = _served_models(run)
    precision: dict[str, dict[str, float]] = {m: {} for m in models}
    metrics: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in models}
    if models and run.heldout and run.processes is not None:
        for domain, index in run.heldout.items():
            result = data.evaluate(run.processes, models, index,
                                   paths.run / "report-eval" / f"{domain}.json")
            for name, m in result.items():
                precision[name][domain] = round(float(m["precision"]), 4)
                metrics[name][domain] = {k: m.get(k) for k in ("precision", "recall", "map50")}
    outcome.durations["report_eval"] = round(time.monotonic() - started, 1)

    job = outcome.job or {}
    versions = job.get("versions") or []
    cloud0_tasks = paths.agent_state(CLOUD_NODE) / "tasks"
    version_rows = []
    for v in versions:
        round_no = v.get("round")
        eval_result = _last_attempt_result(cloud0_tasks, task_id(NAMESPACE, JOB, round_no, "eval"))
        deltas = round_deltas(eval_result or {})
        train = _last_attempt_result(cloud0_tasks, task_id(NAMESPACE, JOB, round_no, "train"))
        number = int(v["version"])
        version_rows.append({
            "version": number,
            "round": round_no,
            "domain": run.round_domain.get(round_no),
            "decision": v.get("decision"),
            "precision_delta": None if deltas is None else round(deltas["delta"], 4),
            "eval": deltas,
            "train_samples": (train or {}).get("samples"),
            "train_s": (train or {}).get("duration_s"),
        })

    from workers.inference import read_frame_log

    frames = read_frame_log(paths.frame_log) if paths.frame_log.exists() else []
    fsum = frame_log_summary(frames)
    journal = _read_journal(paths.run / "annotator.jsonl")
    served = sorted({int(v) for _, v in run.view.serving_history if v is not None})
    conditions = (job.get("status") or {}).get("conditions") or []
    rounds = len({c.get("round") for c in conditions
                  if (c.get("stage"), c.get("state")) == ("Train", "Completed")})
    switches = [c["time"] for c in outcome.camera_switches]
    for swap in fsum.swaps:
        # a swap at the moment the camera switched shares its gap with the stream's reconnect
        near = min((abs(swap["time"] - t) for t in switches), default=None)
        swap["camera_switch_within_s"] = None if near is None else round(near, 1)
    plots = _plots(paths.plots, precision, run, journal, frames, fsum)
    nodes = {EDGE_NODE: _node_frames(fsum, frames)}
    for node in EDGE_NODES[1:]:
        log = paths.node_frame_log(node)
        node_frames = read_frame_log(log) if log.exists() else []
        nodes[node] = _node_frames(frame_log_summary(node_frames), node_frames)
    for node, version in run.view.node_serving.items():
        nodes.setdefault(node, {})["serving_at_end"] = version

    gains = {}
    for row in version_rows:
        previous, current = f"v{row['version'] - 1}", f"v{row['version']}"
        if row["version"] == 1:
            previous = "initial"
        domain = row["domain"]
        if previous in precision and current in precision and domain in precision[current]:
            gains[current] = {
                "domain": domain,
                "shifted_gain": round(precision[current][domain] - precision[previous][domain], 4),
                "day_change": round(precision[current].get("day", 0.0)
                                    - precision[previous].get("day", 0.0), 4),
            }

    summary = {
        "ok": outcome.ok,
        "error": outcome.error,
        "fast": run.fast,
        "sizes": data.sizes_dict(run.sizes),
        "rounds": rounds,
        "versions": version_rows,
        "served_versions": served,
        "frames": fsum.frames,
        "frames_lost": fsum.lost if frames else None,
        "frames_per_version": fsum.per_version,
        # every edge node's frames: frames_lost above is edge0's, these hold each node's
        "nodes": nodes,
        "rollout_timeline": rollout_timeline(run.view.node_history, conditions,
                                             run.view.started),
        "swaps": fsum.swaps,
        "inference_runs": fsum.runs,
        "precision": precision,
        "metrics": metrics,
        "gains": gains,
        "refused": _refusals(journal),
        "labelled": {k: sum(1 for r in journal if (r.get("domain") if not r.get("refused")
                                                     else "refused") == k)
                     for k in {*(r.get("domain") or "refused" for r in journal)}},
        "mining_reasons": mining_reasons(journal),
        "durations": outcome.durations,
        "cached": outcome.cached,
        "adaptations": outcome.changes,
        # with --annotator browser a person labelled in the console: the annotator is real
        "simulated": [line for line in SIMULATED
                      if not (outcome.console_url and line.startswith("the annotator:"))],
        "console": outcome.console_url,
        "live_view": outcome.live_view_url,
        "plots": plots,
    }
    gate = []
    for round_no in sorted(gate_decisions(conditions)):
        gate += gate_rows(round_no, round_eval_result(paths, round_no) or {}, run.round_domain)
    summary["gate"] = gate
    (paths.workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    markdown = _markdown(summary, conditions, run)
    markdown += "\n".join(gate_markdown(gate, gate_decisions(conditions))) + "\n"
    (paths.workdir / "report.md").write_text(markdown)
    console.print(f"report: {paths.workdir / 'report.md'}; plots in {paths.plots}; "
                  f"summary {paths.workdir / 'summary.json'}")
    return summary


def _node_frames(summary: FrameLogSummary, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One edge node's frames for summary.json (frames_lost None: no frame log came)."""
    return {"frames": summary.frames, "frames_lost": summary.lost if records else None,
            "frames_per_version": summary.per_version, "inference_runs": summary.runs}


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def _markdown(s: dict[str, Any], conditions: list[dict[str, Any]], run: ReportInputs) -> str:
    lines = [
        "# edgeloop demo report",
        "",
        (f"Mode: {'`--fast`' if s['fast'] else 'full'}. Outcome: "
        f"{'the loop closed' if s['ok'] else 'INCOMPLETE: ' + str(s['error'])}. "
        f"Rounds trained: {s['rounds']}. Versions served on {EDGE_NODE}: "
        f"{', '.join('v' + str(v) for v in s['served_versions']) or 'none'}. "
        f"Frames lost: {_fmt(s['frames_lost'])} of {s['frames']}"
        + "".join(f"; {node}: {_fmt(n.get('frames_lost'))} of {n.get('frames')}"
                  for node, n in s["nodes"].items() if node != EDGE_NODE) + "."),
        "",
        "## What was simulated",
        "",
        *[f"- {item}" for item in s["simulated"]],
        "",
        ("Everything else ran for real, each as its own process: the production mosquitto broker "
        "(TLS, one certificate per identity, ACL), the cloud manager, the agents "
        f"`{CLOUD_NODE}` (dataset, train, eval), `{EDGE_NODE}` and `{EDGE_NODE_2}` (inference, "
        "hot-swap, a staged rollout between them), "
        "TensorFlow training and LiteRT inference."),
        "",
        "## What was adapted in the seed's manifests",
        "",
        *[f"- {c}" for c in s["adaptations"]],
        "",
        "## Precision per domain (held-out sets, never trained on)",
        "",
        "| model | " + " | ".join(data.DOMAINS) + " |",
        "|---|" + "---|" * len(data.DOMAINS),
    ]
    for name, by_domain in s["precision"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(by_domain.get(d)) for d in data.DOMAINS)
                     + " |")
    base_day = (s["metrics"].get("initial") or {}).get("day") or {}
    if base_day:
        lines += ["", (f"The initial model (the base model, trained on day scenes) on held-out day "
                       f"images: precision {_fmt(base_day.get('precision'))}, recall "
                       f"{_fmt(base_day.get('recall'))}, mAP@0.5 {_fmt(base_day.get('map50'))}.")]
    lines += ["", ("Each version against the one before it (v1 against the initial model), on the "
              "domain its round learned and on day:"), ""]
    for version, g in s["gains"].items():
        lines.append(f"- {version} ({g['domain']}): {g['domain']} precision "
                     f"{g['shifted_gain']:+.3f}, day {g['day_change']:+.3f}")
    lines += [
        "",
        "## Model versions",
        "",
        ("| version | round | domain | precision_delta (round's eval set) | cloud's decision | "
        "train samples | train s |"),
        "|---|---|---|---|---|---|---|",
    ]
    for v in s["versions"]:
        samples = v.get("train_samples") or {}
        text = ", ".join(f"{k} {n}" for k, n in samples.items()) if isinstance(samples, dict) \
            else str(samples)
        lines.append(f"| v{v['version']} | {v['round']} | {v['domain']} | "
                     f"{_fmt(v['precision_delta'])} | {v['decision']} | {text} | "
                     f"{_fmt(v.get('train_s'), 0)} |")
    lines += [
        "",
        ("precision_delta is the candidate minus the model serving at the time (the initial model "
        "until a version is deployed), measured by the round's eval task on its eval set; the "
        "cloud manager deploys the candidate when it exceeds the seed's 0.1."),
        "",
        "## Hot-swaps on edge0",
        "",
        (f"Frames per version: {json.dumps(s['frames_per_version'])}; worker runs: "
        f"{s['inference_runs']}; frames lost: {_fmt(s['frames_lost'])}."),
        "",
    ]
    for swap in s["swaps"]:
        near = swap.get("camera_switch_within_s")
        note = (f" (the camera switched {near:.0f} s from it: the gap includes the RTSP "
                "reconnect)" if near is not None and near < 6 else "")
        lines.append(f"- frame {swap['frame']}: {swap['from']} -> {swap['to']}, gap "
                     f"{swap['gap_s'] * 1000:.1f} ms (median {swap.get('median_gap_s', 0) * 1000:.1f} "
                     f"ms), lost {swap['lost']}{note}")
    lines += ["", "## Rollout: which node served which version when", "",
              (f"The job deploys to `{EDGE_NODE}` (deploySpec.nodeName) and to every node whose "
               f"agent has the fleet's labels (deploySpec.nodeSelector: `{EDGE_NODE_2}` too); a "
               f"new version goes to the canary `{EDGE_NODE}` first, bakes, then reaches "
               f"`{EDGE_NODE_2}` (deploySpec.rollout). Times are seconds since the demo "
               "started, from the nodes' statuses and the job's conditions."), ""]
    lines += rollout_markdown(s["rollout_timeline"], list(s["nodes"]))
    lines.append("")
    for node, n in s["nodes"].items():
        lines.append(f"- {node}: {n.get('frames')} frames, lost {_fmt(n.get('frames_lost'))}, "
                     f"per version {json.dumps(n.get('frames_per_version') or {})}, serving "
                     f"{'v' + str(n['serving_at_end']) if n.get('serving_at_end') else '-'} "
                     "at the end")
    lines += ["", "## Timeline", "", "| t (s) | round | stage | state | reason |",
              "|---|---|---|---|---|"]
    start = run.view.started
    for c in conditions:
        reason = str(c.get("reason", "")).replace("|", "/")
        lines.append(f"| {c.get('time', 0) - start:.0f} | {c.get('round')} | {c.get('stage')} | "
                     f"{c.get('state')} | {reason} |")
    lines += ["", "## Durations (s)", ""]
    lines += [f"- {k}: {v}" for k, v in s["durations"].items()]
    lines += ["", f"Labelled hard examples: {json.dumps(s['labelled'])}."]
    if s.get("mining_reasons"):
        lines += ["", "Why edge0 mined them (rule: the hardExampleMining rule; empty-frame and "
                  "detection-drop: blind-spot mining, frames the model saw little or nothing "
                  "in):", "", "| domain | rule | empty-frame | detection-drop | other |",
                  "|---|---|---|---|---|"]
        for domain, counts in sorted(s["mining_reasons"].items()):
            known = ("rule", "empty-frame", "detection-drop")
            total = sum(counts.values())
            cells = [f"{counts.get(k, 0)} ({counts.get(k, 0) / total:.0%})" for k in known]
            other = total - sum(counts.get(k, 0) for k in known)
            lines.append(f"| {domain} | {' | '.join(cells)} | {other} |")
    if s.get("refused"):
        lines += [("Refused by the simulated annotator, which labels only frames it finds in the "
                   "camera's videos (a person would label any): "
                   + "; ".join(f"{n} {why}" for why, n in s["refused"].items()) + ".")]
    lines += ["", "## Plots", ""]
    lines += [f"![{p}](plots/{p})" for p in s["plots"]]
    return "\n".join(lines) + "\n"
