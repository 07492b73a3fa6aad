"""What every manifest part shares: the strict base model and the error form of its validators.

Kept apart from :mod:`protocol.manifests` so that the schemas built on top of it
(:mod:`protocol.pod_template`, the manifests themselves) can import it without a cycle.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

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

    #: Attribute names of this part's fields that are edgeloop's, not Sedna's: a Sedna
    #: controller would refuse them, so ``edgeloop validate`` names the ones a manifest sets.
    edgeloop_extensions: ClassVar[tuple[str, ...]] = ()


def extension_paths(part: ManifestPart, path: str = "") -> list[str]:
    """Paths (``spec.deploySpec.nodeSelector``) of the edgeloop extensions ``part`` sets, in
    field order. Only fields the manifest gives count: a default is not a use."""
    found: list[str] = []
    for name, info in type(part).model_fields.items():
        if name not in part.model_fields_set:
            continue
        here = f"{path}.{info.alias or name}" if path else (info.alias or name)
        if name in part.edgeloop_extensions:
            found.append(here)
            continue
        value = getattr(part, name)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, ManifestPart):
                found += extension_paths(item, f"{here}[{i}]" if isinstance(value, list) else here)
    return found
