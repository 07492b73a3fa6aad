"""The live view: a web page on the node showing what its inference workers see.

One port serves the page (``/``, ``/live.js``) and a websocket (``/ws``) that pushes JSON
messages to every open page:

- ``frame``: the newest JPEG of a task with its boxes (drawn by the page), at most ``max_fps``
  per task;
- ``task``: model version, FPS, frames, hard-example count, per mining reason, and the mining
  mode (``detection-drop`` while the node samples uniformly because its detections fell; from
  the worker's ``stats``);
- ``swapped``: a hot-swap outcome, pushed at once so the page shows the new version without
  waiting for a frame;
- ``node``: the node name, the hard-example upload backlog (outbox), the upload counters (sent,
  evicted, skipped by rule, bytes against the caps) and the number of viewers;
- ``gone``: the task ended, its panel goes.

It costs nothing while nobody watches: the workers are told ``View(enabled=True)`` when the first
page connects and ``View(enabled=False)`` when the last one leaves, so they do not even encode
frames. Each page has its own newest-wins mailbox, so a slow browser never holds up the others
nor makes the agent buffer frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol import worker_channel as wc

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
DEFAULT_MAX_FPS = 5.0
#: More pages than this get the websocket closed with "try again later" (1013).
MAX_VIEWERS = 16
#: How often the upload backlog is looked at while someone watches.
NODE_REFRESH_S = 1.0
STATIC_DIR = Path(__file__).parent / "static"
#: URL path -> (file under static/, content type)
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/live.js": ("live.js", "text/javascript; charset=utf-8"),
}
WEBSOCKET_PATH = "/ws"
#: What of a worker's ``frame`` goes to the page as it is.
FRAME_FIELDS = {"jpeg_b64", "width", "height", "boxes", "class_names", "fps", "frame_index"}


class WorkerLink(Protocol):
    """What the live view needs of the worker channel (:class:`edge_agent.channel.WorkerChannel`)."""

    def connected_tasks(self) -> list[str]: ...

    async def send(self, task_id: str, message: wc.View) -> bool: ...


@dataclass
class FramePacer:
    """When the next frame of one task may go out: at most one per ``interval_s``."""

    interval_s: float
    next_at: float = float("-inf")

    def delay(self, now: float) -> float:
        """Seconds to wait before a frame may be sent (0: now)."""
        return max(0.0, self.next_at - now)

    def sent(self, now: float) -> None:
        self.next_at = now + self.interval_s


@dataclass
class TaskView:
    """What the page shows about one task; updated in the order the worker's messages arrive."""

    task_id: str
    model_version: str | None = None
    fps: float = 0.0
    frames: int = 0
    hard_examples: int = 0
    #: mining reason (rule, empty-frame, detection-drop) -> hard examples saved for it
    hard_examples_by_reason: dict[str, int] = field(default_factory=dict)
    #: normal or detection-drop; None when the worker does not run blind-spot mining
    mining_mode: str | None = None
    frames_forwarded: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "type": "task",
            "task_id": self.task_id,
            "model_version": self.model_version,
            "fps": round(self.fps, 2),
            "frames": self.frames,
            "hard_examples": self.hard_examples,
            "hard_examples_by_reason": dict(self.hard_examples_by_reason),
            "mining_mode": self.mining_mode,
        }


@dataclass
class _Viewer:
    """One open page: the messages not yet sent to it, newest per key."""

    connection: ServerConnection
    pending: dict[tuple[str, str], str] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def post(self, key: tuple[str, str], text: str) -> None:
        self.pending.pop(key, None)  # re-inserted last: messages keep their order
        self.pending[key] = text
        self.wake.set()

    async def write(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                key = next(iter(self.pending))
                text = self.pending.pop(key)
                await self.connection.send(text)


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """A websocket from another site's page (a browser sends its ``Origin``) may not read the
    camera; tools that send no ``Origin`` may."""
    if origin is None:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


class LiveView:
    """``async with LiveView(channel, backlog=...)``, then feed it the workers' messages."""

    def __init__(
        self,
        workers: WorkerLink,
        *,
        node: str = "",
        backlog: Callable[[], int] = lambda: 0,
        uploads: Callable[[], str] = lambda: "",
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_fps: float = DEFAULT_MAX_FPS,
    ) -> None:
        self.workers = workers
        self.node = node
        self.backlog = backlog
        self.uploads = uploads
        self.host = host
        self.port = port
        self.max_fps = max_fps
        self.tasks: dict[str, TaskView] = {}
        self.viewers: dict[ServerConnection, _Viewer] = {}
        self._pacers: dict[str, FramePacer] = {}
        self._held: dict[str, wc.Frame] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._pages: dict[str, tuple[bytes, str]] = {}
        self._server: Server | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._last_node: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    @property
    def watching(self) -> bool:
        return bool(self.viewers)

    async def __aenter__(self) -> Self:
        self._pages = {
            path: ((STATIC_DIR / name).read_bytes(), kind) for path, (name, kind) in PAGES.items()
        }
        self._server = await serve(
            self._serve, self.host, self.port, process_request=self._route, max_size=2**16
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._refresher = asyncio.create_task(self._refresh_node(), name="live-view:node")
        log.info("live view: %s", self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 3)
            self._server = None

    # -- what the workers say -------------------------------------------------------------

    def _task(self, task_id: str) -> TaskView:
        return self.tasks.setdefault(task_id, TaskView(task_id))

    async def on_worker_hello(self, task_id: str, hello: wc.Hello) -> None:
        """A worker (re)connected: tell it to send frames if someone is already watching."""
        if hello.model_version is not None:
            self._task(task_id).model_version = hello.model_version
        if self.viewers:
            await self.workers.send(task_id, self.view_message())

    async def on_stats(self, task_id: str, stats: wc.Stats) -> None:
        view = self._task(task_id)
        if stats.model_version is not None:
            view.model_version = stats.model_version
        view.fps, view.frames, view.hard_examples = stats.fps, stats.frames, stats.hard_examples
        by_reason = stats.extra.get("hard_examples_by_reason")
        if isinstance(by_reason, dict):
            view.hard_examples_by_reason = {
                str(k): v for k, v in by_reason.items() if isinstance(v, int)
            }
        mode = stats.extra.get("mining_mode")
        view.mining_mode = mode if isinstance(mode, str) else None
        self._broadcast(("task", task_id), view.summary())

    async def on_swapped(self, task_id: str, swapped: wc.Swapped) -> None:
        view = self._task(task_id)
        if swapped.ok and swapped.version is not None:
            view.model_version = swapped.version
        self._broadcast(
            ("swapped", task_id),
            {
                "type": "swapped",
                "task_id": task_id,
                "ok": swapped.ok,
                "version": swapped.version,
                "previous": swapped.previous,
                "error": swapped.error,
                "model_version": view.model_version,
            },
        )

    async def on_frame(self, task_id: str, frame: wc.Frame) -> None:
        """Forward the frame now, or hold it until the rate cap allows (a newer one replaces it)."""
        view = self._task(task_id)
        if frame.model_version is not None:
            view.model_version = frame.model_version
        view.fps = frame.fps
        if not self.viewers:
            return  # a frame sent before the worker heard that the last viewer left
        pacer = self._pacers.setdefault(task_id, FramePacer(1.0 / self.max_fps))
        self._held[task_id] = frame
        if task_id in self._timers:
            return
        delay = pacer.delay(time.monotonic())
        if delay == 0.0:
            self._release(task_id)
        else:
            loop = asyncio.get_running_loop()
            self._timers[task_id] = loop.call_later(delay, self._release, task_id)

    def _release(self, task_id: str) -> None:
        self._timers.pop(task_id, None)
        frame = self._held.pop(task_id, None)
        if frame is None or not self.viewers:
            return
        self._pacers[task_id].sent(time.monotonic())
        view = self._task(task_id)
        view.frames_forwarded += 1
        self._broadcast(
            ("frame", task_id),
            {
                "type": "frame",
                "task_id": task_id,
                "seq": view.frames_forwarded,
                "model_version": view.model_version,
                **frame.model_dump(include=FRAME_FIELDS),
            },
        )

    def forget(self, task_id: str) -> None:
        """The task ended: its panel goes from the pages."""
        if self.tasks.pop(task_id, None) is None:
            return
        timer = self._timers.pop(task_id, None)
        if timer is not None:
            timer.cancel()
        self._held.pop(task_id, None)
        self._pacers.pop(task_id, None)
        for viewer in self.viewers.values():
            for kind in ("frame", "task", "swapped"):
                viewer.pending.pop((kind, task_id), None)
        self._broadcast(("gone", task_id), {"type": "gone", "task_id": task_id})

    # -- pages ----------------------------------------------------------------------------

    def view_message(self) -> wc.View:
        return wc.View(enabled=bool(self.viewers), max_fps=self.max_fps)

    def _broadcast(self, key: tuple[str, str], message: dict[str, Any]) -> None:
        if not self.viewers:
            return
        text = json.dumps(message)
        for viewer in self.viewers.values():
            viewer.post(key, text)

    def _node_message(self) -> dict[str, Any]:
        try:
            backlog: int | None = self.backlog()
            uploads = self.uploads()
        except Exception:  # the page must not die with the outbox's trouble
            log.exception("cannot read the upload backlog")
            backlog, uploads = None, ""
        return {"type": "node", "node": self.node, "backlog": backlog, "uploads": uploads,
                "viewers": len(self.viewers)}

    async def _refresh_node(self) -> None:
        while True:
            await asyncio.sleep(NODE_REFRESH_S)
            if not self.viewers:
                continue
            message = self._node_message()
            if message != self._last_node:
                self._last_node = message
                self._broadcast(("node", ""), message)

    async def _tell_workers(self) -> None:
        message = self.view_message()
        for task_id in self.workers.connected_tasks():
            try:
                await self.workers.send(task_id, message)
            except Exception:  # one worker's trouble must not keep the others from hearing
                log.exception("cannot tell task %s about viewers", task_id)

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WEBSOCKET_PATH:
            if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host")):
                log.warning(
                    "refused a live-view websocket from origin %s", request.headers["Origin"]
                )
                return connection.respond(403, "cross-origin live-view connections are refused\n")
            return None
        page = self._pages.get(path)
        if page is None:
            return connection.respond(404, f"no such page: {path}\n")
        body, kind = page
        response = connection.respond(200, "")
        headers = Headers(response.headers)  # Date, Server, Connection: keep them
        del headers["Content-Type"], headers["Content-Length"]
        headers["Content-Type"] = kind
        headers["Content-Length"] = str(len(body))
        headers["Cache-Control"] = "no-store"
        return dataclasses.replace(response, headers=headers, body=body)

    async def _serve(self, connection: ServerConnection) -> None:
        if len(self.viewers) >= MAX_VIEWERS:
            await connection.close(1013, f"at most {MAX_VIEWERS} viewers")
            return
        viewer = _Viewer(connection)
        self.viewers[connection] = viewer
        writer = asyncio.create_task(viewer.write(), name="live-view:viewer")
        try:
            self._last_node = None  # the viewer count changed
            self._broadcast(("node", ""), self._node_message())
            for view in self.tasks.values():
                viewer.post(("task", view.task_id), json.dumps(view.summary()))
            if len(self.viewers) == 1:
                await self._tell_workers()
            async for _ in connection:  # the page says nothing; this waits for it to close
                pass
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer
            del self.viewers[connection]
            if not self.viewers:
                for task_id, timer in list(self._timers.items()):
                    timer.cancel()
                    self._held.pop(task_id, None)
                self._timers.clear()
                await self._tell_workers()
            else:
                self._broadcast(("node", ""), self._node_message())
