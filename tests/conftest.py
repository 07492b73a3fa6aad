"""Shared fixtures: real mosquitto brokers (dev and production), raw MQTT probes, and the
cloud manager's store on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloud_manager.store import Store
from edgeloop.postgres_server import PostgresServer, PostgresUnavailable
from mosquitto.creds import Credentials, generate_credentials
from mosquitto.launcher import Broker
from mqtt_probe import Probe

# --- brokers -------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A dev broker (loopback, anonymous) of its own for each test, on a free port."""
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture(scope="module")
def production_credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """CA, server and client certificates for nodes ``node-a``, ``node-b`` and cloud ``cloud``,
    with passwords too so the same credentials serve both identity modes."""
    return generate_credentials(
        tmp_path_factory.mktemp("creds"), ["node-a", "node-b"], cloud="cloud", passwords=True
    )


@pytest.fixture(scope="module")
def production_broker(
    production_credentials: Credentials, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Broker, Credentials]]:
    """A production broker (TLS, client-certificate identities, generated ACL) per module."""
    with Broker(tmp_path_factory.mktemp("broker"), credentials=production_credentials) as running:
        yield running, production_credentials


# --- raw MQTT clients ----------------------------------------------------------------------


@pytest.fixture
def mqtt_probe() -> Iterator[Callable[..., Probe]]:
    """Make :class:`mqtt_probe.Probe` clients (same arguments); all are closed after the test."""
    made: list[Probe] = []

    def make(*args: object, **kwargs: object) -> Probe:
        probe = Probe(*args, **kwargs)  # type: ignore[arg-type]
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


# --- the cloud manager's store -------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (``initdb`` + ``pg_ctl`` in a temporary directory,
    on a free port, without fsync); tests take a fresh database each. Where PostgreSQL cannot run the tests
    that need it are skipped with the reason, except in CI, where that is a failure."""
    try:
        server = PostgresServer(durable=False).start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    yield server
    server.stop()


@dataclass
class StoreAt:
    """Where a test's store lives: a state directory (SQLite) or a fresh PostgreSQL database.
    :meth:`open` opens it (again): each call a new connection, as a restarted manager makes."""

    kind: str
    state_dir: Path
    url: str | None = None
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        store = Store(url=self.url) if self.url else Store(self.state_dir)
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreAt]:
    """The store under test, once on SQLite and once on PostgreSQL."""
    url = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database()
    at = StoreAt(request.param, tmp_path / "state", url)
    yield at
    for store in at.opened:
        store.close()
