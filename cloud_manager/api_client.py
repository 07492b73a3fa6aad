"""The client side of the cloud manager's API: one request, one response, over MQTT v5; and the
exchanges made of several (a job's hard examples page by page, their images piece by piece)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeloop.connection import ConnectionOptions
from edgeloop.mqtt import MqttClient, new_client_id
from protocol import topics
from protocol.codec import describe_validation_error
from protocol.messages import ApiRequest, ApiResponse

A = TypeVar("A", bound="Answer")


async def call(
    options: ConnectionOptions,
    verb: str,
    requests: list[ApiRequest] | ApiRequest,
    *,
    timeout: float = 5.0,
) -> list[ApiResponse]:
    """Send each request on ``api/{verb}`` over one short-lived connection, in order.

    Raises ``NotConnected`` when the broker cannot be reached and ``RequestTimeout`` when the
    cloud manager does not answer in time, each with a message that says which.
    """
    batch = [requests] if isinstance(requests, ApiRequest) else requests
    settings = options.settings(new_client_id("cli"), session_expiry=0, backoff_max=1.0)
    async with MqttClient(settings) as client:
        await client.wait_connected(timeout)
        return [await client.request(topics.api_request(verb), r, timeout) for r in batch]


def new_request(**fields: object) -> ApiRequest:
    return ApiRequest(request_id=uuid.uuid4().hex, **fields)  # type: ignore[arg-type]


class ApiFailed(Exception):
    """The cloud manager answered, but refused (``response.ok`` is False)."""

    def __init__(self, response: ApiResponse) -> None:
        super().__init__(response.message)
        self.response = response


class ApiSession:
    """Several API requests over one connection, each chosen after the previous answer
    (``async with ApiSession(options) as api: await api.ask("get", ...)``)."""

    def __init__(self, options: ConnectionOptions, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.client = MqttClient(options.settings(new_client_id("cli"), session_expiry=0,
                                                  backoff_max=1.0))

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        try:
            await self.client.wait_connected(self.timeout)
        except BaseException:
            await self.client.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.__aexit__(*exc_info)

    async def ask(self, verb: str, timeout: float | None = None, **fields: object) -> ApiResponse:
        """The answer to one request; raises :class:`ApiFailed` when it is a refusal."""
        response = await self.client.request(topics.api_request(verb), new_request(**fields),
                                             timeout or self.timeout)
        if not response.ok:
            raise ApiFailed(response)
        return response


class Answer(BaseModel):
    """The ``data`` of an answer this client reads: checked when it arrives (fields it does not
    know are ignored, as for messages)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def of(cls: type[A], response: ApiResponse) -> A:
        """``response.data`` as this answer; ``ValueError`` names what does not fit."""
        try:
            return cls.model_validate(response.data)
        except ValidationError as exc:
            raise ValueError(f"unexpected answer from the cloud manager: "
                             f"{describe_validation_error(exc)}") from None


class HardexList(Answer):
    """A ``hardex_list`` answer: a page of a job's hard examples (each a summarised sidecar)."""

    job: str
    total: int
    items: list[dict[str, Any]]
    class_names: list[str] | None = None


class ExportPart(Answer):
    id: str
    offset: int
    length: int
    size: int


class HardexExport(Answer):
    """A ``hardex_export`` answer: the pieces of images it carries, and the ids it no longer has."""

    parts: list[ExportPart]
    missing: list[str]


class LabelTarget(Answer):
    """A ``label_import`` answer without samples: where the job's labels go."""

    dataset: str
    node: str
    class_names: list[str]


class LabelImport(Answer):
    """A ``label_import`` answer: what became of each sample (sha256, source, status, reason)."""

    results: list[dict[str, str]]


#: Hard examples asked for in one ``hardex_export`` request (the answer is capped by size).
EXPORT_IDS_PER_REQUEST = 200


async def list_hardex(api: ApiSession, namespace: str, name: str) -> HardexList:
    """Every hard example of a job, page after page, as one ``hardex_list`` answer."""
    first = HardexList.of(await api.ask("hardex_list", namespace=namespace, name=name))
    items = list(first.items)
    while len(items) < first.total:
        page = HardexList.of(await api.ask("hardex_list", namespace=namespace, name=name,
                                           args={"offset": len(items)}))
        if not page.items:
            break  # the inbox shrank meanwhile
        items += page.items
    return first.model_copy(update={"items": items})


async def fetch_hardex_images(
    api: ApiSession,
    namespace: str,
    name: str,
    items: list[dict[str, Any]],
    on_image: Callable[[dict[str, Any], bytes], None],
) -> list[str]:
    """Download the images of ``items`` in pieces (``hardex_export``), hand each complete,
    sha256-verified image to ``on_image``; return the ids the cloud no longer has."""
    by_id = {item["id"]: item for item in items}
    received: dict[str, bytearray] = {item["id"]: bytearray() for item in items}
    missing: list[str] = []
    while received:
        wanted = [{"id": i, "offset": len(buf)} for i, buf in list(received.items())[:EXPORT_IDS_PER_REQUEST]]
        response = await api.ask("hardex_export", namespace=namespace, name=name,
                                 args={"parts": wanted})
        data = HardexExport.of(response)
        progress = False
        for sha256 in data.missing:
            if received.pop(sha256, None) is not None:
                missing.append(sha256)
                progress = True
        for part in data.parts:
            buffer = received.get(part.id)
            piece = response.attachments.get(f"{part.id}:{part.offset}")
            if buffer is None or piece is None or part.offset != len(buffer):
                continue
            buffer += piece
            progress = progress or bool(piece)
            if len(buffer) >= part.size:
                del received[part.id]
                image = bytes(buffer)
                if hashlib.sha256(image).hexdigest() != part.id:
                    raise ValueError(f"hard example {part.id[:12]}: the bytes received do not "
                                     "match its sha256")
                on_image(by_id[part.id], image)
        if not progress:
            raise ValueError("the cloud manager sent no image data; export stopped")
    return missing
