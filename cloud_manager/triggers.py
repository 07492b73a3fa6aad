"""Trigger evaluation: when a round trains, and whether its candidate is deployed. Pure.

Train trigger
    ``num_of_samples`` (labelled samples added to the dataset index since the last round
    started) compared with the manifest's condition, AND the optional daily timer window. The
    window is read in the cloud manager's timezone (``edgeloop cloud --timezone``, UTC unless
    given), because the manifest has no timezone field and a fleet spans zones; a window whose
    end is before its start crosses midnight (22:00-04:00).

Deploy trigger
    a metric of the eval result, resolved by the grammar of :mod:`protocol.metrics_names`:
    ``precision``, ``precision_delta`` (candidate - deployed), ``metric[i]``, ``metric[class]``.
    A value the eval result does not hold is never read as 0: the decision is "no" with a
    reason naming what is missing.

Comparisons allow a small tolerance (:data:`TOLERANCE`) so that ``precision_delta >= 0.1``
holds for a delta computed as 0.30000000000000004 - 0.2.

The stable ``trainProb`` split (a sample goes to the train or held-out eval set by a hash of
its index line) lives in :mod:`protocol.sample_split`, shared with the nodes that write the
round's index files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any

from protocol.manifests import Condition, DeployCondition, Timer
from protocol.metrics_names import MetricRef, parse_metric

#: Absolute tolerance of threshold comparisons (metrics are fractions; counts are integers).
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Decision:
    """The outcome of a trigger and why, in words fit for a job's condition history."""

    holds: bool
    reason: str
    value: float | None = None
    #: the eval result cannot answer this trigger at all (it does not report the metric): the
    #: round fails instead of passing over one candidate
    fails_round: bool = False


def minute_of_day(now: float, tz: tzinfo = timezone.utc) -> int:
    """The minute of the day (0..1439) of the POSIX time ``now`` in ``tz``."""
    moment = datetime.fromtimestamp(now, tz)
    return moment.hour * 60 + moment.minute


def compare(condition: Condition, value: float) -> bool:
    """``condition.holds(value)``, with :data:`TOLERANCE` on the equality edge."""
    op, threshold = condition.operator, condition.threshold
    near = math.isclose(value, threshold, rel_tol=0.0, abs_tol=TOLERANCE)
    if op in ("==", "eq"):
        return near
    if op in ("!=", "ne"):
        return not near
    if op in (">=", "ge", "<=", "le") and near:
        return True
    if op in (">", "gt", "<", "lt") and near:
        return False
    return condition.holds(value)


def describe(condition: Condition, value: float) -> str:
    """``num_of_samples = 150 > 100``: the value compared, for condition reasons."""
    shown = int(value) if float(value).is_integer() else round(value, 4)
    threshold = condition.threshold
    threshold = int(threshold) if float(threshold).is_integer() else threshold
    return f"{condition.metric} = {shown} {condition.operator} {threshold}"


def new_samples(total: int, baseline: int) -> int:
    """``num_of_samples``: samples added since the last round started.

    An index that shrank (rewritten or truncated) counts from its new size: the caller lowers
    its baseline, and nothing is counted twice.
    """
    return max(0, total - baseline)


def train_decision(
    condition: Condition, timer: Timer | None, num_of_samples: int, minute: int
) -> Decision:
    """Whether a new round starts now."""
    text = describe(condition, num_of_samples)
    if not compare(condition, num_of_samples):
        return Decision(False, f"{text}: does not hold", num_of_samples)
    if timer is not None and not timer.contains(minute):
        clock = f"{minute // 60:02d}:{minute % 60:02d}"
        return Decision(
            False, f"{text}: holds, but {clock} is outside the window {timer.start}-{timer.end}",
            num_of_samples,
        )
    window = f" inside {timer.start}-{timer.end}" if timer is not None else ""
    return Decision(True, f"{text}: holds{window}", num_of_samples)


def check_due(last_check: float | None, now: float, period_s: float) -> bool:
    """Whether ``checkPeriodSeconds`` has passed since the last periodic check."""
    return last_check is None or now - last_check >= period_s - TOLERANCE


# --- deploy ------------------------------------------------------------------------------------


class MetricUnavailable(ValueError):
    """The eval result does not hold the value a deploy metric names."""


class MetricNotReported(MetricUnavailable):
    """The eval result does not report the metric at all (not even as None): the eval script
    does not compute it, so no later round can be decided either."""


def _class_name(ref: MetricRef, class_names: Sequence[str]) -> str:
    if isinstance(ref.selector, int):
        if ref.selector >= len(class_names):
            raise MetricUnavailable(
                f"class index {ref.selector} is out of range ({len(class_names)} classes)"
            )
        return class_names[ref.selector]
    return str(ref.selector)


def metric_value(
    metrics: Mapping[str, Any], ref: MetricRef, class_names: Sequence[str]
) -> float:
    """The value of ``ref`` (without its delta) in one model's metrics dict (eval.py's shape:
    scalars plus ``per_class: {name: {metric: value}}``)."""
    if ref.selector is None:
        source: Mapping[str, Any] = metrics
        where = ref.base
    else:
        name = _class_name(ref, class_names)
        per_class = metrics.get("per_class")
        if not isinstance(per_class, Mapping) or not isinstance(per_class.get(name), Mapping):
            raise MetricUnavailable(f"the eval result has no per-class metrics for {name!r}")
        source = per_class[name]
        where = f"{ref.base}[{name}]"
    if ref.selector is None and ref.base not in source:
        reported = ", ".join(sorted(k for k in source if k != "per_class")) or "nothing"
        raise MetricNotReported(
            f"the eval result has no value for {where}: it reports {reported}"
        )
    value = source.get(ref.base)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MetricUnavailable(f"the eval result has no value for {where} (got {value!r})")
    return float(value)


def _ref(condition: Condition) -> MetricRef:
    """The condition's parsed metric (a deploy condition knows whether it is a custom one)."""
    if isinstance(condition, DeployCondition):
        return condition.ref()
    return parse_metric(condition.metric)


def deploy_decision(
    condition: Condition,
    candidate: Mapping[str, Any],
    deployed: Mapping[str, Any] | None,
    class_names: Sequence[str],
) -> Decision:
    """Whether the candidate whose metrics are ``candidate`` is deployed.

    ``deployed`` is the serving model's metrics on the same eval set: the deployed version's, or
    the initial model's while no version is deployed (as in Sedna, the first candidate must beat
    the model the edge already runs). None only when the eval result scored no second model (a
    user's own eval script may not); a ``_delta`` metric then compares with 0.
    """
    ref = _ref(condition)
    try:
        value = metric_value(candidate, ref, class_names)
    except MetricNotReported as exc:
        return Decision(False, f"deploy metric {condition.metric} cannot be computed: {exc}",
                        fails_round=True)
    except MetricUnavailable as exc:
        return Decision(False, f"{condition.metric} cannot be computed: {exc}")
    try:
        if ref.delta:
            value -= 0.0 if deployed is None else metric_value(deployed, ref, class_names)
    except MetricUnavailable as exc:
        return Decision(False, f"{condition.metric} cannot be computed: {exc}")
    text = describe(condition, value)
    if compare(condition, value):
        return Decision(True, f"{text}: holds", value)
    return Decision(False, f"{text}: does not hold", value)


# --- forgetting ----------------------------------------------------------------------------------

_LOWER_IS_BETTER = ("<", "lt", "<=", "le")


@dataclass(frozen=True)
class RoundScore:
    """The gate's metric on one earlier round's held-out samples: candidate and serving model."""

    round: int
    candidate: float | None
    serving: float | None
    images: int | None = None

    @property
    def change(self) -> float | None:
        """Candidate minus serving; None when either value is missing."""
        if self.candidate is None or self.serving is None:
            return None
        return self.candidate - self.serving


def round_scores(
    condition: Condition, rounds: object, class_names: Sequence[str]
) -> list[RoundScore] | None:
    """The condition's metric (without ``_delta``) per earlier round of the eval result's
    ``rounds`` list (``[{"round", "images", "models": [candidate, serving]}]``); None when the
    result has no such list (an eval script of the user's own may not report one)."""
    if not isinstance(rounds, list):
        return None
    ref = _ref(condition)
    plain = MetricRef(ref.base, selector=ref.selector)
    scores = []
    for entry in rounds:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("round"), int):
            continue
        listed = entry.get("models")
        models: list[Any] = listed if isinstance(listed, list) else []
        values: list[float | None] = []
        for model in (models + [None, None])[:2]:
            metrics = model.get("metrics") if isinstance(model, Mapping) else None
            try:
                values.append(metric_value(metrics, plain, class_names)
                              if isinstance(metrics, Mapping) else None)
            except MetricUnavailable:
                values.append(None)
        images = entry.get("images")
        scores.append(RoundScore(entry["round"], values[0], values[1],
                                 images if isinstance(images, int) else None))
    return sorted(scores, key=lambda r: r.round)


def forgetting_decision(
    condition: Condition, margin: float, scores: Sequence[RoundScore] | None
) -> Decision:
    """Whether the candidate keeps what the serving model knew: on no earlier round does the
    gate's metric get worse than the serving model's by more than ``margin`` (worse is lower,
    or higher for a condition with ``<``/``<=``, such as a loss). A round that lacks a value
    is not compared, and the reason says so."""
    if scores is None:
        return Decision(True, "earlier rounds not checked: the eval result has no per-round metrics")
    if not scores:
        return Decision(True, "no earlier round to check")
    base = _ref(condition).base
    sign = -1.0 if condition.operator in _LOWER_IS_BETTER else 1.0
    forgotten, checked, unscored = [], [], []
    for score in scores:
        change = score.change
        if change is None:
            unscored.append(score.round)
            continue
        checked.append(score.round)
        if sign * change < -margin - TOLERANCE:
            forgotten.append(score)
    if forgotten:
        worst = sorted(forgotten, key=lambda r: sign * (r.change or 0.0))
        parts = [f"round {r.round} {base} {r.serving:.3f} -> {r.candidate:.3f} "
                 f"({r.change:+.3f})" for r in worst]
        return Decision(False, f"forgets earlier round{'s' if len(worst) > 1 else ''}: "
                        f"{'; '.join(parts)}; margin {margin:g}", worst[0].change)
    text = f"no earlier round drops by more than {margin:g} (rounds {', '.join(map(str, checked))})" \
        if checked else "no earlier round could be compared"
    if unscored:
        text += f"; not compared, no value: round{'s' if len(unscored) > 1 else ''} " \
            f"{', '.join(map(str, unscored))}"
    return Decision(True, text)
