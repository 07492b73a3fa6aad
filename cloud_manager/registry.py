"""The model registry's files: every artifact of every version, stored by content.

Files live under ``STATE/models/<sha256[:2]>/<sha256>``; being named by their content they are
written once, shared by versions that happen to be identical and never change, so serving a chunk
needs no lock. Nothing enters the registry unless its size and sha256 match what the train
result declared. Version metadata (job, round, metrics, artifacts) lives in the store.

Nodes download artifacts in chunks (``ChunkRequest`` on ``node/{node}/artifact/request``,
answered by :meth:`ModelRegistry.chunk` on ``artifact/chunk``).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from edgeloop.checksum import file_sha256
from edgeloop.durable import fsync_dir
from protocol.messages import MAX_CHUNK_BYTES, Chunk, ChunkRequest

REGISTRY_DIR = "models"


class RegistryError(ValueError):
    """A file that cannot enter the registry; the message says why."""


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def import_file(self, source: Path, sha256: str, size: int) -> Path:
        """Copy ``source`` in, verified against ``sha256`` and ``size``; a no-op when present.

        Once it returns the file survives a power cut: the store records the version as
        collected right after, so the rename (and a new folder) is synced, not only the data."""
        target = self.path(sha256)
        if target.is_file():
            return target
        if not source.is_file():
            raise RegistryError(f"{source} is not a readable file here")
        actual_size = source.stat().st_size
        if actual_size != size:
            raise RegistryError(f"{source} has {actual_size} bytes, the train result said {size}")
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        actual = file_sha256(tmp)
        if actual != sha256:
            tmp.unlink()
            raise RegistryError(f"{source} has sha256 {actual}, the train result said {sha256}")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
        return target

    def chunk(self, node: str, request: ChunkRequest) -> Chunk:
        """Chunk ``request.index`` of an artifact, or a Chunk carrying the reason it cannot be."""
        path = self.path(request.sha256)
        if not path.is_file():
            return Chunk(node=node, sha256=request.sha256, index=request.index, total=0, size=0,
                         error=f"artifact {request.sha256} is not in the cloud's model registry")
        size = path.stat().st_size
        chunk_size = min(request.chunk_size, MAX_CHUNK_BYTES)
        total = max(1, math.ceil(size / chunk_size))
        if request.index >= total:
            return Chunk(node=node, sha256=request.sha256, index=request.index, total=total,
                         size=size, error=f"chunk {request.index} out of range (0..{total - 1})")
        with open(path, "rb") as handle:
            handle.seek(request.index * chunk_size)
            data = handle.read(chunk_size)
        return Chunk(node=node, sha256=request.sha256, index=request.index, total=total, size=size,
                     data=data)
