"""``edgeloop validate`` (check manifests offline, before applying them) and ``edgeloop data
import|check`` (the dataset index format: convert YOLO/COCO datasets, check an index)."""

from __future__ import annotations

from pathlib import Path

import typer

from protocol.classes import CLASS_NAMES

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

        Prints one Kind/namespace/name OK line per valid resource, naming the edgeloop
        extensions it uses (fields Sedna does not have, such as nodeNames, nodeSelector and
        blindSpotMining), and exits 1 if any document is invalid.
        """
        from protocol.manifest_yaml import read_files
        from protocol.manifests import IncrementalLearningJob as Job

        documents = read_files(manifest_sources(files, paths))
        failed = [document for document in documents if document.manifest is None]
        for document in documents:
            manifest = document.manifest
            if manifest is not None:
                extensions = manifest.extensions() if isinstance(manifest, Job) else []
                note = f" (edgeloop extension: {', '.join(extensions)})" if extensions else ""
                typer.echo(f"{'/'.join(manifest.key)} OK{note}")
            for line in document.error_lines():
                typer.echo(line, err=True)
        if failed:
            typer.echo(f"{len(failed)} of {len(documents)} documents invalid", err=True)
            raise typer.Exit(1)
        if not documents:
            typer.echo("no manifests found (only empty documents)", err=True)
            raise typer.Exit(1)

    data = typer.Typer(
        help="Dataset index tools: import from YOLO/COCO, check an index.", no_args_is_help=True
    )

    @data.command("import")
    def import_(
        source: Path = typer.Argument(..., help="YOLO folder, or COCO JSON file."),
        from_: str = typer.Option(..., "--from", help="yolo or coco."),
        out: Path = typer.Option(..., "--out", help="Index to write, e.g. DIR/data.txt."),
        class_names: str = typer.Option(
            ",".join(CLASS_NAMES), "--class-names", help="Target classes, as the job's class_names."
        ),
        classes: str = typer.Option(
            None,
            "--classes",
            help="YOLO: source class names, comma-separated (else classes.txt / data.yaml).",
        ),
        map_: list[str] = typer.Option(
            [], "--map", help="Source=target class name, repeatable, e.g. --map head=helmet-off."
        ),
        images: Path = typer.Option(
            None,
            "--images",
            help="COCO: folder that file_name is relative to (default: the JSON's folder).",
        ),
        copy: bool = typer.Option(
            True,
            "--copy/--no-copy",
            help="Copy images beside the index (default) or reference them in place.",
        ),
        append: bool = typer.Option(False, "--append", help="Append to an existing index."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    ) -> None:
        """Convert a YOLO or COCO dataset into the seed's index format."""
        from protocol.classes import parse_class_names
        from protocol.label_formats import import_coco, import_yolo, parse_name_map

        try:
            targets = parse_class_names(class_names)
            name_map = parse_name_map(map_)
            if from_ == "yolo":
                source_classes = parse_class_names(classes) if classes else None
                report = import_yolo(
                    source, out, targets, source_classes, name_map, copy, append, overwrite
                )
            elif from_ == "coco":
                report = import_coco(
                    source, out, images, targets, name_map, copy, append, overwrite
                )
            else:
                raise typer.BadParameter(f"--from must be yolo or coco, got {from_!r}")
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        for problem in report.problems[:20]:
            typer.echo(f"  {problem}", err=True)
        if len(report.problems) > 20:
            typer.echo(f"  ... and {len(report.problems) - 20} more", err=True)
        typer.echo(report.summary())

    @data.command("check")
    def check(
        index: Path = typer.Argument(..., help="The data.txt to check."),
        class_names: str = typer.Option(
            ",".join(CLASS_NAMES), "--class-names", help="The job's class_names."
        ),
    ) -> None:
        """Validate an index: every skipped line with its reason, and boxes per class."""
        import numpy as np

        from protocol.classes import parse_class_names
        from protocol.dataset_index import read_index

        try:
            names = parse_class_names(class_names)
            result = read_index(index, num_classes=len(names))
        except (ValueError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        for problem in result.problems:
            typer.echo(f"{index}:{problem.line_no}: {problem.reason}", err=True)
        counts = np.zeros(len(names), int)
        for sample in result.samples:
            counts += np.bincount(sample.boxes[:, 4], minlength=len(names))
        per_class = ", ".join(f"{name} {n}" for name, n in zip(names, counts.tolist()))
        typer.echo(
            f"{len(result.samples)} valid samples, {len(result.problems)} skipped lines; "
            f"boxes: {per_class}"
        )
        if result.problems:
            raise typer.Exit(1)

    app.add_typer(data, name="data")
