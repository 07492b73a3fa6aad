"""The shadow comparison of a rollout's canary: agreement of two box sets, the sampling of frames
after a swap, and the real inference loop comparing two real LiteRT models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_inference import make_loop, models, video  # noqa: F401 (fixtures)

from workers.metrics import Counts
from workers.mining import Detections
from workers.shadow import ShadowComparison, agreement, agreement_counts

HELMET = [10.0, 10.0, 40.0, 50.0]
PERSON = [60.0, 5.0, 90.0, 60.0]


def dets(*boxes: tuple[list[float], int]) -> Detections:
    return Detections(np.array([b for b, _ in boxes], dtype=np.float32).reshape(-1, 4),
                      np.full(len(boxes), 0.9), np.array([c for _, c in boxes]))


def test_the_same_boxes_agree_fully_and_nothing_against_nothing_too():
    two = dets((HELMET, 1), (PERSON, 0))
    assert agreement(agreement_counts(two, two)) == 1.0
    assert agreement(agreement_counts(dets(), dets())) == 1.0


def test_collapsed_detections_agree_not_at_all():
    counts = agreement_counts(dets(), dets((HELMET, 1), (PERSON, 0)))
    assert (counts.tp, counts.fp, counts.fn) == (0, 0, 2)
    assert agreement(counts) == 0.0


def test_a_shifted_box_another_class_and_an_extra_box_count_as_disagreement():
    previous = dets((HELMET, 1), (PERSON, 0))
    shifted = [HELMET[0] + 2, HELMET[1] + 2, HELMET[2] + 2, HELMET[3] + 2]  # IoU > 0.5
    new = dets((shifted, 1), (PERSON, 2), ([0.0, 0.0, 5.0, 5.0], 1))
    counts = agreement_counts(new, previous)
    assert (counts.tp, counts.fp, counts.fn) == (1, 2, 1)
    assert agreement(counts) == pytest.approx(2 / 5)
    assert agreement(Counts(tp=3, fp=1, fn=0)) == pytest.approx(6 / 7)


class Fixed:
    """A stand-in predictor that always sees the same boxes."""

    def __init__(self, found: Detections) -> None:
        self.found = found
        self.calls = 0

    def predict(self, image, prepared=None) -> Detections:
        self.calls += 1
        return self.found


def test_only_a_swap_that_asked_for_it_is_compared_on_one_frame_in_every():
    shadow = ShadowComparison()
    image = np.zeros((4, 4, 3), np.uint8)
    previous = Fixed(dets((HELMET, 1)))
    for i in range(10):  # version 1 serves: nothing to compare with
        shadow.observe(i, image, None, dets((HELMET, 1)), "1", None)
    assert "shadow_agreement" not in shadow.stats() and "version_fps" in shadow.stats()
    for i in range(10, 20):  # a swap without a request: no comparison
        shadow.observe(i, image, None, dets(), "2", previous)
    assert previous.calls == 0 and "shadow_active" not in shadow.stats()
    shadow.request(5)
    for i in range(20, 40):  # the canary's swap: frames 20, 25, 30, 35 are compared
        shadow.observe(i, image, None, dets(), "3", previous)
    assert previous.calls == 4
    assert shadow.stats()["shadow_agreement"] == 0.0 and shadow.stats()["shadow_compared"] == 4
    assert shadow.stats()["shadow_active"] is True
    for i in range(40, 50):  # the next version starts afresh, without a comparison
        shadow.observe(i, image, None, dets(), "4", previous)
    assert "shadow_agreement" not in shadow.stats() and previous.calls == 4


def test_a_previous_model_that_fails_is_not_counted():
    class Broken(Fixed):
        def predict(self, image, prepared=None) -> Detections:
            raise RuntimeError("interpreter gone")

    shadow = ShadowComparison()
    shadow.request(1)
    shadow.observe(0, np.zeros((4, 4, 3), np.uint8), None, dets(), "2", Broken(dets()))
    assert "shadow_agreement" not in shadow.stats()


@pytest.mark.ml
def test_the_inference_loop_compares_a_swapped_model_with_the_one_it_replaced(
    models: dict[str, Path], video: Path  # noqa: F811 (fixtures)
) -> None:
    from edgeloop.checksum import file_sha256

    loop_ref: dict = {}
    shadow = ShadowComparison()

    def on_detections(frame, det) -> None:
        if frame.index == 5:
            # the same network as version 2: the two must agree on every compared frame
            shadow.request(3)
            loop_ref["loop"].slot.request_swap(models["v1"], "2", file_sha256(models["v1"]))
            loop_ref["loop"].slot.wait_loaders()

    loop, outcomes = make_loop(models, video, on_detections=on_detections, shadow=shadow)
    loop_ref["loop"] = loop
    stats = loop.run()
    assert stats.frames == 30 and stats.versions == {"1": 6, "2": 24}
    report = shadow.stats()
    # frames 6..29 served by version 2; those divisible by 3 were compared
    assert report["shadow_compared"] == len([i for i in range(6, 30) if i % 3 == 0])
    assert report["shadow_agreement"] == 1.0
    assert isinstance(report["version_fps"], float) and report["version_fps"] > 0
