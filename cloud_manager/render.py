"""How ``edgeloop get`` and ``edgeloop describe`` show the API's answers: rich tables, YAML or
JSON. Pure formatting: data in, renderables or text out."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Group
from rich.table import Table
from rich.text import Text

from protocol.manifests import DEFAULT_FORGETTING_MARGIN, STAGES, IncrementalLearningJob
from protocol.targets import show_labels

OUTPUT_FORMATS = ("table", "wide", "yaml", "json")

# kind -> (columns always shown, extra columns with -o wide); a column is (header, key)
_COLUMNS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "IncrementalLearningJob": (
        [("NAMESPACE", "namespace"), ("NAME", "name"), ("STAGE", "stage"), ("STATE", "state"),
         ("ROUND", "round"), ("NEW SAMPLES", "new_samples"), ("DEPLOYED", "deployed_version"),
         ("AGE", "created")],
        [("SERVING", "serving_version"), ("PAUSED", "paused"), ("NODE", "node"), ("DEPLOY NODE", "deploy_node"), ("REASON", "reason")],
    ),
    "Dataset": (
        [("NAMESPACE", "namespace"), ("NAME", "name"), ("NODE", "node"), ("SAMPLES", "samples"),
         ("AGE", "created")],
        [("URL", "url"), ("FORMAT", "format"), ("GENERATION", "generation")],
    ),
    "Model": (
        [("NAMESPACE", "namespace"), ("NAME", "name"), ("FORMAT", "format"), ("AGE", "created")],
        [("URL", "url"), ("GENERATION", "generation")],
    ),
    "Node": (
        [("NAME", "name"), ("STATE", "state"), ("LABELS", "labels"), ("SERVING", "serving"),
         ("CAMERAS", "cameras"), ("SEEN", "updated")],
        [("BOOT", "boot_id"), ("AGENT", "agent_version"), ("OUTBOX", "outbox_backlog"),
         ("UPLOADS", "uploads")],
    ),
    "Namespace": ([("NAME", "name")], []),
    "HardExample": (
        [("ID", "short_id"), ("NODE", "node"), ("CAMERA", "camera"), ("AGE", "time"),
         ("MODEL", "model_version"),
         ("BOXES", "boxes"), ("REASON", "reason"), ("LABELLED", "labelled")],
        [("MINING", "mining"), ("SOURCE", "source"), ("SHA256", "id")],
    ),
    "ModelVersion": (
        [("JOB", "job"), ("VERSION", "version"), ("ROUND", "round"), ("PRECISION", "precision"),
         ("AGE", "time")],
        [("RECALL", "recall"), ("MAP50", "map50"), ("FILES", "collected"),
         ("ROLLOUT FAILED", "rollout")],
    ),
}

_TIME_KEYS = {"created", "updated", "time"}


def age(timestamp: float | None, now: float | None = None) -> str:
    """``kubectl``-style age: 45s, 12m, 3h, 5d."""
    if not isinstance(timestamp, int | float) or timestamp <= 0:
        return "-"
    seconds = max(0, int((now or time.time()) - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cell(row: dict[str, Any], key: str, now: float | None = None) -> str:
    if key in ("precision", "recall", "map50"):
        value = (row.get("metrics") or {}).get(key)
        return f"{value:.3f}" if isinstance(value, int | float) else "-"
    value = row.get(key)
    if key in _TIME_KEYS:
        return age(value, now)
    if value is None or value == "" or value == {}:
        return "-"
    if isinstance(value, dict):
        return show_labels(value)
    if isinstance(value, bool):
        if key == "collected":
            return "in registry" if value else "missing"
        return "yes" if value else "no"
    return str(value)


def table(kind: str, rows: list[dict[str, Any]], wide: bool = False,
          now: float | None = None) -> Table:
    base, extra = _COLUMNS.get(kind, ([("NAME", "name")], []))
    columns = base + (extra if wide else [])
    out = Table(box=None, pad_edge=False, header_style="bold")
    for header, _ in columns:
        out.add_column(header, overflow="fold")
    for row in rows:
        out.add_row(*(cell(row, key, now) for _, key in columns))
    return out


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _stage_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Node of each stage, and the image and resources a pod template names (recorded, not
    enforced: workers run in the agent's Python)."""
    try:
        spec = IncrementalLearningJob.model_validate(manifest).spec
    except ValidationError:
        return [("Deploy node", str(manifest["spec"]["deploySpec"].get("nodeName")))]
    rows = []
    for stage in STAGES:
        if stage == "deploy":
            rows.append(("Deploy nodes", spec.deploy_targets().describe()))
            continue
        node = spec.stage_node(stage) or "the dataset's node"
        rows.append((f"{stage.capitalize()} node", node))
    for stage in STAGES:
        runtime = spec.stage(stage).runtime()
        if runtime.image:
            rows.append((f"{stage.capitalize()} image", runtime.image))
        for kind, values in (runtime.resources or {}).items():
            text = ", ".join(f"{k}={v}" for k, v in values.items())
            rows.append((f"{stage.capitalize()} {kind}", text))
    return rows


def _forgetting(trigger: dict[str, Any]) -> str:
    """The forgetting check of a deploy trigger, as describe shows it."""
    margin = trigger.get("forgettingMargin", DEFAULT_FORGETTING_MARGIN)
    return f", no earlier round may drop by more than {_number(margin)}"


def _version(value: Any) -> str:
    return "initial model" if value is None else str(value)


def _health(row: dict[str, Any], now: float | None) -> str:
    """``online``, ``offline (last status 5m ago)``, or why nothing is known."""
    if row["state"] in ("online", "unknown") or not row.get("seen"):
        return str(row["health"])
    return f"{row['health']} (last status {age(row['seen'], now)} ago)"


def targets_table(rows: list[dict[str, Any]], now: float | None) -> Table:
    """Per node the job deploys to: the version it should serve and the one it serves."""
    out = Table(title="Deploy nodes", box=None, header_style="bold", title_justify="left")
    for column in ("NODE", "STATE", "ROLLOUT", "FPS", "AGREEMENT", "DESIRED", "SERVING",
                   "LABELS"):
        out.add_column(column, overflow="fold")
    for row in rows:
        serving = "-" if row["state"] != "online" and row["serving"] is None else \
            _version(row["serving"])
        fps, agreement = row.get("fps"), row.get("agreement")
        out.add_row(row["node"], _health(row, now), row.get("rollout") or "-",
                    f"{fps:.1f}" if fps is not None else "-",
                    f"{agreement:.2f}" if agreement is not None else "-",
                    _version(row["desired"]), serving, show_labels(row.get("labels") or {}) or "-")
        for camera, status in (row.get("cameras") or {}).items():
            state, camera_fps, camera_serving = _camera_cells(status)
            out.add_row(f"  camera {camera}", state, "", camera_fps, "", "", camera_serving, "")
    return out


def _uploads_table(rows: list[dict[str, Any]]) -> Table:
    """Per deploy node: what waits, was sent, evicted and skipped, bytes against the caps."""
    out = Table(title="Uploads", box=None, header_style="bold", title_justify="left")
    for column in ("NODE", "UPLOADS"):
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(row["node"], row.get("uploads") or "-")
    return out


def _camera_cells(status: dict[str, Any]) -> tuple[str, str, str]:
    """STATE, FPS, SERVING of one camera's row under its node: what it serves at what frame
    rate, or why it serves nothing."""
    if status.get("error"):
        return f"not serving: {status['error']}", "-", "-"
    if not status.get("serving"):
        return "starting", "-", "-"
    return "serving", f"{status.get('fps', 0.0):.1f}", _version(status.get("version"))


def _target_warnings(manifest: dict[str, Any], rows: list[dict[str, Any]],
                     now: float | None) -> list[str]:
    """What keeps the job from serving everywhere it should: a selector that matches no node,
    target nodes that never reported or are away."""
    warnings = []
    try:
        deploy = IncrementalLearningJob.model_validate(manifest).spec.deploy_targets()
    except ValidationError:
        return []
    if deploy.selector is not None and not any(
            deploy.selector.matches(r.get("labels") or {}) for r in rows):
        warnings.append(f"no node matches nodeSelector {deploy.selector.describe()}: a node "
                        "whose agent declares these labels gets the serving version")
    for row in rows:
        if row["state"] != "online":
            warnings.append(f"node {row['node']}: {_health(row, now)}")
    return warnings


def describe_job(data: dict[str, Any], now: float | None = None) -> Group:
    """The job's manifest summary, status, condition history, versions and tasks."""
    resource, status = data["resource"], data.get("status") or {}
    spec = resource["manifest"]["spec"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    trigger = spec["trainSpec"]["trigger"]
    condition = trigger["condition"]
    timer = trigger.get("timer")
    deploy = spec["deploySpec"]["trigger"]["condition"]
    for label, value in (
        ("Name", f"{resource['namespace']}/{resource['name']}"),
        ("Generation", resource["generation"]),
        ("Dataset", spec["dataset"]["name"]),
        ("Train trigger", f"{condition['metric']} {condition['operator']} {_number(condition['threshold'])}"
         + (f" within {timer['start']}-{timer['end']}" if timer else "")),
        ("Deploy trigger", f"{deploy['metric']} {deploy['operator']} {_number(deploy['threshold'])}"
         + _forgetting(spec["deploySpec"]["trigger"])),
        *_stage_rows(resource["manifest"]),
        ("Output dir", spec["outputDir"]),
        ("Stage", f"{status.get('stage')} {status.get('state')} (round {status.get('round')})"),
        ("Samples", status.get("samples")),
        ("Deployed version", status.get("deployed_version") or "-"),
        ("Paused", "yes" if status.get("paused") else "no"),
        *([("Rollout", data["rollout"]["summary"])] if data.get("rollout") else []),
    ):
        head.add_row(f"{label}:", str(value))
    history = Table(title="Conditions", box=None, header_style="bold", title_justify="left")
    for column in ("TIME", "ROUND", "STAGE", "STATE", "REASON"):
        history.add_column(column, overflow="fold")
    for c in status.get("conditions", []):
        history.add_row(_clock(c["time"]), str(c["round"]), c["stage"], c["state"], c["reason"])
    parts: list[Any] = [head, Text(""), history]
    if data.get("targets") is not None:
        parts += [Text(""), targets_table(data["targets"], now)]
        if any(row.get("uploads") for row in data["targets"]):
            parts += [Text(""), _uploads_table(data["targets"])]
    warnings = _target_warnings(resource["manifest"], data.get("targets") or [], now)
    if warnings:
        parts += [Text(""), Text("Warnings:", style="bold"),
                  *(Text(f"  {w}", style="yellow") for w in warnings)]
    if data.get("versions"):
        parts += [Text(""), table("ModelVersion", data["versions"], wide=True, now=now)]
    if data.get("tasks"):
        tasks = Table(title="Tasks", box=None, header_style="bold", title_justify="left")
        for column in ("TASK", "ATTEMPT", "ROLE", "NODE", "STATE", "UPDATED"):
            tasks.add_column(column)
        for t in data["tasks"]:
            tasks.add_row(t["task_id"], str(t["attempt"]), t["role"], t["node"], t["state"],
                          age(t["updated"], now))
        parts += [Text(""), tasks]
    return Group(*parts)
