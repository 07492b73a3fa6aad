"""The sha256 of a file, read in blocks: how models and artifacts are named and verified on
every side (the registry, the agent's downloads, the workers' exports and hot-swap)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``, without reading it into memory at once."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
