"""The ``edgeloop`` command.

Each package contributes its own subcommands from a ``commands.py`` module with a
``register(app)`` function, so that the CLI of a package lives beside the code it drives and this
file only assembles them. Imports inside commands are lazy: ``edgeloop --help`` must not load
TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
import os

import typer

from edgeloop import __version__

# Order sets the order of ``edgeloop --help``.
COMMAND_MODULES = (
    "protocol.commands",
    "mosquitto.commands",
    "cloud_manager.commands",
    "edge_agent.commands",
    "workers.commands",
    "edgeloop.demo_commands",
)

app = typer.Typer(
    name="edgeloop",
    help="Edge-cloud incremental learning of detection models over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeloop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("EDGELOOP_LOG", "INFO"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package has no commands yet
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
