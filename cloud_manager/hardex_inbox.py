"""The hard-example inbox: every mined frame a node uploads, kept per job for labelling.

Layout under ``STATE/hardex/``: ``<namespace>/<job>/<sha256>.<jpg|png>`` and, beside it,
``<sha256>.json`` (the sidecar plus the node, the upload time and the image format). Files are
named by the image's sha256, so a redelivered example lands on itself: storing is idempotent
and the inbox dedupes by content. Both files go through a temporary name, ``fsync`` and a
rename, the sidecar last, and the directory is synced: once :meth:`HardExampleInbox.store`
returns, the example survives a power cut, and only then may the node be acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeloop.durable import fsync_dir, write_atomically
from protocol.messages import HardExample

INBOX_DIR = "hardex"


@dataclass(frozen=True)
class Stored:
    path: Path
    new: bool


class HardExampleInbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job: str) -> Path:
        namespace, name = job.split("/", 1)
        return self.root / namespace / name

    def store(self, example: HardExample) -> Stored:
        """Keep ``example`` durably; ``new`` is False when it was already here."""
        folder = self.job_dir(example.job)
        image = folder / f"{example.sha256}.{example.image_format}"
        sidecar = folder / f"{example.sha256}.json"
        if sidecar.exists():
            return Stored(image, new=False)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(image, example.image)
        meta: dict[str, Any] = {
            "sha256": example.sha256,
            "node": example.node,
            "job": example.job,
            "image": image.name,
            "image_format": example.image_format,
            "received": example.ts,
            "sidecar": example.sidecar.model_dump(mode="json"),
        }
        write_atomically(sidecar, json.dumps(meta, sort_keys=True).encode())
        fsync_dir(folder)
        return Stored(image, new=True)

    def examples(self, job: str) -> Iterator[dict[str, Any]]:
        """The sidecars of a job's examples, oldest name first."""
        folder = self.job_dir(job)
        if not folder.is_dir():
            return
        for sidecar in sorted(folder.glob("*.json")):
            yield json.loads(sidecar.read_text())

    def count(self, job: str) -> int:
        folder = self.job_dir(job)
        return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0
