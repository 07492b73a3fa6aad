"""The simulated camera: a local RTSP server fed by ``ffmpeg -re``, as the seed guide mocks it.

The seed pushes a video file to an RTSP server (EasyDarwin there; Debian's ``rtsp-server-perl``
here, its RTSP::Server module run with a free RTP port range) with ``ffmpeg -re``, and the
inference worker reads the stream. A domain shift is a new
file: ffmpeg is restarted on it (``-stream_loop -1``), the stream breaks, and the worker's video
source reopens it (workers/video.py). Readers use UDP transport and a 2 s socket timeout
(:data:`CAPTURE_OPTIONS`), so a switch costs a few seconds of stream, not OpenCV's default 30 s.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from demo.processes import Child, ProcessSet

RTSP_SERVER = "/usr/bin/rtsp-server-perl"
#: What ``rtsp-server-perl`` runs, with one change: its RTP ports start at the first argument.
#: The server resets its RTP start port to a package global (20000) whenever its last mount
#: goes, e.g. while ffmpeg restarts, so the ``--rtp_start_port`` option alone does not hold and
#: two demos on one machine would collide.
SERVER_SCRIPT = (
    "use AnyEvent; use RTSP::Server;"
    " $RTSP::Server::RTP_START_PORT = shift @ARGV;"
    " my $srv = RTSP::Server->new_with_options(rtp_start_port => $RTSP::Server::RTP_START_PORT);"
    " $srv->listen; AnyEvent->condvar->recv;"
)
#: For the reading side (the inference worker's environment): ``OPENCV_FFMPEG_CAPTURE_OPTIONS``.
CAPTURE_OPTIONS = "rtsp_transport;udp|timeout;2000000"
STREAM_PATH = "cam"


class CameraError(RuntimeError):
    """The camera mock cannot run (a missing program, a server that does not listen)."""


def missing_programs() -> list[str]:
    """Programs the camera mock needs that this machine lacks, with the package to install."""
    missing = []
    if not Path(RTSP_SERVER).is_file():
        missing.append(f"{RTSP_SERVER} (apt-get install rtsp-server-perl)")
    if shutil.which("ffmpeg") is None:
        missing.append("ffmpeg (apt-get install ffmpeg)")
    return missing


def free_rtp_base() -> int:
    """An even UDP port, free now, where the server's RTP listeners start (the server's own
    default, 20000, would collide with a second demo on the machine)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1] & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise CameraError("no free pair of UDP ports for RTP")


def _wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


@dataclass
class Camera:
    """One RTSP server and the ffmpeg process publishing to it."""

    processes: ProcessSet
    client_port: int
    source_port: int
    #: suffix of the processes' log names ("edge1": ``rtsp-server-edge1.log``), "" for none
    name: str = ""
    #: frames per second published (None: the video's own rate)
    fps: float | None = None
    server: Child | None = None
    publisher: Child | None = None
    playing: Path | None = None
    #: (time.time() when ffmpeg started on it, video file), in order
    switches: list[tuple[float, Path]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What readers open."""
        return f"rtsp://127.0.0.1:{self.client_port}/{STREAM_PATH}"

    @property
    def publish_url(self) -> str:
        return f"rtsp://127.0.0.1:{self.source_port}/{STREAM_PATH}"

    def start(self) -> None:
        missing = missing_programs()
        if missing:
            raise CameraError("the camera mock needs " + "; ".join(missing))
        self.server = self.processes.start(
            self._log_name("rtsp-server"),
            [
                "perl", "-e", SERVER_SCRIPT, str(free_rtp_base()),
                "--clientport", str(self.client_port),
                "--serverport", str(self.source_port),
                "--client_listen_address", "127.0.0.1",
                "--source_listen_address", "127.0.0.1",
            ],
            grace_s=3.0,
        )
        for port in (self.client_port, self.source_port):
            if not _wait_listening(port, 10.0):
                raise CameraError(
                    f"rtsp-server-perl does not listen on port {port}; see {self.server.log}"
                )

    def _log_name(self, program: str) -> str:
        return f"{program}-{self.name}" if self.name else program

    def play(self, video: Path) -> None:
        """Publish ``video`` in a loop at its own frame rate, replacing what played before."""
        if self.publisher is not None:
            self.processes.stop(self.publisher, grace_s=3.0)
        # a lower rate drops frames in ffmpeg; a key frame every second keeps a reader's (re)open
        # quick at any rate
        rate = ["-vf", f"fps={self.fps:g}", "-g", str(max(1, round(self.fps)))] \
            if self.fps else ["-g", "25"]
        self.publisher = self.processes.start(
            self._log_name("ffmpeg"),
            [
                "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
                "-re", "-stream_loop", "-1", "-i", str(video),
                "-an", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                *rate, "-pix_fmt", "yuv420p",
                "-f", "rtsp", self.publish_url,
            ],
            grace_s=3.0,
        )
        self.playing = video
        self.switches.append((time.time(), video))

    def wait_stream(self, timeout: float = 20.0) -> None:
        """Block until a reader gets a frame from the stream (the worker fails fast otherwise)."""
        import os

        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", CAPTURE_OPTIONS)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # "404" until ffmpeg publishes
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        import cv2

        time.sleep(1.0)  # ffmpeg needs a moment to announce the stream
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            capture = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG)
            try:
                if capture.isOpened() and capture.read()[0]:
                    return
            finally:
                capture.release()
            time.sleep(0.5)
        raise CameraError(f"no frame from {self.url} within {timeout:.0f} s; see the ffmpeg and "
                          "rtsp-server logs")
