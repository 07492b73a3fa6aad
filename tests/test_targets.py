"""Deploy targets: label syntax, selectors, the target set, the manifest fields that name them
(edgeloop extensions) and the labels an agent declares. Pure, except the CLI runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from edge_agent.config import ConfigError, load_config, parse_labels
from edgeloop.cli import app
from protocol.manifest_yaml import ManifestLoader, format_errors
from protocol.manifests import IncrementalLearningJob
from protocol.targets import (
    DeployTargets,
    LabelSelector,
    label_key_problem,
    label_value_problem,
    targets,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"

# --- label syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["site", "line", "edgeloop.io/site", "a", "A-b_c.d", "x" * 63,
                                 "sub.example.org/zone"])
def test_kubernetes_label_keys_are_accepted(key):
    assert label_key_problem(key) is None


@pytest.mark.parametrize("key, why", [
    ("", "the name must be"), ("-site", "the name must be"), ("site-", "the name must be"),
    ("x" * 64, "the name must be"), ("si te", "the name must be"),
    ("/site", "the prefix before '/'"), ("Example.org/site", "the prefix before '/'"),
    ("example.org/", "the name must be"),
])
def test_bad_label_keys_say_which_part_is_wrong(key, why):
    problem = label_key_problem(key)
    assert problem is not None and why in problem and repr(key) in problem


@pytest.mark.parametrize("value, ok", [("", True), ("north", True), ("2", True), ("a.b-c_d", True),
                                       ("x" * 63, True), ("x" * 64, False), ("-x", False),
                                       ("a b", False), ("a/b", False)])
def test_label_values(value, ok):
    assert (label_value_problem(value) is None) == ok


# --- selectors and the target set ----------------------------------------------------------------

label_keys = st.sampled_from(["site", "line", "zone", "edgeloop.io/camera"])
label_values = st.sampled_from(["north", "south", "1", "2"])
label_sets = st.dictionaries(label_keys, label_values, max_size=4)
fleets = st.dictionaries(st.from_regex(r"edge[0-9]{1,2}", fullmatch=True), label_sets, max_size=8)


def selector(**data) -> LabelSelector:
    return LabelSelector.model_validate(data)


@given(match=label_sets.filter(bool), labels=label_sets)
def test_match_labels_selects_nodes_carrying_every_pair(match, labels):
    expected = all(labels.get(k) == v for k, v in match.items())
    assert selector(matchLabels=match).matches(labels) == expected


@given(key=label_keys, values=st.lists(label_values, min_size=1, max_size=3), labels=label_sets)
def test_expression_operators_are_complements(key, values, labels):
    def holds(operator: str, given_values: list[str]) -> bool:
        entry = {"key": key, "operator": operator}
        if given_values:
            entry["values"] = given_values
        return selector(matchExpressions=[entry]).matches(labels)

    assert holds("In", values) == (labels.get(key) in values)
    assert holds("NotIn", values) != holds("In", values)
    assert holds("Exists", []) == (key in labels)
    assert holds("DoesNotExist", []) != holds("Exists", [])


@given(names=st.lists(st.sampled_from(["edge0", "edge1", "cam7"]), unique=True), fleet=fleets,
       match=label_sets.filter(bool), with_selector=st.booleans())
def test_targets_are_the_named_nodes_and_the_matching_known_ones(names, fleet, match,
                                                                  with_selector):
    chosen = selector(matchLabels=match) if with_selector else None
    got = targets(DeployTargets(tuple(names), chosen), fleet)
    assert set(names) <= got  # named nodes are targets even before they are known
    for node in got - set(names):
        assert chosen is not None and chosen.matches(fleet[node])
    for node, labels in fleet.items():
        assert (node in got) == (node in names or (chosen is not None and chosen.matches(labels)))
        assert DeployTargets(tuple(names), chosen).may_target(node, labels) == (node in got)


def test_selector_describes_itself_as_conditions_show_it():
    chosen = selector(matchLabels={"site": "north", "line": 2},
                      matchExpressions=[{"key": "zone", "operator": "NotIn", "values": ["a"]},
                                        {"key": "gpu", "operator": "Exists"}])
    assert chosen.describe() == "{line: 2, site: north, zone NotIn (a), gpu Exists}"
    assert DeployTargets(("edge0",), chosen).describe() == (
        "edge0 and nodes matching nodeSelector {line: 2, site: north, zone NotIn (a), gpu Exists}")


# --- the manifest ------------------------------------------------------------------------------


def seed_job() -> dict:
    return yaml.load((EXAMPLES / "job.yaml").read_text(), Loader=ManifestLoader)


def errors(data: dict) -> list[str]:
    try:
        IncrementalLearningJob.model_validate(data)
    except ValidationError as exc:
        return format_errors(exc, IncrementalLearningJob)
    return []


def with_deploy(**fields) -> dict:
    data = seed_job()
    deploy = data["spec"]["deploySpec"]
    for key, value in fields.items():
        if value is None:
            deploy.pop(key, None)
        else:
            deploy[key] = value
    return data


def test_node_names_and_selector_combine_with_node_name():
    job = IncrementalLearningJob.model_validate(with_deploy(
        nodeNames=["edge1", "cloud0", "edge2"], nodeSelector={"matchLabels": {"site": "north"}}))
    deploy = job.spec.deploy_targets()
    assert deploy.names == ("cloud0", "edge1", "edge2")  # nodeName first, no repeat
    assert deploy.selector is not None and deploy.selector.match_labels == {"site": "north"}
    assert job.spec.deploy_node == "cloud0"
    assert job.extensions() == ["spec.deploySpec.nodeNames", "spec.deploySpec.nodeSelector"]


def test_a_selector_alone_is_enough_and_numbers_are_label_text():
    job = IncrementalLearningJob.model_validate(with_deploy(
        nodeName=None, nodeSelector={"matchLabels": {"line": 2}}))
    assert job.spec.deploy_node is None
    assert job.spec.deploy_targets() == DeployTargets((), job.spec.deploy_spec.node_selector)
    assert job.spec.deploy_spec.node_selector.match_labels == {"line": "2"}  # type: ignore[union-attr]


@pytest.mark.parametrize("fields, expected", [
    ({"nodeName": None},
     "spec.deploySpec.nodeName: required field is missing: the node that runs inference (or, as "
     "edgeloop extensions, deploySpec.nodeNames or deploySpec.nodeSelector)"),
    ({"nodeNames": []},
     "spec.deploySpec.nodeNames: is empty: name at least one node, or leave nodeNames out"),
    ({"nodeNames": ["edge1", "edge2", "edge1"]},
     "spec.deploySpec.nodeNames[2]: node 'edge1' appears twice (items 0 and 2)"),
    ({"nodeSelector": {}},
     "spec.deploySpec.nodeSelector: selects every node; give matchLabels or matchExpressions (or "
     "name the nodes with nodeNames)"),
    ({"nodeSelector": {"matchLabels": {"-site": "north"}}},
     "spec.deploySpec.nodeSelector.matchLabels.-site.[key]: label key '-site': the name must be at "
     "most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"),
    ({"nodeSelector": {"matchLabels": {"site": "north pole"}}},
     "spec.deploySpec.nodeSelector.matchLabels.site: label value 'north pole': must be empty or "
     "at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"),
    ({"nodeSelector": {"matchLabels": {"gpu": True}}},
     "spec.deploySpec.nodeSelector.matchLabels.gpu: True is a boolean; quote the label value "
     "(\"true\")"),
    ({"nodeSelector": {"matchExpressions": [{"key": "site", "operator": "Near", "values": ["n"]}]}},
     "spec.deploySpec.nodeSelector.matchExpressions[0].operator: 'Near' is not one of In, NotIn, "
     "Exists, DoesNotExist"),
    ({"nodeSelector": {"matchExpressions": [{"key": "site", "operator": "In"}]}},
     "spec.deploySpec.nodeSelector.matchExpressions[0].values: In needs at least one value"),
    ({"nodeSelector": {"matchExpressions": [{"key": "site", "operator": "Exists",
                                             "values": ["x"]}]}},
     "spec.deploySpec.nodeSelector.matchExpressions[0].values: Exists takes no values"),
    ({"nodeSelector": {"matchLabel": {"site": "north"}}},
     "spec.deploySpec.nodeSelector.matchLabel: unknown field"),
])
def test_bad_targets_are_refused_naming_the_field(fields, expected):
    got = errors(with_deploy(**fields))
    assert len(got) == 1 and got[0].startswith(expected), got


def test_validate_names_the_extensions_a_job_uses():
    text = (EXAMPLES / "job.yaml").read_text().replace(
        "    nodeName:", "    nodeNames: [edge1]\n    nodeSelector:\n      matchLabels:\n"
        "        site: north\n    nodeName:", 1)
    assert "nodeSelector" in text
    result = CliRunner().invoke(app, ["validate", "-f", "-"], input=text)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "IncrementalLearningJob/neptune-test/helmet-detection-demo OK (edgeloop extension: "
        "spec.deploySpec.nodeNames, spec.deploySpec.nodeSelector)"]
    plain = CliRunner().invoke(app, ["validate", "-f", str(EXAMPLES / "job.yaml")])
    assert plain.stdout.splitlines() == ["IncrementalLearningJob/neptune-test/helmet-detection-demo OK"]


# --- the agent's labels --------------------------------------------------------------------------


def test_agent_labels_from_settings_and_command_line(tmp_path):
    settings = tmp_path / "agent.yaml"
    settings.write_text("node: edge1\nbroker: mqtt://localhost:1883\nlabels:\n  site: north\n"
                        "  line: 2\n")
    config = load_config(settings, {"labels": parse_labels(["zone=a"])})
    assert config.labels == {"site": "north", "line": "2", "zone": "a"}
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_labels(["zone"])


@pytest.mark.parametrize("labels, why", [
    ({"si te": "north"}, "label key 'si te'"),
    ({"site": "north/east"}, "label value 'north/east'"),
    ({"gpu": True}, "quote the label value"),
])
def test_bad_agent_labels_name_the_setting(labels, why):
    with pytest.raises(ConfigError, match="labels") as caught:
        load_config(None, {"node": "edge1", "broker": "mqtt://localhost:1883", "labels": labels})
    assert why in str(caught.value)
