"""Manifests from YAML text: loading, checking, and errors a person can act on.

Everything here takes text (or already-parsed data) and returns models or error lines; only
:func:`read_files` / :func:`load_files` touch the file system, for the CLI's convenience.

Two YAML 1.1 traps are closed by :class:`ManifestLoader`: an unquoted ``02:00`` stays the
string ``"02:00"`` instead of the base-60 integer 120, and a key given twice in one mapping is
an error instead of the last one silently winning.

Every problem is reported, not just the first: each as ``path: message`` with the field path,
the bad value and what is allowed, and, when several documents are involved, prefixed with the
document (``job.yaml#2 (IncrementalLearningJob helmet-detection-demo): ...``).
"""

from __future__ import annotations

import difflib
import re
import types
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from protocol.manifests import (
    API_VERSIONS,
    KINDS,
    Manifest,
    ManifestError,
    resource_key,
    show,
    unsupported_api_version,
)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# An ``H:MM`` / ``HH:MM`` scalar: YAML 1.1 would read it as a base-60 integer.
_CLOCK_RE = re.compile(r"^[0-9]{1,2}:[0-9]{2}$")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


#: Deepest nesting of mappings and lists a manifest may have. Real ones stay under ten levels;
#: the composer recurses per level, so a deeper document would exhaust Python's stack.
MAX_NESTING = 64


class ManifestLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that keeps clock times as strings, refuses duplicate keys and
    refuses nesting deeper than :data:`MAX_NESTING`."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_NESTING} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            if key_node.value in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key_node.value!r} (first given at line "
                    f"{first_line[key_node.value]})",
                    key_node.start_mark,
                )
            first_line[key_node.value] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


# Resolvers are tried in order for a scalar's first character; a str resolver placed first
# wins over the int one. The lists are copied: ``add_implicit_resolver`` would append to lists
# shared with ``SafeLoader``.
ManifestLoader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _digit in "0123456789":
    ManifestLoader.yaml_implicit_resolvers.setdefault(_digit, []).insert(0, (_STR_TAG, _CLOCK_RE))


# --- pydantic errors to lines ------------------------------------------------------------------


def format_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One ``path: message`` line per error of ``exc``, raised while validating ``root``."""
    return [_format_error(error, root) for error in exc.errors(include_url=False)]


def _format_error(error: Any, root: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    path = _join_path(loc, ctx.get("path", "") if error["type"] == "manifest" else "")
    message = _message(error, ctx, root, loc)
    return f"{path}: {message}" if path else message


def _join_path(loc: tuple[str | int, ...], extra: str) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    if extra:
        path += extra if extra.startswith("[") or not path else f".{extra}"
    return path


_COMPARISONS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _message(error: Any, ctx: dict[str, Any], root: type[BaseModel], loc: tuple) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "manifest":
        return ctx["message"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return _unknown_field(root, loc)
    if kind == "string_type":
        hint = "; quote it" if isinstance(value, int | float) else ""
        return f"expected a string, got {show(value)}{hint}"
    if kind in ("float_type", "float_parsing"):
        hint = "; write it without quotes" if isinstance(value, str) else ""
        return f"expected a number, got {show(value)}{hint}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {show(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {show(value)}"
    if kind == "finite_number":
        return f"expected a finite number, got {show(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {show(value)}"
    if kind == "list_type":
        return f"expected a list, got {show(value)}"
    if kind == "literal_error":
        return f"{show(value)} is not one of {ctx.get('expected')}"
    if kind in _COMPARISONS:
        symbol, name = _COMPARISONS[kind]
        limit = ctx[name]
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        return f"{show(value)} is out of range; must be {symbol} {limit}"
    return f"{show(value)}: {error['msg']}"


def _unknown_field(root: type[BaseModel], loc: tuple) -> str:
    model = _model_at(root, loc[:-1])
    if model is None:
        return "unknown field"
    allowed = [f.alias or name for name, f in model.model_fields.items()]
    if model in KINDS.values():
        allowed.append("status")
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field{hint}; allowed: {', '.join(allowed)}"


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that validated the mapping at ``loc`` below ``root``."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = get_args(current)
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or name: f for name, f in current.model_fields.items()}
            current = fields[part].annotation if part in fields else None
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the type that carries the fields."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            options = [a for a in get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


# --- documents --------------------------------------------------------------------------------


def parse_manifest(data: Any) -> Manifest:
    """Validate one already-parsed document (a dict from YAML or JSON) into its model."""
    if not isinstance(data, dict):
        raise ManifestError(
            [f"expected a mapping with apiVersion, kind, metadata and spec, got {show(data)}"]
        )
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        errors = [
            "kind: required field is missing"
            if kind is None
            else f"kind: {show(kind)} is not one of {', '.join(KINDS)}"
        ]
        api_version = data.get("apiVersion")
        if api_version is not None and api_version not in API_VERSIONS:
            errors.insert(0, f"apiVersion: {unsupported_api_version(api_version)}")
        raise ManifestError(errors)
    remote = _s3_locations(data)
    if remote:
        raise ManifestError([_s3_refusal(remote)])
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(format_errors(exc, cls)) from None


def _s3_locations(data: Any, path: str = "") -> list[tuple[str, str]]:
    """``(path, url)`` of every ``s3://`` string in a document, in document order."""
    if isinstance(data, dict):
        return [hit for key, value in data.items()
                for hit in _s3_locations(value, f"{path}.{key}" if path else str(key))]
    if isinstance(data, list):
        return [hit for i, value in enumerate(data) for hit in _s3_locations(value, f"{path}[{i}]")]
    if isinstance(data, str) and data.strip().lower().startswith("s3://"):
        return [(path, data)]
    return []


def _s3_refusal(remote: list[tuple[str, str]]) -> str:
    """One message for a document that uses S3: the one thing to change, not its other fields.

    Sedna's S3 examples are otherwise well-formed or not (one nests ``spec`` under
    ``metadata``); field errors would hide that storage is the real obstacle.
    """
    path, url = remote[0]
    more = f" (and {len(remote) - 1} more)" if len(remote) > 1 else ""
    return (f"{path}: S3 storage ({url!r}{more}) is not supported: edgeloop reads datasets and "
            "models, and writes outputs, at paths on the nodes; copy the files there and give "
            "their paths")


@dataclass
class LoadedDocument:
    """One document of a YAML stream: its manifest, or why there is none."""

    source: str | None
    index: int  # 1-based position in its stream, empty documents counted
    data: Any = None
    manifest: Manifest | None = None
    errors: list[str] = field(default_factory=list)
    labelled: bool = True

    @property
    def label(self) -> str:
        place = f"{self.source or 'document'}#{self.index}" if self.index else self.source or ""
        data = self.data if isinstance(self.data, dict) else {}
        kind = data.get("kind")
        meta = data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        what = " ".join(str(part) for part in (kind, name) if isinstance(part, str))
        return f"{place} ({what})" if what else place

    def error_lines(self) -> list[str]:
        label = self.label if self.labelled else ""
        return [f"{label}: {error}" if label else error for error in self.errors]


def read_documents(text: str, source: str | None = None) -> list[LoadedDocument]:
    """Parse and validate every non-empty document of a YAML (or JSON) text.

    Labels prefix the error lines when there is a ``source`` name or more than one document.
    A YAML syntax error ends the stream (YAML cannot resynchronise): it is reported with its
    line, and documents before it are still returned.
    """
    documents: list[LoadedDocument] = []
    try:
        for index, data in enumerate(yaml.load_all(text, Loader=ManifestLoader), start=1):
            if data is not None:
                documents.append(LoadedDocument(source, index, data))
    except yaml.YAMLError as exc:
        documents.append(LoadedDocument(source, 0, errors=[_yaml_error(exc)]))
    for document in documents:
        document.labelled = source is not None or len(documents) > 1
        if document.errors:
            continue
        try:
            document.manifest = parse_manifest(document.data)
        except ManifestError as exc:
            document.errors = exc.errors
    return documents


def _yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return f"invalid YAML: {exc}"


def mark_duplicates(documents: list[LoadedDocument]) -> None:
    """Flag a resource defined twice: applying both would silently keep only the last."""
    first: dict[tuple[str, str, str], LoadedDocument] = {}
    for document in documents:
        if document.manifest is None:
            continue
        key = resource_key(document.manifest)
        if key in first:
            document.errors.append(f"{'/'.join(key)} is defined twice; first in {first[key].label}")
            document.manifest = None
        else:
            first[key] = document


def manifests_or_raise(documents: list[LoadedDocument]) -> list[Manifest]:
    """The manifests, or a ``ManifestError`` carrying every document's errors."""
    errors = [line for document in documents for line in document.error_lines()]
    if errors:
        raise ManifestError(errors)
    return [document.manifest for document in documents if document.manifest is not None]


def load_documents(text: str, source: str | None = None) -> list[Manifest]:
    """Every manifest of a YAML text; ``ManifestError`` lists all problems if any."""
    documents = read_documents(text, source)
    mark_duplicates(documents)
    return manifests_or_raise(documents)


def manifest_paths(path: Path) -> list[Path]:
    """A file as is; a directory as its ``.yaml``/``.yml``/``.json`` files, sorted."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
    return [path]


def read_path(path: str | Path, seen: set[Path] | None = None) -> list[LoadedDocument]:
    """:func:`read_documents` of a file, or of each manifest file of a directory.

    Files already in ``seen`` are skipped (and new ones added), so that a file named both
    directly and through its directory is read once.
    """
    given = Path(path)
    files = manifest_paths(given)
    if not files:
        suffixes = ", ".join(MANIFEST_SUFFIXES)
        return [LoadedDocument(str(given), 0, errors=[f"no {suffixes} files in this directory"])]
    seen = set() if seen is None else seen
    documents: list[LoadedDocument] = []
    for file in files:
        if file.resolve() in seen:
            continue
        seen.add(file.resolve())
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            documents.append(LoadedDocument(str(file), 0, errors=[f"cannot read: {exc.strerror}"]))
            continue
        except UnicodeDecodeError as exc:
            documents.append(LoadedDocument(str(file), 0, errors=[f"not UTF-8 text: {exc}"]))
            continue
        documents.extend(read_documents(text, str(file)))
    return documents


def read_files(paths: Iterable[str | Path], stdin: TextIO | None = None) -> list[LoadedDocument]:
    """:func:`read_path` of every path, each file once, with resources defined twice flagged.

    The path ``-`` reads ``stdin`` (as ``kubectl -f -`` does).
    """
    seen: set[Path] = set()
    documents: list[LoadedDocument] = []
    for path in paths:
        if str(path) == "-":
            documents.extend(read_documents((stdin or sys.stdin).read(), "<stdin>"))
        else:
            documents.extend(read_path(path, seen))
    mark_duplicates(documents)
    return documents


def load_files(paths: Iterable[str | Path]) -> list[Manifest]:
    """Every manifest of the given files and directories; ``ManifestError`` lists all problems."""
    return manifests_or_raise(read_files(paths))
