"""The live-view page: HTTP and websocket serving, the frame-rate cap, viewer-driven ``view``
messages to workers, the daemon's wiring, and the page itself in a headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent_cloud import FakeCloud, agent_config
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from edge_agent.channel import ChannelHandlers, WorkerChannel
from edge_agent.daemon import Agent
from edge_agent.live_view import FramePacer, LiveView, origin_allowed
from protocol import topics
from protocol import worker_channel as wc
from protocol.messages import Task, WorkerSpec

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def jpeg_b64(shade: int = 90) -> str:
    image = np.full((48, 64, 3), shade, np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return base64.b64encode(data.tobytes()).decode()


def frame(index: int, version: str | None = "1") -> wc.Frame:
    return wc.Frame(
        jpeg_b64=jpeg_b64(),
        width=64,
        height=48,
        boxes=[[4.0, 6.0, 30.0, 40.0, 0.9, 1.0]],
        class_names=["helmet", "head"],
        model_version=version,
        fps=12.0,
        frame_index=index,
    )


class FakeWorkers:
    """The worker channel as the live view sees it; records the ``view`` messages sent."""

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = tasks
        self.sent: list[tuple[str, wc.View]] = []

    def connected_tasks(self) -> list[str]:
        return list(self.tasks)

    async def send(self, task_id: str, message: wc.View) -> bool:
        self.sent.append((task_id, message))
        return True


async def receive(viewer: ClientConnection, kind: str, timeout: float = 5.0) -> dict:
    """The next message of type ``kind`` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await viewer.recv())
            if message["type"] == kind:
                return message


async def wait_until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def ws_url(view: LiveView) -> str:
    return f"ws://127.0.0.1:{view.port}/ws"


# --- pure logic --------------------------------------------------------------------------------


def test_pacer_lets_one_frame_per_interval():
    pacer = FramePacer(0.2)
    assert pacer.delay(100.0) == 0.0
    pacer.sent(100.0)
    assert pacer.delay(100.05) == pytest.approx(0.15)
    assert pacer.delay(100.2) == 0.0


def test_only_pages_of_the_live_view_itself_may_open_the_websocket():
    assert origin_allowed(None, "node:8080")  # not a browser
    assert origin_allowed("http://node:8080", "node:8080")
    assert not origin_allowed("http://evil.example", "node:8080")
    assert not origin_allowed("http://node:8081", "node:8080")


# --- the server --------------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def test_serves_the_page_and_refuses_other_paths_and_origins():
    async with LiveView(FakeWorkers([]), port=0) as view:
        assert view.port != 0
        status, kind, body = await asyncio.to_thread(http_get, view.url)
        assert status == 200 and kind.startswith("text/html") and "live.js" in body
        status, kind, body = await asyncio.to_thread(http_get, view.url + "live.js")
        assert status == 200 and "javascript" in kind and "WebSocket" in body
        status, _, body = await asyncio.to_thread(http_get, view.url + "secrets")
        assert status == 404 and "/secrets" in body
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(view), origin="http://evil.example")
        assert refused.value.response.status_code == 403


async def test_workers_send_frames_only_while_someone_watches():
    workers = FakeWorkers(["inf"])
    async with LiveView(workers, port=0, max_fps=4.0) as view:
        await view.on_frame("inf", frame(0))  # nobody watches: dropped, not held
        assert view.tasks["inf"].frames_forwarded == 0
        async with connect(ws_url(view)) as first:
            await wait_until(lambda: workers.sent)
            assert workers.sent == [("inf", wc.View(enabled=True, max_fps=4.0))]
            async with connect(ws_url(view)) as second:
                assert (await receive(second, "node"))["viewers"] == 2
                await view.on_worker_hello("late", wc.Hello(task_id="late"))  # joins meanwhile
            assert workers.sent[1:] == [("late", wc.View(enabled=True, max_fps=4.0))]
            assert first.state.name == "OPEN"
        await wait_until(lambda: len(workers.sent) == 3)
        assert workers.sent[2] == ("inf", wc.View(enabled=False, max_fps=4.0))
        await view.on_worker_hello("later", wc.Hello(task_id="later"))
        assert len(workers.sent) == 3  # nobody watches: nothing to tell


async def test_frames_are_capped_and_the_newest_wins():
    view = LiveView(FakeWorkers(["inf"]), port=0, max_fps=2.0)
    async with view, connect(ws_url(view)) as viewer:
        await wait_until(lambda: view.watching)
        for index in range(10):  # a burst far over the cap
            await view.on_frame("inf", frame(index))
        first = await receive(viewer, "frame")
        second = await receive(viewer, "frame")
        assert (first["frame_index"], first["seq"]) == (0, 1)
        assert (second["frame_index"], second["seq"]) == (9, 2)  # 1..8 were replaced
        assert first["boxes"] == [[4.0, 6.0, 30.0, 40.0, 0.9, 1.0]]
        assert first["class_names"] == ["helmet", "head"] and first["model_version"] == "1"
        assert base64.b64decode(first["jpeg_b64"])[:2] == b"\xff\xd8"  # a JPEG


async def test_a_swap_is_pushed_at_once_with_stats_and_backlog():
    backlog = [3]
    async with LiveView(
        FakeWorkers(["inf"]), node="edge-7", backlog=lambda: backlog[0], port=0
    ) as view:
        await view.on_stats("inf", wc.Stats(model_version="1", frames=40, fps=9.5, hard_examples=2))
        async with connect(ws_url(view)) as viewer:
            node = await receive(viewer, "node")
            assert (node["node"], node["backlog"], node["viewers"]) == ("edge-7", 3, 1)
            task = await receive(viewer, "task")
            assert (task["model_version"], task["frames"], task["hard_examples"]) == ("1", 40, 2)
            await view.on_swapped("inf", wc.Swapped(ok=True, version="2", previous="1"))
            swapped = await receive(viewer, "swapped")
            assert (swapped["version"], swapped["model_version"]) == ("2", "2")
            await view.on_swapped("inf", wc.Swapped(ok=False, version="3", error="bad file"))
            refused = await receive(viewer, "swapped")
            assert refused["model_version"] == "2" and refused["error"] == "bad file"
            backlog[0] = 0
            assert (await receive(viewer, "node"))["backlog"] == 0
            view.forget("inf")
            assert (await receive(viewer, "gone"))["task_id"] == "inf"
            assert "inf" not in view.tasks


# --- through the agent ---------------------------------------------------------------------------

WORKER = """
    import time
    import numpy as np
    from workers.sdk import WorkerSession

    session = WorkerSession.from_env(role="inference")
    assert session.wait_connected(10), "no channel"
    session.model_version = "4"
    image = np.full((240, 320, 3), 120, np.uint8)
    index = 0
    while not session.stop_requested.is_set():
        index += 1
        boxes = np.array([[10.0, 20.0, 60.0, 90.0]])
        session.send_frame(image, boxes, np.array([0.8]), np.array([0]), ["helmet", "head"],
                           fps=25.0, frame_index=index)
        if index == 5:
            session.report_stats(frames=index, fps=25.0, hard_examples=1)
        time.sleep(0.04)
    session.close()
"""


@pytest.mark.broker
async def test_the_agent_shows_its_inference_worker(broker, tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "infer.py").write_text(textwrap.dedent(WORKER))
    config = agent_config(broker.url, tmp_path / "state", live_view_port=0)
    task = Task(
        task_id="inf",
        job="default/helmet",
        role="inference",
        worker=WorkerSpec(script_dir=str(scripts), boot_file="infer.py"),
    )
    async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
        assert agent.live_view is not None and agent.live_view.port != 0
        await cloud.wait_for(cloud.statuses)
        await cloud.client.publish(topics.task("edge-1", "inf"), task)
        await wait_until(lambda: agent.channel.connected("inf"), 20)
        async with connect(ws_url(agent.live_view)) as viewer:
            shown = await receive(viewer, "frame", 20)
            assert shown["task_id"] == "inf" and shown["model_version"] == "4"
            assert shown["width"] == 320 and shown["boxes"][0][:4] == [10.0, 20.0, 60.0, 90.0]
        await wait_until(lambda: not agent.live_view.watching)
        forwarded = agent.live_view.tasks["inf"].frames_forwarded
        await asyncio.sleep(0.6)  # the worker heard that nobody watches: no more frames
        assert agent.live_view.tasks["inf"].frames_forwarded == forwarded
        assert await agent.channel.send("inf", wc.Stop())
        await cloud.wait_for(
            lambda: [p for p in cloud.progress("inf") if p.state in ("Completed", "Failed")]
        )
        assert "inf" not in agent.live_view.tasks  # the page forgets the ended task


@pytest.mark.broker
async def test_a_taken_port_costs_the_page_not_the_agent(broker, tmp_path):
    async with LiveView(FakeWorkers([]), port=0) as taken:
        config = agent_config(broker.url, tmp_path / "state", live_view_port=taken.port)
        async with FakeCloud(broker.url) as cloud, Agent(config) as agent:
            assert agent.live_view is None
            online = await cloud.wait_for(cloud.statuses)  # the node runs all the same
            assert online[-1].state == "online"


# --- the page in a browser -----------------------------------------------------------------------


class ScriptedWorker:
    """A worker on the real channel: sends frames while told a viewer watches, until paused."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.viewing = asyncio.Event()
        self.sending = True
        self.frames_sent = 0
        self.connection: ClientConnection | None = None

    async def run(self) -> None:
        async with connect(self.url) as self.connection:
            await self.connection.send(wc.encode(wc.Hello(task_id="inf", model_version="1")))
            listener = asyncio.create_task(self._listen())
            try:
                while True:
                    if self.viewing.is_set() and self.sending:
                        self.frames_sent += 1
                        await self.connection.send(wc.encode(frame(self.frames_sent)))
                    await asyncio.sleep(0.05)  # 20 fps offered, over the cap
            finally:
                listener.cancel()

    async def _listen(self) -> None:
        assert self.connection is not None
        async for text in self.connection:
            message = wc.decode_agent_message(text)
            if isinstance(message, wc.View):
                (self.viewing.set if message.enabled else self.viewing.clear)()


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"
)
async def test_the_page_draws_frames_and_shows_a_swap_within_a_second(tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api")
    live: list[LiveView] = []

    async def forward(kind: str, task_id: str, message) -> None:
        await getattr(live[0], kind)(task_id, message)

    handlers = ChannelHandlers(
        hello=lambda t, m: forward("on_worker_hello", t, m),
        frame=lambda t, m: forward("on_frame", t, m),
        stats=lambda t, m: forward("on_stats", t, m),
        swapped=lambda t, m: forward("on_swapped", t, m),
    )
    async with WorkerChannel(handlers) as channel, LiveView(channel, node="edge-1", port=0) as view:
        live.append(view)
        worker = ScriptedWorker(channel.url_for("inf"))
        worker_task = asyncio.create_task(worker.run())
        try:
            await wait_until(lambda: channel.connected("inf"))
            async with playwright_api.async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                )
                try:
                    page = await browser.new_page()
                    await page.goto(view.url)
                    panel = '[data-task="inf"]'
                    await page.wait_for_function(
                        f"Number(document.querySelector('{panel} .shown')?.textContent) >= 3",
                        timeout=10_000,
                    )
                    assert worker.viewing.is_set()
                    shown = int(await page.text_content(f"{panel} .shown"))
                    await page.wait_for_function(
                        f"Number(document.querySelector('{panel} .shown').textContent) > {shown}",
                        timeout=5_000,
                    )
                    assert await page.text_content(f"{panel} .version") == "1"
                    assert await page.text_content("#node") == "edge-1"
                    # the canvas holds the drawn frame: its size and a box pixel (class 1 colour)
                    size = await page.eval_on_selector(
                        f"{panel} canvas", "c => [c.width, c.height]"
                    )
                    assert size == [64, 48]
                    red = await page.eval_on_selector(
                        f"{panel} canvas",
                        "c => Array.from(c.getContext('2d').getImageData(4, 30, 1, 1).data)",
                    )
                    assert red[0] > 150 and red[1] < 120, red  # the red box edge, not the grey

                    worker.sending = False  # no frame may carry the new version to the page
                    await asyncio.sleep(0.3)
                    assert worker.connection is not None
                    await worker.connection.send(
                        wc.encode(wc.Swapped(ok=True, version="2", previous="1"))
                    )
                    await page.wait_for_function(
                        f"document.querySelector('{panel} .version').textContent === '2'",
                        timeout=1_000,
                    )
                    assert "version 2" in await page.text_content(f"{panel} .swap")
                    await page.close()
                finally:
                    await browser.close()
            await wait_until(lambda: not worker.viewing.is_set())  # the last viewer left
            assert view.view_message() == wc.View(enabled=False, max_fps=5.0)
        finally:
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
