"""The whole loop with the real ML workers: a real broker, the real cloud manager and a real edge
agent in this process, the seed's manifests (paths moved into tmp), and the repository's own boot
files ``workers/train.py``, ``eval.py`` and ``inference.py`` at tiny sizes.

The agent reports the synthetic dataset's samples, the cloud starts a round, the agent runs
``train.py`` (from the initial model's checkpoint), the trained files are pulled from the node
into the registry, ``eval.py`` compares the candidate with the initial model, the cloud deploys
the candidate as version 1, and the agent downloads it and hot-swaps it into the inference worker
that has been running on a looping video since the job was applied: same process, no frame lost.

Deterministic deploy: the seed's gate is ``precision_delta > 0.1``, which would depend on how much
a few seconds of training learn. Here the initial model is an untrained detector, which detects
nothing at the operating threshold (precision 0, asserted from the eval result), and the gate is
``precision_delta >= 0``: any trained candidate passes it, through the real eval and the real
trigger evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_cloud import agent_config
from running_cloud import api, cloud
from test_cloud_daemon import DATASET, JOB, NODE, NS, job_state, seed_manifests, wait_for
from test_loop_integration import INFERENCE_TASK

import workers
from cloud_manager.task_builder import task_id
from edge_agent.daemon import Agent
from protocol import worker_channel as wc

pytestmark = [
    pytest.mark.ml,
    pytest.mark.broker,
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

SCRIPTS = Path(workers.__file__).resolve().parent
INPUT_SHAPE = "64,96"
CLASS_NAMES = "person,helmet,helmet-on,helmet-off"
SAMPLES = 16
THRESHOLD = 5
#: Parameters that keep every worker tiny on two shared cores.
STAGE_PARAMETERS = {
    "trainSpec": {
        "batch_size": "4",
        "epochs": "1",
        "input_shape": INPUT_SHAPE,
        "export_precision": "fp32",
        "threads": "1",
    },
    "evalSpec": {"input_shape": INPUT_SHAPE, "threads": "1"},
    # realtime: the clip plays at its 10 fps, as a camera would, instead of taking a whole core
    "deploySpec": {"input_shape": INPUT_SHAPE, "loop": "1", "realtime": "1", "threads": "1"},
}


def make_initial_model(folder: Path) -> Path:
    """An untrained tiny detector, as the training worker reads it (``.keras``) and as eval and
    inference serve it (``.tflite`` beside it)."""
    from workers.detector import DetectorSpec, build_detector
    from workers.export import export_tflite, save_keras

    model = build_detector(DetectorSpec(tuple(int(v) for v in INPUT_SHAPE.split(",")), 4), seed=1)
    save_keras(model, folder / "base_model.keras")
    return export_tflite(model, folder / "base_model.tflite")


def seed_manifests_for_workers(tmp: Path, initial_model: Path, video: Path) -> list[str]:
    """The seed's manifests with paths under ``tmp``, the repository's workers, tiny sizes, and
    a deploy gate of ``>= 0``: one tiny epoch cannot promise the seed's +0.1."""
    parameters = {
        stage: {"class_names": CLASS_NAMES, **values} for stage, values in STAGE_PARAMETERS.items()
    }
    parameters["deploySpec"]["video_url"] = str(video)
    return seed_manifests(tmp, THRESHOLD, script_dir=SCRIPTS, initial_model=initial_model,
                          parameters=parameters, deploy_gate=0.0)


async def test_real_workers_train_eval_deploy_and_hot_swap_without_losing_a_frame(broker, tmp_path):
    from demo.scenes import generate_dataset, render_video

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.txt").write_text("")
    video = render_video(tmp_path / "clip.mp4", [("day", 1.0)], seed=4, fps=10, size=(128, 72))
    initial = make_initial_model(tmp_path / "model")

    config = agent_config(
        broker.url,
        tmp_path / "agent",
        node=NODE,
        datasets={DATASET: str(tmp_path / "data" / "data.txt")},
    )
    swaps: list[wc.Swapped] = []
    async with (
        cloud(broker.url, tmp_path / "cloud", read_node_paths=False) as daemon,
        Agent(config) as agent,
    ):
        record_swap = agent.channel.handlers.swapped
        assert record_swap is not None

        async def on_swapped(task: str, message: wc.Swapped) -> None:
            swaps.append(message)
            await record_swap(task, message)

        agent.channel.handlers.swapped = on_swapped
        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in seed_manifests_for_workers(tmp_path, initial, video):
            response = await api(broker.url, "apply", body=text)
            assert response.ok, response
        await wait_for(lambda: NODE in daemon.manager.online_nodes(), "the agent online")
        # labelled samples arrive once the job exists (appended, as labelling does)
        generate_dataset(tmp_path / "data", SAMPLES, "day", seed=1, size=(128, 72), append=True)

        # the inference worker serves the initial model on the looping clip
        await wait_for(
            lambda: (
                INFERENCE_TASK in agent.worker_stats
                and agent.worker_stats[INFERENCE_TASK].frames > 0
            ),
            "inference running on the initial model",
            60,
        )
        worker = agent.runner.running[INFERENCE_TASK].process
        assert worker is not None

        await wait_for(lambda: job_state(daemon).deployed_version == 1, "version 1 deployed", 150)
        await wait_for(lambda: agent.serving.get(INFERENCE_TASK) == 1, "worker swapped", 60)
        await wait_for(
            lambda: (
                (s := agent.worker_stats.get(INFERENCE_TASK)) is not None
                and s.model_version == "1"
                and s.frames > swaps[-1].frame
            ),
            "frames served by version 1",
            30,
        )
        assert agent.runner.running[INFERENCE_TASK].process is worker  # hot-swapped in place
        assert agent.runner.restart_counts() == {INFERENCE_TASK: 0}

        # the registry holds the trained files, pulled from the node
        version = next(
            v for v in daemon.manager.store.model_versions(f"{NS}/{JOB}") if v.version == 1
        )
        assert version.collected is True
        registry = daemon.manager.registry
        assert registry is not None
        assert {a.name for a in version.artifacts} == {"model.keras", "model.tflite"}
        assert all(registry.has(a.sha256) for a in version.artifacts)

        # eval really ran both models; the untrained one detected nothing
        eval_dir = tmp_path / "agent" / "tasks" / task_id(NS, JOB, 1, "eval") / "attempt-1"
        evaluated = json.loads((eval_dir / "result.json").read_text())["models"]
        assert len(evaluated) == 2 and evaluated[1]["url"] == str(initial)
        assert evaluated[1]["metrics"]["precision"] == 0.0
    # leaving the agent stopped the worker, which wrote its result

    [swap] = swaps
    assert swap.ok and swap.version == "1" and swap.previous == "initial"
    inference_dir = tmp_path / "agent" / "tasks" / INFERENCE_TASK / "attempt-1"
    result = json.loads((inference_dir / "result.json").read_text())
    served = result["frames_per_version"]
    assert set(served) == {"initial", "1"}
    assert served["initial"] == swap.frame  # frames 0..n-1 on the old model, n.. on the new
    assert sum(served.values()) == result["frames"]  # every frame read was inferred
    assert result["swaps"] == 1 and result["model_version"] == "1"
    assert (inference_dir / "worker.log").read_text().count("--- edgeloop: starting") == 1
