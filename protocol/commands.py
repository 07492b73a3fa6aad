"""``edgeloop validate``: check manifests offline, before applying them."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        paths: list[str] = typer.Argument(
            None, help="More manifest files or directories (so that a shell glob works after -f)."
        ),
        files: list[str] = typer.Option(
            [],
            "-f",
            "--filename",
            help="Manifest file, directory of .yaml/.yml/.json files, or - for stdin. Repeatable.",
        ),
    ) -> None:
        """Check Dataset, Model and IncrementalLearningJob manifests and print every error.

        Prints one Kind/namespace/name OK line per valid resource and exits 1 if any document is
        invalid.
        """
        from protocol.manifest_yaml import (
            LoadedDocument,
            mark_duplicates,
            read_documents,
            read_path,
        )

        names = [*files, *(paths or [])]
        if not names:
            typer.echo("nothing to validate: give -f FILE, a directory or -f - (stdin)", err=True)
            raise typer.Exit(2)
        documents: list[LoadedDocument] = []
        seen: set[Path] = set()
        for name in names:
            if name == "-":
                documents.extend(read_documents(sys.stdin.read(), "<stdin>"))
            else:
                documents.extend(read_path(name, seen))
        mark_duplicates(documents)

        failed = [document for document in documents if document.manifest is None]
        for document in documents:
            if document.manifest is not None:
                typer.echo(f"{'/'.join(document.manifest.key)} OK")
            for line in document.error_lines():
                typer.echo(line, err=True)
        if failed:
            typer.echo(f"{len(failed)} of {len(documents)} documents invalid", err=True)
            raise typer.Exit(1)
        if not documents:
            typer.echo("no manifests found (only empty documents)", err=True)
            raise typer.Exit(1)
