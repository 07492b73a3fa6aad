"""Stopping a background task for sure.

On Python 3.11, ``asyncio.wait_for`` (and ``asyncio.timeout`` around a wait) can swallow a
cancellation that races with the awaited operation completing; a single ``task.cancel()`` then
leaves the task running and ``await task`` hangs. Cancelling until the task is done avoids it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("edgeloop.cancellation")


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, timeout: float = 5.0) -> None:
    """Cancel ``tasks`` (again and again if needed) until they all end, or give up after
    ``timeout``. A task that had ended with an exception is logged: it died before its time."""
    pending = {task for task in tasks if task is not None}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while running := {task for task in pending if not task.done()}:
        for task in running:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            names = ", ".join(sorted(task.get_name() for task in running))
            log.warning("task(s) %s did not stop within %.1f s", names, timeout)
            return
        await asyncio.wait(running, timeout=min(0.5, remaining))
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            log.warning("task %s ended with %r", task.get_name(), task.exception())
