"""The client side of the cloud manager's API: one request, one response, over MQTT v5."""

from __future__ import annotations

import uuid

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
