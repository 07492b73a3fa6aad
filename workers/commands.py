"""CLI for the data side of the workers: ``edgeloop synth`` and ``edgeloop data import|check``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from workers.classes import CLASS_NAMES


def _parse_size(value: str) -> tuple[int, int]:
    width, sep, height = value.lower().partition("x")
    try:
        size = (int(width), int(height)) if sep else None
    except ValueError:
        size = None
    if size is None or size[0] <= 0 or size[1] <= 0:
        raise typer.BadParameter(f"{value!r} is not a size like 640x360")
    return size


def _parse_schedule(value: str) -> list[tuple[str, float]]:
    """``day:20,night:30`` -> [("day", 20.0), ("night", 30.0)]."""
    schedule = []
    for part in value.split(","):
        domain, sep, seconds = part.strip().partition(":")
        try:
            schedule.append((domain.strip(), float(seconds)))
        except ValueError:
            raise typer.BadParameter(
                f"schedule entry {part!r} must look like domain:seconds"
            ) from None
        if not sep:
            raise typer.BadParameter(f"schedule entry {part!r} must look like domain:seconds")
    return schedule


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Option(
            ..., "--out", help="Output folder (images/ and the index go here)."
        ),
        count: int = typer.Option(100, "--count", min=0, help="Number of images."),
        domain: str = typer.Option("day", "--domain", help="day, night, new-colors or fog."),
        seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
        size: str = typer.Option(
            None, "--size", help="WxH; default 640x360 (images), 1280x720 (video)."
        ),
        video: float = typer.Option(
            None, "--video", help="Render a video of this many seconds instead of images."
        ),
        schedule: str = typer.Option(
            None, "--schedule", help="Video of several shots, e.g. day:20,night:30."
        ),
        fps: int = typer.Option(25, "--fps", min=1, help="Video frame rate."),
        index_name: str = typer.Option(
            "data.txt", "--index-name", help="Index file name inside --out."
        ),
        append: bool = typer.Option(
            False, "--append", help="Add to an existing dataset instead of replacing its index."
        ),
    ) -> None:
        """Generate synthetic construction-site scenes with exact labels.

        Writes images + data.txt, or with --video/--schedule an mp4 + .gt.jsonl.
        """
        from workers import synth as synth_module

        if video is not None or schedule is not None:
            shots = _parse_schedule(schedule) if schedule else [(domain, float(video))]
            dims = _parse_size(size) if size else (1280, 720)
            name = "-".join(d for d, _ in shots)
            path = Path(out) / f"{name}-s{seed}.mp4"
            started = time.perf_counter()
            try:
                synth_module.render_video(path, shots, seed=seed, fps=fps, size=dims)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
            frames = sum(round(s * fps) for _, s in shots)
            elapsed = time.perf_counter() - started
            typer.echo(
                f"wrote {path} ({frames} frames, {frames / elapsed:.1f} frames/s) "
                f"and {path.with_suffix('.gt.jsonl')}"
            )
            return
        dims = _parse_size(size) if size else (640, 360)
        started = time.perf_counter()
        try:
            index = synth_module.generate_dataset(
                Path(out), count, domain, seed, dims, index_name, append
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        elapsed = time.perf_counter() - started
        rate = count / elapsed if elapsed > 0 else float("inf")
        typer.echo(
            f"wrote {count} {domain} images to {index.parent / 'images'} and {index} "
            f"({rate:.1f} images/s)"
        )

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
        from workers.classes import parse_class_names
        from workers.importers import import_coco, import_yolo, parse_name_map

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

        from workers.classes import parse_class_names
        from workers.dataset import read_index

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
