"""Frames from any OpenCV source, decoded in a background thread.

A source is an RTSP/HTTP URL, a video file, or a camera index (``"0"``). Decoding runs in its own
thread (OpenCV releases the GIL while decoding) and hands frames over through a small bounded
queue, so decode of frame n+1 overlaps inference of frame n. The reader *blocks* when the queue
is full: every frame read is delivered, none is silently dropped. A live stream that the
consumer cannot keep up with therefore falls behind in the camera's own buffer, which is visible
as a lower processed FPS, rather than as frames that vanish.

Network streams that break are reopened with backoff; files end (or restart, with ``loop``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from edgeloop.backoff import Backoff

log = logging.getLogger(__name__)

_END = object()


class VideoSourceError(RuntimeError):
    """The source cannot be opened (bad path, unreachable stream, missing camera)."""


@dataclass(frozen=True)
class Frame:
    index: int  # 0-based, counts every frame delivered since the source started
    image: np.ndarray  # BGR uint8, as decoded
    timestamp: float  # time.time() when decoded
    prepared: np.ndarray | None = None  # ``prepare(image)`` when the source was given one


def parse_source(url: str) -> str | int:
    """A camera index as int (``"0"`` -> 0), anything else unchanged."""
    text = str(url).strip()
    if not text:
        raise VideoSourceError("video_url is empty; give an rtsp:// URL, a file or a camera index")
    return int(text) if text.isdigit() else text


def check_source(url: str) -> None:
    """Fail at once on a source that cannot be there (an empty URL, a missing file), before
    anything slow (loading the model) runs."""
    source = parse_source(url)
    if isinstance(source, str) and not is_stream(source) and not Path(source).is_file():
        raise VideoSourceError(f"video file {source} does not exist")


def is_stream(source: str | int) -> bool:
    return isinstance(source, str) and "://" in source


class VideoSource:
    """Iterate decoded frames of ``url``; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        url: str,
        loop: bool = False,
        queue_size: int = 4,
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
        realtime: bool = False,
    ):
        """``prepare`` runs on each frame in the decode thread (e.g. the resize to the model
        input), so that work too overlaps inference instead of adding to it.

        ``realtime`` delivers a file's frames at the file's own frame rate, as a camera would,
        instead of as fast as they decode (streams and cameras are paced by their source)."""
        self.url = str(url)
        self.prepare = prepare
        self.source = parse_source(url)
        self.loop = loop
        is_file_source = isinstance(self.source, str) and not is_stream(self.source)
        if is_file_source and not Path(self.source).is_file():
            raise VideoSourceError(f"video file {self.source} does not exist")
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._closed = threading.Event()
        self.frames_read = 0
        self.reopens = 0
        self.error: str | None = None
        self.source_fps: float = 0.0
        self._capture = self._open()  # fail fast, in the caller's thread
        self._pace = realtime and is_file_source and self.source_fps > 0
        self._thread = threading.Thread(target=self._run, name="video-decode", daemon=True)
        self._thread.start()

    def _open(self):
        import cv2

        capture = cv2.VideoCapture(self.source)
        if not capture.isOpened():
            capture.release()
            raise VideoSourceError(f"cannot open video source {self.url!r}")
        self.source_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        return capture

    def _put(self, item) -> bool:
        """Blocking put that still notices :meth:`close`."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        capture = self._capture
        interval = 1.0 / self.source_fps if self._pace else 0.0
        due = time.monotonic()
        try:
            while not self._closed.is_set():
                ok, image = capture.read() if capture is not None else (False, None)
                if ok:
                    backoff.reset()
                    if interval:
                        due = max(due + interval, time.monotonic() - interval)
                        if self._closed.wait(max(0.0, due - time.monotonic())):
                            break
                    prepared = self.prepare(image) if self.prepare is not None else None
                    frame = Frame(self.frames_read, image, time.time(), prepared)
                    if not self._put(frame):
                        break
                    self.frames_read += 1
                    continue
                if capture is not None:
                    capture.release()
                    capture = None
                if is_stream(self.source) or (self.loop and self.frames_read > 0):
                    if is_stream(self.source):
                        delay = backoff.next_delay()
                        log.warning("video source %s ended; reopening in %.1fs", self.url, delay)
                        if self._closed.wait(delay):
                            break
                    try:
                        capture = self._open()
                        self.reopens += 1
                    except VideoSourceError as exc:
                        log.warning("%s", exc)
                    continue
                break
        except Exception as exc:  # a decoder crash must end the stream visibly, not hang it
            self.error = f"video decode failed: {exc}"
            log.exception("video decode failed")
        finally:
            if capture is not None:
                capture.release()
            self._put(_END)

    def read(self) -> Frame | None:
        """The next frame, or None once the source has ended or :meth:`close` was called."""
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # later reads see the end too
            return None
        return item

    def __iter__(self):
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        """Stop decoding; a reader blocked in :meth:`read` (in any thread) gets None."""
        self._closed.set()
        self._thread.join(timeout=5.0)
        while True:  # make room for the end marker whatever the reader thread managed to do
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(_END)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
