"""``edgeloop demo``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        workdir: Path = typer.Option(Path("demo-workdir"), "--workdir", help="Where everything goes."),
        fast: bool = typer.Option(False, "--fast", help="Tiny sizes, for CI."),
    ) -> None:
        """Run the helmet loop on one machine, as far as it is built, and say what is not."""
        from edgeloop.demo import DemoSettings, run_demo

        run_demo(DemoSettings(workdir=workdir, fast=fast))
