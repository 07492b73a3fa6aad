"""Moves hard examples from the folders inference workers save them in into the outbox.

An inference worker writes each hard example under ``HE_SAVED_URL`` as an image and a JSON
sidecar, the sidecar last (see :mod:`workers.hardex_store`), so a ``.json`` file means a complete
example. The intake turns one into a :class:`protocol.messages.HardExample`, hands it to the
reliable sender (which stores it durably in the outbox) and only then deletes the two files: at
every instant the example is on disk in one place or the other, so an outage of the broker, a
restart of the agent or a full outbox never loses one.

It runs when a worker announces an example over the local channel and by a periodic scan (which
also picks up, at start-up, whatever was saved while the agent was down). A file that cannot
become a message (bad sidecar, missing image, over the size limit) is moved to a ``rejected``
folder in the agent's state directory with the reason beside it, never deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_agent.outbox import OutboxFull
from edgeloop.reliable import ReliableSender
from protocol import topics
from protocol.codec import describe_validation_error
from protocol.errors import ProtocolError
from protocol.messages import HardExample, HardExampleSidecar, ImageFormat

log = logging.getLogger(__name__)

IMAGE_FORMATS: dict[str, ImageFormat] = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}


class RejectedExample(ValueError):
    """A saved hard example that cannot be sent; the message says what is wrong with it."""


@dataclass
class IntakeCounters:
    taken: int = 0
    rejected: int = 0
    deferred_full: int = 0


def hard_example_from_files(
    node: str, job: str, sidecar_text: str, image: bytes, image_name: str
) -> HardExample:
    """Build the wire message of one saved example (pure: the caller reads the files)."""
    try:
        document = json.loads(sidecar_text)
    except json.JSONDecodeError as exc:
        raise RejectedExample(f"sidecar is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RejectedExample("sidecar must be a JSON object")
    image_format = IMAGE_FORMATS.get(Path(image_name).suffix.lower())
    if image_format is None:
        raise RejectedExample(f"image {image_name}: only .jpg, .jpeg and .png are sent")
    sha = hashlib.sha256(image).hexdigest()
    claimed = document.get("sha256")
    if claimed is not None and claimed != sha:
        raise RejectedExample(f"sidecar sha256 {claimed} does not match image {image_name} ({sha})")
    try:
        sidecar = HardExampleSidecar.model_validate(document)
        return HardExample(
            node=node, job=job, sha256=sha, image=image, image_format=image_format, sidecar=sidecar
        )
    except ValidationError as exc:
        raise RejectedExample(f"sidecar: {describe_validation_error(exc)}") from None


def _image_of(sidecar_path: Path, text: str) -> Path:
    """The image a sidecar belongs to: its ``image`` field, else the same stem with an image
    suffix."""
    try:
        named = json.loads(text).get("image")
    except (json.JSONDecodeError, AttributeError):
        named = None
    if isinstance(named, str) and named and Path(named).name == named:
        return sidecar_path.with_name(named)
    for suffix in IMAGE_FORMATS:
        candidate = sidecar_path.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return sidecar_path.with_suffix(".jpg")


class HardExampleIntake:
    """Takes saved hard examples out of registered folders and into the reliable sender."""

    def __init__(
        self,
        node: str,
        sender: ReliableSender,
        rejected_dir: Path,
        *,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self.sender = sender
        self.rejected_dir = Path(rejected_dir)
        self.counters = IntakeCounters()
        self._folders: dict[Path, str] = {}  # folder -> job (namespace/name)
        self._lock = asyncio.Lock()
        self._on_change = on_change

    @property
    def folders(self) -> dict[Path, str]:
        return dict(self._folders)

    def add_folder(self, folder: Path | str, job: str) -> None:
        """Watch ``folder`` for examples of ``job`` (a ``namespace/name``)."""
        self._folders[Path(folder).resolve()] = job

    async def scan(self) -> int:
        """Take every complete example of every folder; returns how many were taken."""
        async with self._lock:
            taken = 0
            for folder, job in list(self._folders.items()):
                taken += await self._scan_folder(folder, job)
            if taken and self._on_change:
                self._on_change()
            return taken

    async def take_file(self, sidecar_path: Path | str) -> bool:
        """Take one example now (a worker announced it); False when not under a known folder."""
        path = Path(sidecar_path).resolve()
        job = self._folders.get(path.parent)
        if job is None:
            log.warning("hard example %s is not under a registered HE_SAVED_URL folder", path)
            return False
        async with self._lock:
            try:
                done = await self._take(path, job)
            except OutboxFull as exc:
                self.counters.deferred_full += 1
                log.warning("hard example %s waits in its folder: %s", path.name, exc)
                return False
        if done and self._on_change:
            self._on_change()
        return done

    async def _scan_folder(self, folder: Path, job: str) -> int:
        if not folder.is_dir():
            return 0
        taken = 0
        for sidecar in sorted(folder.glob("*.json")):
            if sidecar.name.startswith("."):
                continue
            try:
                if await self._take(sidecar, job):
                    taken += 1
            except OutboxFull as exc:
                self.counters.deferred_full += 1
                log.warning("hard examples wait in %s: %s", folder, exc)
                break
        return taken

    async def _take(self, sidecar_path: Path, job: str) -> bool:
        """Raises :class:`OutboxFull` (files untouched) when the outbox has no room."""
        try:
            text = sidecar_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False  # taken by a concurrent scan
        except (OSError, UnicodeDecodeError) as exc:
            self._reject(sidecar_path, None, f"cannot read sidecar: {exc}")
            return False
        image_path = _image_of(sidecar_path, text)
        try:
            image = image_path.read_bytes()
        except OSError as exc:
            self._reject(sidecar_path, None, f"cannot read image {image_path.name}: {exc}")
            return False
        try:
            message = hard_example_from_files(self.node, job, text, image, image_path.name)
            if message.key not in self.sender.store:
                meta = {"job": job, "score": message.sidecar.score}
                await self.sender.send(topics.hardex(self.node), message, meta)
        except RejectedExample as exc:
            self._reject(sidecar_path, image_path, str(exc))
            return False
        except ProtocolError as exc:  # over the payload limit
            self._reject(sidecar_path, image_path, exc.reason)
            return False
        sidecar_path.unlink(missing_ok=True)
        image_path.unlink(missing_ok=True)
        self.counters.taken += 1
        return True

    def _reject(self, sidecar_path: Path, image_path: Path | None, reason: str) -> None:
        self.counters.rejected += 1
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        log.error("hard example %s rejected: %s", sidecar_path, reason)
        for path in (sidecar_path, image_path):
            if path is not None and path.exists():
                os.replace(path, self.rejected_dir / path.name)
        (self.rejected_dir / f"{sidecar_path.stem}.reason.txt").write_text(reason + "\n")
