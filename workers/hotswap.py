"""In-process model hot-swap: a new model is loaded beside the running one and swapped in
between two frames.

The serving loop calls :meth:`ModelSlot.for_frame` once per frame. That is the only place the
serving model changes: a single check of a staged reference, no file polling, no timer. Loading
(sha256 check, read, warm-up) happens in a background thread, so the loop keeps serving the old
model meanwhile and no frame waits for the new one. After a swap the previous model stays
loaded, so a rollback is another reference swap, not a reload.

A model that fails to load (bad sha256, corrupt file, wrong shape) is reported through the
``on_result`` callback with ``ok=False``; the current model keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workers.export import file_sha256
from workers.predictor import Predictor, inference_threads

log = logging.getLogger(__name__)

#: ``loader(path, version) -> Predictor``; raises on an unusable model.
Loader = Callable[[Path, str], Predictor]


@dataclass(frozen=True)
class SwapOutcome:
    ok: bool
    version: str | None  # version serving after the event
    previous: str | None
    error: str | None = None
    frame: int | None = None  # first frame served by ``version`` (when ok)


class ModelSlot:
    """Holds the serving model, the previous one, and at most one staged replacement."""

    def __init__(
        self,
        current: Predictor,
        loader: Loader,
        on_result: Callable[[SwapOutcome], None] | None = None,
    ):
        self.current = current
        self.previous: Predictor | None = None
        self._loader = loader
        self._on_result = on_result
        self._staged: Predictor | None = None
        self._lock = threading.Lock()
        self._generation = 0  # newest request wins when several overlap
        self._loaders: list[threading.Thread] = []
        self.swaps = 0

    # -- requests (any thread)

    def request_swap(
        self, path: Path | str, version: str, sha256: str | None = None
    ) -> threading.Thread:
        """Start loading ``path`` in the background; it serves from the frame after it is warm."""
        with self._lock:
            self._generation += 1
            generation = self._generation
        thread = threading.Thread(
            target=self._load,
            args=(Path(path), version, sha256, generation),
            name=f"model-load-{version}",
            daemon=True,
        )
        self._loaders.append(thread)
        thread.start()
        return thread

    def request_rollback(self) -> None:
        """Serve the previous model from the next frame (it is still loaded)."""
        with self._lock:
            self._generation += 1
            if self.previous is None:
                error = "no previous model to roll back to"
            else:
                self._staged = self.previous
                return
        self._report(SwapOutcome(False, self.current.version, None, error))

    def _load(self, path: Path, version: str, sha256: str | None, generation: int) -> None:
        if inference_threads() == 1:
            _yield_to_the_stream()
        try:
            if sha256 is not None:
                actual = file_sha256(path) if path.is_file() else None
                if actual != sha256:
                    raise ValueError(
                        f"model file {path} does not match sha256 {sha256[:12]}... "
                        f"(is {actual[:12] + '...' if actual else 'missing'})"
                    )
            predictor = self._loader(path, version)
            predictor.warm()
        except Exception as exc:  # noqa: BLE001 - whatever is wrong, the old model serves on
            log.error("model %s not swapped in: %s", version, exc)
            self._report(SwapOutcome(False, self.current.version, None, str(exc)))
            return
        with self._lock:
            if generation != self._generation:
                log.info("model %s loaded but superseded by a newer request", version)
                return
            self._staged = predictor

    # -- the serving loop (one thread)

    def for_frame(self, frame_index: int | None = None) -> Predictor:
        """The model to use for this frame; swaps in a staged model first if there is one."""
        if self._staged is not None:  # the one check per frame; the lock is taken only on a swap
            with self._lock:
                staged, self._staged = self._staged, None
            if staged is not None and staged is not self.current:
                self.previous, self.current = self.current, staged
                self.swaps += 1
                self._report(
                    SwapOutcome(True, staged.version, self.previous.version, frame=frame_index)
                )
        return self.current

    def wait_loaders(self, timeout: float | None = None) -> None:
        """Join background loads (tests and shutdown)."""
        for thread in list(self._loaders):
            thread.join(timeout)

    def _report(self, outcome: SwapOutcome) -> None:
        if outcome.ok:
            log.info(
                "now serving model %s (previous %s) from frame %s",
                outcome.version,
                outcome.previous,
                outcome.frame,
            )
        if self._on_result is not None:
            try:
                self._on_result(outcome)
            except Exception:
                log.exception("swap result handler failed")


def _yield_to_the_stream() -> None:
    """Run the calling (loader) thread at the lowest CPU priority.

    On a small edge machine the serving loop and the frame reader keep every core busy; a loader
    at normal priority takes its share of a core in the middle of a frame and stretches the gap
    between two frames. At nice 19 it gets the time the stream leaves, so the swap costs the
    stream almost nothing and takes a little longer to become ready. Linux applies nice per
    thread; elsewhere this is a no-op. Only used when models run single-threaded (two cores or
    fewer): a multi-threaded model would create its thread pool here, and inherit the priority.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
