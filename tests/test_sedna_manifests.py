"""Sedna's own manifests (examples/sedna/, copied verbatim) and the pod-template form they use."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from protocol.manifest_yaml import ManifestLoader, parse_manifest, read_path
from protocol.manifests import IncrementalLearningJob, ManifestError, Model
from protocol.pod_template import DEFAULT_WORKING_DIR

SEDNA = Path(__file__).resolve().parent.parent / "examples" / "sedna"
S3 = "S3 storage"

#: (file, document number) -> the one error edgeloop reports; every other document validates.
REFUSED = {
    ("examples__federated_learning__yolov5_coco128_mistnet__README.md.yaml", 1):
        "spec.format: 'dir' is not one of txt",
    ("examples__federated_learning__yolov5_coco128_mistnet__README.md.yaml", 2):
        "spec.format: 'dir' is not one of txt",
    ("examples__lifelong_learning__atcii__README.md.yaml", 1):
        "spec.format: 'csv' is not one of txt",
    ("examples__lifelong_learning__atcii__lifelong-atcii-tutorial.md.yaml", 1):
        "spec.format: 'csv' is not one of txt",
    ("examples__incremental_learning_modelbox__mnist__README.md.yaml", 4):
        "metadata.name: 'Mnist-demo' is not a valid name",
    **{("examples__storage__s3__incremental_learning__README.md.yaml", i): S3 for i in (1, 2, 3, 4)},
    **{("examples__storage__s3__joint_inference__README.md.yaml", i): S3 for i in (1, 2)},
}


def _files() -> list[Path]:
    return sorted(SEDNA.glob("*.yaml"))


def _job(name: str) -> IncrementalLearningJob:
    documents = [d for d in read_path(SEDNA / name) if isinstance(d.manifest, IncrementalLearningJob)]
    assert len(documents) == 1
    job = documents[0].manifest
    assert isinstance(job, IncrementalLearningJob)
    return job


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_every_sedna_manifest_validates_or_is_refused_for_one_named_reason(path):
    for document in read_path(path):
        expected = REFUSED.get((path.name, document.index))
        if expected is None:
            assert document.errors == [], document.label
        else:
            assert len(document.errors) == 1, document.errors
            assert expected in document.errors[0]


def test_the_seven_incremental_learning_jobs_are_all_there():
    jobs = [(p.name, d.index) for p in _files() for d in read_path(p)
            if isinstance(d.data, dict) and d.data.get("kind") == "IncrementalLearningJob"]
    assert len(jobs) == 7
    refused = [job for job in jobs if job in REFUSED]
    assert [REFUSED[job] for job in refused] == ["metadata.name: 'Mnist-demo' is not a valid name", S3]


def test_an_s3_manifest_gets_one_message_naming_s3_not_its_field_errors():
    # Sedna's README nests spec under metadata here; S3 is still the one thing reported
    first = read_path(SEDNA / "examples__storage__s3__incremental_learning__README.md.yaml")[0]
    assert first.errors == [
        "metadata.spec.url: S3 storage ('s3://kubeedge/model/base_model') is not supported: "
        "edgeloop reads datasets and models, and writes outputs, at paths on the nodes; copy "
        "the files there and give their paths"
    ]


def test_pod_template_maps_onto_the_same_job():
    job = _job("examples__incremental_learning__helmet_detection__helmet_detection.yaml")
    spec = job.spec
    assert spec.form == "template"
    train = spec.train_spec.worker()
    assert (train.script_dir, train.script_boot_file) == (DEFAULT_WORKING_DIR, "train.py")
    assert train.parameters_dict() == {
        "batch_size": "32", "epochs": "1", "input_shape": "352,640",
        "class_names": "person,helmet,helmet-on,helmet-off", "nms_threshold": "0.4",
        "obj_threshold": "0.3",
    }
    assert spec.class_names() == ("person", "helmet", "helmet-on", "helmet-off")
    assert spec.deploy_spec.worker().script_boot_file == "inference.py"
    assert spec.deploy_spec.hard_example_mining is not None
    assert spec.deploy_spec.hard_example_mining.parameters_dict() == {
        "threshold_img": "0.9", "threshold_box": "0.9"}
    deploy = spec.deploy_spec.runtime()
    assert (deploy.node, deploy.image) == ("$WORKER_NODE", "$IMAGE")
    assert deploy.resources == {"limits": {"memory": "2Gi"}}
    assert [spec.stage_node(s) for s in ("train", "eval", "deploy")] == ["$WORKER_NODE"] * 3


def test_workerspec_form_names_no_train_or_eval_node():
    job = _job("build__crd-samples__sedna__incrementallearningjob_v1alpha1.yaml")
    assert job.spec.stage_node("deploy") == "edge-node"
    text = (Path(__file__).resolve().parent.parent / "examples" / "helmet" / "job.yaml").read_text()
    guide = parse_manifest(yaml.load(text, Loader=ManifestLoader))
    assert isinstance(guide, IncrementalLearningJob) and guide.spec.form == "workerSpec"
    assert [guide.spec.stage_node(s) for s in ("train", "eval", "deploy")] == [None, None, "cloud0"]


def test_template_form_round_trips_through_its_dump():
    job = _job("build__crd-samples__sedna__incrementallearningjob_v1alpha1.yaml")
    dumped = job.model_dump(mode="json", by_alias=True, exclude_unset=True)
    volumes = dumped["spec"]["deploySpec"]["template"]["spec"]["volumes"]
    assert volumes[0]["name"] == "localvideo"  # Kubernetes-only fields are kept
    assert parse_manifest(dumped) == job


def test_model_device_soc_versions_is_accepted():
    model = parse_manifest({
        "apiVersion": "sedna.io/v1alpha1", "kind": "Model", "metadata": {"name": "m"},
        "spec": {"url": "/m", "format": "om", "device_soc_versions": ["Ascend310"]},
    })
    assert isinstance(model, Model) and model.spec.device_soc_versions == ["Ascend310"]


def test_job_credential_name_is_accepted_like_datasets_and_models():
    data = _template_job()
    data["spec"]["credentialName"] = "mysecret"
    job = parse_manifest(data)
    assert isinstance(job, IncrementalLearningJob) and job.spec.credential_name == "mysecret"


# --- the template form's own errors -------------------------------------------------------------

_BASE = SEDNA / "examples__incremental_learning__helmet_detection__helmet_detection.yaml"
_TRAIN = "spec.trainSpec.template.spec"


def _template_job() -> dict[str, Any]:
    return yaml.load(_BASE.read_text(), Loader=ManifestLoader)


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    return caught.value.errors


def _train_container(data: dict[str, Any]) -> dict[str, Any]:
    return data["spec"]["trainSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.update(command=["python3"], args=["/opt/edgeloop/workers/train.py"]), ("/opt/edgeloop/workers", "train.py")),
        (lambda c: c.update(command=["/usr/bin/python3.11", "code/train.py"], args=[]), (f"{DEFAULT_WORKING_DIR}/code", "train.py")),
        (lambda c: c.update(workingDir="/code"), ("/code", "train.py")),
        (lambda c: c.update(command=["/code/train.py"], args=[]), ("/code", "train.py")),
    ],
)
def test_boot_file_from_command_args_and_working_dir(change, expected):
    data = _template_job()
    change(_train_container(data))
    job = parse_manifest(data)
    assert isinstance(job, IncrementalLearningJob)
    worker = job.spec.train_spec.worker()
    assert (worker.script_dir, worker.script_boot_file) == expected


def _mutate(path: str, value: Any) -> dict[str, Any]:
    data = _template_job()
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last: Any = int(keys[-1]) if isinstance(target, list) else keys[-1]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return data


_DELETE = object()
_CONTAINER = "spec.trainSpec.template.spec.containers.0"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (f"{_CONTAINER}.command", ["bash", "-c", "train.sh"],
         f"{_TRAIN}.containers[0].command[0]: 'bash' is not python: the agent runs a Python boot "
         "file with its own interpreter; name the script in args (or command: [python, script.py])"),
        (f"{_CONTAINER}.args", [],
         f"{_TRAIN}.containers[0].args: the boot file is missing: name the script in args, "
         "e.g. args: [\"train.py\"]"),
        (f"{_CONTAINER}.args", ["train.py", "--epochs", "3"],
         f"{_TRAIN}.containers[0].args: arguments after the boot file (--epochs 3) are not passed "
         "to the worker: give them as env variables"),
        (f"{_CONTAINER}.env.0", {"name": "batch_size", "valueFrom": {"secretKeyRef": {}}},
         f"{_TRAIN}.containers[0].env[0].valueFrom: not supported: a value from a Secret, "
         "ConfigMap or field needs Kubernetes; give the value itself"),
        (f"{_CONTAINER}.imagePullPolicyy", "Always",
         f"{_TRAIN}.containers[0].imagePullPolicyy: unknown field; allowed: args, command, env, "
         "image, name, resources, workingDir and Kubernetes' own fields, which are kept and ignored"),
        ("spec.trainSpec.template.spec.nodeSelector", {"zone": "a"},
         f"{_TRAIN}.nodeSelector: not supported: edgeloop places a stage by node name only; set "
         "nodeName"),
        ("spec.trainSpec.template.spec.containers.1", {"name": "sidecar", "args": ["x.py"]},
         f"{_TRAIN}.containers: 2 containers: edgeloop runs one worker per stage, so give exactly one"),
        ("spec.deploySpec.template.spec.nodeName", _DELETE,
         "spec.deploySpec.template.spec.nodeName: required field is missing: the node that runs "
         "inference (or, as edgeloop extensions, deploySpec.nodeNames or deploySpec.nodeSelector)"),
        ("spec.nodeName", "cloud0",
         "spec.nodeName: belongs to the workerSpec form; with templates, set "
         "template.spec.nodeName of each stage"),
        ("spec.evalSpec.template", _DELETE, "spec.evalSpec.workerSpec: required field is missing"),
        (f"{_CONTAINER}.env.3.value", "person,,helmet",
         "spec.trainSpec.template.spec.containers[0].env[3].value: class_names 'person,,helmet': "
         "name 1 is empty"),
    ],
)
def test_template_errors_name_the_field_and_the_reason(path, value, expected):
    if path.endswith("containers.1"):
        data = _template_job()
        data["spec"]["trainSpec"]["template"]["spec"]["containers"].append(value)
    else:
        data = _mutate(path, value)
    assert _errors(data) == [expected]


def test_forms_are_not_mixed_within_a_job():
    data = _template_job()
    guide = yaml.load((SEDNA.parent / "helmet" / "job.yaml").read_text(), Loader=ManifestLoader)
    data["spec"]["evalSpec"] = copy.deepcopy(guide["spec"]["evalSpec"])
    assert _errors(data) == [
        "spec.evalSpec.workerSpec: uses workerSpec while trainSpec uses template: write all "
        "three stages in one form"
    ]


# --- the environment a Sedna worker script reads ------------------------------------------------


def _run_sedna_reader(task, tmp_path: Path) -> dict[str, Any]:
    """Run a Sedna-style script with the environment the agent gives this task's worker."""
    import json
    import subprocess
    import sys

    from edge_agent.runner import worker_environment

    script = Path(__file__).resolve().parent / "sedna_scripts" / "sedna_reader.py"
    env = {"PATH": "/usr/bin:/bin", **worker_environment(task, tmp_path / "result.json", None)}
    out = tmp_path / f"{task.role}.json"
    subprocess.run([sys.executable, str(script), str(out)], env=env, check=True, timeout=60)
    return json.loads(out.read_text())


def test_a_sedna_script_reads_its_environment_as_under_sedna(tmp_path):
    from cloud_manager.task_builder import build_eval_task, build_inference_task, build_train_task

    from test_cloud_state_machine import template_inputs

    inputs = template_inputs("trainer", "judge", "edge0")

    train = _run_sedna_reader(build_train_task(inputs, 1, 1, (0, 600), None, 60.0), tmp_path)
    assert train["original_dataset_url"] == inputs.dataset.spec.url
    assert train["train_dataset_url"] == "/output/1/train.txt"
    assert train["model_url"] == "/output/1"
    assert (train["namespace"], train["job_name"]) == ("neptune-test", "helmet-detection-demo")
    assert train["worker_name"].startswith("train-worker-") and len(train["worker_name"]) == 18
    assert train["class_names"] == "person,helmet,helmet-on,helmet-off"

    evaluate = _run_sedna_reader(build_eval_task(inputs, 1, 1, None, None, 60.0), tmp_path)
    assert evaluate["test_dataset_url"] == "/output/1/eval.txt"
    assert evaluate["original_dataset_url"] == inputs.dataset.spec.url
    assert evaluate["worker_name"].startswith("eval-worker-")

    infer = _run_sedna_reader(build_inference_task(inputs, None), tmp_path)
    assert infer["worker_name"].startswith("inferworker-")
    # Sedna's parser gets the manifest's parameters, not the {} it read from a JSON object
    assert infer["hem"] == {"method": "IBT",
                            "param": {"threshold_img": "0.9", "threshold_box": "0.9"}}
