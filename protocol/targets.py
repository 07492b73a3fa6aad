"""Which nodes a job deploys to: node labels, label selectors and the target set. Pure.

A job's deploy side names its nodes three ways, which combine as a union: Sedna's one
``nodeName`` (or the pod template's), and two edgeloop extensions, a list ``nodeNames`` and a
``nodeSelector`` over the labels each agent declares in its settings
(``labels: {site: north, line: "2"}``). The selector has Kubernetes' shape
(``matchLabels`` and ``matchExpressions`` with ``In``, ``NotIn``, ``Exists``,
``DoesNotExist``) and label keys and values follow Kubernetes' syntax, so a fleet described for
Kubernetes reads the same here.

:func:`targets` is the one place where a job and the known nodes meet: the cloud keeps each
node's labels from its status and asks it again whenever a node, its labels or the manifest
change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from protocol.manifest_base import ManifestPart, invalid, show

MAX_LABEL_NAME = 63
MAX_LABEL_PREFIX = 253
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_RULE = (f"at most {MAX_LABEL_NAME} letters, digits, '-', '_' and '.', starting and ending "
              "with a letter or digit")

SELECTOR_OPERATORS: tuple[str, ...] = ("In", "NotIn", "Exists", "DoesNotExist")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes label key (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > MAX_LABEL_PREFIX
                  or not _DNS_SUBDOMAIN_RE.match(prefix)):
        return (f"label key {key!r}: the prefix before '/' must be a DNS subdomain of at most "
                f"{MAX_LABEL_PREFIX} lowercase letters, digits, '-' and '.'")
    if len(name) > MAX_LABEL_NAME or not _LABEL_NAME_RE.match(name):
        return f"label key {key!r}: the name must be {_NAME_RULE}"
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes label value (empty, or like a key's name), or None."""
    if value and (len(value) > MAX_LABEL_NAME or not _LABEL_NAME_RE.match(value)):
        return f"label value {value!r}: must be empty or {_NAME_RULE}"
    return None


def _number_as_text(value: Any) -> Any:
    """``line: 2`` unquoted in YAML is the number 2; a label value is its text. A boolean is
    refused: ``yes`` would silently become ``True``, which is no one's label."""
    if isinstance(value, bool):
        raise invalid(f"{show(value)} is a boolean; quote the label value (\"{str(value).lower()}\")")
    if isinstance(value, int | float):
        return str(value)
    return value


def _check_key(key: str) -> str:
    problem = label_key_problem(key)
    if problem:
        raise invalid(problem)
    return key


def _check_value(value: str) -> str:
    problem = label_value_problem(value)
    if problem:
        raise invalid(problem)
    return value


LabelKey = Annotated[str, AfterValidator(_check_key)]
LabelValue = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_value)]
Labels = dict[LabelKey, LabelValue]


def check_labels(labels: Mapping[str, str]) -> list[str]:
    """Every problem of a label mapping (for settings that are not manifest parts)."""
    problems = []
    for key, value in labels.items():
        problems += [p for p in (label_key_problem(key), label_value_problem(value)) if p]
    return problems


def show_labels(labels: Mapping[str, str]) -> str:
    """``site=north,line=2``: labels as ``get nodes`` shows them."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class LabelRequirement(ManifestPart):
    """One ``matchExpressions`` entry: ``key operator values``."""

    key: LabelKey
    operator: str
    values: list[LabelValue] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelRequirement:
        if self.operator not in SELECTOR_OPERATORS:
            raise invalid(f"{show(self.operator)} is not one of {', '.join(SELECTOR_OPERATORS)}",
                          path="operator")
        if self.operator in ("In", "NotIn") and not self.values:
            raise invalid(f"{self.operator} needs at least one value", path="values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise invalid(f"{self.operator} takes no values", path="values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        match self.operator:
            case "In":
                return value in self.values
            case "NotIn":
                return value not in self.values
            case "Exists":
                return value is not None
        return value is None  # DoesNotExist

    def describe(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        return f"{self.key} {self.operator} ({', '.join(self.values)})"


class LabelSelector(ManifestPart):
    """Kubernetes' label selector: every ``matchLabels`` pair and every expression must hold.

    An empty selector is refused: Kubernetes reads it as "every node", which for a deploy would
    put the inference worker on the dataset and training machines too."""

    match_labels: Labels = Field(default_factory=dict)
    match_expressions: list[LabelRequirement] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> LabelSelector:
        if not self.match_labels and not self.match_expressions:
            raise invalid("selects every node; give matchLabels or matchExpressions (or name "
                          "the nodes with nodeNames)")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.matches(labels) for e in self.match_expressions)

    def describe(self) -> str:
        """``{site: north, line: 2}`` (and expressions): how conditions and ``describe`` name it."""
        parts = [f"{k}: {v}" for k, v in sorted(self.match_labels.items())]
        parts += [e.describe() for e in self.match_expressions]
        return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class DeployTargets:
    """What a job's deploy side says about its nodes: named nodes and an optional selector."""

    names: tuple[str, ...] = ()
    selector: LabelSelector | None = None

    def describe(self) -> str:
        """``edge0, edge1 and nodes matching {site: north}``."""
        parts = []
        if self.names:
            parts.append(", ".join(self.names))
        if self.selector is not None:
            parts.append(f"nodes matching nodeSelector {self.selector.describe()}")
        return " and ".join(parts) or "no node"

    def may_target(self, node: str, labels: Mapping[str, str]) -> bool:
        """Whether ``node`` with these ``labels`` is one of the targets."""
        return node in self.names or (self.selector is not None and self.selector.matches(labels))


def targets(deploy: DeployTargets, nodes: Mapping[str, Mapping[str, str]]) -> frozenset[str]:
    """The nodes a job deploys to: every named node (known yet or not: its desired state waits
    for it on the broker) and every known node (``nodes``: name -> labels) the selector matches."""
    selected: Iterable[str] = ()
    if deploy.selector is not None:
        selector = deploy.selector
        selected = (name for name, labels in nodes.items() if selector.matches(labels))
    return frozenset(deploy.names).union(selected)

