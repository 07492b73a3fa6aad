"""Blind-spot mining: the empty-frame floor, the switch to uniform sampling when detections drop
against the node's own baseline, its hysteresis, and its settings from manifest to worker."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import worker_contract as contract
from protocol.manifests import BlindSpotMining, ManifestError
from workers.blind_spot import (
    DETECTION_DROP,
    EMPTY_FRAME,
    MINING_REASONS,
    BlindSpotMonitor,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"


def run(monitor: BlindSpotMonitor, boxes: Sequence[int]) -> list[str | None]:
    return [monitor.observe(n) for n in boxes]


def monitor(**fields: object) -> BlindSpotMonitor:
    return BlindSpotMonitor(BlindSpotMining.model_validate(fields))


# --- the empty-frame floor ----------------------------------------------------------------------


def test_one_in_n_empty_frames_is_sampled_and_frames_with_boxes_never_are():
    m = monitor(emptyFrameEvery=4, windowFrames=5, baselineFrames=10, minBaseline=100)
    reasons = run(m, [0, 0, 0, 0, 3, 0, 0, 0, 0, 2, 2])
    assert reasons == [None, None, None, EMPTY_FRAME, None, None, None, None, EMPTY_FRAME,
                       None, None]


def test_the_floor_counts_empty_frames_not_all_frames():
    """Frames with boxes between empty ones do not bring the next sample closer."""
    m = monitor(emptyFrameEvery=3, minBaseline=100)
    reasons = run(m, [0, 5, 5, 5, 0, 5, 5, 0])
    assert reasons.count(EMPTY_FRAME) == 1 and reasons[-1] == EMPTY_FRAME


def test_an_empty_frame_floor_of_zero_samples_nothing():
    m = monitor(emptyFrameEvery=0, minBaseline=100)
    assert set(run(m, [0] * 500)) == {None}


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(st.integers(0, 12), max_size=400), every=st.integers(1, 60))
def test_the_floor_never_samples_more_than_one_frame_in_n(boxes, every):
    m = monitor(emptyFrameEvery=every, minBaseline=1000)  # no drop can happen
    reasons = run(m, boxes)
    sampled = [i for i, r in enumerate(reasons) if r is not None]
    assert all(reasons[i] == EMPTY_FRAME and boxes[i] == 0 for i in sampled)
    assert len(sampled) == boxes.count(0) // every
    assert all(b - a >= every for a, b in zip(sampled, sampled[1:]))


# --- detection drop ----------------------------------------------------------------------------


def test_a_drop_against_the_baseline_switches_to_uniform_sampling_until_it_recovers():
    m = monitor(windowFrames=10, baselineFrames=100, sampleEvery=5, dropRatio=0.5,
                recoverRatio=0.8, emptyFrameEvery=0, minDropFrames=0)
    assert set(run(m, [4] * 100)) == {None}
    assert m.mode == "normal" and m.baseline == pytest.approx(4.0)
    blind = run(m, [0] * 6)
    assert m.mode == "detection-drop" and m.drops == 1
    at_drop = m.baseline
    blind += run(m, [0] * 54)
    first = blind.index(DETECTION_DROP)
    # the window mean falls under 2 (half of 4) at the 6th blind frame: sampling starts there,
    # then one frame in 5, whatever the boxes
    assert first == 5
    assert [i for i, r in enumerate(blind) if r] == list(range(first, 60, 5))
    # the baseline followed the first blind frames a little, then froze for the drop
    assert at_drop == pytest.approx(4.0 * 0.99**5) and m.baseline == at_drop
    # the rate must come back to 0.8 of the baseline, not just over the drop threshold
    run(m, [3] * 10)
    assert m.mode == "detection-drop"
    run(m, [4] * 10)
    assert m.mode == "normal"


def test_a_drop_lasts_its_minimum_before_the_node_returns_to_normal():
    """Shots that alternate between crowded and empty must not flip the mode every window."""
    m = monitor(windowFrames=10, baselineFrames=100, minDropFrames=100, emptyFrameEvery=0)
    run(m, [4] * 100)
    run(m, [0] * 20)
    assert m.mode == "detection-drop"
    run(m, ([4] * 10 + [0] * 10) * 3)  # back up for a window, down again: still one drop
    assert m.mode == "detection-drop" and m.drops == 1
    run(m, [4] * 30)  # 110 frames into the drop, the rate recovered: normal again
    assert m.mode == "normal" and m.drops == 1


def test_a_node_that_never_detected_much_never_flips_into_a_drop():
    """The minimum baseline: a model on a scene with nothing to find stays on the floor."""
    m = monitor(windowFrames=10, baselineFrames=50, minBaseline=0.5, emptyFrameEvery=20)
    reasons = run(m, [0, 0, 0, 1] * 50 + [0] * 200)
    assert m.mode == "normal" and m.drops == 0
    assert DETECTION_DROP not in reasons and reasons.count(EMPTY_FRAME) == 350 // 20


def test_a_gradual_decline_within_the_ratio_is_not_a_drop():
    m = monitor(windowFrames=20, baselineFrames=200, dropRatio=0.5)
    run(m, [4] * 200 + [3] * 200)
    assert m.mode == "normal"


def test_disabled_samples_nothing():
    m = monitor(enabled=False, emptyFrameEvery=1)
    assert set(run(m, [5] * 100 + [0] * 100)) == {None}
    assert m.baseline is None


@settings(max_examples=150, deadline=None)
@given(
    day=st.integers(1, 9), day_frames=st.integers(60, 300), night_frames=st.integers(1, 400),
    every=st.integers(1, 20),
)
def test_after_a_blackout_the_node_samples_one_in_n_of_the_blind_frames(
    day, day_frames, night_frames, every
):
    m = monitor(windowFrames=20, baselineFrames=200, sampleEvery=every, minBaseline=0.5)
    run(m, [day] * day_frames)
    reasons = run(m, [0] * night_frames)
    sampled = sum(r is not None for r in reasons)
    assert all(r in (None, DETECTION_DROP, EMPTY_FRAME) for r in reasons)
    if night_frames >= 20:  # a full window of nothing is below any ratio of a positive baseline
        assert m.mode == "detection-drop"
        assert sampled >= (night_frames - 20) // every


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(st.integers(0, 30), max_size=600))
def test_any_stream_gives_known_reasons_and_a_sane_state(boxes):
    m = monitor(windowFrames=15, baselineFrames=60, sampleEvery=3, emptyFrameEvery=7)
    reasons = run(m, boxes)
    assert set(reasons) <= {None, *MINING_REASONS}
    if m.baseline is not None:
        assert 0.0 <= m.baseline <= 30.0
    assert (m.mode == "detection-drop") <= (m.drops > 0)
    counts = Counter(reasons)
    assert counts[EMPTY_FRAME] <= boxes.count(0)


# --- settings: manifest, worker contract ---------------------------------------------------------


def job_with(blind_spot: object, drop_mining: bool = False) -> dict:
    job = yaml.safe_load((EXAMPLES / "job.yaml").read_text())
    deploy = job["spec"]["deploySpec"]
    if drop_mining:
        deploy.pop("hardExampleMining")
    deploy["blindSpotMining"] = blind_spot
    return job


def parse_errors(document: dict) -> list[str]:
    from protocol.manifest_yaml import parse_manifest

    with pytest.raises(ManifestError) as caught:
        parse_manifest(copy.deepcopy(document))
    return caught.value.errors


def test_the_defaults_are_on_and_reach_the_worker():
    from protocol.manifest_yaml import parse_manifest

    seed = yaml.safe_load((EXAMPLES / "job.yaml").read_text())
    job = parse_manifest(seed)
    assert job.spec.deploy_spec.blind_spot_mining is None  # Sedna's manifest has no such field
    assert job.spec.deploy_spec.blind_spot() == BlindSpotMining()
    assert BlindSpotMining().enabled
    tuned = parse_manifest(job_with({"emptyFrameEvery": 25, "dropRatio": 0.4}))
    settings_ = tuned.spec.deploy_spec.blind_spot()
    assert settings_ is not None and (settings_.empty_frame_every, settings_.drop_ratio) == (25, 0.4)
    env = contract.WorkerEnvironment(blind_spot=settings_).to_env()
    assert contract.WorkerEnvironment.from_env(env).blind_spot == settings_


@pytest.mark.parametrize(
    ("blind_spot", "expected"),
    [
        ({"emptyFrameEvery": -1}, "blindSpotMining.emptyFrameEvery"),
        ({"dropRatio": 1.5}, "blindSpotMining.dropRatio"),
        ({"dropRatio": "0.5"}, "blindSpotMining.dropRatio"),
        ({"sampleEvery": 0}, "blindSpotMining.sampleEvery"),
        ({"window": 10}, "blindSpotMining.window"),
        ({"dropRatio": 0.7, "recoverRatio": 0.6}, "recoverRatio 0.6 is below dropRatio 0.7"),
        ({"windowFrames": 100, "baselineFrames": 50}, "baselineFrames 50 is shorter"),
    ],
)
def test_bad_settings_are_refused_with_their_path(blind_spot, expected):
    errors = parse_errors(job_with(blind_spot))
    assert len(errors) == 1 and expected in errors[0], errors
    assert "spec.deploySpec.blindSpotMining" in errors[0]


def test_blind_spot_mining_without_hard_example_mining_is_refused():
    (error,) = parse_errors(job_with({"enabled": True}, drop_mining=True))
    assert "spec.deploySpec.blindSpotMining" in error
    assert "extends hardExampleMining, which is not set" in error


def test_a_bad_environment_value_names_the_variable():
    with pytest.raises(ValueError, match="EDGELOOP_BLIND_SPOT: dropRatio"):
        contract.WorkerEnvironment.from_env({contract.BLIND_SPOT: '{"dropRatio": 3}'})
    with pytest.raises(ValueError, match="EDGELOOP_BLIND_SPOT: .*Invalid JSON"):
        contract.WorkerEnvironment.from_env({contract.BLIND_SPOT: "on"})
    assert contract.WorkerEnvironment.from_env({}).blind_spot is None
