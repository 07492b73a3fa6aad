"""The worker SDK: what a boot file (ours or a user's) uses to talk to the edge agent.

    from workers import sdk

    params = sdk.parameters("train")          # env + --flags, typed, with defaults
    sdk.report_progress(0.5, "epoch 3/6")
    sdk.write_result({"loss": 0.12})

Everything goes through one :class:`WorkerSession` per process. With ``EDGELOOP_CHANNEL`` set it
holds a websocket to the agent (a background thread with its own event loop, reconnecting with
backoff; messages wait in a bounded queue while disconnected, and a result, hard example or swap
outcome is never the one dropped). Without it the SDK works standalone and only logs, so a boot
file runs by hand exactly as under the agent.

Messages are the pydantic models of :mod:`protocol.worker_channel`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.backoff import Backoff
from protocol import worker_channel as wc
from protocol import worker_contract as contract
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)
#: How progress appears in a worker's log, for whoever runs a boot file without an agent.
PROGRESS_LOG = "progress %3.0f%% %s"
_PROGRESS_LINE = re.compile(r"\bprogress +(\d{1,3})% (.*)$")


def parse_progress_line(line: str) -> tuple[float, str] | None:
    """(fraction, message) of a progress line of a worker's log, None for any other line."""
    found = _PROGRESS_LINE.search(line.rstrip("\n"))
    return (int(found.group(1)) / 100, found.group(2).strip()) if found else None

#: Messages kept while the channel is down; beyond it the oldest droppable one goes.
MAX_PENDING = 1000
_DROPPABLE = (wc.Progress, wc.Stats, wc.Frame)
#: Longest side of a live-view frame.
VIEW_MAX_SIDE = 640
VIEW_JPEG_QUALITY = 70


# --- parameters --------------------------------------------------------------------------------


class ParameterError(ValueError):
    """A parameter (environment variable or flag) has a value that cannot be used."""


class Parameters:
    """Typed, read-only view of a worker's parameters: ``--flags`` over environment over defaults.

    Known parameters (``protocol.worker_contract.PARAMETERS``) have typed properties; any other
    key a manifest sets is reachable with :meth:`get`, :meth:`int`, :meth:`float`, :meth:`bool`.
    """

    def __init__(self, values: Mapping[str, str], role: contract.Role | None = None):
        self._values = dict(values)
        self.role = role
        try:
            self.env = contract.WorkerEnvironment.from_env(self._values)
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._values.get(name)
        if value is None or value == "":
            for info in contract.PARAMETERS:
                if info.name == name and info.default is not None and default is None:
                    return info.default
            return default
        return value

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise ParameterError(f"{name} is required (environment variable or --{name})")
        return value

    def int(self, name: str, default: int | None = None, minimum: int | None = None) -> int | None:
        text = self.get(name)
        if text is None:
            return default
        try:
            value = int(text.strip())
        except ValueError:
            raise ParameterError(f"{name}={text!r} is not an integer") from None
        if minimum is not None and value < minimum:
            raise ParameterError(f"{name}={value} must be >= {minimum}")
        return value

    def float(
        self,
        name: str,
        default: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float | None:
        text = self.get(name)
        if text is None:
            return default
        try:
            value = float(text.strip())
        except ValueError:
            raise ParameterError(f"{name}={text!r} is not a number") from None
        if (
            math.isnan(value)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
        ):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ParameterError(f"{name}={value} must be {bounds}")
        return value

    def bool(self, name: str, default: bool = False) -> bool:
        text = self.get(name)
        if text is None:
            return default
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ParameterError(f"{name}={text!r} is not a boolean (use 1/0, true/false)")

    # Typed known parameters.

    @property
    def input_shape(self) -> tuple[int, int]:
        from workers.detector import parse_input_shape

        try:
            return parse_input_shape(self.require("input_shape"))
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc

    @property
    def class_names(self) -> tuple[str, ...]:
        from protocol.classes import parse_class_names

        try:
            return parse_class_names(self.require("class_names"))
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc

    @property
    def obj_threshold(self) -> float:
        return self.float("obj_threshold", minimum=0.0, maximum=1.0)  # type: ignore[return-value]

    @property
    def nms_threshold(self) -> float:
        return self.float("nms_threshold", minimum=0.0, maximum=1.0)  # type: ignore[return-value]

    @property
    def threads(self) -> int | None:
        return self.int("threads", minimum=0) or None

    def as_dict(self) -> dict[str, str]:
        """Known parameters with their effective values (for logs and results)."""
        return {
            p.name: value
            for p in contract.PARAMETERS
            if (self.role is None or self.role in p.roles)
            and (value := self.get(p.name)) is not None
        }


def parse_flags(argv: Sequence[str]) -> dict[str, str]:
    """``--key value`` and ``--key=value`` pairs; dashes in keys may stand for underscores."""
    out: dict[str, str] = {}
    known = {p.name for p in contract.PARAMETERS} | set(contract.LOCATION_VARIABLES)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ParameterError(
                f"unexpected argument {arg!r}; parameters are given as --name value"
            )
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(argv):
                raise ParameterError(f"--{key} needs a value")
            value = argv[i + 1]
            i += 1
        if key not in known and key.replace("-", "_") in known:
            key = key.replace("-", "_")
        out[key] = value
        i += 1
    return out


def help_text(role: contract.Role, script: str, description: str = "") -> str:
    lines = [f"usage: python {script} [--name value ...]", ""]
    if description:
        lines += [description, ""]
    lines.append("Parameters (environment variable of the same name, or --name value):")
    for p in contract.parameters_for(role):
        default = f" [default: {p.default}]" if p.default is not None else ""
        lines.append(f"  --{p.name:<20} {p.help}{default}")
    lines += ["", "Injected by the edge agent (also accepted as --NAME value):"]
    for name in contract.FLAG_VARIABLES:
        lines.append(f"  --{name}")
    lines.append(f"  {contract.CHANNEL} (environment only: the agent's local channel)")
    return "\n".join(lines)


def parameters(
    role: contract.Role | None = None,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    description: str = "",
) -> Parameters:
    """The worker's parameters. ``argv`` defaults to ``sys.argv[1:]``; ``--help`` prints the
    known parameters of ``role`` and exits. Flags override the environment."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(help_text(role or "inference", Path(sys.argv[0]).name, description))
        raise SystemExit(0)
    values = dict(os.environ if environ is None else environ)
    values.update(parse_flags(argv))
    return Parameters(values, role)


# --- channel -----------------------------------------------------------------------------------


class WorkerSession:
    """This process's link to the agent (or a logger when there is none)."""

    def __init__(
        self,
        channel_url: str | None = None,
        task_id: str = "",
        role: str = "",
        result_path: str | None = None,
        model_version: str | None = None,
    ):
        self.channel_url = channel_url
        self.task_id = task_id
        self.role = role
        self.result_path = Path(result_path) if result_path else None
        self.model_version = model_version
        self.view_enabled = False
        self.view_max_fps = 5.0
        self.stop_requested = threading.Event()
        self._last_frame_sent = 0.0
        self._handlers: dict[str, list[Callable[[Any], None]]] = {}
        self._unheard: dict[str, Any] = {}
        self._pending: deque[wc.ChannelMessage] = deque()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        if channel_url:
            self._thread = threading.Thread(
                target=self._run_loop, name="edgeloop-channel", daemon=True
            )
            self._thread.start()

    @classmethod
    def from_env(cls, role: str = "", environ: Mapping[str, str] | None = None) -> WorkerSession:
        env = os.environ if environ is None else environ
        return cls(
            channel_url=env.get(contract.CHANNEL) or None,
            task_id=env.get(contract.TASK_ID, ""),
            role=role,
            result_path=env.get(contract.RESULT) or None,
            model_version=env.get(contract.MODEL_VERSION) or None,
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- subscriptions

    def subscribe(self, message_type: str, handler: Callable[[Any], None]) -> None:
        """Call ``handler(message)`` for each agent message of ``message_type`` (``swap``,
        ``rollback``, ``view``, ``stop``). Handlers run on the channel thread: keep them short."""
        if message_type not in ("swap", "rollback", "view", "stop"):
            raise ValueError(f"unknown agent message type {message_type!r}")
        with self._lock:
            self._handlers.setdefault(message_type, []).append(handler)
            unheard = self._unheard.pop(message_type, None)
        if unheard is not None:
            self._call(handler, unheard)

    def _dispatch(self, message) -> None:
        if isinstance(message, wc.View):
            self.view_enabled = message.enabled
            self.view_max_fps = message.max_fps
        elif isinstance(message, wc.Stop):
            self.stop_requested.set()
        with self._lock:
            handlers = list(self._handlers.get(message.type, []))
            if not handlers:
                # A worker subscribes once its model is loaded; a swap sent before that must
                # not vanish. The latest message of each type waits for the first subscriber.
                self._unheard[message.type] = message
        for handler in handlers:
            self._call(handler, message)

    @staticmethod
    def _call(handler: Callable[[Any], None], message: Any) -> None:
        try:
            handler(message)
        except Exception:  # a faulty handler must not kill the channel
            log.exception("handler for %s failed", message.type)

    # -- sending

    def send(self, message: wc.ChannelMessage) -> None:
        if not self.channel_url:
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._drop_one()
            self._pending.append(message)
        self._poke()

    def _drop_one(self) -> None:
        for i, queued in enumerate(self._pending):
            if isinstance(queued, _DROPPABLE):
                del self._pending[i]
                return
        log.warning("agent channel backlog full; dropping the oldest message")
        self._pending.popleft()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop already closed
                pass

    def report_progress(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        log.info(PROGRESS_LOG, fraction * 100, message)
        self.send(wc.Progress(fraction=fraction, message=message))

    def write_result(self, result: Mapping[str, Any]) -> Path | None:
        """Write the JSON result to ``EDGELOOP_RESULT`` (atomically) and send it to the agent."""
        document = json.loads(json.dumps(result, default=_json_default))
        path = self.result_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(document, indent=2))
            os.replace(tmp, path)
        else:
            log.info("result: %s", json.dumps(document))
        self.send(wc.Result(result=document))
        return path

    def report_stats(self, frames: int, fps: float, hard_examples: int = 0, **extra: Any) -> None:
        self.send(
            wc.Stats(
                model_version=self.model_version,
                frames=frames,
                fps=max(0.0, fps),
                hard_examples=hard_examples,
                extra=json.loads(json.dumps(extra, default=_json_default)),
            )
        )

    def emit_hard_example(
        self, image_path: Path | str, sidecar_path: Path | str, sha256: str
    ) -> None:
        self.send(
            wc.HardExample(
                image_path=str(image_path),
                sidecar_path=str(sidecar_path),
                sha256=sha256,
                model_version=self.model_version,
            )
        )

    def report_swapped(
        self,
        ok: bool,
        version: str | None,
        previous: str | None,
        error: str | None = None,
        frame: int | None = None,
    ) -> None:
        if ok:
            self.model_version = version
        self.send(wc.Swapped(ok=ok, version=version, previous=previous, error=error, frame=frame))

    def wants_frame(self) -> bool:
        """True when a viewer is watching and the frame-rate cap allows another frame now."""
        return self.view_enabled and (
            time.monotonic() - self._last_frame_sent >= 1.0 / self.view_max_fps
        )

    def send_frame(
        self,
        image_bgr: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        class_names: Sequence[str],
        fps: float = 0.0,
        frame_index: int = 0,
    ) -> bool:
        """Send a small live-view JPEG with its boxes, if :meth:`wants_frame`; True if sent."""
        import cv2

        if not self.wants_frame():
            return False
        self._last_frame_sent = time.monotonic()
        h, w = image_bgr.shape[:2]
        scale = min(1.0, VIEW_MAX_SIDE / max(h, w))
        small = (
            cv2.resize(image_bgr, (round(w * scale), round(h * scale))) if scale < 1 else image_bgr
        )
        ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, VIEW_JPEG_QUALITY])
        if not ok:
            return False
        rows = [
            [*(float(v) * scale for v in box), float(s), float(c)]
            for box, s, c in zip(boxes, scores, classes)
        ]
        self.send(
            wc.Frame(
                jpeg_b64=base64.b64encode(jpeg.tobytes()).decode(),
                width=small.shape[1],
                height=small.shape[0],
                boxes=rows,
                class_names=list(class_names),
                model_version=self.model_version,
                fps=fps,
                frame_index=frame_index,
            )
        )
        return True

    # -- the channel thread

    def _run_loop(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("agent channel thread ended")

    async def _main(self) -> None:
        from websockets.asyncio.client import connect

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        backoff = Backoff(initial=0.2, maximum=5.0)
        while not self._closing:
            delay = backoff.next_delay()
            try:
                async with connect(self.channel_url, open_timeout=5, max_size=2**22) as ws:
                    hello = wc.Hello(
                        task_id=self.task_id,
                        role=self.role,
                        pid=os.getpid(),
                        model_version=self.model_version,
                    )
                    await ws.send(wc.encode(hello))
                    self._connected.set()
                    backoff.reset()
                    await self._pump(ws)
            except Exception as exc:  # noqa: BLE001 - any failure of the link: log, retry
                if self._closing:
                    break
                log.warning("agent channel %s: %s; retrying in %.1fs", self.channel_url, exc, delay)
            finally:
                self._connected.clear()
            if self._closing:
                break
            await asyncio.sleep(delay)

    async def _pump(self, ws) -> None:
        receiver = asyncio.create_task(self._receive(ws))
        try:
            while True:
                while True:
                    with self._lock:
                        message = self._pending[0] if self._pending else None
                    if message is None:
                        break
                    await ws.send(wc.encode(message))
                    with self._lock:
                        if self._pending and self._pending[0] is message:
                            self._pending.popleft()
                if self._closing:
                    await ws.close()
                    return
                if receiver.done():
                    receiver.result()  # re-raise why the connection ended
                    return
                assert self._wake is not None
                self._wake.clear()
                wake = asyncio.create_task(self._wake.wait())
                await asyncio.wait({wake, receiver}, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
        finally:
            receiver.cancel()

    async def _receive(self, ws) -> None:
        async for text in ws:
            try:
                message = wc.decode_agent_message(text)
            except ProtocolError as exc:
                log.warning("ignoring bad message from the agent: %s", exc.reason)
                continue
            self._dispatch(message)
        raise ConnectionError("agent closed the channel")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued messages are sent (or ``timeout``); True if none are left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            if not self.channel_url or self._thread is None or not self._thread.is_alive():
                break
            time.sleep(0.01)
        with self._lock:
            return not self._pending

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued, then close the channel."""
        if self.channel_url:
            self.flush(timeout)
        self._closing = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --- module-level convenience: one session per process -----------------------------------------

_session: WorkerSession | None = None
_session_lock = threading.Lock()


def session(role: str = "") -> WorkerSession:
    """This process's session, created from the environment on first use."""
    global _session
    with _session_lock:
        if _session is None:
            _session = WorkerSession.from_env(role)
        return _session


def _session_for(role: str, argv: Sequence[str]) -> WorkerSession:
    """This process's session, where injected names given as flags (``--EDGELOOP_RESULT f`` in a
    run by hand) count as the environment, as ``--help`` promises."""
    global _session
    try:
        flags = parse_flags(argv)
    except ParameterError:
        flags = {}  # reported by parameters() inside run's error handling
    with _session_lock:
        if _session is None:
            _session = WorkerSession.from_env(role, os.environ | flags)
        return _session


def report_progress(fraction: float, message: str = "") -> None:
    session().report_progress(fraction, message)


def write_result(result: Mapping[str, Any]) -> Path | None:
    return session().write_result(result)


def report_stats(frames: int, fps: float, hard_examples: int = 0, **extra: Any) -> None:
    session().report_stats(frames, fps, hard_examples, **extra)


def emit_hard_example(image_path: Path | str, sidecar_path: Path | str, sha256: str) -> None:
    session().emit_hard_example(image_path, sidecar_path, sha256)


def on_swap(handler: Callable[[wc.Swap], None]) -> None:
    session().subscribe("swap", handler)


def on_rollback(handler: Callable[[wc.Rollback], None]) -> None:
    session().subscribe("rollback", handler)


def on_stop(handler: Callable[[wc.Stop], None]) -> None:
    session().subscribe("stop", handler)


def close(timeout: float = 5.0) -> None:
    global _session
    with _session_lock:
        if _session is not None:
            _session.close(timeout)
            _session = None


def run(
    role: contract.Role,
    body: Callable[[Parameters, WorkerSession], Mapping[str, Any]],
    description: str = "",
    argv: Sequence[str] | None = None,
) -> int:
    """Run a boot file's ``body(params, session) -> result`` with the contract's error handling.

    The result (with ``"status": "completed"``) is written to ``EDGELOOP_RESULT`` and sent to the
    agent. Bad parameters or input end with exit code 2 and a result ``{"status": "failed",
    "error": ...}`` naming the problem; any other failure with exit code 1 and the same shape.
    Returns the exit code (the boot file passes it to ``sys.exit``).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("EDGELOOP_LOG", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        parameters(role, argv, description=description)  # prints and exits
    current = _session_for(role, argv)
    code = contract.EXIT_OK
    try:
        params = parameters(role, argv, description=description)
        result = dict(body(params, current))
        result.setdefault("status", "completed")
    except (ParameterError, ValueError, FileNotFoundError) as exc:
        log.error("%s failed: %s", role, exc)
        result, code = {"status": "failed", "error": str(exc)}, contract.EXIT_BAD_INPUT
    except Exception as exc:
        log.exception("%s failed", role)
        result, code = (
            {"status": "failed", "error": f"{type(exc).__name__}: {exc}"},
            contract.EXIT_FAILED,
        )
    current.write_result(result)
    close()
    return code
