"""The seed's manifests (examples/helmet/*.yaml) adapted to one machine. Pure.

Only what cannot stay as written changes, and every change is listed in words so that the
terminal and the report can say it: paths move into the work directory, the sample threshold
scales to the demo's size, the timer window (02:00-04:00) widens to the whole day so the demo
runs at any hour, the inference runs on ``edge0`` and every node labelled as the demo's fleet
(``edge1``; the seed runs everything on ``cloud0``), a new version reaches them in a staged
rollout (canary ``edge0``, a bake, then ``edge1``), the camera URL is the local RTSP mock, the
training epochs/batch suit a small round, and the inference worker keeps a per-frame log for the
report.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"
SEED_FILES = ("dataset.yaml", "initial-model.yaml", "deploy-model.yaml", "job.yaml")
NAMESPACE = "neptune-test"
JOB = "helmet-detection-demo"
DATASET = "incremental-dataset"
CLOUD_NODE = "cloud0"
EDGE_NODE = "edge0"
#: The second edge node: another camera, found by its labels (deploySpec.nodeSelector).
EDGE_NODE_2 = "edge1"
EDGE_NODES = (EDGE_NODE, EDGE_NODE_2)
#: The labels both edge agents declare, and the job's nodeSelector matches.
FLEET_LABELS = {"fleet": "helmet-demo"}
WHOLE_DAY = {"start": "00:00", "end": "24:00"}


@dataclass(frozen=True)
class DemoPaths:
    """Where the adapted manifests point."""

    dataset_index: Path
    initial_model: Path
    deploy_model: Path
    script_dir: Path
    output_dir: Path
    hardex_dir: Path
    video_url: str
    #: the inference worker's per-frame log (which version served each frame), for the report
    frame_log: Path | None = None


@dataclass
class Adapted:
    manifests: list[dict[str, Any]] = field(default_factory=list)
    #: one line per change, for the terminal and the report
    changes: list[str] = field(default_factory=list)


def load_seed() -> list[dict[str, Any]]:
    """The four seed manifests as written, in apply order."""
    return [yaml.safe_load((EXAMPLES / name).read_text()) for name in SEED_FILES]


def rollout_spec(bake_seconds: float) -> dict[str, Any]:
    """The demo's staged rollout: one canary (``edge0``: online nodes first, then by name), a
    short bake, then the rest one node at a time. The health gates suit a demo on one loaded
    machine, where a crash or a model that will not load still rolls a version back."""
    return {"canary": 1, "bakeSeconds": bake_seconds, "waveSize": 1, "minAgreement": 0.0,
            "maxFpsDrop": 0.8, "healthTimeoutSeconds": 300}


def _set_parameter(worker: dict[str, Any], key: str, value: str, changes: list[str],
                   why: str) -> None:
    parameters = worker.setdefault("parameters", [])
    for parameter in parameters:
        if parameter["key"] == key:
            if parameter["value"] != value:
                changes.append(f"{why}: {key} {parameter['value']!r} -> {value!r}")
                parameter["value"] = value
            return
    parameters.append({"key": key, "value": value})
    changes.append(f"{why}: {key} = {value!r} (added)")


def adapt(
    seed: list[dict[str, Any]],
    paths: DemoPaths,
    threshold: int,
    train_parameters: dict[str, str],
    forgetting_margin: float | None = None,
    bake_seconds: float = 60.0,
) -> Adapted:
    """The seed manifests with the demo's paths, threshold, window, edge nodes, rollout and
    epochs, and the deploy gate's ``forgettingMargin`` when the demo's size calls for another
    one."""
    out = Adapted()
    changes = out.changes
    for original in seed:
        data = copy.deepcopy(original)
        kind, name, spec = data["kind"], data["metadata"]["name"], data["spec"]
        if kind == "Dataset":
            spec["url"] = str(paths.dataset_index)
        elif kind == "Model" and name == "initial-model":
            spec["url"] = str(paths.initial_model)
        elif kind == "Model":
            spec["url"] = str(paths.deploy_model)
        elif kind == "IncrementalLearningJob":
            spec["outputDir"] = str(paths.output_dir)
            for stage in ("trainSpec", "evalSpec", "deploySpec"):
                spec[stage]["workerSpec"]["scriptDir"] = str(paths.script_dir)
            trigger = spec["trainSpec"]["trigger"]
            condition = trigger["condition"]
            changes.append(f"train trigger: num_of_samples {condition['operator']} "
                           f"{condition['threshold']} -> {threshold} (scaled to the demo's size)")
            condition["threshold"] = threshold
            if "timer" in trigger:
                old = trigger["timer"]
                changes.append(f"train trigger: timer window {old['start']}-{old['end']} -> "
                               f"{WHOLE_DAY['start']}-{WHOLE_DAY['end']} (so the demo runs at "
                               "any hour)")
                trigger["timer"] = dict(WHOLE_DAY)
            deploy = spec["deploySpec"]
            if deploy["nodeName"] != EDGE_NODE:
                changes.append(f"deploySpec.nodeName {deploy['nodeName']} -> {EDGE_NODE} "
                               "(inference runs on the edge node)")
                deploy["nodeName"] = EDGE_NODE
            deploy["nodeSelector"] = {"matchLabels": dict(FLEET_LABELS)}
            changes.append(f"deploySpec.nodeSelector matchLabels {FLEET_LABELS} (added; edgeloop "
                           f"extension: every agent with these labels runs inference too, here "
                           f"{EDGE_NODE_2} with its own camera)")
            deploy["maxSourceShare"] = 1
            changes.append("deploySpec.maxSourceShare 1 (added; edgeloop extension): the share "
                           "cap counts the examples waiting for labels in the cloud's inbox, and "
                           "the simulated annotator labels them beside data.txt, outside the "
                           "cloud's label import: the cloud would count them as waiting forever "
                           "and hold back the busier camera")
            deploy["rollout"] = rollout_spec(bake_seconds)
            changes.append(f"deploySpec.rollout (added; edgeloop extension): a new version goes "
                           f"to canary {EDGE_NODE} first, bakes {bake_seconds:g} s, then to "
                           f"{EDGE_NODE_2}; minAgreement 0 (the previous version is blind to the "
                           "domain the new one learned: they disagree by design), maxFpsDrop 0.8 "
                           "(training shares the machine's cores with the cameras)")
            if forgetting_margin is not None:
                changes.append(f"deploy trigger: forgettingMargin = {forgetting_margin:g} (added; "
                               "a round this small forgets more of the earlier domains: the "
                               "report's gate table shows by how much)")
                deploy["trigger"]["forgettingMargin"] = forgetting_margin
            worker = deploy["workerSpec"]
            _set_parameter(worker, "video_url", paths.video_url, changes,
                           "inference (local RTSP camera mock)")
            _set_parameter(worker, "HE_SAVED_URL", str(paths.hardex_dir), changes,
                           "inference (path in the work directory)")
            if paths.frame_log is not None:
                _set_parameter(worker, "frame_log", str(paths.frame_log), changes,
                               "inference (per-frame log for the report)")
            for key, value in train_parameters.items():
                _set_parameter(spec["trainSpec"]["workerSpec"], key, value, changes,
                               "training (suited to the demo's round size)")
        out.manifests.append(data)
    changes.append(f"paths: scriptDir, outputDir, dataset, model urls and HE_SAVED_URL under "
                   f"the work directory (scriptDir = {paths.script_dir})")
    return out
