"""Agent side of the local channel: a websocket server on the loopback for the node's workers.

Each task gets its own URL, ``ws://127.0.0.1:<port>/<task id>/<secret>``, passed to its worker as
``EDGELOOP_CHANNEL``; the secret keeps other local processes from speaking for a task. Messages
are those of :mod:`protocol.worker_channel`. What a worker says is handed to the
:class:`ChannelHandlers` the daemon provides (progress -> TaskProgress, hardex -> outbox intake,
stats -> node status); a faulty message is logged and skipped, never fatal to the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from edge_agent import cameras
from protocol import worker_channel as wc
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 2**20


@dataclass
class ChannelHandlers:
    """What the agent does with each kind of worker message; all optional."""

    hello: Callable[[str, wc.Hello], Awaitable[None]] | None = None
    progress: Callable[[str, wc.Progress], Awaitable[None]] | None = None
    result: Callable[[str, wc.Result], Awaitable[None]] | None = None
    stats: Callable[[str, wc.Stats], Awaitable[None]] | None = None
    hardex: Callable[[str, wc.HardExample], Awaitable[None]] | None = None
    swapped: Callable[[str, wc.Swapped], Awaitable[None]] | None = None
    frame: Callable[[str, wc.Frame], Awaitable[None]] | None = None


@dataclass
class _Peer:
    task_id: str
    connection: ServerConnection
    hello: wc.Hello | None = None
    received: int = 0
    errors: list[str] = field(default_factory=list)


class WorkerChannel:
    """The websocket server; ``async with`` it, then hand :meth:`url_for` to each worker."""

    def __init__(self, handlers: ChannelHandlers, host: str = "127.0.0.1") -> None:
        self.handlers = handlers
        self.host = host
        self.port = 0
        self._server: Server | None = None
        self._secrets: dict[str, str] = {}  # task id -> secret
        self._peers: dict[str, _Peer] = {}  # task id -> live connection
        self.protocol_errors = 0

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._serve, self.host, 0, max_size=MAX_MESSAGE_BYTES, process_request=self._check
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 3)
            self._server = None

    def url_for(self, task_id: str) -> str:
        """The URL a worker of ``task_id`` connects to (a new secret per task id)."""
        secret = self._secrets.setdefault(task_id, secrets.token_urlsafe(16))
        return f"ws://{self.host}:{self.port}/{task_id}/{secret}"

    def connected(self, task_id: str) -> bool:
        return task_id in self._peers

    def connected_tasks(self) -> list[str]:
        return list(self._peers)

    def hello(self, task_id: str) -> wc.Hello | None:
        peer = self._peers.get(task_id)
        return peer.hello if peer else None

    async def send(self, task_id: str, message: wc.Swap | wc.Rollback | wc.View | wc.Stop) -> bool:
        """Send to the task's worker; False when it is not connected."""
        peer = self._peers.get(task_id)
        if peer is None:
            return False
        try:
            await peer.connection.send(wc.encode(message))
        except ConnectionClosed:
            return False
        return True

    # -- server side -----------------------------------------------------------------------

    def _task_of(self, path: str) -> str | None:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 2:
            return None
        task_id, secret = parts
        expected = self._secrets.get(task_id)
        if expected is None or not secrets.compare_digest(expected, secret):
            return None
        return task_id

    def _check(self, connection: ServerConnection, request):
        if self._task_of(request.path) is None:
            log.warning("refused a channel connection to an unknown task path")
            return connection.respond(403, "unknown task or secret\n")
        return None

    async def _serve(self, connection: ServerConnection) -> None:
        request = connection.request
        task_id = self._task_of(request.path) if request is not None else None
        if task_id is None:  # pragma: no cover - refused by _check already
            return
        peer = _Peer(task_id, connection)
        self._peers[task_id] = peer
        try:
            async for text in connection:
                peer.received += 1
                try:
                    message = wc.decode_worker_message(text)
                except ProtocolError as exc:
                    self.protocol_errors += 1
                    log.warning("task %s sent a bad channel message: %s", task_id, exc.reason)
                    continue
                await self._dispatch(peer, message)
        except ConnectionClosed:
            pass
        finally:
            if self._peers.get(task_id) is peer:
                del self._peers[task_id]

    async def _dispatch(self, peer: _Peer, message) -> None:
        if isinstance(message, wc.Hello):
            if message.task_id and message.task_id != cameras.task_of(peer.task_id):
                log.warning("worker of task %s says it is task %s", peer.task_id, message.task_id)
            peer.hello = message
        handler = getattr(self.handlers, message.type, None)
        if handler is None:
            return
        try:
            await handler(peer.task_id, message)
        except Exception:  # one message must not end the worker's connection
            log.exception("handling %s from task %s failed", message.type, peer.task_id)
