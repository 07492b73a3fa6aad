"""``edgeloop demo --fast`` end to end, as a user runs it: every process real (production broker,
cloud manager, agents cloud0 and edge0, RTSP camera mock, TensorFlow training, LiteRT inference).

The first test closes the loop twice on shifted domains and checks the run's summary and logs;
the second interrupts a run mid-way and checks that nothing it started is left running.
Pure parts (the seed's adaptation, the frame-log summary) are tested without running anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.manifests import DemoPaths, adapt, load_seed
from demo.schedule import DomainPlan
from demo.report import frame_log_summary, round_deltas

#: Log lines that mean something went wrong in a process: a logged error or a traceback.
PROBLEM = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) |Traceback \(most recent call last\)")


#: Seconds the demo's loop may take (its own default with --fast is 1800 s). Two edge nodes and a
#: staged rollout per version, and a round that misses the deploy gate (about one in six) costs
#: another: an idle 2-core machine once needed 1,476 s for two misses, and one under other load
#: needs two to three times what a quiet one does; a loop that stalls still fails, naming what
#: it waited for, only later.
LOOP_DEADLINE_S = 2400
#: Seconds the whole run may take: the loop plus a cold cache's base training (8-10 minutes on
#: a loaded 2-core machine).
RUN_LIMIT_S = LOOP_DEADLINE_S + 900


def demo_command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "edgeloop", "demo", "--fast", "--workdir", str(workdir),
            "--live-view-port", "0", "--deadline", str(LOOP_DEADLINE_S)]


def processes_mentioning(text: str) -> list[str]:
    """Running processes whose command line or open files (logs: every child of the demo writes
    one under the work directory) mention ``text``; this test's own process excluded."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if text in cmdline or any(text in t for t in targets):
            found.append(f"{proc.name}: {cmdline}")
    return found


def wait_gone(text: str, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    left = processes_mentioning(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = processes_mentioning(text)
    return left


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One work directory for the module: the second run reuses the first one's cache."""
    return tmp_path_factory.mktemp("demo") / "work"


#: Where a failed fast demo's work directory is copied (the next test wipes ``run/``).
KEEP_FAILED = "/tmp/edgeloop-fast-demo-failed-{stamp}"
#: The logs whose tails a failure shows, most telling first.
TOLD_LOGS = ("run/agents/edge0/tasks/*/attempt-*/worker.log", "logs/edge0.log",
             "logs/cloud.log", "logs/cloud0.log")


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:])


def what_stopped(workdir: Path, output: str) -> str:
    """The demo's own words for why it ended: its ``demo failed:`` line, else summary.json's
    error, else where it was (its last step and the job's last transition) when it ended."""
    lines = output.splitlines()
    for line in reversed(lines):
        if "demo failed:" in line or "report failed:" in line:
            return line.strip()
    summary = workdir / "summary.json"
    if summary.exists():
        error = json.loads(summary.read_text()).get("error")
        if error:
            return str(error)
    step = next((line for line in reversed(lines) if line.startswith("▶")), "no step begun")
    job = next((line.strip() for line in reversed(lines)
                if re.match(r"\s+(Train|Eval|Deploy)/", line)), "no job transition")
    end = next((line for line in reversed(lines) if line.startswith("exit ")), "no exit line")
    return f"{end}; its last step: {step}; the job's last transition: {job}"


def keep_failed_run(workdir: Path, output: str) -> str:
    """Copy the run (not its cache) out of the way and tell its story: what stopped, the tails
    of the logs, where everything is."""
    kept = Path(KEEP_FAILED.format(stamp=time.strftime("%Y%m%dT%H%M%S")))
    kept.mkdir(parents=True, exist_ok=True)
    if workdir.is_dir():  # a demo that stopped before its first step has none
        shutil.copytree(workdir, kept, symlinks=True, dirs_exist_ok=True,
                        ignore=lambda folder, names: ["cache"] if Path(folder) == workdir else [])
    (kept / "demo.out").write_text(output)
    story = [f"what stopped: {what_stopped(workdir, output)}",
             f"the run is kept in {kept} (demo.out: the terminal output)"]
    for pattern in TOLD_LOGS:
        for log in sorted(workdir.glob(pattern)):
            story.append(f"--- {log.relative_to(workdir)} (last lines)\n{_tail(log, 15)}")
    story.append(f"--- the demo's output (last lines)\n{_tail(kept / 'demo.out', 40)}")
    return "\n".join(story)


@pytest.mark.broker
@pytest.mark.ml
@pytest.mark.timeout(RUN_LIMIT_S + 120)
def test_fast_demo_closes_the_loop_on_two_shifted_domains(workdir):
    demo = subprocess.Popen(demo_command(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = ""
    try:
        output, _ = demo.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        demo.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops everything it started
        output, _ = demo.communicate(timeout=90)
        pytest.fail(f"the fast demo took over {RUN_LIMIT_S} s\n{keep_failed_run(workdir, output)}")
    finally:
        # the next test reruns the demo in ``workdir``; keep this run's story beside it
        (workdir.parent / "fast-demo.out").write_text(output)
    try:
        check_fast_demo(workdir, demo.returncode)
    except (AssertionError, OSError, KeyError) as exc:
        pytest.fail(f"{exc}\n{keep_failed_run(workdir, output)}")


def check_fast_demo(workdir: Path, returncode: int) -> None:
    """What a fast demo run must have done; an AssertionError says what it did not."""
    assert returncode == 0, f"the demo exited {returncode}"
    summary = json.loads((workdir / "summary.json").read_text())

    assert summary["ok"], summary["error"]
    # a version learned night, a later one new-colors, each beat the model serving before it by
    # the seed's gate, and edge0 swapped to both (round 1, the retrain on data.txt's day data,
    # is deployed only when it too beats the initial model by 0.1)
    by_domain = {v["domain"]: v for v in summary["versions"]}
    night, colors = by_domain["night"], by_domain["new-colors"]
    assert night["version"] < colors["version"] and colors["version"] >= 2
    for version in summary["versions"]:
        assert version["precision_delta"] > 0.1, version
    assert {night["version"], colors["version"]} <= set(summary["served_versions"])
    swapped_to = {str(s["to"]) for s in summary["swaps"]}
    assert {str(night["version"]), str(colors["version"])} <= swapped_to
    # every frame read was served, across the hot-swaps
    assert summary["frames"] > 0
    assert summary["frames_lost"] == 0
    # the second edge node served too, lost nothing, and ends on the last version
    edge1 = summary["nodes"]["edge1"]
    assert edge1["frames"] > 0 and edge1["frames_lost"] == 0, edge1
    last = max(summary["served_versions"])
    assert edge1["serving_at_end"] == last, summary["nodes"]
    served_by = {(r["node"], r["serves"]) for r in summary["rollout_timeline"] if r["node"]}
    assert {("edge0", f"v{last}"), ("edge1", f"v{last}")} <= served_by
    steps = [r["step"] for r in summary["rollout_timeline"] if r["step"]]
    assert any(step.startswith("canary passed") for step in steps), steps
    assert any(step.startswith("wave ") and "edge1" in step for step in steps), steps
    assert summary["rounds"] >= 3

    # the report and its plots
    report = (workdir / "report.md").read_text()
    assert "SIMULATED ANNOTATOR" in report and "timer window" in report
    assert "## Rollout: which node served which version when" in report
    assert "| t (s) | edge0 | edge1 | rollout step |" in report
    for plot in ("precision.png", "samples.png", "served_version.png", "swap_gaps.png"):
        assert (workdir / "plots" / plot).stat().st_size > 1000

    # no process logged an error
    logs = list((workdir / "logs").glob("*.log")) + list(
        (workdir / "run" / "agents").glob("*/tasks/*/attempt-*/worker.log")) + list(
        (workdir / "run" / "agents").glob("*/tasks/*/attempt-*/camera-*/worker.log"))
    assert len(logs) >= 5
    problems = [f"{log.name}: {line}" for log in logs
                for line in log.read_text(errors="replace").splitlines() if PROBLEM.search(line)]
    assert not problems, "\n".join(problems[:20])
    assert not wait_gone(str(workdir), 10.0)


@pytest.mark.broker
@pytest.mark.ml
@pytest.mark.timeout(1500)
def test_interrupted_demo_leaves_nothing_running_and_reruns(workdir, tmp_path):
    log = tmp_path / "demo.out"
    with open(log, "w") as out:
        demo = subprocess.Popen(demo_command(workdir), stdout=out, stderr=subprocess.STDOUT)
    try:
        # interrupt once the cloud manager and both agents run; run alone (no cache from the
        # test before), the demo first trains its base model: up to 10 minutes under load
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and demo.poll() is None:
            agents = (workdir / "logs" / "edge0.log")
            if agents.exists() and len(processes_mentioning(str(workdir / "run" / "edge0.yaml"))):
                break
            time.sleep(1.0)
        assert demo.poll() is None, log.read_text()[-3000:]
        time.sleep(5.0)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=90) == 130, log.read_text()[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
    left = wait_gone(str(workdir), 20.0)
    assert not left, left
    assert "stopping every process" in log.read_text()

    # a rerun starts from fresh state, keeps the cache, and comes up again
    assert list((workdir / "cache").glob("base-model-*/.complete"))
    with open(log, "w") as out:
        again = subprocess.Popen(demo_command(workdir), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and again.poll() is None:
            if "IncrementalLearningJob/neptune-test/helmet-detection-demo created" in log.read_text():
                break
            time.sleep(1.0)
        assert again.poll() is None, log.read_text()[-3000:]
        assert "base model cached" in log.read_text()
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=90) == 130, log.read_text()[-3000:]
    finally:
        if again.poll() is None:
            again.kill()
    assert not wait_gone(str(workdir), 20.0)


def demo_paths(tmp_path: Path) -> DemoPaths:
    """The demo's paths under ``tmp_path``, for the manifest tests."""
    return DemoPaths(
        dataset_index=tmp_path / "data.txt", initial_model=tmp_path / "base" / "model.tflite",
        deploy_model=tmp_path / "deploy" / "model.tflite", script_dir=tmp_path / "code",
        output_dir=tmp_path / "out", hardex_dir=tmp_path / "he",
        video_url="rtsp://127.0.0.1:9/cam", frame_log=tmp_path / "frames.jsonl")


def test_seed_manifests_change_only_what_the_demo_must(tmp_path):
    paths = demo_paths(tmp_path)
    seed = load_seed()
    adapted = adapt(seed, paths, 42, {"epochs": "7"})
    dataset, initial, deploy, job = adapted.manifests
    assert dataset["spec"] == {**seed[0]["spec"], "url": str(paths.dataset_index)}
    assert initial["spec"]["url"] == str(paths.initial_model)
    assert deploy["spec"]["url"] == str(paths.deploy_model)
    spec = job["spec"]
    trigger = spec["trainSpec"]["trigger"]
    assert trigger["condition"] == {"operator": ">", "threshold": 42, "metric": "num_of_samples"}
    assert trigger["timer"] == {"start": "00:00", "end": "24:00"}
    assert trigger["checkPeriodSeconds"] == 60
    assert spec["deploySpec"]["nodeName"] == "edge0" and spec["nodeName"] == "cloud0"
    assert spec["deploySpec"]["trigger"] == seed[3]["spec"]["deploySpec"]["trigger"]
    wider = adapt(seed, paths, 42, {}, forgetting_margin=0.25)
    assert wider.manifests[3]["spec"]["deploySpec"]["trigger"]["forgettingMargin"] == 0.25
    assert any("forgettingMargin = 0.25" in change for change in wider.changes)
    inference = {p["key"]: p["value"] for p in spec["deploySpec"]["workerSpec"]["parameters"]}
    assert inference["video_url"] == paths.video_url
    assert inference["HE_SAVED_URL"] == str(paths.hardex_dir)
    assert inference["frame_log"] == str(paths.frame_log)
    train = {p["key"]: p["value"] for p in spec["trainSpec"]["workerSpec"]["parameters"]}
    assert train["epochs"] == "7" and train["batch_size"] == "32"
    # every change is said, and the seed itself is left alone
    said = "\n".join(adapted.changes)
    for words in ("timer window 02:00-04:00", "-> 42", "nodeName cloud0 -> edge0", "epochs"):
        assert words in said
    assert seed[3]["spec"]["trainSpec"]["trigger"]["condition"]["threshold"] == 500



def test_the_demo_job_targets_both_edge_nodes_by_labels_with_a_staged_rollout(tmp_path):
    from demo.manifests import FLEET_LABELS
    from protocol.manifest_yaml import parse_manifest
    from protocol.manifests import IncrementalLearningJob

    paths = demo_paths(tmp_path)
    adapted = adapt(load_seed(), paths, 42, {}, bake_seconds=15)
    deploy = adapted.manifests[3]["spec"]["deploySpec"]
    assert deploy["nodeName"] == "edge0"
    assert deploy["nodeSelector"] == {"matchLabels": FLEET_LABELS}
    assert deploy["rollout"]["canary"] == 1 and deploy["rollout"]["bakeSeconds"] == 15
    assert deploy["rollout"]["waveSize"] == 1
    # the cloud takes it as it is (the extensions validate)
    job = parse_manifest(adapted.manifests[3])
    assert isinstance(job, IncrementalLearningJob)
    assert job.spec.deploy_spec.rollout is not None
    assert job.spec.deploy_spec.rollout.bake_seconds == 15
    assert job.spec.deploy_spec.source_share() == 1  # the annotator labels outside label import
    said = "\n".join(adapted.changes)
    assert "nodeSelector" in said and "canary edge0" in said and "bakes 15 s" in said


def test_the_rollout_timeline_says_which_node_served_which_version_when():
    from demo.report import rollout_markdown, rollout_timeline

    start = 1000.0
    history = [(1010.0, "edge0", None), (1011.0, "edge1", None), (1100.0, "edge0", 1),
               (1140.0, "edge1", 1)]
    conditions = [
        {"time": 1099.0, "reason": "model version 1 registered", "round": 1},
        {"time": 1099.5, "reason": "rollout of model version 1: canary node edge0 first, then "
                                   "the other 1 node(s) in waves of 1 after a bake of 15 s"},
        {"time": 1101.0, "reason": "canary node edge0 serves model version 1; baking 15 s"},
        {"time": 1125.0, "reason": "canary passed: edge0 fps 5.0 (was 5.1)"},
        {"time": 1125.0, "reason": "wave 1: model version 1 to node edge1"},
        {"time": 1141.0, "reason": "rollout completed: every node was sent model version 1"},
    ]
    rows = rollout_timeline(history, conditions, start)
    assert [(r["t"], r["node"], r["serves"]) for r in rows if r["node"]] == [
        (10.0, "edge0", "initial model"), (11.0, "edge1", "initial model"),
        (100.0, "edge0", "v1"), (140.0, "edge1", "v1")]
    steps = [r["step"] for r in rows if r["step"]]
    assert len(steps) == 5 and steps[0].startswith("rollout of") and "registered" not in steps
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    table = rollout_markdown(rows, ["edge0", "edge1"])
    assert table[0] == "| t (s) | edge0 | edge1 | rollout step |"
    assert "| 100 | v1 |  |  |" in table and "| 140 |  | v1 |  |" in table
    assert any("wave 1: model version 1 to node edge1" in line for line in table)


def test_frame_log_summary_counts_versions_swaps_and_lost_frames():
    records = [{"frame": i, "t": 100 + i * 0.04, "version": "model"} for i in range(5)]
    records += [{"frame": 5, "t": 100.3, "version": "1"}, {"frame": 7, "t": 100.38, "version": "1"}]
    records += [{"frame": 0, "t": 200.0, "version": "1"}, {"frame": 1, "t": 200.04, "version": "2"}]
    summary = frame_log_summary(records)
    assert summary.frames == 9 and summary.runs == 2
    assert summary.per_version == {"model": 5, "1": 3, "2": 1}
    assert summary.lost == 1  # frame 6 never served
    assert [(s["from"], s["to"], s["lost"]) for s in summary.swaps] == [("model", "1", 0),
                                                                       ("1", "2", 0)]
    assert summary.swaps[0]["gap_s"] == pytest.approx(0.14)
    assert frame_log_summary([]).frames == 0


def test_round_deltas_compare_candidate_with_the_serving_model():
    result = {"models": [{"metrics": {"precision": 0.7}}, {"metrics": {"precision": 0.45}}],
              "images": 20}
    assert round_deltas(result) == {"candidate": 0.7, "reference": 0.45,
                                    "delta": pytest.approx(0.25), "images": 20}
    assert round_deltas({"models": [{"metrics": {"precision": 0.7}}]}) is None


def test_camera_shows_the_next_domain_to_learn_and_goes_back_after_a_failed_round():
    plan = DomainPlan("day", ("night", "new-colors"))
    assert plan.camera("Train", "Waiting", 1, "day") == "night"
    assert plan.round_begins(1, now=10.0) == "day"  # the dataset already in data.txt
    assert plan.camera("Train", "Running", 1, "day") == "night"
    assert plan.camera("Deploy", "Running", 1, "night") == "night"  # hold while deploying
    plan.round_deployed(1)
    plan.add_labels([(11.0, "day"), (12.0, "night"), (13.0, "night")])
    assert plan.round_begins(2, now=14.0) == "night"
    assert plan.camera("Eval", "Running", 2, "night") == "new-colors"
    # round 2 not deployed: back to night, from another video of it
    assert plan.variant("night") == 0
    plan.round_failed(2)
    plan.round_failed(2)  # seen twice (Eval/Completed, then Train/Waiting): counted once
    assert plan.variant("night") == 1 and plan.variant("new-colors") == 0
    assert plan.camera("Train", "Waiting", 3, "new-colors") == "night"
    plan.add_labels([(15.0, "night"), (16.0, "night"), (16.5, "new-colors")])
    assert plan.round_begins(3, now=17.0) == "night"
    plan.round_deployed(3)
    assert plan.learned == ["day", "night"] and not plan.done
    assert plan.camera("Train", "Waiting", 4, "night") == "new-colors"
    plan.add_labels([(18.0, "new-colors"), (19.0, "new-colors"), (19.5, "night")])
    assert plan.round_begins(4, now=20.0) == "new-colors"
    assert plan.variant("night") == 1  # round 3 was deployed: not a failure
    assert plan.camera("Train", "Running", 4, "new-colors") == "new-colors"  # nothing left
    plan.round_deployed(4)
    assert plan.done
    assert plan.round_begins(4, now=99.0) == "new-colors"  # a round is classified once


def test_children_run_in_their_own_groups_and_a_later_run_stops_leftovers(tmp_path):
    from demo.processes import ProcessSet, stop_leftovers

    registry = tmp_path / "children.pids"
    first = ProcessSet(tmp_path / "logs", registry)
    # a child that starts a grandchild: both must go with the group
    child = first.start("sleeper", ["sh", "-c", "sleep 300 & sleep 300; wait"])
    assert os.getpgid(child.pid) == child.pid != os.getpgid(os.getpid())
    time.sleep(0.3)
    assert len(processes_mentioning("sleep 300")) >= 2
    # the demo was SIGKILLed: nothing stopped its children; the next run does
    assert stop_leftovers(registry) == [child.pid]
    assert not wait_gone("sleep 300", 10.0)
    child.process.wait(timeout=5)
    assert stop_leftovers(registry) == []  # gone: nothing to do, and no stranger is killed
    first.children.clear()


def test_a_round_that_starts_after_one_that_deployed_nothing_marks_it_failed():
    plan = DomainPlan("day", ("night", "new-colors"))
    plan.round_begins(1, now=1.0)
    plan.round_deployed(1)
    plan.add_labels([(2.0, "night")])
    plan.round_begins(2, now=3.0)
    plan.add_labels([(4.0, "new-colors")])
    plan.round_begins(3, now=5.0)  # the Train/Waiting of round 3 was never seen
    assert plan.failed_rounds == {2} and plan.variant("night") == 1


def test_a_new_run_stops_the_workers_a_killed_run_left(tmp_path):
    """A SIGKILLed demo takes its agents' stops with it: their workers run on in their own
    groups. The next run stops them before it deletes the ``worker.pid`` files naming them."""
    from rich.console import Console

    from demo.run import Demo, DemoSettings

    attempt = tmp_path / "run" / "agents" / "edge0" / "tasks" / "t-inference" / "attempt-1"
    attempt.mkdir(parents=True)
    worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "workers/inference.py"],
        start_new_session=True,
    )
    try:
        (attempt / "worker.pid").write_text(f"{worker.pid}\n")
        time.sleep(0.2)
        Demo(DemoSettings(tmp_path), Console(quiet=True)).prepare_workdir()
        assert worker.wait(timeout=10) == -signal.SIGKILL
        assert not (tmp_path / "run" / "agents").exists()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
