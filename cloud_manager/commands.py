"""Commands that talk to the cloud manager's API: ``edgeloop apply`` (more to come)."""

from __future__ import annotations

import asyncio
import json

import typer

from edgeloop.connection import (
    BrokerUrl,
    CaFile,
    CertFile,
    ConnectionOptions,
    DEFAULT_BROKER,
    KeyFile,
    Password,
    Username,
)
from protocol.commands import FILES_HELP, PATHS_HELP, manifest_sources

#: Exit code when the broker or the cloud manager cannot be reached.
EXIT_UNREACHABLE = 3


def register(app: typer.Typer) -> None:
    @app.command("apply")
    def apply(
        paths: list[str] = typer.Argument(None, help=PATHS_HELP),
        files: list[str] = typer.Option([], "-f", "--filename", help=FILES_HELP),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Validate only; send nothing to the cloud manager."
        ),
        timeout: float = typer.Option(5.0, "--timeout", help="Seconds to wait for an answer."),
        broker: BrokerUrl = DEFAULT_BROKER,
        ca: CaFile = None,
        cert: CertFile = None,
        key: KeyFile = None,
        username: Username = None,
        password: Password = None,
    ) -> None:
        """Create or update resources from manifests, as ``kubectl apply -f`` does.

        Every manifest is validated first; nothing is sent unless all are valid.
        """
        from cloud_manager.api_client import call, new_request
        from edgeloop.mqtt import NotConnected, RequestTimeout
        from protocol.manifest_yaml import manifests_or_raise, read_files
        from protocol.manifests import ManifestError

        try:
            manifests = manifests_or_raise(read_files(manifest_sources(files, paths)))
        except ManifestError as exc:
            for line in exc.errors:
                typer.echo(line, err=True)
            raise typer.Exit(1) from None
        if dry_run:
            for manifest in manifests:
                typer.echo(f"{'/'.join(manifest.key)} valid (dry run: not applied)")
            return
        requests = [
            new_request(
                resource=manifest.kind,
                namespace=manifest.key[1],
                name=manifest.key[2],
                body=json.dumps(manifest.model_dump(mode="json", by_alias=True, exclude_unset=True)),
            )
            for manifest in manifests
        ]
        options = ConnectionOptions(broker, ca, cert, key, username, password)
        try:
            responses = asyncio.run(call(options, "apply", requests, timeout=timeout))
        except (NotConnected, RequestTimeout) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_UNREACHABLE) from None
        failed = False
        for manifest, response in zip(manifests, responses, strict=True):
            name = "/".join(manifest.key)
            if response.ok:
                typer.echo(f"{name} {response.message or 'applied'}")
            else:
                failed = True
                typer.echo(f"{name}: {response.message}", err=True)
                for line in response.errors:
                    typer.echo(f"  {line}", err=True)
        if failed:
            raise typer.Exit(1)
