"""What an edge node keeps and sends: the capture and upload policies (schemas only, no I/O).

Sites reach the cloud over metered links; these settings let the operator bound what a camera
mines and what a node sends, and when. Both are edgeloop extensions of ``deploySpec`` (a Sedna
controller would refuse them); the upload policy is also an agent setting (``upload_policy``),
which a job's ``uploadPolicy`` overrides field by field for that job's examples.

* :class:`CapturePolicy` (``deploySpec.capturePolicy``): which flagged frames the inference
  worker saves (a sampled fraction, caps per minute, hour and day, overall and per mining
  reason), how (JPEG quality, longest side) and what happens at a cap (``skip``, or ``keep``
  the example locally and release it when the cap allows). ``cameras`` overrides it per camera.
* :class:`UploadPolicy`: when the agent sends what waits in its outbox (daily windows, a
  connection condition: a file flag or a command) and how much (bytes per second, per day, per
  month).

Defaults keep the behaviour without them: every flagged frame, full size, JPEG quality 95,
sent at once.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from protocol.manifest_base import ManifestPart, invalid

#: Why a frame was mined (``HardExampleSidecar.mining_reason``): the caps per reason use these.
MINING_REASONS = ("rule", "empty-frame", "detection-drop")
#: The camera name of a worker whose agent names none (the single-camera case).
DEFAULT_CAMERA = "default"

Count = Annotated[int, Field(ge=0)]


class Caps(ManifestPart):
    """Saved examples allowed per calendar minute, hour and day (UTC); None: no cap."""

    per_minute: Count | None = None
    per_hour: Count | None = None
    per_day: Count | None = None

    def limits(self) -> dict[str, int]:
        """``{"minute": n, ...}`` for the caps set."""
        named = {"minute": self.per_minute, "hour": self.per_hour, "day": self.per_day}
        return {period: cap for period, cap in named.items() if cap is not None}


def _known_reasons(value: dict[str, Caps]) -> dict[str, Caps]:
    for reason in value:
        if reason not in MINING_REASONS:
            raise invalid(
                f"unknown mining reason {reason!r}; choose among {', '.join(MINING_REASONS)}",
                path=f".{reason}",
            )
    return value


class CaptureSettings(Caps):
    """The capture policy of one camera (see :class:`CapturePolicy`)."""

    #: fraction of the flagged frames that are saved, spread evenly (0.1: one in ten)
    sample_rate: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 1.0
    #: caps of one mining reason (``rule``, ``empty-frame``, ``detection-drop``) beside the
    #: overall ones
    by_reason: Annotated[dict[str, Caps], AfterValidator(_known_reasons)] = Field(
        default_factory=dict
    )
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 95
    #: longest side of the saved image in pixels (boxes are scaled with it); None: full size
    max_side: Annotated[int, Field(ge=16)] | None = None
    #: at a cap: ``skip`` the example (counted), or ``keep`` it on the node and release it once
    #: the cap allows (the node's retention bounds what is kept)
    on_cap: Literal["skip", "keep"] = "skip"


class CapturePolicy(CaptureSettings):
    """``deploySpec.capturePolicy``: what the inference worker saves of the frames it mines."""

    #: per camera name: the fields given replace the job's for that camera
    cameras: dict[str, CaptureSettings] = Field(default_factory=dict)

    def for_camera(self, camera: str) -> CaptureSettings:
        """The settings of ``camera`` ("" or ``default`` for a node with one camera)."""
        base = self.model_dump(by_alias=True, exclude={"cameras"})
        override = self.cameras.get(camera or DEFAULT_CAMERA)
        if override is not None:
            base |= override.model_dump(by_alias=True, include=override.model_fields_set)
        return CaptureSettings.model_validate(base, strict=False)


def _window(value: str) -> str:
    """``HH:MM-HH:MM``: both minutes included, crossing midnight when the end is earlier."""
    try:
        start, end = value.split("-")
        for i, part in enumerate((start, end)):
            hours, minutes = part.strip().split(":")
            limit = 24 if i == 1 else 23
            if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
                raise ValueError
            if int(hours) > limit or int(minutes) > 59 or (int(hours) == 24 and int(minutes)):
                raise ValueError
    except ValueError:
        raise invalid(f"window {value!r} is not of the form HH:MM-HH:MM (22:00-06:00)") from None
    return value


Window = Annotated[str, AfterValidator(_window)]


def window_minutes(window: str) -> tuple[int, int]:
    """(start, end) minutes of the day of a valid window."""
    start, end = (part.strip().split(":") for part in window.split("-"))
    return int(start[0]) * 60 + int(start[1]), min(1439, int(end[0]) * 60 + int(end[1]))


class UploadPolicy(ManifestPart):
    """When and how much the node sends of what waits in its outbox.

    In a manifest (``deploySpec.uploadPolicy``) the keys are camelCase, in the agent's settings
    (``upload_policy``) snake_case; both spellings are read.
    """

    model_config = ConfigDict(populate_by_name=True)

    #: daily windows ``HH:MM-HH:MM`` in ``timezone``; empty: any time
    windows: list[Window] = Field(default_factory=list)
    timezone: str = "UTC"
    bytes_per_second: Annotated[int, Field(gt=0)] | None = None
    bytes_per_day: Annotated[int, Field(gt=0)] | None = None
    bytes_per_month: Annotated[int, Field(gt=0)] | None = None
    #: send only while this file exists ("on Wi-Fi" flagged by the site's own tooling)
    condition_file: str | None = None
    #: send only while this command exits 0 (run at most every ``condition_check_s``)
    condition_command: str | None = None
    condition_check_s: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _known_timezone(self) -> Self:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise invalid(f"unknown timezone {self.timezone!r} (an IANA name such as "
                          "Europe/Paris, or UTC)", path="timezone") from None
        return self

    def merged(self, override: UploadPolicy | None) -> UploadPolicy:
        """This policy with the fields ``override`` sets replaced (a job's over the node's)."""
        if override is None:
            return self
        values = self.model_dump(by_alias=True) | override.model_dump(
            by_alias=True, include=override.model_fields_set
        )
        return UploadPolicy.model_validate(values, strict=False)


EvictionOrder = Literal["none", "oldest", "lowest-score"]


class UploadStatus(BaseModel):
    """``NodeStatus.uploads``: what waits, what went, what was given up and why, and the
    bytes used against the node's caps (counts since the node's ledger began; ``skipped`` and
    ``held_on_node`` are those of the inference workers running now)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    waiting: Count = 0  # messages in the outbox
    waiting_bytes: Count = 0
    sent: Count = 0
    sent_bytes: Count = 0
    evicted: Count = 0  # given up by the outbox to stay in its budget
    evicted_bytes: Count = 0
    #: examples kept aside at a capture cap that the node's retention deleted
    pruned: Count = 0
    #: mined frames the capture policy did not save, by rule: ``sampled-out``, ``cap:day``, ...
    skipped: dict[str, Count] = Field(default_factory=dict)
    held_on_node: Count = 0  # kept aside at a capture cap (``onCap: keep``)
    bytes_today: Count = 0
    bytes_month: Count = 0
    bytes_per_day: int | None = None
    bytes_per_month: int | None = None
    bytes_per_second: int | None = None
    #: why messages wait now: ``window``, ``condition``, ``rate``, ``day cap``, ``month cap``
    waiting_for: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """One line for ``get nodes`` and the live view: ``waiting 3 (1.2 MB), sent 40
        (12 MB), evicted 0, skipped 120 (cap:day 100, sampled-out 20), today 12 MB / 50 MB``."""
        parts = [f"waiting {self.waiting} ({_size(self.waiting_bytes)})",
                 f"sent {self.sent} ({_size(self.sent_bytes)})",
                 f"evicted {self.evicted}" + (f" ({_size(self.evicted_bytes)})"
                                              if self.evicted else "")]
        if self.skipped:
            rules = ", ".join(f"{rule} {n}" for rule, n in sorted(self.skipped.items()))
            parts.append(f"skipped {sum(self.skipped.values())} ({rules})")
        if self.held_on_node or self.pruned:
            parts.append(f"held {self.held_on_node}, pruned {self.pruned}")
        for used, cap, name in ((self.bytes_today, self.bytes_per_day, "today"),
                                (self.bytes_month, self.bytes_per_month, "month")):
            if cap is not None:
                parts.append(f"{name} {_size(used)} / {_size(cap)}")
        if self.waiting and self.waiting_for:
            parts.append(f"waiting for {', '.join(self.waiting_for)}")
        return ", ".join(parts)


def _size(count: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} B"
