"""``edgeloop broker`` and ``edgeloop creds``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("broker")
    def broker(
        production: bool = typer.Option(
            False, "--production", help="TLS, per-node identities and the generated ACL."
        ),
        port: int | None = typer.Option(
            None, "--port", help="Listen port (default 1883, or 8883 with --production)."
        ),
        creds: Path | None = typer.Option(
            None, "--creds", help="Credentials directory made by `edgeloop creds` (production)."
        ),
        data: Path = typer.Option(
            Path("edgeloop-broker-data"),
            "--data",
            help="Directory for the broker's persistence file, rendered config and log.",
        ),
        password: bool = typer.Option(
            False, "--password", help="Production identities by user name + password over TLS."
        ),
        bind: str | None = typer.Option(
            None,
            "--bind",
            help="Listen address (default 127.0.0.1, or 0.0.0.0 with --production).",
        ),
    ) -> None:
        """Run a mosquitto broker in the foreground until Ctrl-C."""
        from mosquitto.config import ConfigError
        from mosquitto.creds import CredentialsError
        from mosquitto.launcher import BrokerError, run_foreground

        try:
            code = run_foreground(
                production=production,
                port=port,
                creds_dir=creds,
                data_dir=data,
                password_auth=password,
                bind=bind,
            )
        except (BrokerError, CredentialsError, ConfigError) as exc:
            typer.echo(f"edgeloop broker: {exc}", err=True)
            raise typer.Exit(1) from None
        raise typer.Exit(code)

    @app.command("creds")
    def creds(
        out: Path = typer.Option(..., "--out", help="Credentials directory (created or extended)."),
        node: list[str] = typer.Option(
            [], "--node", help="A node identity to add (repeat for several)."
        ),
        cloud_name: str = typer.Option("cloud", "--cloud-name", help="The cloud identity."),
        password: bool = typer.Option(
            False, "--password", help="Also give every identity a password (password mode)."
        ),
        server_name: list[str] = typer.Option(
            [],
            "--server-name",
            help="Host name or IP address the nodes use to reach the broker (repeatable).",
        ),
        revoke: list[str] = typer.Option(
            [], "--revoke", help="Withdraw a node: its certificate goes on the CRL."
        ),
    ) -> None:
        """Create or extend broker credentials: CA, server and per-identity certificates, ACL."""
        from mosquitto.creds import CredentialsError, generate_credentials, revoke_identity

        try:
            result = generate_credentials(
                out, node, cloud=cloud_name, passwords=password, server_names=server_name
            )
            for name in revoke:
                result = revoke_identity(out, name)
        except CredentialsError as exc:
            typer.echo(f"edgeloop creds: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"credentials in {result.directory}")
        typer.echo(f"  cloud identity: {result.cloud}")
        typer.echo(f"  nodes: {', '.join(result.nodes) or '(none)'}")
        if revoke:
            typer.echo(f"  revoked: {', '.join(revoke)} (restart the broker to apply)")
        typer.echo(f"  password file: {result.passwd or '(none, certificate identities)'}")
        typer.echo(
            f"copy {result.directory}/identities/<name>/ to each machine; "
            f"keep ca.key on this host only"
        )
