"""Running the console: the cloud session, the web app and uvicorn on one asyncio loop.

``async with running(...) as console`` serves until the block ends (tests, the demo);
``edgeloop console serve`` runs it until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from console.app import Console, ConsoleSettings
from console.auth import TokenFile, Users, bind_problem
from console.cloud import CloudLink
from console.state import ConsoleState
from edgeloop.connection import ConnectionOptions

DEFAULT_PORT = 8090


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_bind: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def check(self) -> None:
        """``ValueError`` when the console may not listen there (see :func:`bind_problem`)."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        problem = bind_problem(self.host, self.tls, self.insecure_bind)
        if problem:
            raise ValueError(problem)


@asynccontextmanager
async def running(connection: ConnectionOptions, users: Users, listen: Listen, cache: Path,
                  state_dir: Path, settings: ConsoleSettings | None = None,
                  tokens: TokenFile | None = None) -> AsyncIterator[Console]:
    """The console, serving at ``listen.url`` while the block runs; its skips, flags and
    session key are kept in ``state_dir`` (:mod:`console.state`)."""
    listen.check()
    state = ConsoleState(state_dir)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(state.close)
        cloud = await stack.enter_async_context(CloudLink(connection, cache))
        console = Console(cloud, users, state, tokens=tokens, settings=settings,
                          https=listen.tls)
        config = uvicorn.Config(
            console.app, host=listen.host, port=listen.port, log_level="warning",
            ssl_certfile=str(listen.tls_cert) if listen.tls_cert else None,
            ssl_keyfile=str(listen.tls_key) if listen.tls_key else None,
            lifespan="on", ws="websockets-sansio")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(), name="console-http")
        try:
            while not server.started:
                if task.done():  # e.g. the port is taken: uvicorn gave up
                    raise OSError(f"the console could not listen on {listen.url}")
                await asyncio.sleep(0.02)
            yield console
        finally:
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
