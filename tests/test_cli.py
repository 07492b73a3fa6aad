"""The ``edgeloop`` command as a user runs it: a real process, real files, a real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"


def edgeloop(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeloop", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_validate_accepts_the_seed_manifests_as_written():
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    result = edgeloop("validate", "-f", *files)
    assert result.returncode == 0, result.stderr
    assert "IncrementalLearningJob/neptune-test/helmet-detection-demo OK" in result.stdout
    assert len(result.stdout.splitlines()) == 4


def test_validate_reports_every_error_and_exits_1(tmp_path):
    bad = (EXAMPLES / "job.yaml").read_text().replace('operator: ">"', 'operator: ">>"', 1)
    bad = bad.replace("trainProb: 0.8", "trainProb: 1.5")
    path = tmp_path / "job.yaml"
    path.write_text(bad)
    result = edgeloop("validate", "-f", str(path))
    assert result.returncode == 1
    assert (
        "spec.trainSpec.trigger.condition.operator: '>>' is not one of "
        ">, >=, <, <=, ==, =, !=, gt, ge, lt, le, eq, ne" in result.stderr
    )
    assert "spec.dataset.trainProb" in result.stderr


def test_validate_reads_stdin():
    result = edgeloop("validate", "-f", "-", stdin=(EXAMPLES / "dataset.yaml").read_text())
    assert result.returncode == 0
    assert "Dataset/neptune-test/incremental-dataset OK" in result.stdout


def test_apply_dry_run_validates_only():
    result = edgeloop("apply", "-f", str(EXAMPLES), "--dry-run", "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("dry run: not applied") == 4


def test_apply_refuses_invalid_manifests_before_connecting(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: neptune.io/v1alpha1\nkind: Dataset\nmetadata: {name: d}\nspec: {}\n")
    result = edgeloop("apply", "-f", str(path), "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 1
    assert "spec.url" in result.stderr


def test_apply_says_when_the_broker_cannot_be_reached():
    result = edgeloop("apply", "-f", str(EXAMPLES), "--timeout", "1", "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 3
    assert "no connection to the broker at mqtt://127.0.0.1:1" in result.stderr


@pytest.mark.broker
def test_apply_says_when_no_cloud_manager_answers(broker):
    result = edgeloop("apply", "-f", str(EXAMPLES / "dataset.yaml"), "--timeout", "1", "--broker", broker.url)
    assert result.returncode == 3
    assert "is the cloud manager running" in result.stderr


def test_an_edge_install_runs_the_cli_and_names_the_extra_a_command_needs(tmp_path):
    """``pip install 'edgeloop[edge]'`` (no TensorFlow): the control-plane commands work, and a
    command that needs more says which extra, before doing anything."""
    from test_inference import edge_python

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([edge_python(), "-m", "edgeloop", *args], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    validated = run("validate", "-f", str(EXAMPLES))
    assert validated.returncode == 0, validated.stderr
    demo = run("demo", "--workdir", str(tmp_path / "w"))
    assert demo.returncode == 2
    assert "pip install 'edgeloop[demo]'" in demo.stderr
    assert not (tmp_path / "w").exists()
