"""In-process model hot-swap: a new model is loaded beside the running one and swapped in
between two frames.

The serving loop calls :meth:`ModelSlot.for_frame` once per frame. That is the only place the
serving model changes: a single check of a staged reference, no file polling, no timer. Loading
(sha256 check, read, and a warm-up for models that need one) happens in a background thread, so
the loop keeps serving the old model meanwhile and no frame waits for the new one. After a swap
the previous model stays loaded, so a rollback is another reference swap, not a reload. The model
a swap retires (the one before the previous) is released by a background thread: tearing down an
interpreter holds the GIL for about half a millisecond, which the stream should not pay.

A model that fails to load (bad sha256, corrupt file, wrong shape) is reported through the
``on_result`` callback with ``ok=False``; the current model keeps serving. A LiteRT model is not
warmed up (see :attr:`workers.predictor.Predictor.warm_before_serving`), so its first real frame
is its first run: if that fails, the loop hands it back with :meth:`ModelSlot.reject` and the
previous model serves again, that frame included.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeloop.checksum import file_sha256
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
        self._untried: Predictor | None = None  # swapped in, its first frame not done yet
        self._retiring: Predictor | None = None  # released once ``_untried`` has served
        self.swaps = 0

    # -- requests (any thread)

    def request_swap(
        self, path: Path | str, version: str, sha256: str | None = None
    ) -> threading.Thread:
        """Start loading ``path`` in the background; it serves from the frame after it is warm."""
        with self._lock:
            self._generation += 1
            generation = self._generation
        _start_releaser()
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
        try:
            if sha256 is not None:
                actual = file_sha256(path) if path.is_file() else None
                if actual != sha256:
                    raise ValueError(
                        f"model file {path} does not match sha256 {sha256[:12]}... "
                        f"(is {actual[:12] + '...' if actual else 'missing'})"
                    )
            predictor = self._loader(path, version)
            if predictor.warm_before_serving:
                if inference_threads() == 1:
                    _yield_to_the_stream()
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
        """The model to use for this frame; swaps in a staged model first if there is one.

        Calling it again means the frame before was served: a newly swapped-in model has then
        proven itself and the model it displaced from ``previous`` can go.
        """
        if self._untried is not None:
            self._untried = None
            _release(self._retiring)
            self._retiring = None
        if self._staged is not None:  # the one check per frame; the lock is taken only on a swap
            with self._lock:
                staged, self._staged = self._staged, None
            if staged is not None and staged is not self.current:
                retiring = self.previous
                self.previous, self.current = self.current, staged
                self.swaps += 1
                if staged is not retiring:  # a fresh load, not a rollback
                    self._untried, self._retiring = staged, retiring
                self._report(
                    SwapOutcome(True, staged.version, self.previous.version, frame=frame_index)
                )
        return self.current

    def reject(self, model: Predictor, error: str, frame_index: int | None = None) -> bool:
        """Put the previous model back when ``model``, just swapped in, failed its first frame.

        Returns False (nothing changed) when ``model`` is not such a model: the failure is then
        not a bad new model, and the caller decides what it means.
        """
        if model is not self._untried or self.previous is None:
            return False
        self.current, self.previous = self.previous, self._retiring
        self._untried = self._retiring = None
        self.swaps -= 1
        _release(model)
        message = f"model {model.version} failed on its first frame: {error}"
        log.error("%s; serving %s again", message, self.current.version)
        self._report(SwapOutcome(False, self.current.version, None, message, frame=frame_index))
        return True

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


_retired: queue.SimpleQueue[Predictor] = queue.SimpleQueue()
_releaser_lock = threading.Lock()
_releaser: threading.Thread | None = None


def _start_releaser() -> None:
    """Start (once per process) the thread that drops retired models; called off the loop."""
    global _releaser
    with _releaser_lock:
        if _releaser is None:
            _releaser = threading.Thread(target=_release_forever, name="model-release", daemon=True)
            _releaser.start()


def _release_forever() -> None:
    while True:
        predictor = _retired.get()
        log.debug("released model %s", predictor.version)
        del predictor  # the last reference: the interpreter is torn down on this thread


def _release(predictor: Predictor | None) -> None:
    """Hand a model no longer needed to the releasing thread (cheap on the serving loop)."""
    if predictor is not None:
        if _releaser is None:
            _start_releaser()
        _retired.put(predictor)


def _yield_to_the_stream() -> None:
    """Run the calling (loader) thread at the lowest CPU priority.

    On a small edge machine the serving loop and the frame reader keep every core busy; a loader
    at normal priority takes its share of a core in the middle of a frame and stretches the gap
    between two frames. At nice 19 it gets the time the stream leaves, so the swap costs the
    stream almost nothing and takes a little longer to become ready. Linux applies nice per
    thread; elsewhere this is a no-op. Only used for a long warm-up (a Keras graph trace) when
    models run single-threaded (two cores or fewer). Not for the short LiteRT load: a thread
    at nice 19 that is preempted while it holds the GIL makes the serving loop wait for it.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
