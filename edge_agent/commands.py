"""``edgeloop agent``: run the node daemon in the foreground (systemd runs it the same way)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

#: Read instead of a command-line option so that the password does not show in ``ps``.
PASSWORD_ENV = "EDGELOOP_PASSWORD"  # as every other command's --password


def register(app: typer.Typer) -> None:
    @app.command("agent")
    def agent(
        node: str | None = typer.Option(
            None, "--node", help="This node's name (its MQTT identity)."
        ),
        broker: str | None = typer.Option(
            None, "--broker", help="Broker URL: mqtt://host:1883 or mqtts://host:8883."
        ),
        state: Path | None = typer.Option(
            None, "--state", help="State directory: outbox, task logs (default /var/lib/edgeloop)."
        ),
        config: Path | None = typer.Option(None, "--config", help="YAML settings file."),
        ca: Path | None = typer.Option(None, "--ca", help="CA certificate of the broker (TLS)."),
        cert: Path | None = typer.Option(None, "--cert", help="This node's certificate (TLS)."),
        key: Path | None = typer.Option(None, "--key", help="This node's private key (TLS)."),
        username: str | None = typer.Option(
            None, "--username", help=f"MQTT user name; the password is read from ${PASSWORD_ENV}."
        ),
        dataset: list[str] = typer.Option(
            [], "--dataset", help="Watch an index: namespace/name=/path/data.txt (repeatable)."
        ),
        hardex_dir: list[str] = typer.Option(
            [],
            "--hardex-dir",
            help="Drain a hard-example folder: namespace/job=/path (repeatable).",
        ),
        label: list[str] = typer.Option(
            [], "--label", help="A label of this node: key=value (repeatable); jobs select "
            "nodes by labels (deploySpec.nodeSelector)."
        ),
        live_view_port: int | None = typer.Option(
            None, "--live-view-port", help="Port of the live-view page (0: any free port)."
        ),
    ) -> None:
        """Run the edge agent until SIGTERM or Ctrl-C."""
        import asyncio
        import signal

        from edge_agent.config import ConfigError, load_config, parse_labels, parse_mapping
        from edge_agent.daemon import run_agent

        try:
            settings = load_config(
                config,
                {
                    "node": node,
                    "broker": broker,
                    "state_dir": state,
                    "ca": ca,
                    "cert": cert,
                    "key": key,
                    "username": username,
                    "password": os.environ.get(PASSWORD_ENV),
                    "datasets": parse_mapping(dataset, "--dataset"),
                    "hardex_dirs": parse_mapping(hardex_dir, "--hardex-dir"),
                    "labels": parse_labels(label),
                    "live_view_port": live_view_port,
                },
            )
        except ConfigError as exc:
            typer.echo(f"edgeloop agent: {exc}", err=True)
            raise typer.Exit(2) from None

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await run_agent(settings, stop)

        try:
            asyncio.run(main())
        except OSError as exc:
            typer.echo(f"edgeloop agent: {exc}", err=True)
            raise typer.Exit(1) from None
