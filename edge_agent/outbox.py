"""The node's durable outbox: encoded messages kept on disk until the cloud acknowledges them.

It is the :class:`edgeloop.reliable.OutboxStore` behind the hard-example sender. One file per
message, written through a temporary name, ``fsync``-ed and renamed, so a message the outbox has
accepted survives a crash of the agent, of the broker or of the machine. Files are named
``<sequence>-<hash of key>.msg`` so that a directory listing gives the sending order back after a
restart; each starts with a one-line JSON header (key and topic) followed by the raw payload, so
that loading a long backlog reads headers only.

A byte quota bounds the disk the outbox may take. Beyond it, with the default eviction order
``none``, :meth:`DiskOutbox.put` raises :class:`OutboxFull` and the caller keeps the data where
it was (hard examples stay in their folder) until acknowledgements free space. With ``oldest``
or ``lowest-score`` (the agent's ``outbox_eviction``) the outbox gives up waiting messages in
that order to take the new one (a newcomer worth less than everything waiting is the one given
up; a message sent and not acknowledged yet is never given up): each is handed to
``on_evict``, which counts, logs and reports it.

A message may carry metadata (``job``, ``score``) in its header, for the upload policy and the
eviction order.

A message the cloud refuses for good (no such job, not an image) leaves the outbox by
:meth:`DiskOutbox.set_aside`: its file moves to the ``rejected`` folder with the reason beside it,
counted and logged, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_agent.upload_policy import Message, victims
from edgeloop.durable import fsync_dir, write_atomically
from protocol.data_policies import EvictionOrder

log = logging.getLogger(__name__)

SUFFIX = ".msg"
CORRUPT_DIR = "corrupt"


class OutboxFull(RuntimeError):
    """Accepting the message would take the outbox over its quota; nothing was stored."""


@dataclass(frozen=True)
class _Entry:
    path: Path
    topic: str
    size: int
    meta: dict[str, object]

    def message(self, key: str) -> Message:
        score = self.meta.get("score")
        return Message(key, self.size, str(self.meta.get("job", "")),
                       float(score) if isinstance(score, int | float) else None)


class DiskOutbox:
    """A directory of messages waiting for acknowledgement, in the order they were put."""

    def __init__(self, root: Path | str, quota_bytes: int = 1024 * 2**20,
                 rejected_dir: Path | str | None = None, *, eviction: EvictionOrder = "none",
                 on_evict: Callable[[Message], None] | None = None,
                 in_flight: Callable[[], Collection[str]] = frozenset) -> None:
        if quota_bytes <= 0:
            raise ValueError(f"outbox quota must be > 0 bytes, got {quota_bytes}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rejected_dir = Path(rejected_dir) if rejected_dir is not None else self.root / "rejected"
        #: messages refused by the receiver and set aside since start
        self.rejected = 0
        self.quota_bytes = quota_bytes
        self.eviction: EvictionOrder = eviction
        self.on_evict = on_evict
        #: keys sent and not acknowledged: never evicted (the cloud may have them already)
        self.in_flight = in_flight
        self._index: OrderedDict[str, _Entry] = OrderedDict()
        self._used = 0
        self._next_seq = 0
        self._load()

    # -- OutboxStore protocol ---------------------------------------------------------------

    def put(self, key: str, topic: str, payload: bytes,
            meta: Mapping[str, object] | None = None) -> None:
        """Store durably; replaces a message already held under ``key`` (same position)."""
        fields = {"key": key, "topic": topic} | ({"meta": dict(meta)} if meta else {})
        header = json.dumps(fields).encode() + b"\n"
        size = len(header) + len(payload)
        old = self._index.get(key)
        freed = old.size if old else 0
        if self._used - freed + size > self.quota_bytes:
            incoming = Message(key, size, str((meta or {}).get("job", "")),
                               _score(meta or {}))
            if not self._evict_for(incoming, self.quota_bytes - (self._used - freed)):
                return  # the newcomer itself was given up (counted by on_evict)
        path = old.path if old else self.root / self._file_name(key)
        write_atomically(path, header + payload)
        fsync_dir(self.root)
        self._index[key] = _Entry(path, topic, size, dict(meta or {}))
        self._used += size - freed

    def _evict_for(self, incoming: Message, room: int) -> bool:
        """Make room for ``incoming`` by the eviction order; False when ``incoming`` is the one
        given up. Raises :class:`OutboxFull` when nothing may be evicted."""
        sent = self.in_flight()
        waiting = [e.message(k) for k, e in self._index.items()
                   if k != incoming.key and k not in sent]
        chosen = victims(waiting, incoming, room, self.eviction)
        if chosen is None:
            raise OutboxFull(
                f"outbox {self.root} holds {self._used} bytes; {incoming.size} more would "
                f"exceed its quota of {self.quota_bytes} bytes"
            )
        for message in chosen:
            if message is not incoming:
                self.remove(message.key)
            if self.on_evict is not None:
                self.on_evict(message)
        return incoming not in chosen

    def meta(self, key: str) -> Mapping[str, object]:
        """The metadata the message under ``key`` was put with (empty when none or gone)."""
        entry = self._index.get(key)
        return entry.meta if entry is not None else {}

    def remove(self, key: str) -> bool:
        entry = self._index.pop(key, None)
        if entry is None:
            return False
        entry.path.unlink(missing_ok=True)
        self._used -= entry.size
        return True

    def items(self) -> Iterator[tuple[str, str, bytes]]:
        """Yield ``(key, topic, payload)`` oldest first, reading each payload only when reached."""
        for key, entry in list(self._index.items()):
            payload = self._read_payload(entry.path)
            if payload is None or key not in self._index:
                continue
            yield key, entry.topic, payload

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def set_aside(self, key: str, reason: str) -> bool:
        """Move the message under ``key`` to the rejected folder with ``reason`` beside it;
        False when the outbox does not hold it (set aside already, or acknowledged)."""
        entry = self._index.pop(key, None)
        if entry is None:
            return False
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        target = self.rejected_dir / entry.path.name
        write_atomically(target.with_suffix(".reason.txt"), f"{key}: {reason}\n".encode())
        os.replace(entry.path, target)
        fsync_dir(self.rejected_dir)
        self._used -= entry.size
        self.rejected += 1
        log.error("outbox message %s set aside in %s: %s", key, self.rejected_dir, reason)
        return True

    # -- quota ------------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return self._used

    def has_room_for(self, size: int) -> bool:
        return self._used + size <= self.quota_bytes

    # -- files ------------------------------------------------------------------------------

    def _file_name(self, key: str) -> str:
        seq = self._next_seq
        self._next_seq += 1
        return f"{seq:012d}-{hashlib.sha256(key.encode()).hexdigest()[:24]}{SUFFIX}"

    @staticmethod
    def _read_payload(path: Path) -> bytes | None:
        try:
            with open(path, "rb") as f:
                f.readline()
                return f.read()
        except FileNotFoundError:
            return None

    def _load(self) -> None:
        """Index what a previous run left; set aside (never delete) files that do not parse."""
        for tmp in self.root.glob(f".*{SUFFIX}.tmp"):
            tmp.unlink(missing_ok=True)  # an interrupted put: that message was never accepted
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            try:
                seq = int(path.name.split("-", 1)[0])
                with open(path, "rb") as f:
                    header = json.loads(f.readline())
                key, topic = str(header["key"]), str(header["topic"])
                meta = header.get("meta") or {}
                if not isinstance(meta, dict):
                    raise ValueError("header meta is not an object")
                size = path.stat().st_size
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._set_aside(path, exc)
                continue
            self._index[key] = _Entry(path, topic, size, meta)
            self._used += size
            self._next_seq = max(self._next_seq, seq + 1)
        if self._index:
            log.info("outbox %s: %d message(s) left to send", self.root, len(self._index))

    def _set_aside(self, path: Path, exc: Exception) -> None:
        target = self.root / CORRUPT_DIR
        target.mkdir(exist_ok=True)
        log.error("outbox file %s is unreadable (%s); moved to %s", path.name, exc, target)
        os.replace(path, target / path.name)


def _score(meta: Mapping[str, object]) -> float | None:
    score = meta.get("score")
    return float(score) if isinstance(score, int | float) else None
