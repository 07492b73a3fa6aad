"""Broker connection options shared by every command that talks MQTT.

Each option also reads an environment variable, so that a node's systemd environment file or an
operator's shell sets them once (``EDGELOOP_BROKER=mqtts://broker:8883`` ...).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from edgeloop.mqtt import MqttSettings

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"

T = TypeVar("T")

BrokerUrl = Annotated[
    str,
    typer.Option(
        "--broker",
        envvar="EDGELOOP_BROKER",
        help="Broker URL: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS.",
    ),
]
CaFile = Annotated[
    Path | None, typer.Option("--ca", envvar="EDGELOOP_CA", help="CA certificate (TLS).")
]
CertFile = Annotated[
    Path | None,
    typer.Option("--cert", envvar="EDGELOOP_CERT", help="Client certificate (identity)."),
]
KeyFile = Annotated[
    Path | None, typer.Option("--key", envvar="EDGELOOP_KEY", help="Client private key.")
]
Username = Annotated[
    str | None, typer.Option("--username", envvar="EDGELOOP_USERNAME", help="MQTT username.")
]
Password = Annotated[
    str | None, typer.Option("--password", envvar="EDGELOOP_PASSWORD", help="MQTT password.")
]


@dataclass(frozen=True)
class ConnectionOptions:
    broker: str = DEFAULT_BROKER
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None

    def settings(self, client_id: str, **overrides: object) -> MqttSettings:
        return MqttSettings(
            url=self.broker,
            client_id=client_id,
            username=self.username,
            password=self.password,
            ca_file=self.ca,
            cert_file=self.cert,
            key_file=self.key,
            **overrides,  # type: ignore[arg-type]
        )


#: The options every broker-talking command takes, in the order ``--help`` lists them.
_OPTION_PARAMETERS = (
    ("broker", BrokerUrl, DEFAULT_BROKER),
    ("ca", CaFile, None),
    ("cert", CertFile, None),
    ("key", KeyFile, None),
    ("username", Username, None),
    ("password", Password, None),
)


def with_connection(command: Callable[..., T]) -> Callable[..., T]:
    """Give a typer command the broker options without repeating them in its signature.

    The command declares a ``connection: ConnectionOptions`` parameter; the CLI shows
    ``--broker --ca --cert --key --username --password`` in its place.
    """
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "connection"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
        for name, hint, default in _OPTION_PARAMETERS
    ]

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> T:
        values = {name: kwargs.pop(name) for name, _, _ in _OPTION_PARAMETERS}
        return command(*args, connection=ConnectionOptions(**values), **kwargs)  # type: ignore[arg-type]

    wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        k: v for k, v in getattr(command, "__annotations__", {}).items() if k != "connection"
    }
    return wrapper
