"""The client side of the cloud manager's API: one request, one response, over MQTT v5; and the
exchanges made of several (a job's hard examples page by page, their images piece by piece)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any, Self

from edgeloop.connection import ConnectionOptions
from edgeloop.mqtt import MqttClient, new_client_id
from protocol import topics
from protocol.messages import ApiRequest, ApiResponse


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


#: Hard examples asked for in one ``hardex_export`` request (the answer is capped by size).
EXPORT_IDS_PER_REQUEST = 200


async def list_hardex(api: ApiSession, namespace: str, name: str) -> dict[str, Any]:
    """Every hard example of a job, page after page, as one ``hardex_list`` answer."""
    first = (await api.ask("hardex_list", namespace=namespace, name=name)).data
    assert isinstance(first, dict)
    items = list(first["items"])
    while len(items) < first["total"]:
        page = (await api.ask("hardex_list", namespace=namespace, name=name,
                              args={"offset": len(items)})).data
        assert isinstance(page, dict)
        if not page["items"]:
            break  # the inbox shrank meanwhile
        items += page["items"]
    return {**first, "items": items}


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
        data = response.data
        assert isinstance(data, dict)
        progress = False
        for sha256 in data["missing"]:
            if received.pop(sha256, None) is not None:
                missing.append(sha256)
                progress = True
        for part in data["parts"]:
            buffer = received.get(part["id"])
            piece = response.attachments.get(f"{part['id']}:{part['offset']}")
            if buffer is None or piece is None or part["offset"] != len(buffer):
                continue
            buffer += piece
            progress = progress or bool(piece)
            if len(buffer) >= part["size"]:
                del received[part["id"]]
                image = bytes(buffer)
                if hashlib.sha256(image).hexdigest() != part["id"]:
                    raise ValueError(f"hard example {part['id'][:12]}: the bytes received do not "
                                     "match its sha256")
                on_image(by_id[part["id"]], image)
        if not progress:
            raise ValueError("the cloud manager sent no image data; export stopped")
    return missing
