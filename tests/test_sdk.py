"""The worker SDK against a real websockets server standing in for the edge agent, plus the
worker contract and channel message models it is built on."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from edgeloop.ports import free_port
from protocol import worker_channel as wc
from protocol import worker_contract as contract
from protocol.errors import ProtocolError
from workers import sdk


class AgentServer:
    """A websockets server in its own thread: records what workers send, sends what we say."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[object] = []
        self.raw: list[str] = []
        self._clients: set = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self.port = port
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = self._loop.create_future()
        async with serve(self._handle, "127.0.0.1", self.port) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    async def _handle(self, ws) -> None:
        self._clients.add(ws)
        try:
            async for text in ws:
                self.raw.append(text)
                self.received.append(wc.decode_worker_message(text))
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/worker"

    def send(self, text: str) -> None:
        async def _send() -> None:
            for ws in list(self._clients):
                await ws.send(text)

        asyncio.run_coroutine_threadsafe(_send(), self._loop).result(5)

    def wait_for(self, kind: type, count: int = 1, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.received if isinstance(m, kind)]
            if len(found) >= count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"no {count} x {kind.__name__} within {timeout}s; got {self.received}")

    def close(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(5)


@pytest.fixture
def agent() -> Iterator[AgentServer]:
    server = AgentServer()
    yield server
    server.close()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- channel ------------------------------------------------------------------------------------


def test_session_says_hello_then_reports_progress_and_result(
    agent: AgentServer, tmp_path: Path
) -> None:
    session = sdk.WorkerSession(
        agent.url, task_id="t-1", role="train", result_path=str(tmp_path / "result.json")
    )
    try:
        session.report_progress(0.25, "epoch 1/4")
        session.write_result({"loss": np.float32(0.5), "sizes": np.array([1, 2])})
        session.flush()
        hello = agent.wait_for(wc.Hello)[0]
        assert hello.task_id == "t-1" and hello.role == "train"
        assert agent.wait_for(wc.Progress)[0].fraction == pytest.approx(0.25)
        result = agent.wait_for(wc.Result)[0].result
        assert result == {"loss": 0.5, "sizes": [1, 2]}
        assert json.loads((tmp_path / "result.json").read_text()) == result
        assert isinstance(agent.received[0], wc.Hello)  # hello comes first
    finally:
        session.close()


def test_agent_messages_reach_subscribers_and_bad_ones_are_ignored(agent: AgentServer) -> None:
    session = sdk.WorkerSession(agent.url, task_id="t-2", role="inference")
    swaps: list[wc.Swap] = []
    session.subscribe("swap", swaps.append)
    try:
        assert session.wait_connected(10)
        agent.wait_for(wc.Hello)
        agent.send("{not json")
        agent.send(json.dumps({"type": "swap", "path": "/m.tflite"}))  # version missing
        agent.send(wc.encode(wc.Swap(path="/m.tflite", version="7", sha256="a" * 64)))
        wait_until(lambda: swaps)
        assert swaps[0].version == "7" and swaps[0].path == "/m.tflite"
        agent.send(wc.encode(wc.Stop()))
        wait_until(session.stop_requested.is_set)
    finally:
        session.close()


def test_a_swap_sent_before_anyone_subscribed_is_delivered_on_subscribe(agent: AgentServer) -> None:
    """The agent may send a swap while the worker is still loading its first model."""
    session = sdk.WorkerSession(agent.url, task_id="t-5", role="inference")
    try:
        assert session.wait_connected(10)
        agent.wait_for(wc.Hello)
        agent.send(wc.encode(wc.Swap(path="/old.tflite", version="4")))
        agent.send(wc.encode(wc.Swap(path="/new.tflite", version="5")))
        agent.send(wc.encode(wc.Stop()))
        wait_until(session.stop_requested.is_set)  # all three have been received
        swaps: list[wc.Swap] = []
        session.subscribe("swap", swaps.append)
        assert [s.version for s in swaps] == ["5"]  # only the latest one still matters
    finally:
        session.close()


def test_live_view_frames_only_when_watched_and_rate_capped(agent: AgentServer) -> None:
    session = sdk.WorkerSession(agent.url, task_id="t-3", role="inference")
    image = np.full((720, 1280, 3), 127, np.uint8)
    boxes, scores, classes = (
        np.array([[100, 100, 300, 400]], np.float32),
        np.array([0.9]),
        np.array([3]),
    )
    try:
        assert session.wait_connected(10)
        assert not session.send_frame(image, boxes, scores, classes, ["a", "b", "c", "d"])
        agent.send(wc.encode(wc.View(enabled=True, max_fps=1.0)))
        wait_until(lambda: session.view_enabled)
        assert session.send_frame(image, boxes, scores, classes, ["a", "b", "c", "d"], fps=30.0)
        assert not session.send_frame(image, boxes, scores, classes, ["a", "b", "c", "d"])  # capped
        frame = agent.wait_for(wc.Frame)[0]
        assert max(frame.width, frame.height) == sdk.VIEW_MAX_SIDE
        assert frame.boxes[0][:4] == pytest.approx([50, 50, 150, 200])  # scaled with the image
        assert frame.boxes[0][5] == 3
    finally:
        session.close()


def test_messages_wait_for_a_late_agent(tmp_path: Path) -> None:
    """The agent's channel may come up after the worker: nothing queued is lost."""
    port = free_port()
    session = sdk.WorkerSession(f"ws://127.0.0.1:{port}/w", task_id="t-4", role="inference")
    try:
        session.emit_hard_example(tmp_path / "a.jpg", tmp_path / "a.json", "b" * 64)
        for i in range(5):
            session.report_progress(i / 5)
        time.sleep(0.3)  # a connection attempt or two fail meanwhile
        agent = AgentServer(port)
        try:
            assert session.flush(15)
            assert agent.wait_for(wc.HardExample)[0].sha256 == "b" * 64
            assert len(agent.wait_for(wc.Progress, 5)) == 5
        finally:
            agent.close()
    finally:
        session.close(timeout=1)


def test_backlog_drops_progress_before_results() -> None:
    session = sdk.WorkerSession("ws://127.0.0.1:9/unreachable", task_id="t")
    try:
        session.write_result({"ok": True})
        for i in range(sdk.MAX_PENDING + 10):
            session.report_progress(0.5, str(i))
        kinds = [type(m) for m in session._pending]
        assert len(kinds) == sdk.MAX_PENDING
        assert kinds[0] is wc.Result
    finally:
        session.close(timeout=0.5)


def test_standalone_session_writes_the_result_file(tmp_path: Path) -> None:
    session = sdk.WorkerSession(None, result_path=str(tmp_path / "out" / "r.json"))
    session.report_progress(0.5, "half")
    path = session.write_result({"frames": 3})
    assert path is not None and json.loads(path.read_text()) == {"frames": 3}
    session.close()


def test_run_by_hand_writes_the_result_named_by_flag(tmp_path: Path) -> None:
    """``--help`` says injected names are accepted as flags: the result file is one of them."""
    result = tmp_path / "result.json"
    code = sdk.run("eval", lambda params, session: {"epochs": params.int("epochs")},
                   argv=["--epochs", "3", f"--{contract.RESULT}", str(result)])
    assert code == contract.EXIT_OK
    assert json.loads(result.read_text()) == {"epochs": 3, "status": "completed"}

    code = sdk.run("eval", lambda params, session: {}, argv=[f"--{contract.RESULT}"])
    assert code == contract.EXIT_BAD_INPUT  # the flag syntax error is reported, not raised


# --- parameters -------------------------------------------------------------------------------


def test_flags_override_environment_and_types_are_checked() -> None:
    env = {"batch_size": "8", "epochs": "3", "input_shape": "64,96", contract.MODEL_URL: "/out"}
    p = sdk.parameters("train", ["--epochs", "5", "--obj-threshold=0.6", "--MODEL_URL", "/o2"], env)
    assert p.int("batch_size") == 8 and p.int("epochs") == 5
    assert p.obj_threshold == pytest.approx(0.6)
    assert p.input_shape == (64, 96)
    assert p.env.model_url == "/o2"
    assert p.class_names == ("person", "helmet", "helmet-on", "helmet-off")  # the default
    assert p.get("my_own_key", "x") == "x"

    bad = sdk.parameters(
        "train", [], {"batch_size": "lots", "obj_threshold": "1.5", "input_shape": "64"}
    )
    with pytest.raises(sdk.ParameterError, match="batch_size='lots' is not an integer"):
        bad.int("batch_size")
    with pytest.raises(sdk.ParameterError, match="obj_threshold=1.5 must be between"):
        _ = bad.obj_threshold
    with pytest.raises(sdk.ParameterError, match="input_shape '64'"):
        _ = bad.input_shape


def test_flag_syntax_errors_are_named() -> None:
    with pytest.raises(sdk.ParameterError, match="--epochs needs a value"):
        sdk.parameters("train", ["--epochs"], {})
    with pytest.raises(sdk.ParameterError, match="unexpected argument 'epochs'"):
        sdk.parameters("train", ["epochs", "3"], {})


def test_help_lists_the_role_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sdk.parameters("inference", ["--help"], {})
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("video_url", "HE_SAVED_URL", "obj_threshold", "--MODEL_URL", "EDGELOOP_CHANNEL"):
        assert name in out
    assert "--epochs" not in out


# --- contract and channel models ----------------------------------------------------------------


def test_worker_environment_round_trips_through_env_vars() -> None:
    original = contract.WorkerEnvironment(
        task_id="job-r3-eval",
        result_path="/tmp/r.json",
        channel="ws://127.0.0.1:5000/w/job-r3-eval",
        model_urls=("/m/cand.tflite", "/m/dep.tflite"),
        test_dataset_url="/d/test.txt",
        hem_name="IBT",
        hem_parameters={"threshold_img": "0.9"},
        parameters={"input_shape": "352,640", "class_names": "a,b"},
    )
    env = original.to_env()
    assert env[contract.MODEL_URLS] == "/m/cand.tflite;/m/dep.tflite"
    # Sedna's form, the one its own parser reads
    assert json.loads(env[contract.HEM_PARAMETERS]) == [{"key": "threshold_img", "value": "0.9"}]
    assert env["input_shape"] == "352,640"
    assert contract.WorkerEnvironment.from_env(env) == original


def test_worker_environment_rejects_what_would_be_ambiguous() -> None:
    with pytest.raises(ValueError, match="MODEL_URL"):
        contract.WorkerEnvironment(parameters={"MODEL_URL": "/x"})
    with pytest.raises(ValueError, match="HEM_PARAMETERS is not valid JSON"):
        contract.WorkerEnvironment.from_env({contract.HEM_PARAMETERS: "{threshold"})
    with pytest.raises(ValueError, match="HEM_PARAMETERS must be a JSON list"):
        contract.WorkerEnvironment.from_env({contract.HEM_PARAMETERS: "[1, 2]"})


def test_hem_parameters_are_read_in_both_forms() -> None:
    for text in ('[{"key":"threshold_img","value":"0.9"}]', '{"threshold_img": "0.9"}'):
        env = contract.WorkerEnvironment.from_env({contract.HEM_PARAMETERS: text})
        assert env.hem_parameters == {"threshold_img": "0.9"}
    assert contract.parse_hem_parameters("null") == {}  # Sedna's marshalled empty list
    with pytest.raises(ValueError, match="EDGELOOP_CHANNEL must be a ws:// URL"):
        contract.WorkerEnvironment.from_env({contract.CHANNEL: "http://x"})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[]", "type: missing"),
        ('{"type": "swap", "path": "p", "version": "1", "sha256": "xyz"}', "swap.sha256"),
        ('{"type": "view", "enabled": true, "max_fps": 0}', "view.max_fps"),
        ('{"type": "hello"}', "type"),  # a worker message is not an agent message
    ],
)
def test_bad_agent_messages_name_the_field(text: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wc.decode_agent_message(text)
    assert reason in info.value.reason


def test_worker_messages_round_trip() -> None:
    for message in (
        wc.Hello(task_id="t", role="eval", pid=3),
        wc.Swapped(ok=False, version="2", error="bad sha256"),
        wc.Stats(frames=10, fps=29.5, hard_examples=1, extra={"mined": 2}),
    ):
        assert wc.decode_worker_message(wc.encode(message)) == message
