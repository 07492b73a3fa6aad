"""The protocol's one error type: whatever is wrong with a message, a receiver sees this."""


class ProtocolError(ValueError):
    """A message, topic or payload that does not satisfy the wire contract.

    ``reason`` names the offending field (``sidecar.boxes.0: ...``) so that a log line says
    exactly what to fix. Receivers count and log it; it never ends a loop.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
