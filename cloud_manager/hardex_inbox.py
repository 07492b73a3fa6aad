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
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeloop.durable import fsync_dir, write_atomically
from protocol.messages import HardExample

INBOX_DIR = "hardex"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _is_sha256(value: str) -> bool:
    """Names from requests become file names: only a sha256 may."""
    return isinstance(value, str) and bool(_SHA256.match(value))


def source_of(node: str, sidecar: Mapping[str, Any]) -> str:
    """Where an example comes from, as the share cap counts it: ``node/camera``, or the node
    alone for a node that runs the job's single ``video_url``."""
    camera = sidecar.get("camera") or ""
    return f"{node}/{camera}" if camera else node


@dataclass(frozen=True)
class Stored:
    path: Path
    new: bool


class HardExampleInbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        #: job -> source -> examples waiting for labels; read from disk when first asked, kept
        #: up to date as examples arrive, read again after labels came
        self._waiting: dict[str, Counter[str]] = {}

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
        waiting = self._waiting.get(example.job)
        if waiting is not None:
            waiting[source_of(example.node, meta["sidecar"])] += 1
        return Stored(image, new=True)

    def waiting_by_source(self, job: str) -> Counter[str]:
        """The job's examples not labelled yet, per source (:func:`source_of`): what the next
        round's new samples will be made of."""
        waiting = self._waiting.get(job)
        if waiting is None:
            waiting = Counter(source_of(str(meta.get("node", "")), meta.get("sidecar") or {})
                              for meta in self.examples(job) if not meta.get("labelled"))
            self._waiting[job] = waiting
        return waiting

    def examples(self, job: str) -> Iterator[dict[str, Any]]:
        """The sidecars of a job's examples, in sha256 order, each with ``bytes``, the size of
        its image (what an export must fetch)."""
        folder = self.job_dir(job)
        if not folder.is_dir():
            return
        for sidecar in sorted(folder.glob("*.json")):
            meta = json.loads(sidecar.read_text())
            try:
                meta["bytes"] = (folder / meta["image"]).stat().st_size
            except (OSError, KeyError):
                continue  # an image without a sidecar never happens; a lone sidecar is skipped
            yield meta

    def example(self, job: str, sha256: str) -> dict[str, Any] | None:
        """The sidecar of one example, or None when the job's inbox has no such image."""
        if not _is_sha256(sha256):
            return None
        sidecar = self.job_dir(job) / f"{sha256}.json"
        try:
            return json.loads(sidecar.read_text())
        except FileNotFoundError:
            return None

    def read_image(self, job: str, sha256: str, offset: int, length: int) -> tuple[bytes, int]:
        """Bytes ``offset..offset+length`` of an example's image and the image's whole size.

        Raises ``KeyError`` when the job has no such example."""
        meta = self.example(job, sha256)
        if meta is None:
            raise KeyError(sha256)
        image = self.job_dir(job) / meta["image"]
        with open(image, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            return handle.read(length), size

    def mark_labelled(self, job: str, sha256: str, dataset: str, now: float) -> bool:
        """Note in an example's sidecar that it was labelled into ``dataset`` (``hardex list``
        shows it, ``hardex export`` leaves it out by default). False when the job has no such
        example: labels may come from any image, not only hard examples."""
        meta = self.example(job, sha256)
        if meta is None:
            return False
        if meta.get("labelled", {}).get("dataset") == dataset:
            return True
        meta["labelled"] = {"dataset": dataset, "time": now}
        folder = self.job_dir(job)
        write_atomically(folder / f"{sha256}.json", json.dumps(meta, sort_keys=True).encode())
        fsync_dir(folder)
        self._waiting.pop(job, None)  # counted again when next asked (labels come in batches)
        return True

    def has(self, job: str, sha256: str) -> bool:
        """Whether the job's inbox already holds this example (a redelivery)."""
        return _is_sha256(sha256) and (self.job_dir(job) / f"{sha256}.json").exists()

    def usage(self) -> Iterator[tuple[str, str, int]]:
        """``(job, node, image bytes)`` of every stored example: what the quotas start from."""
        for sidecar in self.root.glob("*/*/*.json"):
            try:
                meta = json.loads(sidecar.read_text())
                size = (sidecar.parent / meta["image"]).stat().st_size
                yield str(meta["job"]), str(meta["node"]), size
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a lone or unreadable sidecar is not an example (see examples())

    def count(self, job: str) -> int:
        folder = self.job_dir(job)
        return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0
