"""The node's decisions, driven event by event (pure: no broker, no worker, no clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import decisions as d
from edge_agent.deployment import PreparedModel
from protocol import topics
from protocol import worker_channel as wc
from protocol import worker_contract as contract
from protocol.messages import (
    DesiredState,
    SampleReport,
    Task,
    TaskHealth,
    TaskProgress,
    WorkerSpec,
)

NODE = "edge-1"
SHA = "ab" * 32


def task(task_id: str = "inf", *, attempt: int = 1, action: str = "start", role: str = "inference",
         version: int | None = None) -> Task:
    env = {contract.MODEL_VERSION: str(version)} if version is not None else {}
    worker = WorkerSpec(script_dir="/w", boot_file="infer.py") if action == "start" else None
    return Task(task_id=task_id, job="ns/job", role=role, attempt=attempt, action=action,
                worker=worker, env=env)


def desired(generation: int, *tasks: Task, node: str = NODE) -> DesiredState:
    return DesiredState(node=node, generation=generation, tasks=list(tasks))


def model(version: int) -> PreparedModel:
    return PreparedModel("ns/job", version, Path(f"/state/models/v{version}/model.tflite"), SHA)


def report(state: str, task_id: str = "inf", seq: int = 1) -> TaskProgress:
    return TaskProgress(node=NODE, task_id=task_id, seq=seq, state=state)


class Driver:
    """Feeds events to the decisions with a world it keeps: time, live workers, backlog."""

    def __init__(self, *, watches_datasets: bool = False, now: float = 1000.0) -> None:
        self.state = d.NodeState(NODE, watches_datasets=watches_datasets)
        self.now = now
        self.workers: dict[str, d.WorkerView] = {}
        self.backlog = 0
        self.connected = True

    def send(self, event: d.Event, after: float = 0.0) -> list[d.Action]:
        self.now += after
        ctx = d.Context(self.now, dict(self.workers), self.backlog, self.connected)
        out = d.handle(self.state, event, ctx)
        self.state = out.state
        return out.actions

    def apply(self, message: DesiredState) -> list[d.Action]:
        """As the daemon does: the generation's actions, its record answered once they are done."""
        actions = self.send(d.DesiredReceived(message))
        for action in actions:
            if isinstance(action, d.RecordGeneration):
                self.send(d.GenerationApplied(action.generation, action.tasks))
        return actions

    def run(self, running: Task, *, alive: bool = True, restarts: int | None = None) -> None:
        self.workers[running.task_id] = d.WorkerView(running, alive, restarts)

    def publish_status(self, after: float = 0.0) -> d.PublishStatus | None:
        """A status check; a status it asks for is published (and answered) at once."""
        actions = self.send(d.StatusDue(), after)
        if not actions:
            return None
        (status,) = actions
        assert isinstance(status, d.PublishStatus)
        self.send(d.StatusPublished(status.backlog, status.serving, status.restarts,
                                    status.health))
        return status


def of_type(actions: list[d.Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


# --- desired state -----------------------------------------------------------------------------


def test_a_generation_applies_once_and_the_copy_handed_back_at_reconnection_changes_nothing():
    drv = Driver()
    inf = task("inf")
    actions = drv.apply(desired(3, inf))
    assert actions == [d.PrepareModels(inf, True), d.RecordGeneration(3, frozenset({"inf"}))]
    assert drv.state.applied_generation == 3

    assert drv.apply(desired(3, inf)) == []  # the retained copy after a reconnection
    assert drv.apply(desired(2)) == []  # an older generation: nothing stops
    assert drv.state.applied_generation == 3 and drv.state.desired_tasks == {"inf"}
    assert drv.apply(desired(4, inf))[0] == d.PrepareModels(inf, True)
    assert drv.state.applied_generation == 4


def test_a_generation_whose_application_failed_half_way_is_applied_again():
    drv = Driver()
    inf = task("inf")
    first = drv.send(d.DesiredReceived(desired(5, inf)))  # an action failed: no record answered
    assert drv.state.applied_generation == -1
    assert drv.send(d.DesiredReceived(desired(5, inf))) == first


def test_tasks_dropped_or_stopped_by_a_later_generation_are_stopped_others_left_alone():
    drv = Driver()
    a, b, c = task("a"), task("b"), task("c")
    drv.apply(desired(1, a, b, c))
    drv.send(d.TaskReceived(task("train", role="train")))  # a round, not in the desired state
    stop_c = task("c", action="stop")
    actions = drv.apply(desired(2, a, stop_c))
    assert actions == [
        d.StopWorker("b", "no longer in the desired state"),
        d.StopWorker("c", "no longer in the desired state"),  # the second stop finds it stopped
        d.PrepareModels(a, True),
        d.StopWorker("c", "stopped by the desired state"),
        d.RecordGeneration(2, frozenset({"a"})),
    ]
    assert drv.state.desired_tasks == {"a"}
    # c was stopped by generation 2: generation 3 without it has nothing more to stop
    assert of_type(drv.apply(desired(3, a)), d.StopWorker) == []
    assert of_type(drv.apply(desired(4)), d.StopWorker) == [
        d.StopWorker("a", "no longer in the desired state")]


def test_task_messages_are_obeyed_through_the_runner_which_runs_an_attempt_once():
    drv = Driver()
    stop = task("inf", action="stop")
    assert drv.send(d.TaskReceived(stop)) == [d.HandleTask(stop)]
    start = task("train", role="train")
    assert drv.send(d.TaskReceived(start)) == [d.PrepareModels(start, False)]


# --- start, hot-swap, restart, retarget --------------------------------------------------------


def test_a_task_not_running_is_started_ensured_for_the_desired_state_handled_for_a_message():
    drv = Driver()
    inf = task("inf", version=1)
    assert drv.send(d.ModelReady(inf, model(1), True)) == [d.EnsureRunning(inf)]
    assert drv.send(d.ModelReady(inf, model(1), False)) == [d.HandleTask(inf)]
    drv.run(task("inf", attempt=1, version=1))
    second = task("inf", attempt=2, version=1)  # another attempt replaces the running one
    assert drv.send(d.ModelReady(second, model(1), True)) == [d.EnsureRunning(second)]
    train = task("train", role="train")
    drv.run(train)
    assert drv.send(d.ModelReady(train, None, False)) == [d.HandleTask(train)]


def test_a_new_version_for_the_running_attempt_is_hot_swapped_over_the_channel():
    drv = Driver()
    drv.run(task("inf", version=1))
    v2 = task("inf", version=2)
    actions = drv.send(d.ModelReady(v2, model(2), True))
    swap = wc.Swap(path="/state/models/v2/model.tflite", version="2", sha256=SHA)
    assert actions == [d.SendSwap(v2, swap)]
    assert drv.send(d.SwapSent(v2, swap, delivered=True)) == [
        d.Retarget(v2, "hot-swapping to model version 2")]


def test_a_worker_without_a_channel_is_restarted_with_the_new_version():
    drv = Driver()
    drv.run(task("inf", version=1))
    v2 = task("inf", version=2)
    (send,) = drv.send(d.ModelReady(v2, model(2), True))
    assert drv.send(d.SwapSent(v2, send.swap, delivered=False)) == [
        d.StopWorker("inf", "restarting with model version 2"),
        d.StartWorker(v2, "no channel to its worker; restarting it with model version 2"),
    ]


def test_a_worker_waiting_for_its_restart_is_retargeted_not_swapped():
    drv = Driver()
    drv.run(task("inf", version=1), alive=False, restarts=1)
    v2 = task("inf", version=2)
    (action,) = drv.send(d.ModelReady(v2, model(2), True))
    assert isinstance(action, d.Retarget) and action.task == v2
    assert "will start with model version 2" in action.why


def test_the_version_served_already_is_neither_swapped_nor_restarted():
    drv = Driver()
    drv.run(task("inf", version=1))
    assert drv.send(d.ModelReady(task("inf", version=1), model(1), True)) == []
    # what the worker says it serves wins over the version it was started with
    drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=True, version="2", previous="1")))
    assert drv.send(d.ModelReady(task("inf", version=2), model(2), True)) == []
    (back,) = drv.send(d.ModelReady(task("inf", version=1), model(1), True))
    assert isinstance(back, d.SendSwap) and back.swap.version == "1"


# --- which version each inference task serves --------------------------------------------------


def test_served_version_across_hello_stats_swap_exit_and_end():
    drv = Driver()
    drv.run(task("inf", version=1))
    drv.send(d.WorkerHello("inf", None))  # the version it started with
    assert drv.state.serving == {"inf": 1}
    drv.send(d.WorkerHello("inf", "7"))  # a second hello does not override what is known
    assert drv.state.serving == {"inf": 1}
    stats = wc.Stats(model_version="2", frames=10, fps=5.0)
    drv.send(d.WorkerStats("inf", stats))
    assert drv.state.serving == {"inf": 2} and drv.state.worker_stats == {"inf": stats}
    drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=True, version="3")))
    assert drv.state.serving == {"inf": 3}

    drv.send(d.WorkerExited("inf"))  # dead until its successor says hello
    assert drv.state.serving == {} and drv.state.worker_stats == {}
    drv.send(d.WorkerHello("inf", "3"))
    assert drv.state.serving == {"inf": 3}

    del drv.workers["inf"]
    actions = drv.send(d.ProgressReported(report("Failed")))
    assert drv.state.serving == {} and of_type(actions, d.CloseTask)


def test_a_refused_swap_is_reported_and_the_old_version_keeps_serving():
    drv = Driver()
    drv.run(task("inf", version=1))
    drv.send(d.WorkerHello("inf", "1"))
    actions = drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=False, error="sha256 mismatch")))
    assert actions == [d.ReportError("swap_failed", "sha256 mismatch", "inf")]
    assert drv.state.serving == {"inf": 1}
    (default,) = drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=False)))
    assert default.reason == "the worker refused the model"


def test_only_running_inference_workers_with_numeric_versions_are_listed():
    drv = Driver()
    drv.run(task("train", role="train", version=4))
    drv.send(d.WorkerHello("train", "4"))  # train workers serve nothing
    drv.send(d.WorkerStats("gone", wc.Stats(model_version="2", frames=1, fps=1.0)))  # not running
    drv.run(task("inf"))
    drv.send(d.WorkerHello("inf", "latest"))
    assert drv.state.serving == {}


def test_handle_leaves_the_given_state_unchanged():
    drv = Driver()
    drv.run(task("inf", version=1))
    before = drv.state
    drv.send(d.WorkerHello("inf", None))
    assert before.serving == {} and drv.state.serving == {"inf": 1}


# --- node status -------------------------------------------------------------------------------


def test_status_is_published_at_each_connection_with_what_it_says():
    drv = Driver()
    drv.run(task("inf", version=1), restarts=2)
    drv.run(task("train", role="train"))
    drv.send(d.WorkerHello("inf", None))
    drv.backlog = 4
    actions = drv.send(d.Connected())
    assert actions == [d.PublishStatus(4, {"inf": 1}, {"inf": 2}, {"inf": TaskHealth(version=1)})]


def test_status_republished_when_it_changed_at_most_every_two_seconds():
    drv = Driver()
    assert drv.publish_status() == d.PublishStatus(0, {}, {})  # nothing published yet
    assert drv.publish_status(after=10) is None  # nothing changed
    drv.backlog = 1
    assert drv.publish_status() == d.PublishStatus(1, {}, {})  # the last one was 10 s ago

    drv.backlog = 3
    assert drv.publish_status(after=1.0) is None  # changed, but 1 s after the last one
    assert drv.publish_status(after=1.0) == d.PublishStatus(3, {}, {})

    drv.run(task("inf", version=1))
    drv.send(d.WorkerHello("inf", None))
    assert drv.publish_status(after=d.STATUS_MIN_INTERVAL_S) == d.PublishStatus(
        3, {"inf": 1}, {}, {"inf": TaskHealth(version=1)})

    drv.run(task("inf", version=1), alive=False, restarts=1)
    drv.connected = False
    assert drv.publish_status(after=5) is None  # nobody to tell
    drv.connected = True
    assert drv.publish_status(after=0.5) == d.PublishStatus(
        3, {"inf": 1}, {"inf": 1}, {"inf": TaskHealth(version=1, up=False)})


def test_health_alone_is_news_every_ten_seconds_and_fps_jitter_is_not():
    drv = Driver()
    drv.run(task("inf", version=1))
    drv.send(d.WorkerHello("inf", None))
    assert drv.publish_status() is not None
    stats = wc.Stats(model_version="1", frames=100, fps=9.0, hard_examples=5,
                     extra={"version_fps": 9.5})
    drv.send(d.WorkerStats("inf", stats))
    first = drv.publish_status(after=d.HEALTH_INTERVAL_S)  # the version's first frames: news
    assert first is not None and first.health["inf"].fps == 9.5
    jitter = stats.model_copy(update={"frames": 200, "extra": {"version_fps": 9.1}})
    drv.send(d.WorkerStats("inf", jitter))
    assert drv.publish_status(after=d.HEALTH_INTERVAL_S) is None  # FPS alone: no news
    # stats of the version served before a swap say nothing of the one serving now
    drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=True, version="2")))
    swapped = drv.publish_status(after=d.STATUS_MIN_INTERVAL_S)
    assert swapped is not None and swapped.health["inf"] == TaskHealth(version=2)
    stats = stats.model_copy(update={"model_version": "2"})
    drv.send(d.WorkerStats("inf", stats))
    assert drv.publish_status(after=d.HEALTH_INTERVAL_S) is not None
    shadow = stats.model_copy(update={"extra": {"version_fps": 9.4, "shadow_agreement": 0.83,
                                                "shadow_compared": 7, "shadow_active": True}})
    drv.send(d.WorkerStats("inf", shadow))
    assert drv.publish_status(after=d.STATUS_MIN_INTERVAL_S) is None  # not 10 s yet
    status = drv.publish_status(after=d.HEALTH_INTERVAL_S)
    assert status is not None and status.health == {"inf": TaskHealth(
        version=2, frames=100, fps=9.4, hard_examples=5, agreement=0.83, compared=7, shadow=True)}
    more = shadow.model_copy(update={"extra": {"shadow_agreement": 0.8, "shadow_compared": 9,
                                               "shadow_active": True}})
    drv.send(d.WorkerStats("inf", more))
    assert drv.publish_status(after=d.STATUS_MIN_INTERVAL_S) is None  # not 10 s yet
    status = drv.publish_status(after=d.HEALTH_INTERVAL_S)
    assert status is not None and status.health["inf"].compared == 9


def test_a_model_the_worker_refused_is_in_its_health_until_a_swap_succeeds():
    drv = Driver()
    drv.run(task("inf", version=1))
    drv.send(d.WorkerHello("inf", None))
    drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=False, error="v2: not a TFLite model")))
    status = drv.publish_status()
    assert status is not None and status.health["inf"].error == "v2: not a TFLite model"
    drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=True, version="3")))
    status = drv.publish_status(after=d.STATUS_MIN_INTERVAL_S)
    assert status is not None and status.health["inf"] == TaskHealth(version=3)


def test_a_refused_model_is_published_within_two_seconds_though_the_version_is_back():
    """A swap that fails on its first frame puts the served version back before the next
    status: the refusal itself is what the rollout must hear, without the health interval."""
    drv = Driver()
    drv.run(task("inf", version=1))
    drv.send(d.WorkerHello("inf", None))
    assert drv.publish_status() is not None
    drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=True, version="2", previous="1")))
    drv.send(d.WorkerSwapped("inf", wc.Swapped(ok=False, version="1",
                                               error="model 2 failed on its first frame")))
    drv.send(d.WorkerStats("inf", wc.Stats(model_version="1", frames=5, fps=9.0)))
    assert drv.state.serving == {"inf": 1}
    assert drv.publish_status(after=1.0) is None  # at most every two seconds still
    status = drv.publish_status(after=d.STATUS_MIN_INTERVAL_S - 1.0)
    assert status is not None and status.health["inf"].error == "model 2 failed on its first frame"


def test_a_version_the_node_could_not_have_is_in_the_health_of_the_worker_serving_on():
    """A model the agent's check discarded never reaches the worker; it serves the old version
    on, and the refusal is in its health as a model it refused would be."""
    drv = Driver()
    drv.run(task("inf", version=1))
    drv.send(d.WorkerHello("inf", None))
    assert drv.publish_status() is not None
    reason = "model not available: v2: model.tflite was discarded: LiteRT cannot load it"
    actions = drv.send(d.ModelUnavailable(task("inf", version=2), reason))
    assert actions == [d.ReportError("model_unavailable", reason, "inf")]
    status = drv.publish_status(after=d.STATUS_MIN_INTERVAL_S)
    assert status is not None and status.health["inf"] == TaskHealth(version=1, error=reason)
    # a task with no worker running could not start at all
    train = task("train", role="train")
    assert drv.send(d.ModelUnavailable(train, reason)) == [d.FailTask(train, reason)]


def test_a_canary_task_asks_its_worker_for_the_shadow_comparison():
    drv = Driver()
    drv.run(task("inf", version=1))
    v2 = task("inf", version=2)
    v2 = v2.model_copy(update={"env": {**v2.env, contract.SHADOW_EVERY: "10"}})
    (send,) = drv.send(d.ModelReady(v2, model(2), True))
    assert isinstance(send, d.SendSwap) and send.swap.shadow_every == 10
    plain = task("inf", version=3)
    (send,) = drv.send(d.ModelReady(plain, model(3), True))
    assert isinstance(send, d.SendSwap) and send.swap.shadow_every == 0


def test_a_status_the_broker_did_not_take_is_published_again():
    drv = Driver()
    drv.send(d.StatusDue())  # asked for, never answered by StatusPublished
    assert drv.send(d.StatusDue(), after=0.5) == [d.PublishStatus(0, {}, {})]


# --- final reports -----------------------------------------------------------------------------


def test_final_reports_missed_by_an_outage_are_sent_again_at_the_next_connection():
    drv = Driver(watches_datasets=True)
    failed = report("Failed", "train", seq=4)
    assert drv.send(d.ProgressReported(failed)) == [d.CloseTask(failed), d.PublishProgress(failed)]
    drv.send(d.ProgressSent(failed, delivered=False))
    running = report("Running", "other")
    assert drv.send(d.ProgressReported(running)) == [d.PublishProgress(running)]
    drv.send(d.ProgressSent(running, delivered=False))  # a lost Running report is not kept

    actions = drv.send(d.Connected())
    assert actions == [d.PublishStatus(0, {}, {}), d.PublishSamples(), d.PublishProgress(failed)]
    drv.send(d.ProgressSent(failed, delivered=False))  # lost again
    assert of_type(drv.send(d.Connected()), d.PublishProgress) == [d.PublishProgress(failed)]
    drv.send(d.ProgressSent(failed, delivered=True))
    assert of_type(drv.send(d.Connected()), d.PublishProgress) == []


def test_a_delivered_report_of_the_same_task_does_not_discharge_another_unsent_one():
    drv = Driver()
    first = report("Failed", "inf", seq=3)
    drv.send(d.ProgressSent(first, delivered=False))
    drv.send(d.ProgressSent(report("Starting", "inf", seq=4), delivered=True))
    assert drv.state.unsent_final == {"inf": first}


def test_reports_of_attempts_an_earlier_agent_left_are_sent_once_connected():
    drv = Driver()
    left = (report("Failed", "a", seq=2), report("Failed", "b", seq=9))
    assert drv.send(d.Recovered(left)) == []
    assert of_type(drv.send(d.Connected()), d.PublishProgress) == [
        d.PublishProgress(r) for r in left]


# --- control messages --------------------------------------------------------------------------


def test_well_formed_control_messages_are_queued_in_order():
    drv = Driver()
    start = task("inf")
    assert drv.send(d.ControlReceived(topics.task(NODE, "inf"), start)) == [d.QueueControl(start)]
    wanted = desired(1, start)
    assert drv.send(d.ControlReceived(topics.desired(NODE), wanted)) == [d.QueueControl(wanted)]


def test_a_task_whose_id_is_not_its_topics_is_refused_with_a_report():
    drv = Driver()
    topic = topics.task(NODE, "other")
    (error,) = drv.send(d.ControlReceived(topic, task("inf")))
    assert isinstance(error, d.ReportError)
    assert (error.code, error.about) == ("protocol", topic) and "'inf'" in error.reason


def test_a_desired_state_for_another_node_is_refused_with_a_report():
    drv = Driver()
    (error,) = drv.send(d.ControlReceived(topics.desired(NODE), desired(1, node="edge-2")))
    assert isinstance(error, d.ReportError) and error.code == "protocol"
    assert "'edge-2'" in error.reason and f"'{NODE}'" in error.reason
    assert drv.state.applied_generation == -1


@pytest.mark.parametrize("topic", ["not/an/edgeloop/topic", f"{topics.ROOT}/node/{NODE}/bogus/x"])
def test_a_task_on_an_unreadable_topic_is_refused_not_raised(topic):
    (error,) = Driver().send(d.ControlReceived(topic, task("inf")))
    assert isinstance(error, d.ReportError) and error.code == "protocol" and error.about == topic


def test_other_messages_on_control_topics_are_ignored():
    samples = SampleReport(node=NODE, boot_id="b", seq=1, datasets=[])
    assert Driver().send(d.ControlReceived(topics.desired(NODE), samples)) == []
