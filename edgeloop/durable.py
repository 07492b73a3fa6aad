"""Files that survive a crash or a power cut: written under a temporary name, ``fsync``-ed, then
renamed over the target, so a reader sees the old content or the new, never half of it.

Used wherever accepting data means promising to keep it (the cloud's hard-example inbox, the
edge outbox, round index files, the workers' hard examples) and for the agent's own state files.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (the folder entry too: see :func:`fsync_dir`)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable: the folder's entry is data too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
