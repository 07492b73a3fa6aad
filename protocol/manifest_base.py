"""What every manifest part shares: the strict base model and the error form of its validators.

Kept apart from :mod:`protocol.manifests` so that the schemas built on top of it
(:mod:`protocol.pod_template`, the manifests themselves) can import it without a cycle.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


def invalid(message: str, path: str = "") -> PydanticCustomError:
    """The error our validators raise: ``message`` is final text, ``path`` extends the location."""
    return PydanticCustomError("manifest", "{message}", {"message": message, "path": path})


def show(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _non_empty(value: str) -> str:
    if not value.strip():
        raise invalid("must not be empty")
    return value


NonEmpty = Annotated[str, AfterValidator(_non_empty)]


class ManifestPart(BaseModel):
    """Base of every manifest part: camelCase on the wire, strict types, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", strict=True, frozen=True)
