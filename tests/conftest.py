"""Shared fixtures: real mosquitto brokers (dev and production) and raw MQTT probes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
