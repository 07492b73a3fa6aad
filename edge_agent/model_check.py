"""A downloaded model is checked before any worker may load it.

The sha256 proves the file is the one the cloud registered, not that it is a model: a version
whose ``.tflite`` is corrupt (a broken export, a file that is not LiteRT at all) would be put in
place and hot-swapped, and the worker would fail on load, or keep failing at every restart. So
before a ``.tflite`` is placed, the agent checks its flatbuffer identifier (``TFL3`` at byte 4)
and has LiteRT load it and allocate its tensors, in a child process: a model that crashes the
interpreter takes the child down, not the agent. A node without LiteRT (no ``edge`` extra) can
only do the identifier check, and says so in its log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

TFLITE_SUFFIX = ".tflite"
#: The flatbuffer file identifier of a TFLite model, at bytes 4..8.
TFLITE_IDENTIFIER = b"TFL3"
LOAD_TIMEOUT_S = 120.0
_NO_LITERT = 3
_LOAD_SCRIPT = f"""
import sys
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    sys.exit({_NO_LITERT})
Interpreter(model_path=sys.argv[1]).allocate_tensors()
"""


def identifier_problem(head: bytes) -> str | None:
    """What the first bytes of a file say against its being a TFLite model, or None."""
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        return f"not a TFLite model: no {TFLITE_IDENTIFIER.decode()} identifier at byte 4"
    return None


async def tflite_problem(path: Path, timeout: float = LOAD_TIMEOUT_S) -> str | None:
    """Why ``path`` cannot serve as a LiteRT model, or None when it loads."""
    with open(path, "rb") as handle:
        problem = identifier_problem(handle.read(8))
    if problem is not None:
        return problem
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOAD_SCRIPT, str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return f"LiteRT did not load it within {timeout:.0f} s"
    if process.returncode == 0:
        return None
    if process.returncode == _NO_LITERT:
        log.info("LiteRT is not installed: %s checked by its identifier only", path.name)
        return None
    lines = err.decode(errors="replace").strip().splitlines()
    return f"LiteRT cannot load it: {lines[-1] if lines else f'exit status {process.returncode}'}"
