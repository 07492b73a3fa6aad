"""``edgeloop validate``: check manifests offline, before applying them."""

from __future__ import annotations

import typer

#: ``-f`` as kubectl has it; shared by the commands that take manifests.
FILES_HELP = "Manifest file, directory of .yaml/.yml/.json files, or - for stdin. Repeatable."
PATHS_HELP = "More manifest files or directories (so that a shell glob works after -f)."


def manifest_sources(files: list[str], paths: list[str] | None) -> list[str]:
    """The ``-f`` values and the positional paths, or exit 2 when there are none."""
    names = [*files, *(paths or [])]
    if not names:
        typer.echo("no manifests given: use -f FILE, a directory, or -f - for stdin", err=True)
        raise typer.Exit(2)
    return names


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        paths: list[str] = typer.Argument(None, help=PATHS_HELP),
        files: list[str] = typer.Option([], "-f", "--filename", help=FILES_HELP),
    ) -> None:
        """Check Dataset, Model and IncrementalLearningJob manifests and print every error.

        Prints one Kind/namespace/name OK line per valid resource and exits 1 if any document is
        invalid.
        """
        from protocol.manifest_yaml import read_files

        documents = read_files(manifest_sources(files, paths))
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
