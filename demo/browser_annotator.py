"""``edgeloop demo --annotator browser``: a person labels the hard examples in the console
instead of the SIMULATED ANNOTATOR.

The demo starts the labelling console (:mod:`console.server`) on loopback inside its own asyncio
loop, with a fresh account whose password is printed once in the terminal, and from then on
only watches: every hard example the cloud marks labelled (whoever saved it: the console, or
``edgeloop label import``) counts as a label. The demo steers its camera by the domain each
round learns (:mod:`demo.schedule`); a person's label carries no domain, so it is given the
domain the camera showed when the example was captured (:func:`domain_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_manager.api_client import list_hardex
from console.app import Console, ConsoleSettings
from console.auth import Users, read_password_file, set_password
from console.app import Console
from console.server import Listen, running
from edgeloop.connection import ConnectionOptions

log = logging.getLogger("edgeloop.demo")
USER = "demo"


def domain_at(switches: Sequence[dict[str, Any]], when: float | None) -> str | None:
    """The domain the camera showed at ``when``: the last switch at or before it (``switches``
    in time order, each ``{"time", "domain"}``); None before the first or without a time."""
    if when is None:
        return None
    shown = None
    for switch in switches:
        if switch["time"] > when:
            break
        shown = switch["domain"]
    return shown


@dataclass(frozen=True)
class Label:
    """A hard example the cloud marks labelled: its id, capture time and (guessed) domain."""

    id: str
    time: float | None
    domain: str | None


@dataclass
class LabelTally:
    """Which labelled examples were counted already, and how many per domain. Pure."""

    seen: set[str] = field(default_factory=set)
    per_domain: dict[str, int] = field(default_factory=dict)

    def new_labels(self, items: Sequence[dict[str, Any]],
                   switches: Sequence[dict[str, Any]]) -> list[Label]:
        """The examples labelled since the last call, each counted once."""
        fresh = []
        for item in items:
            example = str(item.get("id") or "")
            if not item.get("labelled") or not example or example in self.seen:
                continue
            self.seen.add(example)
            when = item.get("time")
            when = float(when) if isinstance(when, int | float) else None
            label = Label(example, when, domain_at(switches, when))
            key = label.domain or "unknown domain"
            self.per_domain[key] = self.per_domain.get(key, 0) + 1
            fresh.append(label)
        return fresh


@dataclass(frozen=True)
class ConsoleAccount:
    url: str
    user: str
    password: str


@contextlib.asynccontextmanager
async def console_for_a_person(connection: ConnectionOptions, folder: Path, port: int,
                               job: str) -> AsyncIterator[tuple[Console, ConsoleAccount]]:
    """The console on loopback with a fresh account (a new random password each run, in a
    0600 password file under ``folder``; the caller prints it once)."""
    password = secrets.token_urlsafe(12)
    password_file = folder / "console.passwd"
    password_file.unlink(missing_ok=True)
    set_password(password_file, USER, password)
    listen = Listen(port=port)
    users = Users(read_password_file(password_file))
    async with running(connection, users, listen, folder / "cache", folder / "state",
                       ConsoleSettings(default_job=job)) as console:
        yield console, ConsoleAccount(listen.url, USER, password)


async def watch_labels(console: Console, namespace: str, job: str, tally: LabelTally,
                       switches: Callable[[], Sequence[dict[str, Any]]],
                       on_labels: Callable[[list[Label]], None], every_s: float = 1.0) -> None:
    """Ask the cloud which of the job's hard examples are labelled, tell ``on_labels`` of the
    new ones; until cancelled. A failed ask is tried again at the next turn."""
    while True:
        try:
            listing = await list_hardex(console.cloud.session, namespace, job)
        except Exception as exc:  # the cloud restarting or slow: the next turn asks again
            log.warning("cannot list %s/%s's hard examples: %s", namespace, job, exc)
            listing = None
        if listing is not None:
            fresh = tally.new_labels(listing.items, switches())
            if fresh:
                on_labels(fresh)
        await asyncio.sleep(every_s)
