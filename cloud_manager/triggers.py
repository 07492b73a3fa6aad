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
    ref = condition.ref() if isinstance(condition, DeployCondition) else parse_metric(
        condition.metric
    )
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
