"""Messages on the local channel between a worker and its edge agent.

The channel is a websocket on the loopback (``EDGELOOP_CHANNEL``); every message is one JSON text
frame holding one of the models below, told apart by ``type``. It is local and short-lived, so
unlike the MQTT wire it uses JSON (readable in a browser's devtools) and base64 for the rare
binary payload (live-view JPEGs, a few KiB at a capped rate).

Worker -> agent: ``hello``, ``progress``, ``result``, ``stats``, ``hardex``, ``swapped``, ``frame``.
Agent -> worker: ``swap``, ``rollback``, ``view``, ``stop``.

Like the wire models, these are tolerant readers: unknown fields are ignored. A malformed
message raises :class:`protocol.errors.ProtocolError` naming the field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from protocol.errors import ProtocolError

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ChannelMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- worker -> agent ---------------------------------------------------------------------------


class Hello(ChannelMessage):
    """First message of a worker: who it is, so the agent can tie the socket to a task."""

    type: Literal["hello"] = "hello"
    task_id: str
    role: str = ""
    pid: int = 0
    model_version: str | None = None


class Progress(ChannelMessage):
    type: Literal["progress"] = "progress"
    fraction: Fraction
    message: str = ""


class Result(ChannelMessage):
    """The worker's result (the same dict it writes to ``EDGELOOP_RESULT``)."""

    type: Literal["result"] = "result"
    result: dict[str, JsonValue]


class Stats(ChannelMessage):
    """Periodic inference statistics, for node status and the live view."""

    type: Literal["stats"] = "stats"
    model_version: str | None = None
    frames: int = Field(ge=0)
    fps: float = Field(ge=0.0)
    hard_examples: int = Field(ge=0, default=0)
    extra: dict[str, JsonValue] = Field(default_factory=dict)


class HardExample(ChannelMessage):
    """A hard example saved under ``HE_SAVED_URL``: the raw frame and its JSON sidecar."""

    type: Literal["hardex"] = "hardex"
    image_path: str
    sidecar_path: str
    sha256: Sha256
    model_version: str | None = None


class Swapped(ChannelMessage):
    """Outcome of a ``swap`` or ``rollback``: ``ok`` false means the old model keeps serving."""

    type: Literal["swapped"] = "swapped"
    ok: bool
    version: str | None = None  # the version now serving
    previous: str | None = None
    error: str | None = None
    frame: int | None = None  # index of the first frame served by ``version``


class Frame(ChannelMessage):
    """One live-view frame: a small JPEG (base64) and the boxes drawn on it by the viewer."""

    type: Literal["frame"] = "frame"
    jpeg_b64: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    boxes: list[list[float]] = Field(default_factory=list)  # x1, y1, x2, y2, score, cls
    class_names: list[str] = Field(default_factory=list)
    model_version: str | None = None
    fps: float = 0.0
    frame_index: int = 0


# --- agent -> worker ---------------------------------------------------------------------------


class Swap(ChannelMessage):
    """Load this model beside the current one and serve it from the next frame."""

    type: Literal["swap"] = "swap"
    path: str
    version: str
    sha256: Sha256 | None = None
    #: run the model it replaces beside it on one frame in this many and report their
    #: agreement in ``stats`` (0: no comparison); a rollout's canaries ask for it
    shadow_every: int = Field(default=0, ge=0)


class Rollback(ChannelMessage):
    """Serve the previous model again (it stays loaded after a swap)."""

    type: Literal["rollback"] = "rollback"


class View(ChannelMessage):
    """Whether a live viewer is watching; frames are sent only while ``enabled``."""

    type: Literal["view"] = "view"
    enabled: bool
    max_fps: float = Field(default=5.0, gt=0.0, le=30.0)


class Stop(ChannelMessage):
    """Finish cleanly: write the result and exit."""

    type: Literal["stop"] = "stop"


WorkerMessage = Annotated[
    Hello | Progress | Result | Stats | HardExample | Swapped | Frame, Field(discriminator="type")
]
AgentMessage = Annotated[Swap | Rollback | View | Stop, Field(discriminator="type")]

_worker_adapter: TypeAdapter[Any] = TypeAdapter(WorkerMessage)
_agent_adapter: TypeAdapter[Any] = TypeAdapter(AgentMessage)


def encode(message: ChannelMessage) -> str:
    return message.model_dump_json()


def _decode(text: str | bytes, adapter: TypeAdapter[Any], side: str):
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{side} message is not JSON: {exc}") from exc
    if not isinstance(data, dict) or "type" not in data:
        raise ProtocolError(f"{side} message: type: missing")
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "type"
        raise ProtocolError(f"{side} message: {where}: {first['msg']}") from exc


def decode_worker_message(
    text: str | bytes,
) -> Hello | Progress | Result | Stats | HardExample | Swapped | Frame:
    """Parse what a worker sent (agent side)."""
    return _decode(text, _worker_adapter, "worker")


def decode_agent_message(text: str | bytes) -> Swap | Rollback | View | Stop:
    """Parse what the agent sent (worker side)."""
    return _decode(text, _agent_adapter, "agent")
