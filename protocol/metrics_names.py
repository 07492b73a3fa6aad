"""The grammar of metric names that triggers compare against a threshold.

A train trigger counts samples: its only metric is ``num_of_samples``. A deploy trigger compares
evaluation results, named by this grammar::

    metric   := base ["_delta"] [ "[" selector "]" ]
    base     := precision | recall | f1 | map50 | map | sedna_precision | a custom name
    selector := class index (0, 1, ...) | class name (as in the job's class_names)

``_delta`` means candidate minus deployed, so ``precision_delta > 0.1`` deploys a model that is
at least 0.1 more precise than the one serving. Without a selector the metric is the all-class
value; with one it is that class's value. Parsing is strict so that a typo is an error when the
manifest is applied, never a metric that silently reads as 0.

``precision`` is edgeloop's (one-to-one matching); ``sedna_precision`` is the precision of
Sedna's helmet-detection eval (see :mod:`workers.metrics`). An eval script of the user's own may
report any other name: the deploy condition then says so (``customMetric: true``) and the name is
accepted as given; a round whose eval result lacks it fails with a reason naming it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: The train trigger's only metric: labelled samples added since the last training round.
NUM_OF_SAMPLES = "num_of_samples"

#: Evaluation metrics a deploy trigger may name (mAP at IoU 0.5, and mAP over IoU 0.5:0.95).
BASE_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "map50", "map", "sedna_precision")

DELTA_SUFFIX = "_delta"

_METRIC_RE = re.compile(
    r"^(?P<stem>[A-Za-z0-9_]+?)(?P<delta>_delta)?(?:\[(?P<selector>[^\[\]]*)\])?$"
)
_CLASS_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CUSTOM_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

ALLOWED_METRICS_TEXT = (
    f"{', '.join(BASE_METRICS)}, each optionally followed by {DELTA_SUFFIX} (candidate - deployed) "
    "and by a class selector [index] or [class-name], "
    "e.g. precision_delta, recall[2], map50[helmet]; a metric an eval script of your own "
    "reports needs customMetric: true in the condition"
)


@dataclass(frozen=True)
class MetricRef:
    """A parsed deploy-trigger metric name."""

    base: str
    delta: bool = False
    selector: int | str | None = None

    def __str__(self) -> str:
        text = self.base + (DELTA_SUFFIX if self.delta else "")
        return text if self.selector is None else f"{text}[{self.selector}]"


def parse_metric(name: str, custom: bool = False) -> MetricRef:
    """Parse a deploy-trigger metric name; ``ValueError`` says what is wrong and what is allowed.

    ``custom``: the name is one an eval script of the user's own reports, so any base name of
    letters, digits and underscores is accepted (the grammar's ``_delta`` and selector still
    apply).
    """
    if not isinstance(name, str):
        raise ValueError(f"metric must be a string, got {name!r}")
    match = _METRIC_RE.match(name)
    if custom:
        if match is None or _CUSTOM_NAME_RE.match(match["stem"]) is None \
                or match["stem"] == NUM_OF_SAMPLES:
            raise ValueError(
                f"custom metric {name!r}: a name of letters, digits and underscores is required, "
                f"optionally followed by {DELTA_SUFFIX} and a class selector [index] or [class-name]"
            )
    elif match is None or match["stem"] not in BASE_METRICS:
        raise ValueError(f"unknown metric {name!r}; allowed: {ALLOWED_METRICS_TEXT}")
    return MetricRef(
        base=match["stem"],
        delta=match["delta"] is not None,
        selector=None if match["selector"] is None else _parse_selector(name, match["selector"]),
    )


def _parse_selector(name: str, text: str) -> int | str:
    if text.isdigit():
        return int(text)
    if _CLASS_NAME_RE.match(text) is None:
        raise ValueError(
            f"metric {name!r}: class selector [{text}] must be a class index like [2] "
            "or a class name like [helmet]"
        )
    return text


def check_selector(ref: MetricRef, class_names: Sequence[str]) -> None:
    """Check that the class a metric selects exists among ``class_names``."""
    if ref.selector is None:
        return
    if isinstance(ref.selector, int):
        if ref.selector >= len(class_names):
            raise ValueError(
                f"metric '{ref}': class index {ref.selector} is out of range; class_names has "
                f"{len(class_names)} classes (0..{len(class_names) - 1})"
            )
    elif ref.selector not in class_names:
        raise ValueError(
            f"metric '{ref}': class {ref.selector!r} is not in class_names "
            f"({', '.join(class_names)})"
        )
