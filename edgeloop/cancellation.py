"""Stopping a background task for sure.

On Python 3.11, ``asyncio.wait_for`` (which aiomqtt uses for every publish) can swallow a
cancellation that races with the awaited operation completing; a single ``task.cancel()`` then
leaves the task running and ``await task`` hangs. Cancelling until the task is done avoids it.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("edgeloop.cancellation")


async def cancel_and_wait(task: asyncio.Task[object] | None, timeout: float = 5.0) -> None:
    """Cancel ``task`` (again and again if needed) until it ends, or give up after ``timeout``."""
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("task %s did not stop within %.1f s", task.get_name(), timeout)
            return
        await asyncio.wait({task}, timeout=min(0.5, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())
