"""msgpack codec for :mod:`protocol.messages`.

``encode`` refuses a payload over the size limit *before* anything reaches a broker;
``decode(topic, payload)`` returns the typed message the topic carries or raises
:class:`ProtocolError`, and nothing else, whatever the bytes are.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
from pydantic import ValidationError

from protocol.errors import ProtocolError
from protocol.messages import MESSAGE_FOR_KIND, SCHEMA_VERSION, ApiRequest, Message
from protocol.topics import Kind, Route, parse

#: Largest payload a client publishes. The brokers' ``max_packet_size`` is set above it, so an
#: oversize message is refused by the sender with a clear error instead of a dropped connection.
DEFAULT_MAX_PAYLOAD = 4 * 1024 * 1024

# msgpack map markers: fixmap 0x80-0x8f, map16 0xde, map32 0xdf.
_MSGPACK_MAP_FIRST_BYTES = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


class PayloadTooLarge(ProtocolError):
    """An encoded message is over the configured limit; nothing was published."""


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.2f} MiB"


def encode(message: Message, max_size: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Serialise ``message``; binary fields become msgpack ``bin``."""
    payload = msgpack.packb(message.model_dump(mode="python"), use_bin_type=True)
    if len(payload) > max_size:
        raise PayloadTooLarge(
            f"{message.kind.value}: payload of {len(payload)} bytes ({_mib(len(payload))}) is over "
            f"the {max_size} byte ({_mib(max_size)}) limit; not published"
        )
    return payload


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """One line naming each bad field: ``sidecar.boxes.0: List should have at least 4 items``."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "message"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    extra = len(exc.errors()) - limit
    if extra > 0:
        parts.append(f"... and {extra} more")
    return "; ".join(parts)


def _unpack(payload: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types for bad input; all mean the same
        raise ProtocolError(f"payload: not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"payload: expected a msgpack map, got {type(obj).__name__}")
    return obj


def _text_apply_request(route: Route, payload: bytes) -> ApiRequest:
    """A manifest published as plain YAML/JSON text (``mosquitto_pub -f job.yaml``)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload: neither msgpack nor UTF-8 text ({exc})") from None
    request_id = "text-" + hashlib.sha256(payload).hexdigest()[:32]
    return ApiRequest(request_id=request_id, verb=route.verb or "", body=text)


def decode(topic: str, payload: bytes | bytearray | memoryview,
           max_size: int = DEFAULT_MAX_PAYLOAD) -> Message:
    """Return the message ``payload`` holds for ``topic``, or raise :class:`ProtocolError`."""
    try:
        return _decode(topic, payload, max_size)
    except ProtocolError:
        raise
    except Exception as exc:  # the contract: nothing but ProtocolError escapes
        raise ProtocolError(f"payload: cannot be decoded ({type(exc).__name__}: {exc})") from None


def _decode(topic: str, payload: bytes | bytearray | memoryview, max_size: int) -> Message:
    route = parse(topic)
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"payload: expected bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > max_size:
        raise ProtocolError(f"payload: {len(payload)} bytes is over the {max_size} byte limit")
    if not payload:
        raise ProtocolError("payload: empty")

    if route.kind is Kind.API_REQUEST and payload[0] not in _MSGPACK_MAP_FIRST_BYTES:
        return _text_apply_request(route, payload)

    obj = _unpack(payload)
    version = obj.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ProtocolError(
            f"v: schema version {version!r} is not supported (this build speaks {SCHEMA_VERSION})"
        )
    model = MESSAGE_FOR_KIND[route.kind]
    try:
        message = model.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(f"{route.kind.value}: {describe_validation_error(exc)}") from None
    return _check_route(route, message)


#: Which of the fields a topic also names (``node``, ``task_id``) each message model has, worked
#: out once: asking the model on every message cost more than its validation. (``getattr`` with
#: a default costs an exception from pydantic for each kind that lacks the field.)
_ROUTED_FIELDS: dict[type[Message], tuple[bool, bool]] = {
    model: ("node" in model.model_fields, "task_id" in model.model_fields)
    for model in MESSAGE_FOR_KIND.values()}


def _check_route(route: Route, message: Message) -> Message:
    """The topic and the payload must agree: a node cannot speak for another node."""
    has_node, has_task = _ROUTED_FIELDS[type(message)]
    node = getattr(message, "node") if has_node else None
    if route.node is not None and node is not None and node != route.node:
        raise ProtocolError(f"node: {node!r} in the payload but {route.node!r} in the topic")
    task_id = getattr(message, "task_id") if has_task else None
    if route.task is not None and task_id is not None and task_id != route.task:
        raise ProtocolError(f"task_id: {task_id!r} in the payload but {route.task!r} in the topic")
    if isinstance(message, ApiRequest) and route.verb is not None and message.verb != route.verb:
        if message.verb:
            raise ProtocolError(f"verb: {message.verb!r} in the payload but {route.verb!r} in the topic")
        message = message.model_copy(update={"verb": route.verb})
    return message
