"""A job that deploys to many nodes: the state machine (pure), the manager's desired states and
hard-example admission (real SQLite), and a real broker, cloud manager and three real agents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_cloud import agent_config
from running_cloud import api, cloud
from test_cloud_daemon import DATASET, JOB, NS, job_state, seed_manifests, wait_for
from test_cloud_state_machine import Driver, run_round, seed_inputs
from test_loop_integration import append_samples, write_boot_files

from cloud_manager import state_machine as sm
from cloud_manager.render import describe_job
from cloud_manager.task_builder import JobInputs, task_id
from edge_agent.daemon import Agent
from protocol.messages import NodeStatus

INFERENCE_TASK = task_id(NS, JOB, 0, "inference")
NORTH = {"matchLabels": {"site": "north"}}


def selector_inputs(selector: dict | None = None, names: list[str] | None = None,
                    node_name: str | None = None, threshold: int = 0) -> JobInputs:
    """The seed's job deploying by ``nodeSelector`` (and ``nodeNames``) instead of cloud0."""
    seed = seed_inputs(threshold=threshold)
    data = seed.job.model_dump(by_alias=True, exclude_unset=True)
    deploy = data["spec"]["deploySpec"]
    deploy.pop("nodeName")
    if node_name:
        deploy["nodeName"] = node_name
    if selector is not None:
        deploy["nodeSelector"] = selector
    if names:
        deploy["nodeNames"] = names
    job = type(seed.job).model_validate(data)
    return JobInputs(job=job, dataset=seed.dataset, initial_model=seed.initial_model,
                     deploy_model=seed.deploy_model)


class FleetDriver(Driver):
    """The driver with node labels in the context, as the store keeps them."""

    def __init__(self, inputs: JobInputs, labels: dict[str, dict[str, str]]):
        super().__init__(inputs)
        self.labels = labels

    def send(self, event: sm.Event, after: float = 1.0) -> list[sm.Action]:
        self.now += after
        ctx = sm.Context(self.now, frozenset(self.online), settings=self.settings,
                         node_labels=self.labels)
        out = sm.handle(self.state, self.inputs, event, ctx)
        self.state, self.actions = out.state, out.actions
        return out.actions

    def join(self, node: str, labels: dict[str, str]) -> list[sm.Action]:
        self.labels = {**self.labels, node: labels}
        self.online.add(node)
        return self.send(sm.NodeChanged(node, "online"))


def deployed_to(actions: list[sm.Action]) -> dict[str, int | None]:
    return {a.node: a.version for a in actions if isinstance(a, sm.DeployModel)}


def removed_from(actions: list[sm.Action]) -> list[str]:
    return [a.node for a in actions if isinstance(a, sm.RemoveInference)]


def reasons(d: Driver) -> list[str]:
    return [c.reason for c in d.state.conditions]


# --- the state machine ------------------------------------------------------------------------


def test_three_nodes_by_selector_late_joiner_and_a_node_that_stops_matching():
    fleet = {"edge1": {"site": "north"}, "edge2": {"site": "north", "line": "2"},
             "edge3": {"site": "north"}, "edge9": {"site": "south"}, "cloud0": {}}
    d = FleetDriver(selector_inputs(NORTH), fleet)
    d.online |= set(fleet)
    # the job is created: placed on the three northern nodes, with the initial model, quietly
    assert deployed_to(d.send(sm.Retarget())) == {"edge1": None, "edge2": None, "edge3": None}
    assert set(d.state.nodes) == {"edge1", "edge2", "edge3"} and d.state.placed
    assert not any("joined" in r for r in reasons(d))

    d.send(sm.SamplesReported(1))
    run_round(d, candidate=0.7)
    assert deployed_to(d.actions) == {"edge1": 1, "edge2": 1, "edge3": 1}
    assert reasons(d)[-2] == "model version 1 published to nodes edge1, edge2, edge3"
    assert {n: t.desired for n, t in d.state.nodes.items()} == {"edge1": 1, "edge2": 1, "edge3": 1}

    # each node's serving version is its own; the job's is the one they all serve
    for node in ("edge1", "edge2"):
        d.send(sm.ServingReported(1, node))
        assert reasons(d)[-1] == f"node {node} serves model version 1"
    assert d.state.serving_version is None  # edge3 has not said so yet
    d.send(sm.ServingReported(1, "edge3"))
    assert d.state.serving_version == 1
    # a node that is no target says what it serves: nothing changes
    assert d.send(sm.ServingReported(1, "edge9")) == []

    # edge4 joins later with matching labels and gets the serving version
    actions = d.join("edge4", {"site": "north"})
    assert deployed_to(actions) == {"edge4": 1}
    assert reasons(d)[-1] == ("node edge4 joined the job's targets (its labels match nodeSelector "
                              "{site: north}); it gets model version 1")
    assert d.state.serving_version is None  # until edge4 serves it too
    d.send(sm.ServingReported(1, "edge4"))
    assert d.state.serving_version == 1

    # edge2 is relabelled to the south: its inference task is removed, the others stay
    d.labels = {**d.labels, "edge2": {"site": "south"}}
    actions = d.send(sm.ServingReported(1, "edge2"))
    assert removed_from(actions) == ["edge2"] and deployed_to(actions) == {}
    assert set(d.state.nodes) == {"edge1", "edge3", "edge4"}
    assert "node edge2 left the job's targets (its labels no longer match nodeSelector " \
           "{site: north}); its inference task is removed" in reasons(d)

    # a rollback reaches every target node
    d.send(sm.SamplesReported(2))
    d.seq = 0
    run_round(d, candidate=0.9, deployed=0.7)
    assert deployed_to(d.actions) == {"edge1": 2, "edge3": 2, "edge4": 2}
    actions = d.send(sm.RolledBack())
    assert deployed_to(actions) == {"edge1": 1, "edge3": 1, "edge4": 1}
    assert reasons(d)[-1] == "rolled back from version 2 to 1 on nodes edge1, edge3, edge4"


def test_a_selector_matching_no_node_is_a_condition_and_the_loop_goes_on():
    d = FleetDriver(selector_inputs({"matchLabels": {"site": "west"}}), {"cloud0": {}})
    assert deployed_to(d.send(sm.Retarget())) == {}
    assert d.state.no_match and reasons(d)[-1] == (
        "no node matches nodeSelector {site: west}; the job goes on, and a node that declares "
        "matching labels gets the serving version")
    d.send(sm.Retarget())
    assert sum("no node matches" in r for r in reasons(d)) == 1  # said once
    # train, eval and deploy still run: the version waits for a node
    d.send(sm.SamplesReported(1))
    run_round(d, candidate=0.7)
    assert d.state.deployed_version == 1 and deployed_to(d.actions) == {}
    assert reasons(d)[-2] == ("model version 1 published to no node yet: no node matches "
                              "nodeSelector {site: west}")
    assert d.where == ("Train", "Waiting", 2)
    # a western node appears: it gets version 1, and the condition says the selector matches
    assert deployed_to(d.join("edge5", {"site": "west"})) == {"edge5": 1}
    assert not d.state.no_match
    assert "a node matches nodeSelector {site: west} again" in reasons(d)


def test_named_nodes_and_selector_are_a_union_and_a_manifest_change_retargets():
    fleet = {"edge1": {"site": "north"}, "edge2": {}}
    d = FleetDriver(selector_inputs(NORTH, names=["edge2", "edge7"]), fleet)
    # edge7 is named but never seen: a target all the same (its desired state waits for it)
    assert deployed_to(d.send(sm.Retarget())) == {"edge1": None, "edge2": None, "edge7": None}
    d.inputs = selector_inputs(names=["edge2"])
    actions = d.send(sm.SpecChanged())
    assert removed_from(actions) == ["edge1", "edge7"] and set(d.state.nodes) == {"edge2"}
    assert "node edge7 left the job's targets (no longer named); its inference task is removed" \
        in reasons(d)


def test_state_without_targets_loads_and_places_itself_silently():
    d = Driver(seed_inputs(threshold=0))
    # as stored before targets existed
    data = {k: v for k, v in d.state.to_dict().items() if k not in ("nodes", "placed", "no_match")}
    loaded = sm.JobState.from_dict(data)
    assert loaded.nodes == {} and not loaded.placed
    d.state = loaded
    assert deployed_to(d.send(sm.ServingReported(None, "cloud0"))) == {"cloud0": None}
    assert list(d.state.nodes) == ["cloud0"] and len(d.state.conditions) == 1
    restored = sm.JobState.from_dict(d.state.to_dict())
    assert restored.nodes == d.state.nodes


# --- over a real broker, with real agents --------------------------------------------------------


def status_of(daemon, node: str) -> NodeStatus | None:
    row = daemon.manager.store.node(node)
    return row.status if row else None


def desired_versions(daemon, node: str) -> list[int]:
    stored = daemon.manager.store.desired(node)
    if stored is None:
        return []
    return [m["version"] for m in json.loads(stored.content)["models"]]


@pytest.mark.broker
def north_fleet(tmp_path: Path) -> list[str]:
    """Stand-in boot files, an empty dataset index and the seed manifests (threshold 5) with
    the job deploying to the nodes labelled site=north instead of one nodeName."""
    write_boot_files(tmp_path / "code")
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.txt").write_text("")
    manifests = seed_manifests(tmp_path, 5, script_dir=tmp_path / "code")
    job = json.loads(manifests[-1])
    del job["spec"]["deploySpec"]["nodeName"]
    job["spec"]["deploySpec"]["nodeSelector"] = NORTH
    manifests[-1] = json.dumps(job)
    return manifests


@pytest.mark.timeout(180)
async def test_deploy_reaches_every_node_and_a_late_node_gets_the_serving_version(broker, tmp_path):
    """cloud0 holds the data (and trains, with stand-in workers); edge1 and edge2 declare
    site=north and run inference; the job selects them by label. After round 1 both serve
    version 1; edge3, started later with the same label, receives version 1 too."""
    manifests = north_fleet(tmp_path)
    data = tmp_path / "data"

    def agent(node: str, **extra) -> Agent:
        return Agent(agent_config(broker.url, tmp_path / node, node=node, check_models=False,
                                  **extra))

    async with cloud(broker.url, tmp_path / "cloud", read_node_paths=False) as daemon, \
            agent("cloud0", datasets={DATASET: str(data / "data.txt")}), \
            agent("edge1", labels={"site": "north"}) as edge1, \
            agent("edge2", labels={"site": "north", "line": 2}) as edge2:
        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in manifests:
            response = await api(broker.url, "apply", body=text)
            assert response.ok, response
        await wait_for(lambda: {"cloud0", "edge1", "edge2"} <= daemon.manager.online_nodes(),
                       "three agents online")
        await wait_for(lambda: set(job_state(daemon).nodes) == {"edge1", "edge2"},
                       "the job targets the two northern nodes")
        for node in (edge1, edge2):
            await wait_for(lambda n=node: INFERENCE_TASK in n.channel.connected_tasks(),
                           f"{node.node}'s inference worker")
        assert desired_versions(daemon, "cloud0") == []  # the dataset node runs no inference

        append_samples(data, 0, 10)
        await wait_for(lambda: job_state(daemon).deployed_version == 1, "round 1 deployed")
        await wait_for(lambda: edge1.serving == {INFERENCE_TASK: 1}
                       and edge2.serving == {INFERENCE_TASK: 1}, "both nodes serve version 1")
        await wait_for(lambda: job_state(daemon).serving_version == 1, "the job serves v1")
        assert {n: t.serving for n, t in job_state(daemon).nodes.items()} == {"edge1": 1, "edge2": 1}

        async with agent("edge3", labels={"site": "north"}) as edge3:
            await wait_for(lambda: "edge3" in job_state(daemon).nodes, "edge3 joins the targets")
            await wait_for(lambda: edge3.serving == {INFERENCE_TASK: 1},
                           "edge3 serves the serving version")
            await wait_for(lambda: job_state(daemon).nodes["edge3"].serving == 1,
                           "the job records edge3's version")
            assert desired_versions(daemon, "edge3") == [1]

            # get nodes shows labels; describe il the version per node
            nodes = await api(broker.url, "get", resource="nodes")
            labels = {row["name"]: row["labels"] for row in nodes.data["items"]}
            assert labels["edge2"] == {"site": "north", "line": "2"} and labels["cloud0"] == {}
            described = await api(broker.url, "describe", resource="il", namespace=NS, name=JOB)
            rows = {r["node"]: (r["desired"], r["serving"], r["health"])
                    for r in described.data["targets"]}
            assert rows == {n: (1, 1, "online") for n in ("edge1", "edge2", "edge3")}
            conditions = [c["reason"] for c in described.data["status"]["conditions"]]
            assert ("node edge3 joined the job's targets (its labels match nodeSelector "
                    "{site: north}); it gets model version 1") in conditions
            text = render_text(describe_job(described.data))
            assert "Deploy nodes" in text and "nodes matching nodeSelector {site: north}" in text


def render_text(renderable) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


def test_describe_shows_each_node_its_version_and_what_keeps_one_from_serving():
    inputs = selector_inputs({"matchLabels": {"site": "west"}}, names=["edge7", "edge8"])
    manifest = inputs.job.model_dump(mode="json", by_alias=True, exclude_unset=True)
    data = {
        "resource": {"namespace": NS, "name": JOB, "generation": 1, "manifest": manifest},
        "status": {"stage": "Train", "state": "Waiting", "round": 2, "samples": 3,
                   "conditions": []},
        "targets": [
            {"node": "edge7", "state": "unknown", "desired": 1, "serving": None, "seen": None,
             "health": "never seen: no status from this node yet", "labels": {}},
            {"node": "edge8", "state": "offline", "desired": 1, "serving": None,
             "seen": 1000.0, "health": "offline", "labels": {"site": "north"}},
        ],
    }
    lines = [line.strip() for line in render_text(describe_job(data, now=1300.0)).splitlines()]
    assert "Deploy nodes:      edge7, edge8 and nodes matching nodeSelector {site: west}" in lines
    assert any(line.split()[:1] == ["edge7"] and "never seen" in line and line.split()[-3:] ==
               ["1", "-", "-"] for line in lines)
    assert any(line.startswith("edge8") and "offline (last status 5m ago)" in line
               and line.endswith("site=north") for line in lines)
    assert "no node matches nodeSelector {site: west}: a node whose agent declares these " \
           "labels gets the serving version" in lines
    assert "node edge7: never seen: no status from this node yet" in lines
    assert "node edge8: offline (last status 5m ago)" in lines
