"""Manifests: the seed's YAML is accepted unchanged, every mistake is reported with its path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgeloop.cli import app
from protocol.manifest_yaml import (
    MAX_NESTING,
    ManifestLoader,
    load_documents,
    load_files,
    parse_manifest,
    read_documents,
    read_files,
)
from protocol.manifests import (
    Dataset,
    IncrementalLearningJob,
    ManifestError,
    Model,
    Timer,
    resource_key,
)
from protocol.metrics_names import MetricRef, check_selector, parse_metric

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"
SEED_FILES = ("dataset.yaml", "initial-model.yaml", "deploy-model.yaml", "job.yaml")
DELETE = object()


def seed(name: str) -> dict[str, Any]:
    return yaml.load((EXAMPLES / name).read_text(), Loader=ManifestLoader)


def mutated(name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The seed document with ``a.b[2].c``-style paths set to new values (or deleted)."""
    data = copy.deepcopy(seed(name))
    for path, value in changes.items():
        dotted = path.replace("[", ".").replace("]", "")
        parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
        parent = data
        for part in parts[:-1]:
            parent = parent[part]
        if value is DELETE:
            del parent[parts[-1]]
        else:
            parent[parts[-1]] = value
    return data


def errors_of(data: Any) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return info.value.errors


def renamed(name: str, path: str, new_key: str) -> dict[str, Any]:
    data = copy.deepcopy(seed(name))
    *parents, key = path.split(".")
    parent = data
    for part in parents:
        parent = parent[part]
    parent[new_key] = parent.pop(key)
    return data


OPERATORS = ">, >=, <, <=, ==, =, !=, gt, ge, lt, le, eq, ne"
NOT_A_TIME = "is not a time of day; expected HH:MM from 00:00 to 23:59"
TRIGGER = "spec.trainSpec.trigger"
DEPLOY_METRIC = "spec.deploySpec.trigger.condition.metric"
EVAL_PARAMS = "spec.evalSpec.workerSpec.parameters"
ALLOWED_METRICS = (
    "allowed: precision, recall, f1, map50, map, sedna_precision, each optionally followed by "
    "_delta (candidate - deployed) and by a class selector [index] or [class-name], "
    "e.g. precision_delta, recall[2], map50[helmet]; a metric an eval script of your own "
    "reports needs customMetric: true in the condition"
)

# (case id, document, exact error lines)
BAD = [
    (
        "operator",
        mutated("job.yaml", {f"{TRIGGER}.condition.operator": ">>"}),
        [f"{TRIGGER}.condition.operator: '>>' is not one of {OPERATORS}"],
    ),
    (
        "api-version",
        mutated("job.yaml", {"apiVersion": "v1"}),
        ["apiVersion: 'v1' is not supported; use neptune.io/v1alpha1 or sedna.io/v1alpha1"],
    ),
    (
        "kind",
        mutated("job.yaml", {"kind": "Job"}),
        ["kind: 'Job' is not one of Dataset, Model, IncrementalLearningJob"],
    ),
    (
        "kind-missing-and-api-version",
        mutated("deploy-model.yaml", {"kind": DELETE, "apiVersion": "x/v1"}),
        [
            "apiVersion: 'x/v1' is not supported; use neptune.io/v1alpha1 or sedna.io/v1alpha1",
            "kind: required field is missing",
        ],
    ),
    (
        "name-missing",
        mutated("dataset.yaml", {"metadata.name": DELETE}),
        ["metadata.name: required field is missing"],
    ),
    (
        "name-invalid",
        mutated("dataset.yaml", {"metadata.name": "Helmet_Data"}),
        [
            "metadata.name: 'Helmet_Data' is not a valid name: use at most 63 lowercase letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        ],
    ),
    (
        "namespace-invalid",
        mutated("dataset.yaml", {"metadata.namespace": "neptune.test"}),
        [
            "metadata.namespace: 'neptune.test' is not a valid namespace: use at most 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit"
        ],
    ),
    (
        "label-not-string",
        mutated("dataset.yaml", {"metadata.labels": {"tier": 1}}),
        ["metadata.labels.tier: expected a string, got 1; quote it"],
    ),
    (
        "typo-condition",
        renamed("job.yaml", f"{TRIGGER}.condition", "condtion"),
        [
            f"{TRIGGER}.condition: required field is missing",
            f"{TRIGGER}.condtion: unknown field (did you mean 'condition'?); "
            "allowed: checkPeriodSeconds, timer, condition",
        ],
    ),
    (
        "typo-top-level",
        renamed("dataset.yaml", "spec", "sepc"),
        [
            "spec: required field is missing",
            "sepc: unknown field (did you mean 'spec'?); "
            "allowed: apiVersion, kind, metadata, spec, status",
        ],
    ),
    (
        "train-prob-zero",
        mutated("job.yaml", {"spec.dataset.trainProb": 0}),
        ["spec.dataset.trainProb: 0 is out of range; must be > 0"],
    ),
    (
        "train-prob-above-one",
        mutated("job.yaml", {"spec.dataset.trainProb": 1.5}),
        ["spec.dataset.trainProb: 1.5 is out of range; must be <= 1"],
    ),
    (
        "threshold-quoted",
        mutated("job.yaml", {f"{TRIGGER}.condition.threshold": "500"}),
        [f"{TRIGGER}.condition.threshold: expected a number, got '500'; write it without quotes"],
    ),
    (
        "threshold-nan",
        mutated("job.yaml", {"spec.deploySpec.trigger.condition.threshold": float("nan")}),
        ["spec.deploySpec.trigger.condition.threshold: expected a finite number, got nan"],
    ),
    (
        "check-period-zero",
        mutated("job.yaml", {f"{TRIGGER}.checkPeriodSeconds": 0}),
        [f"{TRIGGER}.checkPeriodSeconds: 0 is out of range; must be > 0"],
    ),
    (
        "check-period-fraction",
        mutated("job.yaml", {f"{TRIGGER}.checkPeriodSeconds": 1.5}),
        [f"{TRIGGER}.checkPeriodSeconds: expected a whole number, got 1.5"],
    ),
    (
        "train-metric",
        mutated("job.yaml", {f"{TRIGGER}.condition.metric": "precision"}),
        [
            f"{TRIGGER}.condition.metric: 'precision' is not a train trigger metric; "
            "a train trigger counts new samples: use num_of_samples"
        ],
    ),
    (
        "deploy-metric-unknown",
        mutated("job.yaml", {"spec.deploySpec.trigger.condition.metric": "accuracy"}),
        [f"{DEPLOY_METRIC}: unknown metric 'accuracy'; {ALLOWED_METRICS}"],
    ),
    (
        "deploy-metric-class-index",
        mutated("job.yaml", {"spec.deploySpec.trigger.condition.metric": "precision_delta[4]"}),
        [
            f"{DEPLOY_METRIC}: metric 'precision_delta[4]': class index 4 is out of range; "
            "class_names has 4 classes (0..3)"
        ],
    ),
    (
        "deploy-metric-class-name",
        mutated("job.yaml", {"spec.deploySpec.trigger.condition.metric": "recall[dog]"}),
        [
            f"{DEPLOY_METRIC}: metric 'recall[dog]': class 'dog' is not in class_names "
            "(person, helmet, helmet-on, helmet-off)"
        ],
    ),
    (
        "deploy-metric-empty-selector",
        mutated("job.yaml", {"spec.deploySpec.trigger.condition.metric": "map50[]"}),
        [
            f"{DEPLOY_METRIC}: metric 'map50[]': class selector [] must be a class index like [2] "
            "or a class name like [helmet]"
        ],
    ),
    (
        "timer-hour",
        mutated("job.yaml", {f"{TRIGGER}.timer.start": "25:00"}),
        [f"{TRIGGER}.timer.start: '25:00' {NOT_A_TIME}"],
    ),
    (
        "timer-start-24",
        mutated("job.yaml", {f"{TRIGGER}.timer.start": "24:00"}),
        [f"{TRIGGER}.timer.start: '24:00' {NOT_A_TIME}"],
    ),
    (
        "timer-end-past-midnight",
        mutated("job.yaml", {f"{TRIGGER}.timer.end": "24:01"}),
        [f"{TRIGGER}.timer.end: '24:01' is not a time of day; expected HH:MM from 00:00 to 24:00"],
    ),
    (
        "timer-words",
        mutated("job.yaml", {f"{TRIGGER}.timer.start": "2pm"}),
        [f"{TRIGGER}.timer.start: '2pm' {NOT_A_TIME}"],
    ),
    (
        "timer-seconds",
        mutated("job.yaml", {f"{TRIGGER}.timer.start": "02:00:00"}),
        [f"{TRIGGER}.timer.start: '02:00:00' {NOT_A_TIME}"],
    ),
    (
        "parameter-bool",
        mutated("job.yaml", {"spec.trainSpec.workerSpec.parameters[0].value": True}),
        ["spec.trainSpec.workerSpec.parameters[0].value: expected a string, got True; quote it"],
    ),
    (
        "parameter-duplicate",
        mutated("job.yaml", {"spec.trainSpec.workerSpec.parameters[1].key": "batch_size"}),
        [
            "spec.trainSpec.workerSpec.parameters[1].key: key 'batch_size' appears twice "
            "(items 0 and 1)"
        ],
    ),
    (
        "class-names-duplicate",
        mutated("job.yaml", {f"{EVAL_PARAMS}[1].value": "person,helmet,person"}),
        [
            f"{EVAL_PARAMS}[1].value: class_names 'person,helmet,person': "
            "'person' appears more than once"
        ],
    ),
    (
        "hard-example-mining",
        mutated("job.yaml", {"spec.deploySpec.hardExampleMining.name": "ibt"}),
        [
            "spec.deploySpec.hardExampleMining.name: "
            "'ibt' is not one of IBT, CrossEntropy, Threshold, Random"
        ],
    ),
    (
        "framework-version-number",
        mutated("job.yaml", {"spec.evalSpec.workerSpec.frameworkVersion": 1.15}),
        ["spec.evalSpec.workerSpec.frameworkVersion: expected a string, got 1.15; quote it"],
    ),
    (
        "script-missing",
        mutated("job.yaml", {"spec.deploySpec.workerSpec.scriptBootFile": DELETE}),
        ["spec.deploySpec.workerSpec.scriptBootFile: required field is missing"],
    ),
    (
        "poll-period-negative",
        mutated("job.yaml", {"spec.deploySpec.model.pollPeriodSeconds": -1}),
        ["spec.deploySpec.model.pollPeriodSeconds: -1 is out of range; must be > 0"],
    ),
    (
        "hot-update-string",
        mutated("job.yaml", {"spec.deploySpec.model.hotUpdateEnabled": "yes"}),
        ["spec.deploySpec.model.hotUpdateEnabled: expected true or false, got 'yes'"],
    ),
    (
        "section-not-mapping",
        mutated("job.yaml", {"spec.evalSpec": ["scriptDir"]}),
        ["spec.evalSpec: expected a mapping, got a list"],
    ),
    (
        "dataset-format",
        mutated("dataset.yaml", {"spec.format": "csv"}),
        ["spec.format: 'csv' is not one of txt"],
    ),
    (
        "dataset-node",
        mutated("dataset.yaml", {"spec.nodeName": DELETE}),
        ["spec.nodeName: required field is missing"],
    ),
    (
        "model-url-empty",
        mutated("initial-model.yaml", {"spec.url": " "}),
        ["spec.url: must not be empty"],
    ),
    (
        "not-a-mapping",
        ["kind", "Model"],
        ["expected a mapping with apiVersion, kind, metadata and spec, got a list"],
    ),
    (
        "several-at-once",
        mutated(
            "job.yaml",
            {
                f"{TRIGGER}.condition.operator": "=>",
                f"{TRIGGER}.timer.start": "7",
                "spec.deploySpec.trigger.condition.metric": "precison_delta",
                "spec.outputDir": DELETE,
            },
        ),
        [
            f"{TRIGGER}.timer.start: '7' {NOT_A_TIME}",
            f"{TRIGGER}.condition.operator: '=>' is not one of {OPERATORS}",
            f"{DEPLOY_METRIC}: unknown metric 'precison_delta'; {ALLOWED_METRICS}",
            "spec.outputDir: required field is missing",
        ],
    ),
]


@pytest.mark.parametrize(
    ("document", "expected"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_manifest_reports_exact_errors(document, expected):
    assert errors_of(document) == expected


def test_manifest_error_lists_every_error_in_its_text():
    error = ManifestError(["a: one", "b: two"])
    assert isinstance(error, ValueError)
    assert str(error) == "a: one\nb: two"


# --- good manifests ---------------------------------------------------------------------------


def test_seed_manifests_load_unchanged():
    manifests = load_files([EXAMPLES / name for name in SEED_FILES])
    assert [resource_key(m) for m in manifests] == [
        ("Dataset", "neptune-test", "incremental-dataset"),
        ("Model", "neptune-test", "initial-model"),
        ("Model", "neptune-test", "deploy-model"),
        ("IncrementalLearningJob", "neptune-test", "helmet-detection-demo"),
    ]
    dataset, initial, deploy, job = manifests
    assert isinstance(dataset, Dataset)
    assert dataset.spec.url == "/data/helmet_detection/dataset/data.txt"
    assert isinstance(initial, Model) and initial.spec.format == "ckpt"
    assert isinstance(deploy, Model) and deploy.spec.url == "/deploy/model.pb"
    assert isinstance(job, IncrementalLearningJob)
    trigger = job.spec.train_spec.trigger
    assert (trigger.timer.start, trigger.timer.end) == ("02:00", "04:00")
    assert trigger.check_period_seconds == 60
    assert trigger.condition.holds(501) and not trigger.condition.holds(500)
    assert job.spec.dataset.train_prob == 0.8
    assert job.spec.class_names() == ("person", "helmet", "helmet-on", "helmet-off")
    assert job.spec.deploy_spec.worker_spec.parameters_dict()["HE_SAVED_URL"] == "/he_saved_url"
    assert job.spec.deploy_spec.hard_example_mining.name == "IBT"
    assert job.references() == [
        ("Dataset", "neptune-test", "incremental-dataset"),
        ("Model", "neptune-test", "initial-model"),
        ("Model", "neptune-test", "deploy-model"),
    ]


def test_directory_loads_all_its_manifests():
    assert len(load_files([EXAMPLES])) == 4


@pytest.mark.parametrize("name", SEED_FILES)
def test_dump_by_alias_gives_back_the_yaml_shape(name):
    manifest = load_files([EXAMPLES / name])[0]
    assert manifest.model_dump(by_alias=True, exclude_unset=True) == seed(name)


def test_sedna_api_version_and_later_sedna_fields():
    data = mutated(
        "job.yaml",
        {
            "apiVersion": "sedna.io/v1alpha1",
            "metadata.labels": {"app": "helmet"},
            "metadata.annotations": {"note": "site 3"},
            "spec.deploySpec.model.hotUpdateEnabled": True,
            "spec.deploySpec.model.pollPeriodSeconds": 30,
            "spec.deploySpec.hardExampleMining.parameters": [
                {"key": "threshold_img", "value": 0.9},
                {"key": "threshold_box", "value": "0.5"},
            ],
            "spec.evalSpec.initialEvalModel": {"name": "deploy-model"},
            "spec.deploySpec.trigger.condition.metric": "map50_delta[helmet-on]",
        },
    )
    job = parse_manifest(data)
    assert job.api_version == "sedna.io/v1alpha1"
    assert job.metadata.labels == {"app": "helmet"}
    assert job.spec.deploy_spec.model.poll_period_seconds == 30
    assert job.spec.deploy_spec.hard_example_mining.parameters_dict() == {
        "threshold_img": "0.9",
        "threshold_box": "0.5",
    }
    assert ("Model", "neptune-test", "deploy-model") in job.references()
    dataset = parse_manifest(
        mutated("dataset.yaml", {"apiVersion": "sedna.io/v1alpha1", "spec.credentialName": "s3"})
    )
    assert dataset.spec.credential_name == "s3"


def test_unquoted_numbers_in_parameters_become_strings():
    text = (EXAMPLES / "job.yaml").read_text().replace('value: "32"', "value: 32")
    job = load_documents(text)[0]
    assert job.spec.train_spec.worker_spec.parameters_dict()["batch_size"] == "32"


def _job_with_timer(start: str, end: str) -> IncrementalLearningJob:
    text = (EXAMPLES / "job.yaml").read_text()
    text = text.replace("start: 02:00", f"start: {start}").replace("end: 04:00", f"end: {end}")
    return load_documents(text)[0]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("20:00", "23:00", ("20:00", "23:00")),
        ("02:00", "04:00", ("02:00", "04:00")),
        ('"02:00"', '"04:00"', ("02:00", "04:00")),
        ("00:30", "01:00", ("00:30", "01:00")),
        ("22:00", "04:00", ("22:00", "04:00")),
        ("2:00", "4:30", ("02:00", "04:30")),
        ("23:00", "24:00", ("23:00", "24:00")),
    ],
)
def test_unquoted_times_keep_their_meaning(start, end, expected):
    timer = _job_with_timer(start, end).spec.train_spec.trigger.timer
    assert (timer.start, timer.end) == expected


def test_loader_keeps_clock_times_as_strings_but_not_other_numbers():
    data = yaml.load("a: 20:00\nb: 2:00\nc: 1:30:00\nd: 42\ne: 0.5", Loader=ManifestLoader)
    assert data == {"a": "20:00", "b": "2:00", "c": 5400, "d": 42, "e": 0.5}
    assert yaml.safe_load("a: 20:00") == {"a": 1200}  # SafeLoader itself is left alone


def test_times_already_read_as_base_60_integers_are_turned_back():
    data = yaml.safe_load((EXAMPLES / "job.yaml").read_text().replace("02:00", "20:00"))
    assert data["spec"]["trainSpec"]["trigger"]["timer"]["start"] == 1200
    job = parse_manifest(json.loads(json.dumps(data)))
    assert job.spec.train_spec.trigger.timer.start == "20:00"


def test_timer_window_crossing_midnight():
    timer = Timer.model_validate({"start": "22:00", "end": "04:00"})
    assert [timer.contains(h * 60) for h in (21, 22, 23, 0, 3, 4, 12)] == [
        False, True, True, True, True, True, False,
    ]
    assert not timer.contains(4 * 60 + 1)
    day = Timer.model_validate({"start": "09:00", "end": "17:00"})
    assert day.contains(9 * 60) and day.contains(17 * 60 - 1) and not day.contains(9 * 60 - 1)


def test_timer_includes_its_end_minute_as_sedna_does():
    """Sedna's local controller holds the window while ``start <= "HH:MM" <= end``."""
    day = Timer.model_validate({"start": "02:00", "end": "20:00"})
    assert day.contains(20 * 60) and not day.contains(20 * 60 + 1)
    whole_day = Timer.model_validate({"start": "00:00", "end": "24:00"})
    assert all(whole_day.contains(m) for m in (0, 720, 1439))


def test_timer_with_start_equal_to_end_is_that_one_minute():
    job = parse_manifest(mutated("job.yaml", {f"{TRIGGER}.timer.end": "02:00"}))
    timer = job.spec.train_spec.trigger.timer
    assert [timer.contains(m) for m in (119, 120, 121)] == [False, True, False]


def test_single_equals_operator_means_equal_as_in_sedna():
    data = mutated("job.yaml", {"spec.deploySpec.trigger.condition.operator": "="})
    condition = parse_manifest(data).spec.deploy_spec.trigger.condition
    assert condition.holds(0.1) and not condition.holds(0.2)


@pytest.mark.parametrize(
    ("operator", "value", "holds"),
    [
        (">", 0.2, True),
        ("gt", 0.1, False),
        (">=", 0.1, True),
        ("le", 0.1, True),
        ("!=", 0.1, False),
    ],
)
def test_operators_symbol_and_word_forms(operator, value, holds):
    data = mutated("job.yaml", {"spec.deploySpec.trigger.condition.operator": operator})
    assert parse_manifest(data).spec.deploy_spec.trigger.condition.holds(value) is holds


def test_status_block_and_server_metadata_are_ignored():
    data = mutated(
        "job.yaml",
        {
            "status": {"conditions": [{"type": "Running", "stage": "Train"}]},
            "metadata.uid": "0b1c",
            "metadata.resourceVersion": "42",
            "metadata.creationTimestamp": "2021-01-01T00:00:00Z",
        },
    )
    dumped = parse_manifest(data).model_dump(by_alias=True, exclude_unset=True)
    assert "status" not in dumped
    assert dumped["metadata"] == {"name": "helmet-detection-demo", "namespace": "neptune-test"}


def test_namespace_defaults_to_default():
    model = parse_manifest(mutated("initial-model.yaml", {"metadata.namespace": DELETE}))
    assert resource_key(model) == ("Model", "default", "initial-model")


# --- documents ---------------------------------------------------------------------------------


def test_multi_document_errors_name_the_document_and_empty_documents_are_skipped():
    good = (EXAMPLES / "initial-model.yaml").read_text()
    bad = (EXAMPLES / "job.yaml").read_text().replace('operator: ">"', 'operator: ">>"', 1)
    text = f"---\n{good}---\n---\n{bad}"
    with pytest.raises(ManifestError) as info:
        load_documents(text, "job.yaml")
    assert info.value.errors == [
        "job.yaml#3 (IncrementalLearningJob helmet-detection-demo): "
        f"{TRIGGER}.condition.operator: '>>' is not one of {OPERATORS}"
    ]
    assert [resource_key(m) for m in load_documents(f"---\n{good}---\n---\n")] == [
        ("Model", "neptune-test", "initial-model")
    ]


def test_duplicate_key_is_an_error_with_its_line():
    text = "apiVersion: sedna.io/v1alpha1\nkind: Model\nkind: Dataset\n"
    with pytest.raises(ManifestError) as info:
        load_documents(text)
    assert info.value.errors == [
        "invalid YAML at line 3, column 1: duplicate key 'kind' (first given at line 2)"
    ]


def test_yaml_syntax_error_keeps_earlier_documents_errors():
    text = "kind: Model\n---\nkind: [unclosed\n"
    with pytest.raises(ManifestError) as info:
        load_documents(text, "m.yaml")
    assert info.value.errors == [
        "m.yaml#1 (Model): apiVersion: required field is missing",
        "m.yaml#1 (Model): metadata: required field is missing",
        "m.yaml#1 (Model): spec: required field is missing",
        "m.yaml: invalid YAML at line 4, column 1: expected ',' or ']', but got '<stream end>'",
    ]


def test_resource_defined_twice_is_an_error():
    text = (EXAMPLES / "dataset.yaml").read_text()
    with pytest.raises(ManifestError) as info:
        load_documents(f"{text}---\n{text}", "d.yaml")
    assert info.value.errors == [
        "d.yaml#2 (Dataset incremental-dataset): Dataset/neptune-test/incremental-dataset is "
        "defined twice; first in d.yaml#1 (Dataset incremental-dataset)"
    ]


def test_same_file_named_twice_is_read_once():
    documents = read_files([EXAMPLES / "dataset.yaml", EXAMPLES])
    assert len(documents) == 4 and all(d.manifest is not None for d in documents)


# --- metric grammar ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("precision", MetricRef("precision")),
        ("precision_delta", MetricRef("precision", delta=True)),
        ("map", MetricRef("map")),
        ("map50_delta[2]", MetricRef("map50", delta=True, selector=2)),
        ("f1[helmet-on]", MetricRef("f1", selector="helmet-on")),
        ("recall_delta[person]", MetricRef("recall", delta=True, selector="person")),
    ],
)
def test_parse_metric(name, ref):
    assert parse_metric(name) == ref
    assert str(ref) == name


@pytest.mark.parametrize(
    "name",
    [
        "accuracy",
        "precision_",
        "delta",
        "Precision",
        "map50_delta_delta",
        "f1[a b]",
        "f1[1]x",
        "num_of_samples",
    ],
)
def test_parse_metric_rejects_with_what_is_allowed(name):
    with pytest.raises(ValueError, match="precision, recall, f1, map50, map|class selector"):
        parse_metric(name)


def test_class_selector_checked_against_class_names():
    names = ("person", "helmet")
    check_selector(parse_metric("recall[1]"), names)
    check_selector(parse_metric("recall[helmet]"), names)
    with pytest.raises(ValueError, match="out of range"):
        check_selector(parse_metric("recall[2]"), names)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_validate_examples_ok():
    result = CliRunner().invoke(app, ["validate", "-f", *[str(EXAMPLES / n) for n in SEED_FILES]])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Dataset/neptune-test/incremental-dataset OK",
        "Model/neptune-test/initial-model OK",
        "Model/neptune-test/deploy-model OK",
        "IncrementalLearningJob/neptune-test/helmet-detection-demo OK",
    ]


def test_cli_validate_names_the_edgeloop_extensions_a_job_uses():
    job = (EXAMPLES / "job.yaml").read_text().replace(
        "    hardExampleMining:", "    blindSpotMining:\n      emptyFrameEvery: 25\n"
        "    hardExampleMining:", 1)
    result = CliRunner().invoke(app, ["validate", "-f", "-"], input=job)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "IncrementalLearningJob/neptune-test/helmet-detection-demo OK "
        "(edgeloop extension: spec.deploySpec.blindSpotMining)"
    ]


def test_cli_validate_prints_every_error_and_exits_1():
    bad = (EXAMPLES / "job.yaml").read_text().replace('">"', '">>"')
    bad = bad.replace("trainProb: 0.8", "trainProb: 2")
    args = ["validate", "-f", "-", "-f", str(EXAMPLES / "dataset.yaml")]
    result = CliRunner().invoke(app, args, input=bad)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["Dataset/neptune-test/incremental-dataset OK"]
    prefix = "<stdin>#1 (IncrementalLearningJob helmet-detection-demo): "
    assert result.stderr.splitlines() == [
        f"{prefix}spec.dataset.trainProb: 2 is out of range; must be <= 1",
        f"{prefix}{TRIGGER}.condition.operator: '>>' is not one of {OPERATORS}",
        f"{prefix}spec.deploySpec.trigger.condition.operator: '>>' is not one of {OPERATORS}",
        "1 of 2 documents invalid",
    ]


def test_cli_validate_missing_file(tmp_path):
    args = ["validate", "-f", str(tmp_path / "nope.yaml"), "-f", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory" in result.stderr
    assert f"{tmp_path}: no .yaml, .yml, .json files in this directory" in result.stderr


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return []
    return [p for key, child in items for p in [(*prefix, key), *_paths(child, (*prefix, key))]]


@pytest.mark.parametrize("replacement", [None, 7, -1.5, "x", "", [], [1], {}, {"zz": 1}, True])
def test_any_replaced_field_gives_manifest_error_never_a_crash(replacement):
    original = seed("job.yaml")
    for path in _paths(original):
        data = copy.deepcopy(original)
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = replacement
        try:
            parse_manifest(data)
        except ManifestError as exc:
            assert exc.errors and all(isinstance(line, str) and line for line in exc.errors)


# --- nesting -------------------------------------------------------------------------------------

DEEP_BLOCK = "".join("  " * i + "a:\n" for i in range(5000))
DEEP_MAPS = "{a: " * 5000 + "}" * 5000
DEEP_FLOW = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("text", [DEEP_BLOCK, DEEP_FLOW, DEEP_MAPS], ids=["block", "flow", "maps"])
def test_deep_nesting_is_an_error_not_a_recursion_error(text):
    (document,) = read_documents(text)
    assert document.manifest is None
    assert len(document.errors) == 1 and f"nested more than {MAX_NESTING} levels deep" in document.errors[0]


def test_apply_of_a_deeply_nested_file_prints_the_error_without_a_traceback(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text(DEEP_BLOCK)
    result = CliRunner().invoke(app, ["apply", "--dry-run", "-f", str(deep)])
    assert result.exit_code == 1
    assert f"nested more than {MAX_NESTING} levels deep" in result.output
    assert "Traceback" not in result.output and "RecursionError" not in result.output


def test_custom_metric_and_forgetting_margin_extensions():
    deploy = "spec.deploySpec.trigger"
    job = parse_manifest(mutated("job.yaml", {f"{deploy}.condition.metric": "accuracy_delta[1]",
                                              f"{deploy}.condition.customMetric": True,
                                              f"{deploy}.forgettingMargin": 0.05}))
    trigger = job.spec.deploy_spec.trigger
    assert trigger.condition.ref() == MetricRef("accuracy", delta=True, selector=1)
    assert trigger.forgetting_margin == 0.05
    # the default protects: 0.02
    assert parse_manifest(seed("job.yaml")).spec.deploy_spec.trigger.forgetting_margin == 0.02
    assert parse_metric("sedna_precision_delta[helmet]") == MetricRef(
        "sedna_precision", delta=True, selector="helmet")
    assert errors_of(mutated("job.yaml", {f"{deploy}.forgettingMargin": -0.1})) == [
        f"{deploy}.forgettingMargin: -0.1 is out of range; must be >= 0"]
    assert errors_of(mutated("job.yaml", {f"{deploy}.condition.metric": "a b",
                                          f"{deploy}.condition.customMetric": True})) == [
        f"{DEPLOY_METRIC}: custom metric 'a b': a name of letters, digits and underscores is "
        "required, optionally followed by _delta and a class selector [index] or [class-name]"]
