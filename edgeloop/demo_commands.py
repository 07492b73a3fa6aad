"""``edgeloop demo``: the whole helmet loop on one machine (docs/demo.md)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        workdir: Path = typer.Option(Path("demo-workdir"), "--workdir",
                                     help="Where everything goes (cache kept between runs)."),
        fast: bool = typer.Option(False, "--fast", help="Tiny sizes: the same path in minutes."),
        live_view_port: int = typer.Option(
            8080, "--live-view-port", help="Port of edge0's live view page (0: any free port)."),
    ) -> None:
        """Run the seed's helmet loop on one machine: broker, cloud, agents cloud0 and edge0,
        an RTSP camera, a simulated annotator; two rounds of learning and a report."""
        from edgeloop.demo import DemoSettings, run_demo

        code = run_demo(DemoSettings(workdir=workdir, fast=fast, live_view_port=live_view_port))
        raise typer.Exit(code)
