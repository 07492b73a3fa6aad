"""Staged rollout of a model version: the rollout machine alone (pure), and driven by the job's
state machine from a deploy, a rollback and the rollout commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cloud_state_machine import run_round
from test_cloud_targets import FleetDriver, deployed_to, reasons, render_text, selector_inputs
from typer.testing import CliRunner

from cloud_manager import rollout as ro
from cloud_manager import state_machine as sm
from cloud_manager.api import rollout_summary
from cloud_manager.render import describe_job
from cloud_manager.task_builder import JobInputs
from edgeloop.cli import app
from protocol.manifests import share_of

NODES = ("edge1", "edge2", "edge3", "edge4", "edge5")
POLICY = ro.Policy(canary=1, bake_s=60.0, wave=2, min_agreement=0.6, max_fps_drop=0.2,
                   health_timeout_s=120.0)


class Rollout:
    """Feeds events to the rollout machine, keeping its state, the time and every action."""

    def __init__(self, nodes=NODES, online=None, policy: ro.Policy = POLICY,
                 version: int | None = 2, previous: int | None = 1):
        self.now = 1000.0
        self.policy = policy
        self.online = set(nodes if online is None else online)
        baselines = {n: ro.Baseline(fps=10.0, restarts=0) for n in nodes}
        self.state, self.actions = ro.start(version, previous, baselines, self.ctx())
        self.log = list(self.actions)

    def ctx(self) -> ro.Context:
        return ro.Context(self.now, self.policy, frozenset(self.online))

    def send(self, event: ro.Event, after: float = 1.0) -> list[ro.Action]:
        self.now += after
        self.state, self.actions = ro.handle(self.state, event, self.ctx())
        self.log += self.actions
        return self.actions

    def healthy(self, node: str, version: int | None = 2, agreement: float | None = 0.9,
                fps: float = 9.5, **more) -> list[ro.Action]:
        return self.send(ro.Reported(node, ro.Health(
            version, fps=fps, agreement=agreement, compared=20 if agreement is not None else 0,
            hard_rate=0.05, **more)))

    def sent(self, version: int | None = 2) -> list[str]:
        return [a.node for a in self.log if isinstance(a, ro.Send) and a.version == version]

    def ended(self) -> ro.Ended | None:
        return next((a for a in self.log if isinstance(a, ro.Ended)), None)

    def notes(self) -> list[str]:
        return [a.reason for a in self.log if isinstance(a, ro.Note)]

    def serve_wave(self) -> None:
        """Every node sent the version and not serving it yet reports it healthy."""
        for node, record in sorted(self.state.nodes.items()):
            if record.phase == "sent":
                self.healthy(node)


# --- the rollout machine ---------------------------------------------------------------------


def test_canary_passes_then_waves_of_bounded_size_reach_every_node():
    r = Rollout()
    assert r.sent() == ["edge1"] and r.state.canaries() == ["edge1"]
    assert r.state.shadows("edge1") and not r.state.shadows("edge2")
    assert r.notes()[0].startswith("rollout of model version 2: canary node edge1 first")
    r.healthy("edge1")
    assert r.notes()[-1] == "canary node edge1 serves model version 2; baking for 60 s"
    r.send(ro.Tick(), after=30)
    assert r.sent() == ["edge1"] and r.state.phase == "Canary"  # still baking
    r.send(ro.Tick(), after=30)
    assert r.state.phase == "Waves"
    assert any(n.startswith("canary passed: node edge1, 9.5 FPS (was 10.0), agreement 0.90 "
                            "over 20 frames") for n in r.notes())
    assert r.sent() == ["edge1", "edge2", "edge3"]  # the first wave: two nodes
    r.healthy("edge2")
    assert r.sent() == ["edge1", "edge2", "edge3"]  # waits for the whole wave
    r.healthy("edge3")
    assert r.sent() == ["edge1", "edge2", "edge3", "edge4", "edge5"]
    r.serve_wave()
    assert r.state.phase == "Completed"
    assert r.ended() == ro.Ended(True, "model version 2 sent to every node")
    assert r.sent(1) == []  # nothing rolled back


def test_a_canary_whose_worker_crashes_rolls_back_and_no_other_node_gets_the_version():
    r = Rollout()
    r.send(ro.Reported("edge1", ro.Health(2, restarts=1)))
    assert r.state.phase == "Failed"
    ended = r.ended()
    assert ended is not None and not ended.ok
    assert ended.reason == ("node edge1 serving model version 2: its inference worker crashed 1 "
                            "time(s); node edge1 back to model version 1")
    assert r.sent() == ["edge1"] and r.sent(1) == ["edge1"]
    # nothing more happens: the rollout ended
    assert r.send(ro.Tick(), after=1000) == [] and r.sent() == ["edge1"]


def test_a_canary_that_cannot_load_the_model_rolls_back():
    r = Rollout()
    r.send(ro.Reported("edge1", ro.Health(1, error="model.tflite: not a TFLite model")))
    ended = r.ended()
    assert ended is not None and "could not load model version 2: model.tflite: not a " \
        "TFLite model" in ended.reason
    assert r.sent() == ["edge1"]


def test_agreement_below_the_threshold_fails_the_canary_at_the_end_of_the_bake():
    r = Rollout()
    r.healthy("edge1", agreement=0.2)
    assert r.ended() is None  # judged at the end of the bake
    r.send(ro.Tick(), after=60)
    ended = r.ended()
    assert ended is not None and ended.reason == (
        "canary node edge1: agreement with the previous version 0.20 < minAgreement 0.6 over "
        "20 compared frames; node edge1 back to model version 1")
    assert r.sent() == ["edge1"] and r.state.phase == "Failed"


def test_fps_that_drops_beyond_the_threshold_fails_the_canary():
    r = Rollout()
    r.healthy("edge1", fps=7.0)
    r.send(ro.Tick(), after=60)
    ended = r.ended()
    assert ended is not None and ended.reason.startswith(
        "canary node edge1: 7.0 FPS against 10.0 under the previous version (more than 20% "
        "slower)")
    assert r.sent() == ["edge1"]


def test_a_canary_without_a_shadow_comparison_passes_on_the_rest_and_says_so():
    r = Rollout(nodes=("edge1",))
    r.healthy("edge1", agreement=None)
    r.send(ro.Tick(), after=60)
    assert r.state.phase == "Completed"
    assert any("no shadow comparison" in n for n in r.notes())


def test_the_bake_waits_for_a_running_comparison_to_cover_a_frame_but_not_forever():
    r = Rollout()
    r.send(ro.Reported("edge1", ro.Health(2, fps=9.5, shadow=True)))
    r.send(ro.Tick(), after=60)
    assert r.state.phase == "Canary" and r.sent() == ["edge1"]
    assert r.notes()[-1] == "waiting for the shadow comparison of canary node edge1 with " \
        "model version 2"
    r.send(ro.Reported("edge1", ro.Health(2, fps=9.5, shadow=True, agreement=0.1, compared=3)))
    ended = r.ended()
    assert ended is not None and "agreement with the previous version 0.10" in ended.reason

    silent = Rollout()
    silent.send(ro.Reported("edge1", ro.Health(2, fps=9.5, shadow=True)))
    silent.send(ro.Tick(), after=60 + 120)
    ended = silent.ended()
    assert ended is not None and ended.reason.startswith(
        "canary node edge1 reported no health of model version 2 with the shadow comparison "
        "within 120 s of the bake's end")

    frameless = Rollout()
    frameless.send(ro.Reported("edge1", ro.Health(2)))  # swapped, no stats of version 2 yet
    frameless.send(ro.Tick(), after=60)
    assert frameless.notes()[-1] == "waiting for the first frames of canary node edge1 with " \
        "model version 2"
    frameless.healthy("edge1")
    assert frameless.state.phase == "Waves"


def test_a_canary_online_but_silent_fails_after_the_health_timeout_with_the_reason():
    r = Rollout()
    r.send(ro.Tick(), after=119)
    assert r.ended() is None
    r.send(ro.Tick(), after=1)
    ended = r.ended()
    assert ended is not None and ended.reason == (
        "canary node edge1 is online but reported no health of model version 2 within 120 s; "
        "node edge1 back to model version 1")
    assert r.sent() == ["edge1"]


def test_an_offline_canary_is_replaced_and_offline_nodes_do_not_block_the_waves():
    r = Rollout(online={"edge2", "edge3", "edge5"})
    # online nodes are picked first
    assert r.sent() == ["edge2"]
    r.online.discard("edge2")
    r.send(ro.Tick())
    assert r.state.canaries() == ["edge3"] and r.sent() == ["edge2", "edge3"]
    assert "canary node edge2 is offline: it gets model version 2 when it returns; node edge3 " \
           "is the canary instead" in r.notes()
    r.healthy("edge3")
    r.send(ro.Tick(), after=60)
    assert r.state.phase == "Waves"
    assert r.sent() == ["edge2", "edge3", "edge5"]  # the online one first
    r.healthy("edge5")
    # only offline nodes are left: they get it without a wait, and the rollout completes
    assert r.state.phase == "Completed"
    assert r.sent() == ["edge2", "edge3", "edge5", "edge1", "edge4"]
    ended = r.ended()
    assert ended is not None and ended.reason == (
        "model version 2 sent to every node; offline nodes edge1, edge4 get it when they return")


def test_a_wave_node_that_goes_offline_or_stays_silent_does_not_stop_the_rollout():
    r = Rollout(nodes=("edge1", "edge2", "edge3", "edge4"))
    r.healthy("edge1")
    r.send(ro.Tick(), after=60)
    assert r.sent() == ["edge1", "edge2", "edge3"]
    r.online.discard("edge2")
    r.send(ro.Tick())
    assert "node edge2 went offline: it gets model version 2 when it returns; the rollout goes " \
           "on" in r.notes()
    r.send(ro.Tick(), after=120)  # edge3 stays silent
    assert "node edge3 reported no health of model version 2 within 120 s; the rollout goes on " \
           "without it" in r.notes()
    assert r.sent()[-1] == "edge4"


def test_a_crash_in_a_wave_rolls_back_every_node_that_got_the_version():
    r = Rollout()
    r.healthy("edge1")
    r.send(ro.Tick(), after=60)
    r.send(ro.Reported("edge2", ro.Health(2, up=False)))
    ended = r.ended()
    assert ended is not None and ended.reason == (
        "node edge2 serving model version 2: its inference worker is down; nodes edge1, edge2, "
        "edge3 back to model version 1")
    assert r.sent(1) == ["edge1", "edge2", "edge3"]
    assert "edge4" not in r.sent() and "edge5" not in r.sent()


def test_pause_holds_the_next_step_resume_goes_on_abort_rolls_back():
    r = Rollout()
    r.healthy("edge1")
    r.send(ro.Pause())
    r.send(ro.Tick(), after=600)
    assert r.state.phase == "Canary" and r.sent() == ["edge1"]
    assert "rollout of model version 2 paused: no node gets it until resumed" in r.notes()
    r.send(ro.Resume())
    assert r.state.phase == "Waves" and r.sent() == ["edge1", "edge2", "edge3"]
    r.send(ro.Abort())
    assert r.state.phase == "Aborted"
    assert r.sent(1) == ["edge1", "edge2", "edge3"]
    ended = r.ended()
    assert ended is not None and ended.reason.startswith("aborted by the user")


def test_a_crash_rolls_back_even_while_paused():
    r = Rollout()
    r.send(ro.Pause())
    r.send(ro.Reported("edge1", ro.Health(2, restarts=2)))
    assert r.state.phase == "Failed" and r.sent(1) == ["edge1"]


def test_a_node_that_joins_during_the_rollout_waits_for_a_wave():
    r = Rollout(nodes=("edge1", "edge2"))
    r.online.add("edge7")
    r.send(ro.Joined("edge7", fps_before=10.0))
    r.healthy("edge1")
    assert r.sent() == ["edge1"]
    r.send(ro.Tick(), after=60)
    assert r.sent() == ["edge1", "edge2", "edge7"]  # the wave after the canary
    r.serve_wave()
    assert r.state.phase == "Completed"


def test_the_state_survives_a_round_trip_through_its_stored_form():
    r = Rollout()
    r.healthy("edge1")
    again = ro.RolloutState.from_dict(r.state.to_dict())
    assert again == r.state
    with pytest.raises(ValueError, match="'Sideways' is not one of"):
        ro.RolloutState.from_dict({**r.state.to_dict(), "phase": "Sideways"})


# --- driven by the job's machine -------------------------------------------------------------


def rollout_inputs(**rollout) -> JobInputs:
    """The fleet job of edge1..edge4 (nodeNames) with ``deploySpec.rollout``."""
    seed = selector_inputs(names=["edge1", "edge2", "edge3", "edge4"])
    data = seed.job.model_dump(by_alias=True, exclude_unset=True)
    data["spec"]["deploySpec"]["rollout"] = rollout
    job = type(seed.job).model_validate(data)
    return JobInputs(job=job, dataset=seed.dataset, initial_model=seed.initial_model,
                     deploy_model=seed.deploy_model)


def fleet(**rollout) -> FleetDriver:
    d = FleetDriver(rollout_inputs(**rollout), {n: {} for n in ("edge1", "edge2", "edge3",
                                                                "edge4", "cloud0")})
    d.online |= {"edge1", "edge2", "edge3", "edge4"}
    d.send(sm.Retarget())
    for node in ("edge1", "edge2", "edge3", "edge4"):
        d.send(sm.ServingReported(None, node, ro.Health(None, fps=10.0)))
    return d


def deploy_version(d: FleetDriver, candidate: float = 0.7) -> None:
    d.send(sm.SamplesReported(d.state.samples + 1))
    run_round(d, candidate=candidate)


def health(d: FleetDriver, node: str, version: int | None, **fields) -> list[sm.Action]:
    fields.setdefault("fps", 10.0)
    return d.send(sm.ServingReported(version, node, ro.Health(version, **fields)))


def test_the_job_deploys_to_the_canary_first_and_to_the_rest_after_the_bake():
    d = fleet(canary=1, bakeSeconds=30, waveSize="50%")
    deploy_version(d)
    assert deployed_to(d.actions) == {"edge1": 1}
    assert d.state.deployed_version == 1 and d.state.rollout is not None
    assert any(r.startswith("model version 1 published to node edge1 (staged rollout")
               for r in reasons(d))
    assert {n: t.desired for n, t in d.state.nodes.items()} == {
        "edge1": 1, "edge2": None, "edge3": None, "edge4": None}
    # the next round does not wait for the rollout
    assert d.where[:2] == ("Train", "Waiting")
    health(d, "edge1", 1, agreement=0.95, compared=12)
    assert d.send(sm.Tick(), after=30) and deployed_to(d.actions) == {"edge2": 1, "edge3": 1}
    health(d, "edge2", 1)
    health(d, "edge3", 1)
    assert deployed_to(d.actions) == {"edge4": 1}
    health(d, "edge4", 1)
    assert d.state.rollout.phase == "Completed"
    assert reasons(d)[-2].startswith("rollout completed: model version 1 sent to every node")


def test_a_failing_canary_rolls_back_marks_the_version_failed_and_others_never_get_it():
    d = fleet(canary=1, bakeSeconds=30)
    deploy_version(d)
    every: list[sm.Action] = []
    every += health(d, "edge1", 1, restarts=3)
    every += d.send(sm.Tick(), after=600)
    assert d.state.rollout.phase == "Failed"
    assert deployed_to(every) == {"edge1": None}
    assert d.state.deployed_version is None
    assert d.state.nodes["edge1"].desired is None
    assert all(t.desired is None for t in d.state.nodes.values())
    assert d.state.failed_versions[1].startswith("node edge1 serving model version 1: its "
                                                 "inference worker crashed 3 time(s)")
    assert any(r.startswith("rollout of version 1 failed: node edge1 serving model version 1")
               and r.endswith("version 1 is marked failed") for r in reasons(d))


def test_agreement_too_low_fails_the_canary_through_the_job():
    d = fleet(canary=1, bakeSeconds=30, minAgreement=0.7)
    deploy_version(d)
    health(d, "edge1", 1, agreement=0.1, compared=30)
    actions = d.send(sm.Tick(), after=30)
    assert deployed_to(actions) == {"edge1": None}
    assert "agreement with the previous version 0.10 < minAgreement 0.7" in \
        d.state.failed_versions[1]


def test_a_node_that_joins_during_the_canary_gets_the_proven_version_until_its_wave():
    seed = selector_inputs({"matchLabels": {"site": "north"}})
    data = seed.job.model_dump(by_alias=True, exclude_unset=True)
    data["spec"]["deploySpec"]["rollout"] = {"canary": 1, "bakeSeconds": 30}
    inputs = JobInputs(job=type(seed.job).model_validate(data), dataset=seed.dataset,
                       initial_model=seed.initial_model, deploy_model=seed.deploy_model)
    d = FleetDriver(inputs, {"edge1": {"site": "north"}, "edge2": {"site": "north"}})
    d.online |= {"edge1", "edge2"}
    d.send(sm.Retarget())
    deploy_version(d)
    assert deployed_to(d.actions) == {"edge1": 1}
    assert deployed_to(d.join("edge5", {"site": "north"})) == {"edge5": None}
    assert reasons(d)[-1].endswith("it gets the initial model")
    health(d, "edge1", 1)
    d.send(sm.Tick(), after=30)
    assert deployed_to(d.actions) == {"edge2": 1}  # waves of 25% of three nodes: one
    health(d, "edge2", 1)
    assert deployed_to(d.actions) == {"edge5": 1}


def test_rollout_commands_and_a_rollback_staged_or_now():
    d = fleet(canary=1, bakeSeconds=0, waveSize=3)
    with pytest.raises(sm.RolloutError, match="has no rollout in progress"):
        d.send(sm.RolloutCommand("pause"))
    deploy_version(d)
    for node in ("edge1", "edge2", "edge3", "edge4"):
        health(d, node, 1)
    assert d.state.rollout.phase == "Completed"
    deploy_version(d)  # version 2, canary edge1
    assert deployed_to(d.actions) == {"edge1": 2}
    d.send(sm.RolloutCommand("pause"))
    health(d, "edge1", 2)
    assert deployed_to(d.actions) == {} and d.state.rollout.paused
    d.send(sm.RolloutCommand("resume"))
    assert deployed_to(d.actions) == {"edge2": 2, "edge3": 2, "edge4": 2}
    d.send(sm.RolloutCommand("abort"))
    assert deployed_to(d.actions) == {"edge1": 1, "edge2": 1, "edge3": 1, "edge4": 1}
    assert d.state.deployed_version == 1 and 2 in d.state.failed_versions

    # back to 2 explicitly, staged: the canary first
    d.send(sm.RolledBack(2))
    assert deployed_to(d.actions) == {"edge1": 2}
    assert any("through the staged rollout" in r for r in reasons(d))
    # a rollback to the version the rollout replaces stops it
    d.send(sm.RolledBack(1))
    assert deployed_to(d.actions) == {"edge1": 1} and d.state.rollout.phase == "Aborted"
    # --now: every node at once
    d.send(sm.RolledBack(2, now=True))
    assert deployed_to(d.actions) == {"edge1": 2, "edge2": 2, "edge3": 2, "edge4": 2}


def test_the_job_state_with_a_rollout_survives_the_store_form():
    d = fleet(canary=1, bakeSeconds=30)
    deploy_version(d)
    health(d, "edge1", 1, agreement=0.8, compared=5)
    again = sm.JobState.from_dict(d.state.to_dict())
    assert again == d.state


def test_without_a_rollout_every_target_gets_the_version_at_once():
    d = FleetDriver(selector_inputs(names=["edge1", "edge2"]), {"edge1": {}, "edge2": {}})
    d.online |= {"edge1", "edge2"}
    d.send(sm.Retarget())
    deploy_version(d)
    assert deployed_to(d.actions) == {"edge1": 1, "edge2": 1} and d.state.rollout is None


def test_a_manager_restart_resumes_the_rollout_from_the_store(store_at):
    d = fleet(canary=1, bakeSeconds=30, waveSize=3)
    deploy_version(d)
    health(d, "edge1", 1, agreement=0.9, compared=4)
    store = store_at.open()  # SQLite, then PostgreSQL
    with store.transaction():
        store.save_job(d.state, d.now)
    store.close()

    again = store_at.open()  # the manager starts again
    loaded = again.load_job(d.state.namespace, d.state.name)
    again.close()
    assert loaded == d.state and loaded.rollout is not None and loaded.rollout.phase == "Canary"
    d.state = loaded
    d.send(sm.Tick(), after=30)
    assert deployed_to(d.actions) == {"edge2": 1, "edge3": 1, "edge4": 1}


def test_a_manifest_without_rollout_ends_the_one_under_way_everywhere_at_once():
    d = fleet(canary=1, bakeSeconds=30)
    deploy_version(d)
    assert deployed_to(d.actions) == {"edge1": 1}
    d.inputs = selector_inputs(names=["edge1", "edge2", "edge3", "edge4"])
    d.send(sm.SpecChanged())
    assert deployed_to(d.actions) == {n: 1 for n in ("edge1", "edge2", "edge3", "edge4")}
    assert d.state.rollout.phase == "Completed" and not d.state.rollout.active
    assert reasons(d)[-1].startswith("rollout of version 1 ended: the manifest no longer has "
                                     "deploySpec.rollout")


def test_a_rollout_with_no_target_yet_makes_the_first_node_that_joins_its_canary():
    seed = selector_inputs({"matchLabels": {"site": "north"}})
    data = seed.job.model_dump(by_alias=True, exclude_unset=True)
    data["spec"]["deploySpec"]["rollout"] = {"canary": 1, "bakeSeconds": 0}
    inputs = JobInputs(job=type(seed.job).model_validate(data), dataset=seed.dataset,
                       initial_model=seed.initial_model, deploy_model=seed.deploy_model)
    d = FleetDriver(inputs, {})
    d.send(sm.Retarget())
    deploy_version(d)
    assert deployed_to(d.actions) == {}
    assert "rollout of model version 1 waits for a node to come online as its canary" in \
        reasons(d)
    actions = d.join("edge1", {"site": "north"})
    assert [(a.node, a.version) for a in actions if isinstance(a, sm.DeployModel)] == [
        ("edge1", None), ("edge1", 1)]  # placed with the proven version, then the canary's
    assert d.state.nodes["edge1"].desired == 1 and d.state.rollout.canaries() == ["edge1"]


# --- the manifest ----------------------------------------------------------------------------


def test_validate_names_the_rollout_extension_and_each_error_with_its_path():
    job = (Path(__file__).resolve().parent.parent / "examples" / "helmet" / "job.yaml").read_text()

    def validate(rollout: str):
        text = job.replace("    nodeName:", f"    rollout: {rollout}\n    nodeName:", 1)
        return CliRunner().invoke(app, ["validate", "-f", "-"], input=text)

    good = validate('{canary: "10%", bakeSeconds: 60, waveSize: 2, minAgreement: 0.7}')
    assert good.exit_code == 0, good.output
    assert good.stdout.splitlines() == [
        "IncrementalLearningJob/neptune-test/helmet-detection-demo OK (edgeloop extension: "
        "spec.deploySpec.rollout)"]
    bad = validate('{canary: 0, waveSize: "150%", minAgreement: 2, bakeSeconds: "5m", '
                   'canaries: 1}')
    assert bad.exit_code == 1
    for expected in ("spec.deploySpec.rollout.canary: must be at least 1 node, not 0",
                     "spec.deploySpec.rollout.waveSize: must be a node count (1) or a "
                     "percentage between 0 and 100", "spec.deploySpec.rollout.minAgreement",
                     "spec.deploySpec.rollout.bakeSeconds", "spec.deploySpec.rollout.canaries"):
        assert expected in bad.output, bad.output
    policy = ro.Policy.of(rollout_inputs().job.spec.deploy_spec.rollout)
    assert policy == ro.Policy()  # rollout: {} takes every default


def test_shares_of_the_targets_round_up_and_stay_within_them():
    assert [share_of("10%", n) for n in (1, 5, 10, 11, 40)] == [1, 1, 1, 2, 4]
    assert [share_of("25%", n) for n in (3, 4, 8)] == [1, 1, 2]
    assert share_of(3, 2) == 2 and share_of(1, 0) == 0 and share_of("100%", 7) == 7


def test_describe_shows_the_rollout_and_each_node_part_fps_and_agreement():
    d = fleet(canary=1, bakeSeconds=30)
    deploy_version(d)
    health(d, "edge1", 1, fps=9.5, agreement=0.87, compared=12)
    manifest = d.inputs.job.model_dump(mode="json", by_alias=True, exclude_unset=True)
    targets = [{"node": n, "state": "online", "desired": t.desired, "serving": t.serving,
                "seen": 1000.0, "health": "online", "labels": {},
                "rollout": f"{r.role}, {r.phase}" if (r := d.state.rollout.nodes.get(n)) else "",
                "fps": t.health.fps if t.health else None,
                "agreement": t.health.agreement if t.health else None}
               for n, t in sorted(d.state.nodes.items())]
    data = {"resource": {"namespace": "neptune-test", "name": "helmet-detection-demo",
                         "generation": 1, "manifest": manifest},
            "status": sm.status_fields(d.state), "targets": targets,
            "rollout": rollout_summary(d.state)}
    lines = [line.strip() for line in render_text(describe_job(data, now=1300.0)).splitlines()]
    assert "Rollout:           Canary: version 1 sent to 1 of 4 node(s)" in lines
    assert any(line.split()[:8] == ["edge1", "online", "canary,", "serving", "9.5", "0.87", "1",
                                    "1"] for line in lines), lines
    assert any(line.split()[:7] == ["edge2", "online", "wave,", "waiting", "10.0", "-",
                                    "initial"] for line in lines), lines
