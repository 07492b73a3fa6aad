"""``edgeloop demo`` (the whole helmet loop on one machine, docs/demo.md) and ``edgeloop synth``
(the synthetic scenes it plays)."""

from __future__ import annotations

import time
from pathlib import Path

import typer


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
    @app.command("demo")
    def demo(
        workdir: Path = typer.Option(Path("demo-workdir"), "--workdir",
                                     help="Where everything goes (cache kept between runs)."),
        fast: bool = typer.Option(False, "--fast", help="Tiny sizes: the same path in minutes."),
        live_view_port: int = typer.Option(
            8080, "--live-view-port", help="Port of edge0's live view page (0: any free port)."),
        deadline: float = typer.Option(
            None, "--deadline", min=60, show_default=False,
            help="Seconds the loop may take before the demo gives up (default 1800 with --fast, "
                 "5400 without, 14400 with --annotator browser); a slow machine may need more."),
        annotator: str = typer.Option(
            "simulated", "--annotator",
            help="Who labels the hard examples: simulated (the demo's annotator, from the "
                 "videos' ground truth) or browser (you, in the labelling console the demo "
                 "starts on loopback; the terminal says where and prints a password)."),
        console_port: int = typer.Option(
            8090, "--console-port", min=0, max=65535,
            help="Port of the labelling console with --annotator browser (0: any free port)."),
    ) -> None:
        """Run the seed's helmet loop on one machine: broker, cloud, agents cloud0 and edge0,
        an RTSP camera, a simulated annotator; two rounds of learning and a report."""
        from edgeloop.cli import require_extra

        if annotator not in ("simulated", "browser"):
            raise typer.BadParameter(f"{annotator!r}: use simulated or browser",
                                     param_hint="--annotator")
        require_extra("demo", "tensorflow", "cv2", "matplotlib")
        if annotator == "browser":
            require_extra("console", "starlette", "uvicorn", "itsdangerous")
        from demo.run import DemoSettings, run_demo

        code = run_demo(DemoSettings(workdir=workdir, fast=fast, live_view_port=live_view_port,
                                     deadline=deadline, annotator=annotator,
                                     console_port=console_port))
        raise typer.Exit(code)

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
        from demo import scenes as synth_module

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
