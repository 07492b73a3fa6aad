"""The console's side of the cloud manager's API: one MQTT session, held while the console runs,
through which it lists jobs and hard examples, fetches images, and saves labels.

Saving goes through ``label_import``, exactly as ``edgeloop label import`` does: the dataset's
node appends the line once per image (a duplicate is refused there), its watcher counts the new
sample and the train trigger sees it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from cloud_manager.api_client import (
    Answer,
    ApiFailed,
    ApiSession,
    HardexList,
    fetch_hardex_images,
    list_hardex,
)
from cloud_manager.label_files import image_format
from edgeloop.connection import ConnectionOptions
from edgeloop.durable import write_atomically
from protocol.dataset_index import image_size

#: How long a save waits for the dataset node's confirmation.
SAVE_WAIT_S = 20.0


@dataclass(frozen=True)
class JobRef:
    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> JobRef:
        """``namespace/name``; ``ValueError`` says what is wrong."""
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"job {text!r}: expected namespace/name")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class CachedImage:
    path: Path
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class SaveOutcome:
    """What the dataset node did with a sample: ``added``, ``present``, ``rejected``,
    ``pending`` (not confirmed in time)."""

    status: str
    reason: str
    dataset: str
    node: str


class JobList(Answer):
    """A ``get`` answer (jobs, nodes): one row per resource, as ``edgeloop get`` shows them."""

    items: list[dict[str, Any]]


class SavedSample(Answer):
    """A ``label_import`` answer with samples: the target and what became of each sample."""

    dataset: str
    node: str
    results: list[dict[str, str]]


class CloudLink:
    """``async with CloudLink(options, cache) as cloud``: the API session and the image cache."""

    def __init__(self, options: ConnectionOptions, cache: Path, timeout: float = 10.0) -> None:
        self.session = ApiSession(options, timeout)
        self.cache = cache
        self._image_locks: dict[str, asyncio.Lock] = {}

    async def __aenter__(self) -> Self:
        self.cache.mkdir(parents=True, exist_ok=True)
        await self.session.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.__aexit__(*exc_info)

    async def jobs(self) -> list[dict[str, Any]]:
        """Every incremental-learning job with its status, as ``edgeloop get il -A`` lists it."""
        response = await self.session.ask("get", resource="jobs",
                                          args={"all_namespaces": True})
        return JobList.of(response).items

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node the cloud has heard of, as ``edgeloop get nodes`` lists them."""
        response = await self.session.ask("get", resource="nodes")
        return JobList.of(response).items

    async def describe(self, job: JobRef) -> dict[str, Any]:
        response = await self.session.ask("describe", resource="jobs", namespace=job.namespace,
                                          name=job.name)
        if not isinstance(response.data, dict):
            raise ValueError("unexpected answer from the cloud manager: describe without data")
        return response.data

    async def examples(self, job: JobRef) -> HardexList:
        return await list_hardex(self.session, job.namespace, job.name)

    async def image(self, job: JobRef, item: dict[str, Any]) -> CachedImage:
        """The example's image, downloaded once and kept under the cache folder."""
        sha256 = item["id"]
        async with self._image_locks.setdefault(sha256, asyncio.Lock()):
            cached = self._cached(sha256)
            if cached is None:
                def keep(_: dict[str, Any], data: bytes) -> None:
                    write_atomically(self.cache / f"{sha256}.{image_format(data) or 'bin'}", data)

                missing = await fetch_hardex_images(self.session, job.namespace, job.name,
                                                    [item], keep)
                if missing:
                    raise KeyError(f"hard example {sha256[:12]} is gone from the cloud's inbox")
                cached = self._cached(sha256)
        if cached is None:
            raise ValueError(f"hard example {sha256[:12]} is not a JPEG or PNG image")
        return cached

    def _cached(self, sha256: str) -> CachedImage | None:
        for fmt in ("jpg", "png"):
            path = self.cache / f"{sha256}.{fmt}"
            size = image_size(path)
            if size is not None:
                return CachedImage(path, size[0], size[1], fmt)
        return None

    async def save(self, job: JobRef, image: CachedImage, boxes: list[list[int]],
                   source: str) -> SaveOutcome:
        """Send one labelled sample to the job's dataset, as ``label import`` does, and say what
        the node did with it. ``ApiFailed`` when the cloud refuses (e.g. the node is offline)."""
        data = await asyncio.to_thread(image.path.read_bytes)
        sha256 = image.path.stem
        response = await self.session.ask(
            "label_import", timeout=SAVE_WAIT_S + 5.0, namespace=job.namespace, name=job.name,
            args={"samples": [{"sha256": sha256, "format": image.format, "boxes": boxes,
                               "source": source}], "wait_s": SAVE_WAIT_S},
            attachments={sha256: data})
        answer = SavedSample.of(response)
        result = answer.results[0] if answer.results else {}
        return SaveOutcome(status=result.get("status", "pending"),
                           reason=result.get("reason", ""), dataset=answer.dataset,
                           node=answer.node)


__all__ = ["ApiFailed", "CachedImage", "CloudLink", "JobRef", "SaveOutcome"]
