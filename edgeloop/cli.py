"""The ``edgeloop`` command.

Each package contributes its own subcommands from a ``commands.py`` module with a
``register(app)`` function, so that the CLI of a package lives beside the code it drives and this
file only assembles them. The modules are found through the ``edgeloop.commands`` entry points
(``pyproject.toml``), so this runtime package never imports the packages built on it. Imports
inside commands are lazy: ``edgeloop --help`` must not load TensorFlow, and a command whose extra
is not installed says which one to install.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from importlib.metadata import EntryPoint, entry_points

import typer

from edgeloop import __version__

COMMAND_GROUP = "edgeloop.commands"
#: The order of ``edgeloop --help``: manifests, broker, cloud, agent, console, demo; others after.
HELP_ORDER = ("protocol", "mosquitto", "cloud_manager", "edge_agent", "console", "demo")
#: Third-party modules that come with an extra, not with ``pip install edgeloop``.
EXTRA_OF_MODULE = {
    "tensorflow": "train",
    "keras": "train",
    "pycocotools": "train",
    "matplotlib": "demo",
    "cv2": "edge",
    "ai_edge_litert": "edge",
    "starlette": "console",
    "uvicorn": "console",
    "itsdangerous": "console",
}

app = typer.Typer(
    name="edgeloop",
    help="Edge-cloud incremental learning of detection models over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class MissingExtra(Exception):
    """A command needs a library that comes with an extra this install lacks."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"this command needs {module}, which comes with the {extra!r} extra: "
            f"pip install 'edgeloop[{extra}]'"
        )


def require_extra(extra: str, *modules: str) -> None:
    """Fail early, before any work, when a command's extra is not installed."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(module, extra)


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
    def order(entry: EntryPoint) -> tuple[int, str]:
        known = entry.name in HELP_ORDER
        return (HELP_ORDER.index(entry.name) if known else len(HELP_ORDER), entry.name)

    for entry in sorted(entry_points(group=COMMAND_GROUP), key=order):
        entry.load().register(app)


_register_all()


def main() -> None:
    try:
        app()
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in EXTRA_OF_MODULE:
            raise
        print(f"edgeloop: {MissingExtra(top, EXTRA_OF_MODULE[top])}", file=sys.stderr)
        raise SystemExit(2) from None
    except MissingExtra as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
