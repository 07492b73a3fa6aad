"""The capture policy: the manifest extension, the pure decisions (sampling, caps per calendar
period and per reason) and the worker side (size, JPEG quality, examples kept aside at a cap)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol import worker_contract as contract
from protocol.data_policies import CapturePolicy, CaptureSettings
from protocol.messages import HardExampleSidecar
from workers.capture_policy import (
    Capture,
    CaptureGate,
    CaptureState,
    decide,
    example_score,
    fit_within,
    record,
    sampled,
)
from workers.hardex_store import HardExampleStore


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the extension ------------------------------------------------------------------------------


def test_camera_settings_override_the_jobs_field_by_field():
    policy = CapturePolicy.model_validate({
        "perDay": 300, "sampleRate": 0.5, "jpegQuality": 80,
        "cameras": {"gate": {"perDay": 10, "maxSide": 640}},
    })
    gate = policy.for_camera("gate")
    assert (gate.per_day, gate.max_side, gate.sample_rate, gate.jpeg_quality) == (10, 640, 0.5, 80)
    assert policy.for_camera("").per_day == 300 and policy.for_camera("").max_side is None
    assert contract.parse_capture_policy(contract.policy_json(policy)) == policy


def test_bad_capture_settings_name_the_field():
    with pytest.raises(ValidationError, match="unknown mining reason 'rules'"):
        CapturePolicy.model_validate({"byReason": {"rules": {"perDay": 1}}})
    with pytest.raises(ValidationError, match="sampleRate"):
        CapturePolicy.model_validate({"sampleRate": 0})
    with pytest.raises(ValueError, match="EDGELOOP_CAPTURE_POLICY: onCap"):
        contract.parse_capture_policy('{"onCap": "drop"}')


# --- the decisions ------------------------------------------------------------------------------


@given(st.floats(0.01, 1.0), st.integers(1, 2000))
def test_sampling_keeps_floor_n_times_rate_spread_evenly(rate, n):
    kept = [i for i in range(1, n + 1) if sampled(i, rate)]
    assert len(kept) == int(n * rate + 1e-9)
    if len(kept) > 1:  # evenly: gaps differ by at most one frame
        gaps = np.diff(kept)
        assert gaps.max() - gaps.min() <= 1


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 5), st.integers(0, 20),
    st.lists(st.tuples(st.floats(0, 7200), st.sampled_from(["rule", "empty-frame"])),
             max_size=300),
)
def test_no_calendar_period_ever_holds_more_saves_than_its_cap(per_minute, per_rule_hour, events):
    policy = CaptureSettings.model_validate(
        {"perMinute": per_minute, "byReason": {"rule": {"perHour": per_rule_hour}}})
    state = CaptureState()
    saves: list[tuple[float, str]] = []
    t = 0.0
    for step, reason in events:
        t += step / 50  # increasing times, minutes apart at most
        if decide(state, policy, t, reason).save:
            record(state, policy, t, reason)
            saves.append((t, reason))
    per_minute_seen: dict[int, int] = {}
    per_hour_rule: dict[int, int] = {}
    for t, reason in saves:
        per_minute_seen[int(t // 60)] = per_minute_seen.get(int(t // 60), 0) + 1
        if reason == "rule":
            per_hour_rule[int(t // 3600)] = per_hour_rule.get(int(t // 3600), 0) + 1
    assert all(n <= per_minute for n in per_minute_seen.values())
    assert all(n <= per_rule_hour for n in per_hour_rule.values())


def test_the_gate_counts_skips_by_the_rule_that_skipped():
    clock = FakeClock(86400 * 100)
    gate = CaptureGate(CaptureSettings.model_validate({"perDay": 2, "sampleRate": 0.5}), clock)
    outcomes = []
    for _ in range(8):
        verdict = gate.judge("rule")
        if verdict.save:
            gate.saved("rule")
        outcomes.append(verdict.outcome)
    assert outcomes.count("save") == 2
    assert gate.counters.skipped == {"sampled-out": 4, "cap:day": 2}
    clock.now += 86400  # the next day
    assert [gate.judge("rule").outcome for _ in range(2)] == ["sampled-out", "save"]


# --- the worker side ----------------------------------------------------------------------------


def test_fit_within_scales_down_only():
    image = np.zeros((480, 1280, 3), np.uint8)
    small, scale = fit_within(image, 640)
    assert small.shape[:2] == (240, 640) and scale == 0.5
    assert fit_within(image, 2000)[1] == 1.0 and fit_within(image, None)[1] == 1.0


def test_example_score_is_the_models_doubt():
    assert example_score(np.array([0.2, 0.4])) == pytest.approx(0.7)
    assert example_score(np.array([])) == 1.0


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (120, 160, 3), np.uint8)


def _save(capture: Capture, store: HardExampleStore, seed: int) -> bool:
    placed = capture.place("rule", _frame(seed), store)
    if placed is None:
        return False
    target, image, _ = placed
    saved = target.save(image, HardExampleSidecar(frame_index=seed, mining_reason="rule"))
    return saved is not None and capture.saved(saved, "rule")


def test_kept_at_the_cap_then_released_when_the_next_period_allows(tmp_path: Path):
    clock = FakeClock(86400 * 200)
    settings_ = CaptureSettings.model_validate(
        {"perMinute": 2, "onCap": "keep", "jpegQuality": 50, "maxSide": 80})
    store = HardExampleStore(tmp_path / "he", 2**20, dedup_distance=0, jpeg_quality=50)
    capture = Capture(settings_, tmp_path / "he", clock)
    assert [_save(capture, store, i) for i in range(5)] == [True, True, False, False, False]
    assert len(list((tmp_path / "he").glob("*.json"))) == 2
    assert len(list((tmp_path / "he" / "held").glob("*.json"))) == 3
    assert capture.release_due() == []  # same minute: the cap still holds
    clock.now += 60
    released = capture.release_due()
    assert len(released) == 2  # the next minute's cap
    assert all(p.sidecar_path.parent == tmp_path / "he" for p in released)
    assert capture.counters() == {"saved": 4, "skipped": {}, "held": 3, "released": 2,
                                  "held_waiting": 1}
    document = json.loads(released[0].sidecar_path.read_text())
    assert cv2.imread(str(tmp_path / "he" / document["image"])).shape[:2] == (60, 80)
    # a restarted worker finds what waits aside
    assert len(Capture(settings_, tmp_path / "he", clock).held.waiting) == 1  # type: ignore[union-attr]


# --- from the manifest to the worker ------------------------------------------------------------


POLICIES = """    capturePolicy:
      perDay: 300
      onCap: keep
      cameras:
        gate: {perDay: 20, maxSide: 640}
    uploadPolicy:
      windows: ["22:00-06:00"]
      bytesPerMonth: 2000000000
    hardExampleMining:"""


def test_validate_names_the_policies_and_the_inference_task_carries_them(tmp_path: Path):
    from typer.testing import CliRunner

    from cloud_manager.task_builder import build_inference_task
    from edgeloop.cli import app
    from protocol.manifests import IncrementalLearningJob
    from test_cloud_state_machine import EXAMPLES, seed_inputs

    job = (EXAMPLES / "job.yaml").read_text().replace("    hardExampleMining:", POLICIES, 1)
    result = CliRunner().invoke(app, ["validate", "-f", "-"], input=job)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "IncrementalLearningJob/neptune-test/helmet-detection-demo OK (edgeloop extension: "
        "spec.deploySpec.capturePolicy, spec.deploySpec.uploadPolicy)"
    ]
    inputs = seed_inputs()
    data = inputs.job.model_dump(by_alias=True, exclude_unset=True)
    data["spec"]["deploySpec"] |= {"capturePolicy": {"perDay": 300, "cameras": {"gate": {
        "perDay": 20}}}, "uploadPolicy": {"windows": ["22:00-06:00"]}}
    inputs = dataclasses.replace(inputs, job=IncrementalLearningJob.model_validate(data))
    env = build_inference_task(inputs, None).env
    policy = contract.parse_capture_policy(env[contract.CAPTURE_POLICY])
    assert policy is not None and policy.for_camera("gate").per_day == 20
    upload = contract.parse_upload_policy(env[contract.UPLOAD_POLICY])
    assert upload is not None and upload.windows == ["22:00-06:00"]


def test_capture_policy_needs_mining():
    from protocol.manifests import DeploySpec

    with pytest.raises(ValidationError, match="capturePolicy extends hardExampleMining"):
        DeploySpec.model_validate({
            "model": {"name": "m"}, "trigger": {"condition": {
                "operator": ">", "threshold": 0.1, "metric": "precision_delta"}},
            "nodeName": "edge0", "workerSpec": {"scriptDir": "/c", "scriptBootFile": "i.py"},
            "capturePolicy": {"perDay": 1}})


def test_the_worker_reads_its_cameras_settings(tmp_path: Path):
    from workers import sdk
    from workers.inference import capture_of

    policy = CapturePolicy.model_validate({"perDay": 300, "cameras": {"gate": {"perDay": 20}}})
    values = {contract.CAPTURE_POLICY: contract.policy_json(policy),
              "HE_SAVED_URL": str(tmp_path / "he")}
    single = capture_of(sdk.Parameters(values))
    assert single is not None and single.settings.per_day == 300  # no camera name: the job's
    gate = capture_of(sdk.Parameters(values | {contract.CAMERA: "gate"}))
    assert gate is not None and gate.settings.per_day == 20
    assert capture_of(sdk.Parameters({"HE_SAVED_URL": str(tmp_path)})) is None  # none: today's
    with pytest.raises(sdk.ParameterError, match="EDGELOOP_CAPTURE_POLICY"):
        capture_of(sdk.Parameters(values | {contract.CAPTURE_POLICY: '{"perDay": -1}'}))
