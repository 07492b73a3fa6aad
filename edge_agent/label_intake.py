"""Labelled samples the cloud forwards (``edgeloop label import``), added to a dataset index.

Each :class:`LabelledSample` names a Dataset (``namespace/name``) this node holds (its
``datasets:`` setting). Its image goes into a folder beside the index, ``labelled/<sha256>.<ext>``
(written atomically: temporary name, fsync, rename), then one line is appended to the index with
``protocol.dataset_index.append_samples`` (one write + fsync). Only then does the node answer with a
:class:`LabelReceipt`. The dataset watcher sees the index grow and reports the new count, so the
train trigger fires as for any labelled sample.

Deduplication is by content: a sample whose image is already referenced by the index as
``labelled/<sha256>.<ext>`` (either suffix) is answered ``present`` and changes nothing, so a
redelivered message, a resend after a lost receipt or importing the same file twice adds one
line in all, even when one copy claims ``png`` and the other ``jpg``. The suffix is the one the
bytes say (:mod:`protocol.image_format`), not the one the message claims. A sample
that can never be added (unknown dataset, class out of range, unreadable image, box outside it)
is answered ``rejected`` with the reason, so the cloud stops resending it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgeloop.durable import fsync_dir, write_atomically
from edgeloop.mqtt import Delivery, MqttClient, NotConnected
from protocol import topics
from protocol.messages import LabelledSample, LabelOutcome, LabelReceipt
from protocol.dataset_index import Sample, append_samples, image_size
from protocol.image_format import sniff

log = logging.getLogger(__name__)

#: The folder beside the index that holds imported images, named by their sha256.
LABELLED_FOLDER = "labelled"


class LabelIntake:
    """Subscribes to the node's ``labels`` topic on ``client`` and answers every sample."""

    def __init__(
        self,
        client: MqttClient,
        node: str,
        datasets: Mapping[str, Path],
        num_classes: int,
    ) -> None:
        self.client = client
        self.node = node
        self.datasets = {ref: Path(path) for ref, path in datasets.items()}
        self.num_classes = num_classes
        self._lock = asyncio.Lock()  # one sample at a time: the dedupe check and the append
        self._indexed: dict[Path, tuple[tuple[int, int], set[str]]] = {}
        client.subscribe(topics.labels(node), self._on_sample)

    async def _on_sample(self, delivery: Delivery) -> None:
        sample = delivery.message
        if not isinstance(sample, LabelledSample) or sample.node != self.node:
            return
        async with self._lock:
            try:
                outcome = await asyncio.to_thread(self.add, sample)
            except OSError as exc:
                # Not answered: the cloud sends it again, by then the disk may have room.
                log.error("labelled sample %s (%s) not added: %s", sample.sha256[:12],
                          sample.source, exc)
                return
        receipt = LabelReceipt(node=self.node, keys=[sample.key], outcomes={sample.key: outcome})
        try:
            await self.client.publish(topics.label_ack(self.node), receipt)
        except NotConnected:
            pass  # the cloud resends; the repeat is answered "present"

    def add(self, sample: LabelledSample) -> LabelOutcome:
        """Add ``sample`` to its dataset's index unless it is there already. Raises ``OSError``
        only for a failure worth retrying (disk full, permissions)."""
        index = self.datasets.get(sample.dataset)
        if index is None:
            held = ", ".join(sorted(self.datasets)) or "none"
            return _rejected(f"node {self.node} holds no dataset {sample.dataset} (it holds: {held})")
        for i, box in enumerate(sample.boxes, start=1):
            if box[4] >= self.num_classes:
                return _rejected(f"box {i}: class {box[4]} is out of range "
                                 f"0..{self.num_classes - 1}")
        folder = index.resolve().parent / LABELLED_FOLDER
        suffix = sniff(sample.image) or sample.image_format  # other bytes: rejected below
        image = folder / f"{sample.sha256}.{suffix}"
        indexed = self._paths_in(index)
        if any(str(folder / f"{sample.sha256}.{ext}") in indexed for ext in ("jpg", "png")):
            return LabelOutcome(status="present")
        if suffix != sample.image_format:
            log.info("labelled sample %s: the bytes are %s, not %s as sent; saved as %s",
                     sample.sha256[:12], suffix, sample.image_format, image.name)
        new_image = not image.is_file() or image.stat().st_size != len(sample.image)
        if new_image:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(image, sample.image)
            fsync_dir(folder)
        problem = _box_problem(image, sample.boxes)
        if problem is not None:
            if new_image:
                image.unlink(missing_ok=True)
            return _rejected(problem)
        append_samples(index, [Sample(image=image, boxes=np.asarray(sample.boxes, np.int32))])
        self._paths_in(index).add(str(image))
        log.info("dataset %s: added %s (%d boxes) from %s", sample.dataset, image.name,
                 len(sample.boxes), sample.source or "an import")
        return LabelOutcome(status="added")

    def _paths_in(self, index: Path) -> set[str]:
        """Absolute image paths the index references, re-read only when the file changed."""
        try:
            stat = os.stat(index)
        except FileNotFoundError:
            return self._indexed.setdefault(index, ((-1, -1), set()))[1]
        version = (stat.st_size, stat.st_mtime_ns)
        cached = self._indexed.get(index)
        if cached is not None and cached[0] == version:
            return cached[1]
        base = str(index.resolve().parent)
        paths = set()
        with open(index, encoding="utf-8-sig", errors="replace") as handle:
            for line in handle:
                tokens = line.split(maxsplit=1)
                if tokens:
                    paths.add(os.path.normpath(os.path.join(base, tokens[0])))
        self._indexed[index] = (version, paths)
        return paths


def _rejected(reason: str) -> LabelOutcome:
    return LabelOutcome(status="rejected", reason=reason[:1024])


def _box_problem(image: Path, boxes: list[list[int]]) -> str | None:
    size = image_size(image)
    if size is None:
        return "image cannot be read as a picture"
    width, height = size
    for i, (_, _, x2, y2, _) in enumerate(boxes, start=1):
        if x2 > width:
            return f"box {i}: x2 ({x2}) is outside the image width {width}"
        if y2 > height:
            return f"box {i}: y2 ({y2}) is outside the image height {height}"
    return None
