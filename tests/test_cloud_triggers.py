"""Trigger evaluation: train conditions with timer windows, deploy metrics, the trainProb split."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from cloud_manager import triggers
from protocol import sample_split
from protocol.manifests import Condition, Timer

CLASSES = ("person", "helmet", "helmet-on", "helmet-off")


def cond(metric: str, op: str, threshold: float) -> Condition:
    return Condition(metric=metric, operator=op, threshold=threshold)


def window(start: str, end: str) -> Timer:
    return Timer(start=start, end=end)


def hm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


# (operator, threshold, samples, timer, clock, expected)
TRAIN_CASES = [
    (">", 500, 501, None, "12:00", True),
    (">", 500, 500, None, "12:00", False),
    (">", 500, 0, None, "12:00", False),
    (">=", 500, 500, None, "12:00", True),
    (">=", 500, 499, None, "12:00", False),
    ("<", 10, 9, None, "12:00", True),
    ("<", 10, 10, None, "12:00", False),
    ("<=", 10, 10, None, "12:00", True),
    ("==", 3, 3, None, "12:00", True),
    ("==", 3, 4, None, "12:00", False),
    ("=", 3, 3, None, "12:00", True),  # Sedna's single = too
    ("!=", 3, 4, None, "12:00", True),
    ("!=", 3, 3, None, "12:00", False),
    ("gt", 500, 501, None, "12:00", True),
    ("ge", 500, 500, None, "12:00", True),
    ("lt", 1, 0, None, "12:00", True),
    ("le", 1, 2, None, "12:00", False),
    ("eq", 0, 0, None, "12:00", True),
    ("ne", 0, 0, None, "12:00", False),
    # the seed's window 02:00-04:00
    (">", 500, 600, ("02:00", "04:00"), "02:00", True),
    (">", 500, 600, ("02:00", "04:00"), "03:59", True),
    (">", 500, 600, ("02:00", "04:00"), "04:00", True),  # the end minute is inside, as in Sedna
    (">", 500, 600, ("02:00", "04:00"), "04:01", False),
    (">", 500, 600, ("02:00", "04:00"), "01:59", False),
    (">", 500, 400, ("02:00", "04:00"), "03:00", False),
    # windows crossing midnight
    (">", 0, 1, ("22:00", "04:00"), "23:30", True),
    (">", 0, 1, ("22:00", "04:00"), "00:00", True),
    (">", 0, 1, ("22:00", "04:00"), "03:59", True),
    (">", 0, 1, ("22:00", "04:00"), "04:00", True),
    (">", 0, 1, ("22:00", "04:00"), "04:01", False),
    (">", 0, 1, ("22:00", "04:00"), "12:00", False),
    (">", 0, 1, ("22:00", "04:00"), "21:59", False),
    # 24:00 as an end means midnight
    (">", 0, 1, ("20:00", "24:00"), "23:59", True),
    (">", 0, 1, ("20:00", "24:00"), "00:00", False),
    (">", 0, 1, ("00:00", "00:01"), "00:00", True),
    # start == end: that one minute
    (">", 0, 1, ("02:00", "02:00"), "02:00", True),
    (">", 0, 1, ("02:00", "02:00"), "02:01", False),
]


@pytest.mark.parametrize("op, threshold, samples, timer, clock, expected", TRAIN_CASES)
def test_train_decision_table(op, threshold, samples, timer, clock, expected):
    decision = triggers.train_decision(
        cond("num_of_samples", op, threshold),
        window(*timer) if timer else None,
        samples,
        hm(clock),
    )
    assert decision.holds is expected, decision.reason
    assert "num_of_samples" in decision.reason


def test_train_reason_names_the_window_when_outside():
    decision = triggers.train_decision(
        cond("num_of_samples", ">", 1), window("02:00", "04:00"), 9, hm("12:30")
    )
    assert not decision.holds
    assert "12:30 is outside the window 02:00-04:00" in decision.reason


def test_minute_of_day_in_utc_and_in_a_zone():
    moment = datetime(2026, 3, 1, 23, 45, tzinfo=timezone.utc).timestamp()
    assert triggers.minute_of_day(moment) == 23 * 60 + 45
    # Shanghai is UTC+8: 23:45 UTC is 07:45 there
    assert triggers.minute_of_day(moment, ZoneInfo("Asia/Shanghai")) == 7 * 60 + 45


def test_new_samples_never_negative():
    assert triggers.new_samples(600, 100) == 500
    assert triggers.new_samples(50, 100) == 0


@pytest.mark.parametrize(
    "last, now, period, due",
    [(None, 0.0, 60, True), (100.0, 159.0, 60, False), (100.0, 160.0, 60, True), (0.0, 5.0, 5, True)],
)
def test_check_due(last, now, period, due):
    assert triggers.check_due(last, now, period) is due


# --- deploy ------------------------------------------------------------------------------------


def metrics(precision: float, per_class: dict[str, float | None] | None = None, **more: float) -> dict:
    return {
        "precision": precision,
        "recall": more.get("recall", 0.5),
        "f1": more.get("f1", 0.5),
        "map50": more.get("map50", 0.5),
        "map": more.get("map", 0.3),
        "per_class": {
            name: {"precision": value, "recall": 0.5, "map50": 0.4}
            for name, value in (per_class or {}).items()
        },
    }


# (metric, op, threshold, candidate, deployed, expected)
DEPLOY_CASES = [
    ("precision", ">", 0.5, metrics(0.6), None, True),
    ("precision", ">", 0.5, metrics(0.5), None, False),
    ("precision", ">=", 0.5, metrics(0.5), None, True),
    ("precision_delta", ">", 0.1, metrics(0.8), metrics(0.6), True),
    ("precision_delta", ">", 0.1, metrics(0.65), metrics(0.6), False),
    # float noise: 0.3 - 0.2 is 0.09999999999999998
    ("precision_delta", ">=", 0.1, metrics(0.3), metrics(0.2), True),
    ("precision_delta", "==", 0.1, metrics(0.3), metrics(0.2), True),
    ("precision_delta", ">", 0.1, metrics(0.3), metrics(0.2), False),
    # the eval scored no serving model (a user's own eval script): the delta is against 0
    ("precision_delta", ">", 0.1, metrics(0.3), None, True),
    ("precision_delta", "<", 0.0, metrics(0.5), metrics(0.7), True),
    ("recall", ">", 0.4, metrics(0.1, recall=0.45), None, True),
    ("map50_delta", ">", 0.0, metrics(0.1, map50=0.6), metrics(0.1, map50=0.5), True),
    ("precision[1]", ">", 0.5, metrics(0.1, {"helmet": 0.9}), None, True),
    ("precision[helmet]", ">", 0.5, metrics(0.1, {"helmet": 0.4}), None, False),
    ("precision_delta[helmet-off]", ">", 0.05,
     metrics(0.1, {"helmet-off": 0.8}), metrics(0.1, {"helmet-off": 0.7}), True),
    ("precision_delta[3]", ">", 0.05,
     metrics(0.1, {"helmet-off": 0.72}), metrics(0.1, {"helmet-off": 0.7}), False),
]


@pytest.mark.parametrize("metric, op, threshold, candidate, deployed, expected", DEPLOY_CASES)
def test_deploy_decision_table(metric, op, threshold, candidate, deployed, expected):
    decision = triggers.deploy_decision(cond(metric, op, threshold), candidate, deployed, CLASSES)
    assert decision.holds is expected, decision.reason


@pytest.mark.parametrize(
    "metric, candidate, deployed, missing",
    [
        ("precision[helmet]", metrics(0.5), None, "no per-class metrics for 'helmet'"),
        ("precision[helmet]", metrics(0.5, {"helmet": None}), None, "precision[helmet]"),
        ("precision_delta", metrics(0.5), {"recall": 0.2}, "no value for precision"),
        ("precision", {"precision": "high"}, None, "no value for precision"),
        ("precision", {"precision": float("nan")}, None, "no value for precision"),
    ],
)
def test_missing_metric_is_no_with_a_reason_never_zero(metric, candidate, deployed, missing):
    decision = triggers.deploy_decision(cond(metric, "<", 1.0), candidate, deployed, CLASSES)
    assert decision.holds is False
    assert missing in decision.reason


def test_unknown_metric_is_rejected_by_the_manifest():
    from protocol.manifests import DeployCondition

    with pytest.raises(ValueError, match="unknown metric"):
        DeployCondition(metric="accuracy", operator=">", threshold=0.1)


# --- trainProb split ---------------------------------------------------------------------------


def test_split_is_stable_disjoint_and_near_train_prob():
    lines = [f"images/{i:05d}.jpg 1,2,30,40,{i % 4}" for i in range(4000)]
    train, held_out = sample_split.split_samples(lines, 0.8)
    assert set(train).isdisjoint(held_out)
    assert len(train) + len(held_out) == len(lines)
    assert 0.77 < len(train) / len(lines) < 0.83
    # recomputed, in another order, with padding: the same sides
    again_train, again_held = sample_split.split_samples(
        [f"  {line} " for line in reversed(lines)], 0.8
    )
    assert set(again_train) == set(train) and set(again_held) == set(held_out)


def test_split_drops_blank_and_repeated_lines():
    train, held_out = sample_split.split_samples(["a.jpg 1,1,2,2,0", "", "a.jpg 1,1,2,2,0 ", "  "], 0.5)
    assert len(train) + len(held_out) == 1


def test_split_with_train_prob_one_keeps_everything_for_training():
    lines = [f"{i}.jpg" for i in range(100)]
    train, held_out = sample_split.split_samples(lines, 1.0)
    assert len(train) == 100 and held_out == []


def test_growing_index_keeps_earlier_sides():
    lines = [f"{i}.jpg 0,0,1,1,0" for i in range(300)]
    first_train, _ = sample_split.split_samples(lines[:100], 0.7)
    later_train, _ = sample_split.split_samples(lines, 0.7)
    assert set(first_train) <= set(later_train)


def test_window_boundaries_from_real_clock_times():
    base = datetime(2026, 1, 1, 21, 59, tzinfo=timezone.utc)
    timer = window("22:00", "04:00")
    inside = [timer.contains(triggers.minute_of_day((base + timedelta(minutes=m)).timestamp()))
              for m in (0, 1, 361, 362)]
    assert inside == [False, True, True, False]


def test_round_indexes_split_new_samples_and_replay_earlier_train_side():
    lines = [f"img/{i:04d}.jpg 0,0,9,9,{i % 4}" for i in range(400)]
    plan = sample_split.plan_round_indexes(lines, 250, 400, 0.8)
    first_train, first_eval = sample_split.split_samples(lines[:250], 0.8)
    assert plan.replay == first_train
    assert set(plan.train) | set(plan.eval) == set(lines[250:])
    assert set(plan.train).isdisjoint(plan.eval)
    assert set(plan.eval).isdisjoint(first_eval)  # only this round's held-out samples


def test_round_indexes_drop_lines_seen_in_earlier_rounds():
    lines = ["a.jpg 0,0,1,1,0", "b.jpg 0,0,1,1,0", "a.jpg 0,0,1,1,0", "c.jpg 0,0,1,1,0"]
    plan = sample_split.plan_round_indexes(lines, 2, 4, 0.5)
    assert sorted(plan.train + plan.eval) == ["c.jpg 0,0,1,1,0"]


def test_round_indexes_fall_back_to_all_held_out_samples_when_none_is_new():
    lines = [f"{i}.jpg 0,0,1,1,0" for i in range(200)]
    plan = sample_split.plan_round_indexes(lines, 100, 200, 1.0)
    assert plan.eval == [] and len(plan.train) == 100  # trainProb 1: nothing held out at all
    plan = sample_split.plan_round_indexes(lines, 100, 101, 0.5)
    _, earlier_eval = sample_split.split_samples(lines[:100], 0.5)
    if not sample_split.goes_to_train(lines[100], 0.5):
        assert plan.eval == [lines[100]]
    else:
        assert plan.eval == earlier_eval and earlier_eval


def test_sedna_precision_is_a_deploy_metric_of_its_own():
    decision = triggers.deploy_decision(
        cond("sedna_precision_delta", ">", 0.1),
        {"precision": 0.5, "sedna_precision": 1.0}, {"precision": 0.5, "sedna_precision": 0.8},
        CLASSES,
    )
    assert decision.holds is True, decision.reason
    assert decision.value == pytest.approx(0.2)


def test_custom_metric_is_accepted_when_the_condition_says_so():
    from protocol.manifests import DeployCondition

    custom = DeployCondition(metric="accuracy_delta", operator=">", threshold=0.1,
                             customMetric=True)
    assert triggers.deploy_decision(custom, {"accuracy": 0.9}, {"accuracy": 0.7}, CLASSES).holds
    lacking = triggers.deploy_decision(custom, {"acc": 0.9}, None, CLASSES)
    assert lacking.holds is False and lacking.fails_round is True
    assert "accuracy" in lacking.reason and "it reports acc" in lacking.reason
    with pytest.raises(ValueError, match="custom metric 'bad name'"):
        DeployCondition(metric="bad name", operator=">", threshold=0.1, customMetric=True)


def test_a_value_that_is_none_passes_over_the_candidate_without_failing_the_round():
    decision = triggers.deploy_decision(cond("map50", ">", 0.1), {"map50": None}, None, CLASSES)
    assert decision.holds is False and decision.fails_round is False


def test_forgetting_is_worse_by_more_than_the_margin_in_the_metrics_direction():
    scores = [triggers.RoundScore(1, 0.85, 0.9), triggers.RoundScore(2, 0.5, 0.9),
              triggers.RoundScore(3, None, 0.9)]
    higher = triggers.forgetting_decision(cond("precision_delta", ">", 0.1), 0.02, scores)
    assert higher.holds is False
    assert higher.reason.startswith("forgets earlier rounds: round 2 precision 0.900 -> 0.500")
    assert "round 1 precision 0.900 -> 0.850 (-0.050)" in higher.reason
    assert triggers.forgetting_decision(cond("precision_delta", ">", 0.1), 0.05,
                                        scores[:1]).holds
    # at exactly the margin it holds (tolerance on the edge)
    edge = [triggers.RoundScore(1, 0.7, 0.72)]
    assert triggers.forgetting_decision(cond("precision", ">", 0.1), 0.02, edge).holds
    # a condition with < gates on a value where lower is better: a rise is the forgetting
    loss = [triggers.RoundScore(1, 0.5, 0.3)]
    assert not triggers.forgetting_decision(cond("map_delta", "<", 0.0), 0.02, loss).holds
    assert triggers.forgetting_decision(cond("map_delta", ">", 0.0), 0.02, loss).holds
