"""The job state machine, driven event by event (pure: no broker, no clock)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_manager import state_machine as sm
from cloud_manager.task_builder import SPLIT_VARIABLE, JobInputs
from protocol import worker_contract as contract
from protocol.manifest_yaml import load_documents

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "helmet"
NODE = "cloud0"
SHA = "ab" * 32


def seed_inputs(threshold: int = 500, timer: bool = False, deploy: str = "precision_delta > 0.1",
                output_dir: str = "/output", custom: bool = False,
                forgetting_margin: float | None = None) -> JobInputs:
    text = "\n---\n".join((EXAMPLES / f).read_text() for f in
                          ("dataset.yaml", "initial-model.yaml", "deploy-model.yaml", "job.yaml"))
    docs = {m.kind: m for m in load_documents(text) if m.kind != "Model"}
    models = {m.metadata.name: m for m in load_documents(text) if m.kind == "Model"}
    job = docs["IncrementalLearningJob"]
    data = job.model_dump(by_alias=True, exclude_unset=True)
    trigger = data["spec"]["trainSpec"]["trigger"]
    trigger["condition"]["threshold"] = threshold
    if not timer:
        trigger.pop("timer", None)
    metric, op, value = deploy.split()
    data["spec"]["deploySpec"]["trigger"]["condition"] = {
        "metric": metric, "operator": op, "threshold": float(value)}
    if custom:
        data["spec"]["deploySpec"]["trigger"]["condition"]["customMetric"] = True
    if forgetting_margin is not None:
        data["spec"]["deploySpec"]["trigger"]["forgettingMargin"] = forgetting_margin
    data["spec"]["outputDir"] = output_dir
    job = type(job).model_validate(data)
    return JobInputs(job=job, dataset=docs["Dataset"], initial_model=models["initial-model"],
                     deploy_model=models["deploy-model"])


class Driver:
    """Feeds events to the machine, keeping state, time and the actions of the last step."""

    def __init__(self, inputs: JobInputs, online: bool = True, now: float = 1_000_000.0,
                 settings: sm.MachineSettings | None = None):
        self.inputs = inputs
        self.now = now
        self.online = {NODE} if online else set()
        self.settings = settings or sm.MachineSettings()
        self.state = sm.new_job("neptune-test", "helmet-detection-demo", now)
        self.actions: list[sm.Action] = []
        self.seq = 0

    def send(self, event: sm.Event, after: float = 1.0) -> list[sm.Action]:
        self.now += after
        ctx = sm.Context(self.now, frozenset(self.online), settings=self.settings)
        out = sm.handle(self.state, self.inputs, event, ctx)
        self.state, self.actions = out.state, out.actions
        return out.actions

    def dispatched(self) -> sm.DispatchTask:
        found = [a for a in self.actions if isinstance(a, sm.DispatchTask)]
        assert len(found) == 1, self.actions
        return found[0]

    def report(self, state: str, result: dict | None = None, *, seq: int | None = None,
               task=None, exit_code=None, message="") -> list[sm.Action]:
        task = task or self.state.task
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.send(sm.TaskReported(task.task_id, task.attempt, seq, state, result or {},
                                         message=message, exit_code=exit_code))

    @property
    def where(self) -> tuple[str, str, int]:
        return self.state.stage, self.state.state, self.state.round


def train_result(round_no: int) -> dict:
    return {"artifacts": [
        {"name": "model.tflite", "path": f"/output/{round_no}/model.tflite", "sha256": SHA, "size": 10},
        {"name": "model.keras", "path": f"/output/{round_no}/model.keras", "sha256": "cd" * 32, "size": 20},
    ], "loss": 0.5}


def eval_result(candidate: float, deployed: float | None) -> dict:
    models = [{"url": "c", "metrics": {"precision": candidate}}]
    if deployed is not None:
        models.append({"url": "d", "metrics": {"precision": deployed}})
    return {"models": models}


def run_round(d: Driver, candidate: float, deployed: float | None = None) -> None:
    """From Train/Starting through eval, answering like a node."""
    assert d.where[:2] == ("Train", "Starting")
    d.report("Running")
    d.report("Completed", train_result(d.state.round))
    assert d.where[:2] == ("Eval", "Starting")
    d.report("Running")
    d.report("Completed", eval_result(candidate, deployed))
    collect = [a for a in d.actions if isinstance(a, sm.CollectArtifacts)]
    if collect:
        assert d.where[:2] == ("Deploy", "Running")
        d.send(sm.ArtifactsCollected(collect[0].version, True))


def test_new_job_waits_for_the_train_trigger():
    d = Driver(seed_inputs())
    assert d.where == ("Train", "Waiting", 1)
    assert d.send(sm.SamplesReported(500)) == [sm.PublishStatus()]
    assert d.where == ("Train", "Waiting", 1)


def test_three_rounds_train_eval_deploy_and_back_to_waiting():
    d = Driver(seed_inputs(threshold=100))
    d.send(sm.SamplesReported(150))
    train = d.dispatched().task
    assert d.where == ("Train", "Starting", 1) and train.role == "train" and train.round == 1
    assert json.loads(train.env[SPLIT_VARIABLE])["start"] == 0
    assert json.loads(train.env[SPLIT_VARIABLE])["end"] == 150
    assert train.env[contract.TRAIN_DATASET_URL] == "/output/1/train.txt"
    assert train.env[contract.BASE_MODEL_URL] == "/model/base_model"
    run_round(d, candidate=0.7)
    assert [type(a) for a in d.actions] == [sm.DeployModel, sm.PublishStatus]
    assert d.state.deployed_version == 1
    assert d.where == ("Train", "Waiting", 2)

    # round 2: counts only samples added since round 1 started
    d.send(sm.SamplesReported(200))
    assert d.where == ("Train", "Waiting", 2)
    d.send(sm.SamplesReported(251))
    train = d.dispatched().task
    split = json.loads(train.env[SPLIT_VARIABLE])
    assert (split["start"], split["end"]) == (150, 251)
    assert train.env[contract.BASE_MODEL_URL] == "/output/1/model.keras"
    d.seq = 0
    run_round(d, candidate=0.9, deployed=0.7)
    deployed = [c for c in d.state.conditions if (c.stage, c.state) == ("Deploy", "Completed")]
    assert len(deployed) == 2 and d.state.deployed_version == 2

    # round 3: the candidate is not better enough: not deployed, round 4 waits
    d.send(sm.SamplesReported(400))
    d.seq = 0
    run_round(d, candidate=0.95, deployed=0.9)
    assert d.state.deployed_version == 2 and d.where == ("Train", "Waiting", 4)
    assert "candidate not deployed" in d.state.conditions[-2].reason


def test_eval_compares_candidate_with_deployed_model_files():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(1))
    run_round(d, candidate=0.7)
    d.send(sm.SamplesReported(2))
    d.seq = 0
    d.report("Running")
    d.report("Completed", train_result(2))
    urls = d.dispatched().task.env[contract.MODEL_URLS].split(";")
    assert urls == ["/output/2/model.tflite", "/output/1/model.tflite"]
    assert d.dispatched().task.env[contract.TEST_DATASET_URL] == "/output/2/eval.txt"


def test_first_candidate_must_beat_the_initial_model_the_edge_serves():
    """precision_delta > 0.1 while nothing is deployed: against the initial model's metrics,
    which eval reports as models[1], not against 0."""
    d = Driver(seed_inputs(threshold=100))
    d.send(sm.SamplesReported(150))
    run_round(d, candidate=0.65, deployed=0.6)
    assert d.state.deployed_version is None and d.where == ("Train", "Waiting", 2)
    reasons = [c.reason for c in d.state.conditions if (c.stage, c.state) == ("Eval", "Completed")]
    assert reasons[-1].endswith("> 0.1: does not hold") and "0.05" in reasons[-1]
    d.send(sm.SamplesReported(300))
    assert d.dispatched().task.env[contract.BASE_MODEL_URL] == "/model/base_model"
    run_round(d, candidate=0.8, deployed=0.6)
    assert d.state.deployed_version == 1


def test_samples_that_arrive_during_a_round_start_the_next_one_at_once():
    d = Driver(seed_inputs(threshold=100))
    d.send(sm.SamplesReported(101))
    d.report("Running")
    d.send(sm.SamplesReported(500))  # during training
    d.report("Completed", train_result(1))
    d.report("Completed", eval_result(0.8, None))
    d.send(sm.ArtifactsCollected(1, True))
    # round 2 triggered immediately: 399 new samples > 100
    assert d.where == ("Train", "Starting", 2)


def test_duplicate_and_reordered_reports_change_nothing():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(1))
    task = d.state.task
    d.report("Completed", train_result(1), seq=5)
    assert d.where == ("Eval", "Starting", 1)
    before = d.state
    # the same completion again, and a stale Running from before it
    assert d.send(sm.TaskReported(task.task_id, task.attempt, 5, "Completed", train_result(1))) == []
    assert d.send(sm.TaskReported(task.task_id, task.attempt, 3, "Running")) == []
    assert d.state.conditions == before.conditions


def test_report_of_an_old_attempt_is_ignored():
    d = Driver(seed_inputs(threshold=0), settings=sm.MachineSettings(retry_initial_s=5))
    d.send(sm.SamplesReported(1))
    first = d.state.task
    d.report("Failed", message="out of memory", exit_code=1)
    d.send(sm.Tick(), after=10)
    assert d.state.task.attempt == 2
    assert d.send(sm.TaskReported(first.task_id, 1, 99, "Completed", train_result(1))) == []
    assert d.where == ("Train", "Starting", 1)


def test_failed_task_is_retried_with_backoff_then_fails_the_stage():
    settings = sm.MachineSettings(max_attempts=3, retry_initial_s=10)
    d = Driver(seed_inputs(threshold=0), settings=settings)
    d.send(sm.SamplesReported(5))
    d.report("Failed", message="boom", exit_code=1)
    assert d.where == ("Train", "Ready", 1)
    assert d.state.retry_at == pytest.approx(d.now + 10)
    assert not any(isinstance(a, sm.DispatchTask) for a in d.send(sm.Tick(), after=5))
    d.send(sm.Tick(), after=5)
    assert d.dispatched().task.attempt == 2
    d.report("Failed", message="boom", exit_code=1)
    assert d.state.retry_at == pytest.approx(d.now + 20)
    d.send(sm.Tick(), after=20)
    assert d.dispatched().task.attempt == 3
    d.report("Failed", message="boom", exit_code=1)
    assert d.where == ("Train", "Failed", 1)
    assert "gave up after 3 attempts" in d.state.conditions[-1].reason
    # nothing happens on its own ...
    d.send(sm.Tick(), after=1000)
    assert d.where == ("Train", "Failed", 1)
    # ... until new samples arrive: a new round
    d.send(sm.SamplesReported(6))
    assert d.where == ("Train", "Starting", 2)


def test_bad_input_exit_code_is_not_retried():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(5))
    d.report("Failed", message="TRAIN_DATASET_URL missing", exit_code=contract.EXIT_BAD_INPUT)
    assert d.where == ("Train", "Failed", 1)
    assert "exit code 2" in d.state.conditions[-1].reason


def test_node_lost_mid_task_retries_when_it_is_back():
    d = Driver(seed_inputs(threshold=0), settings=sm.MachineSettings(retry_initial_s=1))
    d.send(sm.SamplesReported(5))
    d.report("Running")
    d.online.clear()
    actions = d.send(sm.NodeChanged(NODE, "lost"))
    assert any(isinstance(a, sm.StopTask) for a in actions)
    assert "node cloud0 went lost" in d.state.conditions[-2].reason
    d.send(sm.Tick(), after=30)
    assert d.where == ("Train", "Ready", 1)
    assert d.state.conditions[-1].reason == "waiting for node cloud0 to be online"
    n = len(d.state.conditions)
    d.send(sm.Tick(), after=30)
    assert len(d.state.conditions) == n  # the wait is said once
    d.online.add(NODE)
    d.send(sm.NodeChanged(NODE, "online"))
    assert d.dispatched().task.attempt == 2


def test_task_timeout_stops_and_retries():
    settings = sm.MachineSettings(train_timeout_s=100, retry_initial_s=1)
    d = Driver(seed_inputs(threshold=0), settings=settings)
    d.send(sm.SamplesReported(5))
    d.report("Running")
    actions = d.send(sm.Tick(), after=101)
    stops = [a for a in actions if isinstance(a, sm.StopTask)]
    assert len(stops) == 1 and stops[0].task.action == "stop"
    assert "timed out after 100 s" in d.state.conditions[-2].reason


def test_train_without_artifacts_fails_the_stage():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(5))
    d.report("Completed", {"loss": 1.0})
    assert d.where == ("Train", "Failed", 1)
    assert "no artifacts" in d.state.conditions[-1].reason


def test_eval_without_metrics_fails_and_unknown_class_is_not_zero():
    d = Driver(seed_inputs(threshold=0, deploy="precision[helmet] > 0.1"))
    d.send(sm.SamplesReported(5))
    d.report("Completed", train_result(1))
    d.report("Completed", eval_result(0.9, None))  # no per-class metrics in it
    assert d.state.deployed_version is None
    assert "cannot be computed" in d.state.conditions[-2].reason


def test_timer_window_and_check_period():
    inputs = seed_inputs(threshold=10, timer=True)  # 02:00-04:00 UTC, every 60 s
    start = 1_767_225_600.0  # 2026-01-01 00:00 UTC
    d = Driver(inputs, now=start)
    d.send(sm.SamplesReported(50))  # 00:00:01: outside the window
    assert d.where == ("Train", "Waiting", 1)
    d.now = start + 2 * 3600 - 30
    d.send(sm.Tick(), after=0)  # 01:59:30: checked, still outside
    d.send(sm.Tick(), after=31)  # 02:00:01, but only 31 s since the last check
    assert d.where == ("Train", "Waiting", 1)
    d.send(sm.Tick(), after=29)  # 60 s since the last check: due, inside
    assert d.where == ("Train", "Starting", 1)


def test_pause_holds_new_tasks_and_resume_releases_them():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.Paused())
    d.send(sm.SamplesReported(5))
    assert d.where == ("Train", "Waiting", 1) and d.state.paused
    d.send(sm.Resumed())
    assert d.where == ("Train", "Starting", 1)
    d.send(sm.Paused())
    d.report("Completed", train_result(1))
    assert d.where == ("Eval", "Ready", 1)  # the running task finished, the next waits
    assert not any(isinstance(a, sm.DispatchTask) for a in d.actions)
    d.send(sm.Resumed())
    assert d.where == ("Eval", "Starting", 1)


def test_delete_stops_the_running_task_and_ignores_later_events():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(5))
    actions = d.send(sm.Deleted())
    assert any(isinstance(a, sm.StopTask) for a in actions) and d.state.deleted
    assert d.send(sm.SamplesReported(50)) == []


def test_state_round_trips_through_json():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(5))
    d.report("Running")
    restored = sm.JobState.from_dict(json.loads(json.dumps(d.state.to_dict())))
    assert restored == d.state


def test_versions_and_candidate_round_trip_through_json():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(1))
    run_round(d, candidate=0.7)
    d.send(sm.SamplesReported(2))
    d.seq = 0
    d.report("Completed", train_result(2))
    assert d.state.candidate is not None and d.state.versions
    restored = sm.JobState.from_dict(json.loads(json.dumps(d.state.to_dict())))
    assert restored == d.state
    assert restored.deployed() == restored.versions[0]


def _artifacts(round_no: int) -> list[dict]:
    return [{"name": "model.tflite", "sha256": SHA, "size": 10,
             "path": f"/output/{round_no}/model.tflite"},
            {"name": "model.keras", "sha256": "cd" * 32, "size": 20,
             "path": f"/output/{round_no}/model.keras"}]


#: A job's state as the store held it before candidate and versions were typed (written by
#: that build): round 2 in Eval with its candidate, version 1 deployed.
OLD_STATE = {
    "namespace": "neptune-test", "name": "helmet-detection-demo", "stage": "Eval",
    "state": "Starting", "round": 2,
    "conditions": [
        {"stage": "Train", "state": "Waiting", "round": 1, "time": 1000000.0,
         "reason": "job created; waiting for the train trigger"},
        {"stage": "Train", "state": "Ready", "round": 1, "time": 1000001.0,
         "reason": "train trigger: num_of_samples = 1 > 0: holds"},
    ],
    "paused": False, "deleted": False, "samples": 2, "baseline": 2, "round_samples": [1, 2],
    "last_check": 1000007.0,
    "task": {"task_id": "helmet-detection-demo-0ffb9b-r2-eval", "role": "eval", "round": 2,
             "attempt": 1, "node": NODE, "state": "Starting", "sent_at": 1000009.0,
             "deadline": 1003609.0, "last_seq": -1, "progress": None},
    "attempt": 1, "retry_at": None,
    "candidate": {"artifacts": _artifacts(2), "result": {"loss": 0.5}},
    "versions": [
        {"version": 1, "round": 1, "artifacts": _artifacts(1),
         "metrics": {"precision": 0.7, "recall": None, "f1": None, "map50": None, "map": None},
         "decision": "precision_delta = 0.7 > 0.1: holds", "time": 1000005.0},
    ],
    "deployed_version": 1, "pending_version": None, "collect_deadline": None,
    "serving_version": None, "failed_at_samples": None, "revision": 20,
}


def test_state_stored_before_typed_versions_loads_and_goes_on():
    state = sm.JobState.from_dict(json.loads(json.dumps(OLD_STATE)))
    assert (state.stage, state.state, state.round) == ("Eval", "Starting", 2)
    assert state.candidate is not None
    assert [a.path for a in state.candidate.artifacts] == ["/output/2/model.tflite",
                                                           "/output/2/model.keras"]
    deployed = state.deployed()
    assert deployed is not None and deployed.version == 1 and deployed.collected is None
    assert deployed.metrics["precision"] == 0.7 and deployed.artifacts[0].sha256 == SHA
    # written back, every key the old form had keeps its value
    again = json.loads(json.dumps(state.to_dict()))
    assert {k: again[k] for k in OLD_STATE if k != "versions"} == {
        k: v for k, v in OLD_STATE.items() if k != "versions"}
    assert {k: again["versions"][0][k] for k in OLD_STATE["versions"][0]} == OLD_STATE["versions"][0]
    # and the machine carries on from it: the candidate becomes version 2
    d = Driver(seed_inputs(threshold=0))
    d.state = state
    d.report("Completed", eval_result(0.9, 0.7))
    (register,) = [a for a in d.actions if isinstance(a, sm.RegisterModel)]
    assert register.version.version == 2 and register.version.artifacts == state.candidate.artifacts
    assert d.where == ("Deploy", "Running", 2)


def test_a_stage_this_build_does_not_know_is_an_error_naming_it():
    with pytest.raises(ValueError, match="stage 'Training' is not one of Train, Eval, Deploy"):
        sm.JobState.from_dict(OLD_STATE | {"stage": "Training"})
    bad_condition = dict(OLD_STATE["conditions"][0], state="Sleeping")
    with pytest.raises(ValueError, match="state 'Sleeping'"):
        sm.JobState.from_dict(OLD_STATE | {"conditions": [bad_condition]})


def test_shrunk_index_counts_from_its_new_size():
    d = Driver(seed_inputs(threshold=100))
    d.send(sm.SamplesReported(150))
    run_round(d, candidate=0.9)
    d.send(sm.SamplesReported(20))  # index rewritten
    d.send(sm.SamplesReported(110))
    assert d.where == ("Train", "Waiting", 2)
    d.send(sm.SamplesReported(121))
    assert d.where == ("Train", "Starting", 2)


def test_unreadable_index_report_is_ignored():
    d = Driver(seed_inputs(threshold=0))
    assert d.send(sm.SamplesReported(0, error="missing")) == []


def test_history_is_append_only():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(5))
    seen = list(d.state.conditions)
    run_round(d, candidate=0.9)
    assert d.state.conditions[: len(seen)] == seen
    stages = [(c.stage, c.state) for c in d.state.conditions]
    for expected in [("Train", "Ready"), ("Train", "Running"), ("Train", "Completed"),
                     ("Eval", "Starting"), ("Eval", "Completed"), ("Deploy", "Completed")]:
        assert expected in stages


def test_rollback_serves_an_earlier_version_without_disturbing_the_round():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(1))
    run_round(d, candidate=0.7)
    d.send(sm.SamplesReported(2))
    d.seq = 0
    run_round(d, candidate=0.9, deployed=0.7)
    assert d.state.deployed_version == 2
    with pytest.raises(sm.RollbackError, match="no model version 7"):
        d.send(sm.RolledBack(7))
    d.send(sm.SamplesReported(3))  # round 3 is training
    where = d.where
    actions = d.send(sm.RolledBack())
    assert d.state.deployed_version == 1 and d.where == where
    assert sm.DeployModel(NODE, 1) in actions
    assert "rolled back from version 2 to 1" in d.state.conditions[-1].reason
    with pytest.raises(sm.RollbackError, match="no version before 1"):
        d.send(sm.RolledBack())
    # the round's eval now compares against version 1's model
    d.seq = 0
    d.report("Completed", train_result(3))
    urls = d.dispatched().task.env[contract.MODEL_URLS].split(";")
    assert urls[1] == "/output/1/model.tflite"


def test_polling_only_mode_waits_for_the_check_period():
    d = Driver(seed_inputs(threshold=0), settings=sm.MachineSettings(event_driven=False))
    d.send(sm.Tick(), after=0)  # a periodic check, nothing to do yet
    d.send(sm.SamplesReported(5))
    assert d.where == ("Train", "Waiting", 1)
    d.send(sm.Tick(), after=59)
    assert d.where == ("Train", "Starting", 1)


def test_serving_report_is_recorded_once_per_version():
    d = Driver(seed_inputs(threshold=0))
    d.send(sm.SamplesReported(1))
    run_round(d, candidate=0.7)
    n = len(d.state.conditions)
    d.send(sm.ServingReported(1, NODE))
    assert d.state.serving_version == 1
    assert d.state.conditions[-1].reason == "node cloud0 serves model version 1"
    assert d.send(sm.ServingReported(1, NODE)) == []
    assert len(d.state.conditions) == n + 1


def test_deploy_waits_for_the_files_and_fails_cleanly_without_them():
    settings = sm.MachineSettings(collect_timeout_s=100)
    d = Driver(seed_inputs(threshold=0), settings=settings)
    d.send(sm.SamplesReported(1))
    d.report("Completed", train_result(1))
    actions = d.report("Completed", eval_result(0.9, None))
    assert [type(a) for a in actions] == [sm.RegisterModel, sm.CollectArtifacts, sm.PublishStatus]
    assert d.where == ("Deploy", "Running", 1) and d.state.deployed_version is None
    d.send(sm.SamplesReported(2))  # samples during the deploy wait: counted, nothing starts
    assert d.where == ("Deploy", "Running", 1)
    d.send(sm.ArtifactsCollected(1, False, "node cloud0 does not have /output/1/model.tflite"))
    assert d.state.deployed_version is None
    assert ("Deploy", "Failed") in [(c.stage, c.state) for c in d.state.conditions]
    assert d.where == ("Train", "Starting", 2)  # the loop goes on
    with pytest.raises(sm.RollbackError, match="never deployed"):
        d.send(sm.RolledBack(1))
    # a late answer about version 1 changes nothing
    assert d.send(sm.ArtifactsCollected(1, True)) == []
    # round 2: the files never come: the deadline ends the wait
    d.seq = 0
    d.report("Completed", train_result(2))
    d.report("Completed", eval_result(0.9, None))
    d.send(sm.Tick(), after=101)
    assert "did not reach the registry within 100 s" in [
        c.reason for c in d.state.conditions if c.state == "Failed"][-1]


def template_inputs(train: str, eval_: str, deploy: str) -> JobInputs:
    """Sedna's helmet job in its pod-template form, with a node per stage; the seed's Dataset
    (on cloud0) and Models."""
    seed = seed_inputs(threshold=100)
    sedna = Path(__file__).resolve().parent.parent / "examples" / "sedna"
    text = (sedna / "examples__incremental_learning__helmet_detection__helmet_detection.yaml").read_text()
    for stage, node in (("train-worker", train), ("eval-worker", eval_), ("infer-worker", deploy)):
        # each template's nodeName precedes its container's name in the file
        head, _, tail = text.partition(f"name: {stage}")
        head = head[: head.rindex("nodeName: $WORKER_NODE")] + f"nodeName: {node}" + \
            head[head.rindex("nodeName: $WORKER_NODE") + len("nodeName: $WORKER_NODE"):]
        text = head + f"name: {stage}" + tail
    job = load_documents(text.replace("metadata:\n  name:", "metadata:\n  namespace: neptune-test\n  name:"))[0]
    assert isinstance(job, type(seed.job))
    return JobInputs(job=job, dataset=seed.dataset, initial_model=seed.initial_model,
                     deploy_model=seed.deploy_model)


def test_pod_template_nodes_place_train_eval_and_deploy():
    inputs = template_inputs("trainer", "judge", "edge0")
    assert (inputs.dataset_node, inputs.train_node, inputs.eval_node, inputs.deploy_node) == (
        "cloud0", "trainer", "judge", "edge0")
    d = Driver(inputs)
    d.online = {"cloud0", "trainer", "judge", "edge0"}
    d.send(sm.SamplesReported(600))
    train = d.dispatched()
    assert train.node == "trainer" and train.task.role == "train"
    assert train.task.worker is not None and train.task.worker.boot_file == "train.py"
    assert train.task.worker.parameters["batch_size"] == "32"
    d.report("Running")
    d.report("Completed", train_result(1))
    evaluate = d.dispatched()
    assert evaluate.node == "judge" and evaluate.task.role == "eval"
    d.report("Running")
    d.report("Completed", eval_result(0.9, 0.5))
    collect = [a for a in d.actions if isinstance(a, sm.CollectArtifacts)]
    assert [c.node for c in collect] == ["trainer"]  # the files are where train wrote them
    d.send(sm.ArtifactsCollected(collect[0].version, True))
    assert [a.node for a in d.actions if isinstance(a, sm.DeployModel)] == ["edge0"]


def test_train_waits_for_its_own_node_not_the_dataset_node():
    d = Driver(template_inputs("trainer", "judge", "edge0"))
    d.online = {"cloud0"}
    d.send(sm.SamplesReported(600))
    assert not any(isinstance(a, sm.DispatchTask) for a in d.actions)
    assert d.state.conditions[-1].reason == "waiting for node trainer to be online"


def test_a_custom_metric_the_eval_result_lacks_fails_the_round_naming_it():
    """An eval script of the user's own may report any metric; one that lacks the deploy
    trigger's metric fails the round with a reason naming it and what was reported."""
    d = Driver(seed_inputs(threshold=0, deploy="accuracy_delta > 0.1", custom=True))
    d.send(sm.SamplesReported(5))
    d.report("Completed", train_result(1))
    d.report("Completed", {"models": [{"url": "c", "metrics": {"acc": 0.9, "loss": 0.1}},
                                      {"url": "d", "metrics": {"acc": 0.5, "loss": 0.2}}]})
    assert d.where == ("Eval", "Failed", 1)
    reason = d.state.conditions[-1].reason
    assert "accuracy_delta" in reason and "it reports acc, loss" in reason, reason
    assert d.state.deployed_version is None
    # the same name reported: deployed
    d.send(sm.SamplesReported(10))
    d.report("Completed", train_result(2))
    d.report("Completed", {"models": [{"url": "c", "metrics": {"accuracy": 0.9}},
                                      {"url": "d", "metrics": {"accuracy": 0.5}}]})
    assert d.where[:2] == ("Deploy", "Running")


def eval_with_rounds(candidate: float, serving: float,
                     rounds: dict[int, tuple[float, float]]) -> dict:
    """An eval result with per-round scores: {round: (candidate, serving)} precision."""
    result = eval_result(candidate, serving)
    result["rounds"] = [
        {"round": r, "images": 10, "models": [{"url": "c", "metrics": {"precision": c}},
                                              {"url": "d", "metrics": {"precision": d}}]}
        for r, (c, d) in rounds.items()]
    return result


def test_a_candidate_that_forgets_an_earlier_round_is_not_deployed_and_the_round_is_named():
    d = Driver(seed_inputs(threshold=10))
    d.send(sm.SamplesReported(20))
    run_round(d, 0.6, 0.4)  # round 1: day, deployed as version 1
    assert d.state.deployed_version == 1
    d.send(sm.SamplesReported(40))
    d.report("Running")
    d.report("Completed", train_result(2))
    # eval of round 2 scores round 1's held-out samples too
    task = d.dispatched().task
    assert json.loads(task.env[contract.EARLIER_TEST_URLS]) == {"1": "/output/2/eval-round-1.txt"}
    split = json.loads(task.env[SPLIT_VARIABLE])
    assert split["earlier"] == [{"round": 1, "start": 0, "end": 20,
                                 "eval": "/output/2/eval-round-1.txt"}]
    # learned night (+0.4 on round 2's samples), forgot day (round 1: 0.9 -> 0.5)
    d.report("Completed", eval_with_rounds(0.8, 0.4, {1: (0.5, 0.9)}))
    assert d.state.deployed_version == 1
    not_deployed = next(c for c in reversed(d.state.conditions) if c.stage == "Eval")
    assert not_deployed.state == "Completed"
    assert "candidate not deployed" in not_deployed.reason
    assert "forgets earlier round: round 1 precision 0.900 -> 0.500 (-0.400)" in not_deployed.reason
    assert "margin 0.02" in not_deployed.reason
    assert d.where == ("Train", "Waiting", 3)


def test_a_drop_within_the_margin_deploys_and_the_reason_lists_the_rounds_checked():
    d = Driver(seed_inputs(threshold=10, forgetting_margin=0.05))
    for n, round_no in ((20, 1), (40, 2)):
        d.send(sm.SamplesReported(n))
        d.report("Completed", train_result(round_no))
        d.report("Completed", eval_with_rounds(0.8, 0.4, {1: (0.86, 0.9)} if round_no == 2 else {}))
        collect = [a for a in d.actions if isinstance(a, sm.CollectArtifacts)]
        d.send(sm.ArtifactsCollected(collect[0].version, True))
    assert d.state.deployed_version == 2
    decision = d.state.versions[-1].decision
    assert "no earlier round drops by more than 0.05 (rounds 1)" in decision, decision


def test_earlier_rounds_are_a_window_of_the_last_five_that_trained():
    d = Driver(seed_inputs(threshold=1))
    for round_no in range(1, 8):
        d.send(sm.SamplesReported(round_no * 5))
        d.report("Completed", train_result(round_no))
        task = d.dispatched().task
        earlier = json.loads(task.env.get(contract.EARLIER_TEST_URLS, "{}"))
        assert sorted(map(int, earlier)) == list(range(max(1, round_no - 5), round_no))
        d.report("Completed", eval_result(0.1, 0.5))  # not deployed: next round
    assert d.state.trained_rounds[-1] == [7, 30, 35]
    # a user's eval script without per-round metrics: deployed, and the reason says so
    d.send(sm.SamplesReported(40))
    d.report("Completed", train_result(8))
    d.report("Completed", eval_result(0.9, 0.5))
    assert "earlier rounds not checked: the eval result has no per-round metrics" in \
        d.state.versions[-1].decision


def test_describe_il_says_which_round_the_candidate_forgot():
    from rich.console import Console

    from cloud_manager.render import describe_job

    inputs = seed_inputs(threshold=10)
    d = Driver(inputs)
    d.send(sm.SamplesReported(20))
    run_round(d, 0.6, 0.4)
    d.send(sm.SamplesReported(40))
    d.report("Completed", train_result(2))
    d.report("Completed", eval_with_rounds(0.8, 0.4, {1: (0.5, 0.9)}))
    data = {"resource": {"namespace": "neptune-test", "name": "helmet-detection-demo",
                         "generation": 1, "manifest": inputs.job.model_dump(by_alias=True)},
            "status": sm.status_fields(d.state)}
    console = Console(width=400, record=True)
    console.print(describe_job(data, now=d.now))
    text = console.export_text()
    assert "precision_delta > 0.1, no earlier round may drop by more than 0.02" in text
    assert "forgets earlier round: round 1 precision 0.900 -> 0.500 (-0.400)" in text
