"""Synthetic construction-site scenes with exact labels, deterministic for a seed.

No real helmet footage can be downloaded here, yet the loop needs data whose distribution can
shift (day -> night, new helmet colours) so that incremental learning has something to fix. This
module paints such scenes with OpenCV primitives: a sky and ground, site clutter (scaffolding,
containers, cones, beams, rebar, barriers, buckets, a crane), people at varied distances with and
without helmets, loose helmets on the ground, and natural occlusion (nearer things are painted
over farther ones).

Labels come from an "owner map" painted alongside the image: every labelled object paints its id,
clutter paints 0, so after painting, the pixels an object still owns are exactly its visible part.
Boxes are the bounds of those pixels; a head less than :data:`MIN_HEAD_VISIBLE` visible (or a
person less than :data:`MIN_PERSON_VISIBLE`) is left unlabelled rather than given a misleading box.

Domains (see :data:`DOMAINS`):

``day``
    Daylight; helmets only in :data:`DAY_HELMET_COLOURS` (yellow, white, orange).
``night``
    The same site after dark: gamma-darkened, bluish tint, lamp glare, strong sensor noise.
    Same helmet colours as ``day``.
``new-colors``
    Daylight, but helmets only in :data:`NEW_HELMET_COLOURS` (blue, green, red, purple), colours
    a ``day`` model never saw on a helmet.
``fog``
    Daylight washed out by fog that thickens with distance. Same helmet colours as ``day``.

Scenes are deliberately *learnable*: a helmet is a saturated dome with a brim and a ridge, a bare
head is skin with hair, at sizes from about 12 to 80 px tall at 640x360.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from protocol.classes import CLASS_NAMES
from protocol.dataset_index import Sample, append_samples

PERSON, HELMET, HELMET_ON, HELMET_OFF = (
    CLASS_NAMES.index(n) for n in ("person", "helmet", "helmet-on", "helmet-off")
)

DOMAINS: tuple[str, ...] = ("day", "night", "new-colors", "fog")

# Helmet colours (BGR), the one place that says which domain wears what.
HELMET_COLOURS: dict[str, tuple[int, int, int]] = {
    "yellow": (20, 215, 250),
    "white": (235, 238, 240),
    "orange": (10, 120, 250),
    "blue": (200, 90, 20),
    "green": (50, 170, 30),
    "red": (35, 30, 205),
    "purple": (150, 40, 135),
}
DAY_HELMET_COLOURS: tuple[str, ...] = ("yellow", "white", "orange")
NEW_HELMET_COLOURS: tuple[str, ...] = ("blue", "green", "red", "purple")
DOMAIN_HELMET_COLOURS: dict[str, tuple[str, ...]] = {
    "day": DAY_HELMET_COLOURS,
    "night": DAY_HELMET_COLOURS,
    "fog": DAY_HELMET_COLOURS,
    "new-colors": NEW_HELMET_COLOURS,
}

REFERENCE_HEIGHT = 360  # sizes below are in pixels of a 640x360 frame and scale with height
HEAD_MIN_PX, HEAD_MAX_PX = 12.0, 80.0
MIN_HEAD_VISIBLE = 0.6
MIN_PERSON_VISIBLE = 0.3
MIN_LABEL_PX = 6  # boxes thinner than this (at the reference height) are not labelled
PERSON_HEIGHT_IN_HEADS = 7.3  # top of head to soles
HEAD_DROP_IN_HEADS = 1.5  # a person's head centre sits this many head heights below the horizon

SKIN_TONES = (
    (185, 205, 240),
    (150, 180, 225),
    (120, 150, 200),
    (90, 120, 170),
    (60, 85, 125),
    (45, 60, 95),
)
HAIR_COLOURS = (
    (22, 22, 25),
    (30, 40, 60),
    (35, 60, 95),
    (60, 65, 70),
    (120, 160, 190),
    (150, 150, 150),
)
HAIR_WEIGHTS = (0.35, 0.25, 0.18, 0.1, 0.06, 0.06)
JACKET_COLOURS = (
    (60, 60, 60),
    (110, 80, 40),
    (40, 40, 90),
    (90, 110, 120),
    (160, 150, 140),
    (50, 90, 60),
    (30, 30, 30),
)
VEST_COLOURS = ((30, 140, 250), (40, 230, 200))  # hi-vis orange, hi-vis yellow-green
PANTS_COLOURS = ((90, 60, 40), (50, 50, 50), (40, 60, 80), (110, 100, 90))
CONTAINER_COLOURS = (
    (40, 60, 150),
    (130, 90, 40),
    (60, 110, 60),
    (110, 110, 110),
    (30, 90, 170),
    (50, 50, 120),
)
GROUND_COLOURS = ((85, 115, 140), (120, 150, 175), (130, 130, 130), (95, 105, 110), (70, 95, 120))


# ---------------------------------------------------------------------------------------------
# Scene description: what is where. Painting it is separate, so that a video can move the same
# people a little between frames.


@dataclass
class Person:
    cx: float
    head_y: float  # centre of the head
    hh: float  # head height in pixels
    helmet: str | None  # colour name, or None for a bare head
    skin: tuple[int, int, int]
    hair: tuple[int, int, int] | None  # None: bald
    jacket: tuple[int, int, int]
    vest: tuple[int, int, int] | None
    pants: tuple[int, int, int]
    back_view: bool
    phase: float  # walk cycle, radians
    vx: float = 0.0  # pixels per frame (video only)


@dataclass
class LooseHelmet:
    cx: float
    ground_y: float
    width: float
    colour: str
    angle: float  # degrees; a tipped-over helmet


@dataclass
class Clutter:
    kind: str
    x: float  # left edge
    ground_y: float
    w: float
    h: float
    colour: tuple[int, int, int]
    variant: int = 0


@dataclass
class Scene:
    width: int
    height: int
    domain: str
    horizon: float
    sky_top: tuple[int, int, int]
    sky_bottom: tuple[int, int, int]
    ground: tuple[int, int, int]
    texture_seed: int
    far: list[Clutter]  # painted before everything else, never occluding labelled objects
    items: list[Person | LooseHelmet | Clutter]
    brightness: float
    night_gamma: float = 1.0
    night_gain: float = 1.0
    lamps: list[tuple[float, float, float]] = field(default_factory=list)  # x, y, radius
    fog_density: float = 0.0
    noise_sigma: float = 2.0


def _scale(height: int) -> float:
    return height / REFERENCE_HEIGHT


def _choice(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: int) -> tuple[int, int, int]:
    delta = rng.integers(-amount, amount + 1, 3).tolist()
    return tuple(min(255, max(0, int(c) + d)) for c, d in zip(colour, delta))


def _unit_at(scene_horizon: float, y: float, s: float) -> float:
    """Head height (px) of a person standing with feet at ``y``: the scene's perspective scale."""
    return max((y - scene_horizon) / (HEAD_DROP_IN_HEADS + PERSON_HEIGHT_IN_HEADS - 0.5), 3.0 * s)


def _sample_person(
    rng: np.random.Generator, domain: str, width: int, height: int, horizon: float
) -> Person:
    s = _scale(height)
    hh = float(np.exp(rng.uniform(np.log(HEAD_MIN_PX), np.log(HEAD_MAX_PX)))) * s
    head_y = horizon + HEAD_DROP_IN_HEADS * hh + rng.uniform(-0.6, 0.6) * hh
    head_y = float(np.clip(head_y, 0.65 * hh, height - 0.6 * hh))
    cx = float(rng.uniform(0.75 * hh, width - 0.75 * hh))
    helmet = _choice(rng, DOMAIN_HELMET_COLOURS[domain]) if rng.random() < 0.55 else None
    bald = rng.random() < 0.06
    return Person(
        cx=cx,
        head_y=head_y,
        hh=hh,
        helmet=helmet,
        skin=_jitter(rng, _choice(rng, SKIN_TONES), 10),
        hair=None if bald else _jitter(rng, _choice(rng, HAIR_COLOURS, HAIR_WEIGHTS), 8),
        jacket=_jitter(rng, _choice(rng, JACKET_COLOURS), 15),
        vest=_jitter(rng, _choice(rng, VEST_COLOURS), 10) if rng.random() < 0.4 else None,
        pants=_jitter(rng, _choice(rng, PANTS_COLOURS), 12),
        back_view=bool(rng.random() < 0.15),
        phase=float(rng.uniform(0, 2 * np.pi)),
    )


def _sample_loose_helmet(
    rng: np.random.Generator, domain: str, width: int, height: int, horizon: float
) -> LooseHelmet:
    s = _scale(height)
    y = float(rng.uniform(horizon + 0.15 * (height - horizon), height - 2 * s))
    unit = max(_unit_at(horizon, y, s), 10.0 * s)
    w = 1.3 * unit * rng.uniform(0.9, 1.15)
    return LooseHelmet(
        cx=float(rng.uniform(w, width - w)),
        ground_y=y,
        width=float(w),
        colour=_choice(rng, DOMAIN_HELMET_COLOURS[domain]),
        angle=float(rng.uniform(-35, 35)) if rng.random() < 0.3 else 0.0,
    )


@dataclass(frozen=True)
class _ClutterKind:
    """How many of a kind of clutter a scene gets, and its size in head heights at its depth."""

    count: tuple[int, int]
    width: tuple[float, float]
    height: tuple[float, float]
    colours: tuple[tuple[int, int, int], ...]
    max_depth: float = 1.1  # how near it may come: fraction of the ground below the horizon


_CLUTTER = {
    # Big structures stay in the middle distance so that they do not wall off the whole frame.
    "container": _ClutterKind((0, 2), (14, 22), (7.5, 9), CONTAINER_COLOURS, max_depth=0.55),
    "scaffold": _ClutterKind((0, 2), (10, 24), (12, 20), ((150, 150, 155),), max_depth=0.55),
    "cone": _ClutterKind((0, 5), (1.3, 1.3), (2.4, 2.4), ((20, 110, 245),)),
    "beams": _ClutterKind((0, 2), (10, 22), (1, 2.6), ((60, 70, 80), (40, 80, 150), (90, 90, 95))),
    "rebar": _ClutterKind((0, 2), (8, 16), (0.6, 1.5), ((40, 55, 90),)),
    "barrier": _ClutterKind(
        (0, 2), (6, 10), (2.8, 3.6), ((170, 170, 165), (30, 30, 200), (235, 235, 235))
    ),
    # Round, often helmet-coloured things that are not helmets.
    "bucket": _ClutterKind(
        (0, 2), (1, 1), (1.2, 1.2), ((20, 200, 245), (235, 235, 235), (20, 120, 240), (40, 40, 40))
    ),
}


def _sample_clutter(
    rng: np.random.Generator, kind: str, width: int, height: int, horizon: float
) -> Clutter:
    spec = _CLUTTER[kind]
    ground = height - horizon
    y = float(rng.uniform(horizon + 0.05 * ground, horizon + spec.max_depth * ground))
    u = _unit_at(horizon, y, _scale(height))
    w = u * float(rng.uniform(*spec.width))
    h = u * float(rng.uniform(*spec.height))
    colour = _jitter(rng, _choice(rng, spec.colours), 12)
    x = float(rng.uniform(-0.3 * w, width - 0.7 * w))
    return Clutter(kind, x, y, w, h, colour, int(rng.integers(0, 1 << 16)))


def _sample_far(rng: np.random.Generator, width: int, height: int, horizon: float) -> list[Clutter]:
    s = _scale(height)
    far: list[Clutter] = []
    x = float(rng.uniform(-40, 0) * s)
    while x < width:  # skyline of buildings and tree lines
        w = float(rng.uniform(30, 120) * s)
        h = float(rng.uniform(8, 0.7 * horizon / s) * s)
        tone = int(rng.integers(90, 170))
        colour = _jitter(rng, (tone, tone + 5, tone + 10), 12)
        if rng.random() < 0.35:
            far.append(
                Clutter(
                    "trees",
                    x,
                    horizon,
                    w,
                    h * 0.5,
                    _jitter(rng, (60, 95, 70), 12),
                    int(rng.integers(0, 1 << 16)),
                )
            )
        elif rng.random() < 0.6:
            far.append(Clutter("building", x, horizon, w, h, colour, int(rng.integers(0, 1 << 16))))
        x += w * rng.uniform(0.6, 1.3)
    if rng.random() < 0.5:
        far.append(
            Clutter(
                "crane",
                float(rng.uniform(0, width * 0.8)),
                horizon,
                float(rng.uniform(0.3, 0.6) * width),
                float(rng.uniform(0.6, 0.95) * horizon),
                _jitter(rng, (30, 190, 235), 15),
                int(rng.integers(0, 1 << 16)),
            )
        )
    return far


def sample_scene(
    rng: np.random.Generator, domain: str, size: tuple[int, int] = (640, 360), min_people: int = 0
) -> Scene:
    """Draw a random scene description for ``domain`` (nothing is painted yet).

    About 5% of scenes are empty (negative samples) unless ``min_people`` asks for someone.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    width, height = int(size[0]), int(size[1])
    if width < 64 or height < 48:
        raise ValueError(f"size {width}x{height} is too small; use at least 64x48")
    horizon = float(rng.uniform(0.25, 0.45) * height)
    overcast = rng.random() < 0.3
    sky_top = _jitter(rng, (175, 170, 165) if overcast else (215, 160, 100), 15)
    sky_bottom = _jitter(rng, (205, 205, 205) if overcast else (235, 215, 190), 10)
    items: list[Person | LooseHelmet | Clutter] = []
    empty = rng.random() < 0.05 and min_people == 0
    n_people = 0 if empty else int(rng.integers(max(1, min_people), max(8, min_people + 1)))
    n_helmets = 0 if empty else int(rng.choice(4, p=(0.4, 0.3, 0.2, 0.1)))
    items += [_sample_person(rng, domain, width, height, horizon) for _ in range(n_people)]
    items += [_sample_loose_helmet(rng, domain, width, height, horizon) for _ in range(n_helmets)]
    for kind, spec in _CLUTTER.items():
        n = int(rng.integers(spec.count[0], spec.count[1] + 1))
        items += [_sample_clutter(rng, kind, width, height, horizon) for _ in range(n)]
    scene = Scene(
        width=width,
        height=height,
        domain=domain,
        horizon=horizon,
        sky_top=sky_top,
        sky_bottom=sky_bottom,
        ground=_jitter(rng, _choice(rng, GROUND_COLOURS), 12),
        texture_seed=int(rng.integers(0, 2**31)),
        far=_sample_far(rng, width, height, horizon),
        items=items,
        brightness=float(rng.uniform(0.85, 1.12)),
    )
    if domain == "night":
        n_lamps = int(rng.integers(1, 5))
        scene.lamps = [
            (
                float(rng.uniform(0, width)),
                float(rng.uniform(0.05, 0.6) * height),
                float(rng.uniform(8, 22) * _scale(height)),
            )
            for _ in range(n_lamps)
        ]
        scene.night_gamma = float(rng.uniform(1.5, 2.1))
        scene.night_gain = float(rng.uniform(0.28, 0.45))
        scene.noise_sigma = float(rng.uniform(7, 12))
    elif domain == "fog":
        scene.fog_density = float(rng.uniform(0.45, 0.7))
    return scene


# ---------------------------------------------------------------------------------------------
# Painting


class _Painter:
    """Paints each primitive twice: anti-aliased colour on the image, its owner id on the map."""

    SHIFT = 4
    ONE = 1 << SHIFT

    def __init__(self, image: np.ndarray, owner: np.ndarray) -> None:
        self.image = image
        self.owner = owner

    def _p(self, x: float, y: float) -> tuple[int, int]:
        return int(round(x * self.ONE)), int(round(y * self.ONE))

    def ellipse(
        self,
        cx: float,
        cy: float,
        ax: float,
        ay: float,
        colour,
        owner: int,
        angle: float = 0.0,
        start: float = 0.0,
        end: float = 360.0,
    ) -> None:
        c, a = self._p(cx, cy), self._p(max(ax, 0.5), max(ay, 0.5))
        cv2.ellipse(self.image, c, a, angle, start, end, colour, -1, cv2.LINE_AA, self.SHIFT)
        cv2.ellipse(self.owner, c, a, angle, start, end, owner, -1, cv2.LINE_8, self.SHIFT)

    def poly(self, points: Sequence[tuple[float, float]], colour, owner: int) -> None:
        pts = np.array([self._p(x, y) for x, y in points], np.int32)
        cv2.fillPoly(self.image, [pts], colour, cv2.LINE_AA, self.SHIFT)
        cv2.fillPoly(self.owner, [pts], owner, cv2.LINE_8, self.SHIFT)

    def rect(self, x1: float, y1: float, x2: float, y2: float, colour, owner: int) -> None:
        self.poly(((x1, y1), (x2, y1), (x2, y2), (x1, y2)), colour, owner)

    def line(
        self, x1: float, y1: float, x2: float, y2: float, colour, thickness: float, owner: int
    ) -> None:
        t = max(1, int(round(thickness)))
        p1, p2 = self._p(x1, y1), self._p(x2, y2)
        cv2.line(self.image, p1, p2, colour, t, cv2.LINE_AA, self.SHIFT)
        cv2.line(self.owner, p1, p2, owner, t, cv2.LINE_8, self.SHIFT)


def _shade(colour: Sequence[int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(c * factor))) for c in colour)


def _lighten(colour: Sequence[int], amount: float) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * amount) for c in colour)


def _paint_helmet(
    p: _Painter,
    cx: float,
    brim_y: float,
    half_w: float,
    dome_h: float,
    colour,
    owner: int,
    angle: float = 0.0,
) -> None:
    """A hard hat: dome, highlight, ridge and brim. ``brim_y`` is where dome meets brim."""
    dark = _shade(colour, 0.72)
    rad = math.radians(angle)

    # Rotate the helmet about its brim centre; cv2.ellipse handles the dome's own rotation.
    def rot(dx: float, dy: float) -> tuple[float, float]:
        return cx + dx * math.cos(rad) - dy * math.sin(rad), brim_y + dx * math.sin(
            rad
        ) + dy * math.cos(rad)

    p.ellipse(cx, brim_y, half_w * 0.86, dome_h, colour, owner, angle, 180, 360)
    hx, hy = rot(-half_w * 0.3, -dome_h * 0.55)
    p.ellipse(hx, hy, half_w * 0.28, dome_h * 0.22, _lighten(colour, 0.45), owner, angle - 20)
    top = rot(0, -dome_h)
    bottom = rot(0, -dome_h * 0.1)
    p.line(top[0], top[1], bottom[0], bottom[1], dark, max(1.0, half_w * 0.12), owner)
    brim_c = rot(0, dome_h * 0.04)
    p.ellipse(brim_c[0], brim_c[1], half_w, max(dome_h * 0.16, 1.0), dark, owner, angle)


def _paint_person(p: _Painter, person: Person, body_id: int, head_id: int) -> None:
    hh, cx, cy = person.hh, person.cx, person.head_y
    swing = math.sin(person.phase)
    # Legs (behind the torso), shoes
    hip_y, foot_y = cy + 3.2 * hh, cy + 6.6 * hh
    for side, sgn in ((-1, 1.0), (1, -1.0)):
        fx = cx + side * 0.38 * hh + sgn * swing * 0.45 * hh
        p.line(cx + side * 0.38 * hh, hip_y, fx, foot_y, person.pants, 0.62 * hh, body_id)
        p.ellipse(fx + 0.12 * hh, foot_y + 0.12 * hh, 0.34 * hh, 0.16 * hh, (25, 25, 30), body_id)
    # Torso: a trapezoid from the shoulders to the hips
    sh_y = cy + 0.62 * hh
    torso = (
        (cx - 1.05 * hh, sh_y + 0.15 * hh),
        (cx - 0.85 * hh, sh_y),
        (cx + 0.85 * hh, sh_y),
        (cx + 1.05 * hh, sh_y + 0.15 * hh),
        (cx + 0.8 * hh, hip_y + 0.1 * hh),
        (cx - 0.8 * hh, hip_y + 0.1 * hh),
    )
    p.poly(torso, person.jacket, body_id)
    if person.vest is not None:
        vest = (
            (cx - 0.9 * hh, sh_y + 0.25 * hh),
            (cx + 0.9 * hh, sh_y + 0.25 * hh),
            (cx + 0.78 * hh, hip_y - 0.1 * hh),
            (cx - 0.78 * hh, hip_y - 0.1 * hh),
        )
        p.poly(vest, person.vest, body_id)
        for frac in (0.45, 0.75):
            y = sh_y + frac * (hip_y - sh_y)
            p.rect(cx - 0.85 * hh, y, cx + 0.85 * hh, y + 0.16 * hh, (205, 205, 200), body_id)
    # Arms with hands
    for side, sgn in ((-1, -1.0), (1, 1.0)):
        hx = cx + side * 1.2 * hh + sgn * swing * 0.35 * hh
        hy = cy + 3.1 * hh
        p.line(
            cx + side * 0.95 * hh,
            sh_y + 0.2 * hh,
            hx,
            hy,
            _shade(person.jacket, 0.9),
            0.42 * hh,
            body_id,
        )
        p.ellipse(hx, hy + 0.1 * hh, 0.2 * hh, 0.22 * hh, person.skin, body_id)
    # Neck
    p.rect(
        cx - 0.18 * hh,
        cy + 0.3 * hh,
        cx + 0.18 * hh,
        sh_y + 0.1 * hh,
        _shade(person.skin, 0.85),
        body_id,
    )
    # Head
    hw = 0.39 * hh  # half width
    p.ellipse(cx, cy, hw, 0.5 * hh, person.skin, head_id)
    if person.back_view and person.hair is not None:
        p.ellipse(cx, cy - 0.02 * hh, hw * 1.03, 0.5 * hh, person.hair, head_id)
    elif not person.back_view:
        if person.hair is not None and person.helmet is None:
            p.ellipse(cx, cy - 0.08 * hh, hw * 1.05, 0.44 * hh, person.hair, head_id, 0, 180, 360)
            p.ellipse(cx, cy - 0.1 * hh, hw * 1.04, 0.12 * hh, person.hair, head_id)
        if hh >= 14:
            eye_r = max(0.055 * hh, 0.7)
            for side in (-1, 1):
                p.ellipse(
                    cx + side * 0.15 * hh, cy + 0.02 * hh, eye_r, eye_r, (30, 30, 35), head_id
                )
            p.line(
                cx - 0.12 * hh,
                cy + 0.28 * hh,
                cx + 0.12 * hh,
                cy + 0.28 * hh,
                _shade(person.skin, 0.6),
                0.05 * hh,
                head_id,
            )
    if person.helmet is not None:
        colour = HELMET_COLOURS[person.helmet]
        _paint_helmet(p, cx, cy - 0.1 * hh, 0.66 * hh, 0.52 * hh, colour, head_id)


def _paint_clutter(p: _Painter, c: Clutter) -> None:
    x1, y2, w, h, col = c.x, c.ground_y, c.w, c.h, c.colour
    y1 = y2 - h
    v = np.random.default_rng(c.variant)  # stable per object, so a video frame repaints it alike
    if c.kind == "container":
        p.rect(x1, y1, x1 + w, y2, col, 0)
        dark = _shade(col, 0.7)
        step = max(w / 18, 2.0)
        for x in np.arange(x1 + step, x1 + w, step):
            p.line(x, y1 + h * 0.05, x, y2 - h * 0.05, dark, max(1.0, step * 0.25), 0)
        p.rect(x1, y1, x1 + w, y1 + h * 0.06, _lighten(col, 0.2), 0)
    elif c.kind == "scaffold":
        t = max(1.0, w / 60)
        cols = int(v.integers(3, 6))
        rows = int(v.integers(3, 6))
        for i in range(cols + 1):
            x = x1 + w * i / cols
            p.line(x, y1, x, y2, col, t, 0)
        for j in range(rows + 1):
            y = y1 + h * j / rows
            p.line(x1, y, x1 + w, y, col, t, 0)
            if j and v.random() < 0.5:  # a plank
                p.rect(x1, y - t * 2.5, x1 + w, y, (60, 110, 160), 0)
        p.line(x1, y2, x1 + w / cols, y1 + h * (rows - 1) / rows, col, t, 0)
    elif c.kind == "cone":
        cx = x1 + w / 2
        p.poly(
            ((cx - w * 0.1, y1), (cx + w * 0.1, y1), (cx + w * 0.45, y2), (cx - w * 0.45, y2)),
            col,
            0,
        )
        p.poly(
            (
                (cx - w * 0.22, y1 + h * 0.4),
                (cx + w * 0.22, y1 + h * 0.4),
                (cx + w * 0.28, y1 + h * 0.55),
                (cx - w * 0.28, y1 + h * 0.55),
            ),
            (240, 240, 240),
            0,
        )
        p.rect(cx - w * 0.6, y2 - h * 0.08, cx + w * 0.6, y2, (30, 30, 30), 0)
    elif c.kind == "beams":
        n = int(v.integers(1, 4))
        bh = h / n
        for i in range(n):
            top = y2 - (i + 1) * bh
            shift = v.uniform(-0.05, 0.05) * w
            p.rect(x1 + shift, top, x1 + shift + w, top + bh, col, 0)
            p.rect(
                x1 + shift, top + bh * 0.35, x1 + shift + w, top + bh * 0.65, _shade(col, 0.6), 0
            )
    elif c.kind == "rebar":
        n = int(v.integers(5, 12))
        for i in range(n):
            y = y2 - h * (i + 0.5) / n
            dx = v.uniform(-0.08, 0.08) * w
            p.line(
                x1 + dx,
                y,
                x1 + w + dx,
                y - v.uniform(-0.3, 0.3) * h,
                _jitter(v, col, 15),
                max(1.0, h / n * 0.6),
                0,
            )
    elif c.kind == "barrier":
        p.poly(
            (
                (x1, y2),
                (x1 + w, y2),
                (x1 + w * 0.97, y1 + h * 0.3),
                (x1 + w * 0.95, y1),
                (x1 + w * 0.05, y1),
                (x1 + w * 0.03, y1 + h * 0.3),
            ),
            col,
            0,
        )
        if v.random() < 0.5:
            stripe = (240, 240, 240) if col[2] > 150 and col[0] < 100 else (30, 30, 200)
            for k in range(4):
                xs = x1 + w * (0.1 + 0.22 * k)
                p.poly(
                    (
                        (xs, y1 + h * 0.1),
                        (xs + w * 0.1, y1 + h * 0.1),
                        (xs + w * 0.04, y2 - h * 0.1),
                        (xs - w * 0.06, y2 - h * 0.1),
                    ),
                    stripe,
                    0,
                )
    elif c.kind == "bucket":
        p.poly(((x1, y1), (x1 + w, y1), (x1 + w * 0.88, y2), (x1 + w * 0.12, y2)), col, 0)
        p.ellipse(x1 + w / 2, y1, w / 2, max(h * 0.12, 0.7), _shade(col, 0.55), 0)
    elif c.kind == "building":
        p.rect(x1, y2 - h, x1 + w, y2 + 1, col, 0)
        if h > 12:
            win = _shade(col, 0.65)
            rows, cols = int(max(1, h // 10)), int(max(1, w // 12))
            for r in range(rows):
                for k in range(cols):
                    if v.random() < 0.7:
                        wx, wy = x1 + (k + 0.3) * w / cols, y2 - h + (r + 0.3) * h / rows
                        p.rect(wx, wy, wx + 0.4 * w / cols, wy + 0.4 * h / rows, win, 0)
    elif c.kind == "trees":
        n = max(2, int(w / max(h, 1.0) * 2))
        for i in range(n):
            tx = x1 + w * (i + 0.5) / n
            p.ellipse(
                tx, y2 - h * 0.5, w / n * 0.8, h * v.uniform(0.4, 0.6), _jitter(v, col, 10), 0
            )
    elif c.kind == "crane":
        mast_x = x1 + w * v.uniform(0.15, 0.3)
        t = max(1.0, h / 120)
        top = y2 - h
        for dx in (-h * 0.02, h * 0.02):
            p.line(mast_x + dx, y2, mast_x + dx, top, col, t, 0)
        for k in range(12):
            y = y2 - h * k / 12
            p.line(mast_x - h * 0.02, y, mast_x + h * 0.02, y - h / 12, col, t, 0)
        p.line(x1, top, x1 + w, top, col, t * 1.5, 0)
        p.line(x1, top + h * 0.03, x1 + w, top + h * 0.03, col, t, 0)
        p.line(mast_x, top - h * 0.08, x1 + w, top, col, t, 0)
        p.line(x1 + w * 0.8, top, x1 + w * 0.8, top + h * 0.35, (40, 40, 40), 1, 0)
    else:  # pragma: no cover - kinds are fixed above
        raise ValueError(c.kind)


@lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """Unit Gaussian noise twice the frame size, made once per size from a fixed seed.

    Drawing fresh noise for every pixel of every frame dominated rendering time; a window at a
    random offset into this bank looks just as random to a detector and stays deterministic.
    """
    bank = np.random.default_rng(20240601).standard_normal(
        (2 * height, 2 * width), dtype=np.float32
    )
    bank.setflags(write=False)
    return bank


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (height, width) window of unit Gaussian noise at a random offset (read-only view)."""
    bank = _noise_bank(height, width)
    y, x = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
    return bank[y : y + height, x : x + width]


def _paint_background(scene: Scene) -> np.ndarray:
    """Sky gradient, textured ground and the far skyline: what no labelled object can hide."""
    w, h, hz = scene.width, scene.height, int(round(scene.horizon))
    tex = np.random.default_rng(scene.texture_seed)
    image = np.empty((h, w, 3), np.float32)
    t = np.linspace(0.0, 1.0, max(hz, 1), dtype=np.float32)[:, None, None]
    image[:hz] = (1 - t) * np.float32(scene.sky_top) + t * np.float32(scene.sky_bottom)
    rows = h - hz
    depth = np.linspace(0.8, 1.1, max(rows, 1), dtype=np.float32)[:, None, None]
    image[hz:] = np.float32(scene.ground) * depth
    coarse = tex.standard_normal((max(h // 24, 2), max(w // 24, 2), 1), dtype=np.float32)
    blotches = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    fine = _noise(tex, h, w)[..., None]
    image[hz:] += 14.0 * blotches[hz:] + 7.0 * fine[hz:]
    clouds = cv2.resize(
        tex.standard_normal((3, 6, 1), dtype=np.float32),
        (w, max(hz, 1)),
        interpolation=cv2.INTER_CUBIC,
    )
    image[:hz] += 10.0 * np.clip(clouds, 0, None)[..., None]
    image = np.clip(image, 0, 255).astype(np.uint8)
    owner = np.zeros((h, w), np.uint8)
    painter = _Painter(image, owner)
    for item in scene.far:
        _paint_clutter(painter, item)
    return image


def _visible_box(
    owner: np.ndarray, ids: Sequence[int], roi: tuple[int, int, int, int]
) -> tuple[np.ndarray | None, int]:
    x1, y1, x2, y2 = roi
    window = owner[y1:y2, x1:x2]
    mask = np.isin(window, ids) if len(ids) > 1 else window == ids[0]
    count = int(np.count_nonzero(mask))
    if count == 0:
        return None, 0
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([x1 + xs[0], y1 + ys[0], x1 + xs[-1] + 1, y1 + ys[-1] + 1], np.int32), count


def _person_extent(person: Person) -> tuple[float, float, float, float]:
    hh = person.hh
    return (
        person.cx - 1.8 * hh,
        person.head_y - 0.7 * hh,
        person.cx + 1.8 * hh,
        person.head_y + 6.9 * hh,
    )


def _head_extent(person: Person) -> tuple[float, float, float, float]:
    hh = person.hh
    return (
        person.cx - 0.72 * hh,
        person.head_y - 0.68 * hh,
        person.cx + 0.72 * hh,
        person.head_y + 0.55 * hh,
    )


def _helmet_extent(item: LooseHelmet) -> tuple[float, float, float, float]:
    r = item.width * 0.75
    return item.cx - r, item.ground_y - r, item.cx + r, item.ground_y + r * 0.4


def _clip_roi(
    extent: tuple[float, float, float, float], w: int, h: int
) -> tuple[tuple[int, int, int, int], float]:
    """Integer window of an extent inside the image, and the fraction of its area inside."""
    x1, y1, x2, y2 = extent
    full = max((x2 - x1) * (y2 - y1), 1e-6)
    cx1, cy1 = max(0, int(math.floor(x1))), max(0, int(math.floor(y1)))
    cx2, cy2 = min(w, int(math.ceil(x2)) + 1), min(h, int(math.ceil(y2)) + 1)
    inside = max(0, min(x2, w) - max(x1, 0)) * max(0, min(y2, h) - max(y1, 0))
    return (cx1, cy1, max(cx1, cx2), max(cy1, cy2)), inside / full


def _depth(item: Person | LooseHelmet | Clutter) -> float:
    if isinstance(item, Person):
        return item.head_y + 6.7 * item.hh
    return item.ground_y


@dataclass
class _Tracked:
    """A labelled object while painting: enough to judge later how much of it stayed visible."""

    cls: int
    ids: tuple[int, ...]
    roi: tuple[int, int, int, int]
    painted: int  # its pixels in the frame right after it was painted, before anything covered it
    inside: float  # fraction of its full extent inside the frame
    minimum: float  # visible fraction needed for a label
    edge_hides: bool  # does a part beyond the frame edge count as hidden?
    head: int | None = None  # for a person: index of its head entry

    def visible_fraction(self, visible: int) -> float:
        if self.painted == 0 or self.inside <= 0:
            return 0.0
        full = self.painted / self.inside if self.edge_hides else self.painted
        return visible / full


def paint_scene(
    scene: Scene, rng: np.random.Generator, background: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a scene: BGR uint8 image and its boxes, int32 (N, 5) ``x1,y1,x2,y2,cls``.

    ``rng`` drives only per-frame effects (sensor noise); ``background`` may be passed in when the
    same scene is painted repeatedly (video).

    Labelling rules: a head or loose helmet needs :data:`MIN_HEAD_VISIBLE` of itself visible,
    where a part beyond the frame edge counts as hidden (half a head is not a head). A person
    needs :data:`MIN_PERSON_VISIBLE` of its in-frame part unoccluded (people cut by the frame edge
    are still people), and is always labelled when its head is.
    """
    w, h = scene.width, scene.height
    image = (_paint_background(scene) if background is None else background).copy()
    owner = np.zeros((h, w), np.uint8)
    painter = _Painter(image, owner)
    tracked: list[_Tracked] = []

    def track(cls: int, ids: tuple[int, ...], extent, minimum: float, edge_hides: bool) -> _Tracked:
        roi, inside = _clip_roi(extent, w, h)
        _, painted = _visible_box(owner, ids, roi)
        entry = _Tracked(cls, ids, roi, painted, inside, minimum, edge_hides)
        tracked.append(entry)
        return entry

    next_id = 1
    for item in sorted(scene.items, key=_depth):
        if next_id > 250:  # owner ids are uint8
            raise ValueError("too many labelled objects in one scene (max 125 people)")
        if isinstance(item, Person):
            body_id, head_id = next_id, next_id + 1
            next_id += 2
            _paint_person(painter, item, body_id, head_id)
            person = track(
                PERSON, (body_id, head_id), _person_extent(item), MIN_PERSON_VISIBLE, False
            )
            track(
                HELMET_ON if item.helmet else HELMET_OFF,
                (head_id,),
                _head_extent(item),
                MIN_HEAD_VISIBLE,
                True,
            )
            person.head = len(tracked) - 1
        elif isinstance(item, LooseHelmet):
            hid = next_id
            next_id += 1
            half_w = item.width / 2
            _paint_helmet(
                painter,
                item.cx,
                item.ground_y - 0.08 * half_w,
                half_w,
                half_w * 0.78,
                HELMET_COLOURS[item.colour],
                hid,
                item.angle,
            )
            track(HELMET, (hid,), _helmet_extent(item), MIN_HEAD_VISIBLE, True)
        else:
            _paint_clutter(painter, item)

    min_px = MIN_LABEL_PX * _scale(h)
    found: list[np.ndarray | None] = []
    for entry in tracked:
        box, visible = _visible_box(owner, entry.ids, entry.roi)
        big_enough = box is not None and box[2] - box[0] >= min_px and box[3] - box[1] >= min_px
        keep = big_enough and entry.visible_fraction(visible) >= entry.minimum
        found.append(box if keep else None)
    for i, entry in enumerate(tracked):
        if found[i] is None and entry.head is not None and found[entry.head] is not None:
            found[i], _ = _visible_box(
                owner, entry.ids, entry.roi
            )  # a visible head implies its person
    boxes = [[*box.tolist(), entry.cls] for entry, box in zip(tracked, found) if box is not None]
    image = _apply_domain(image, scene, rng)
    return image, np.asarray(boxes, np.int32).reshape(-1, 5)


def _apply_domain(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Lighting and camera effects of the domain, on the painted image.

    Tone changes go through one per-channel lookup table (cheap on uint8); only what needs
    per-pixel arithmetic (fog, glare, noise) touches floats.
    """
    h, w = image.shape[:2]
    out = cv2.GaussianBlur(image, (3, 3), 0.6)  # soften the painted edges like a lens would
    levels = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    if scene.domain == "night":
        tint = np.float32([[1.25, 0.95, 0.78]])  # bluish (BGR)
        lut = (levels**scene.night_gamma) * (255.0 * scene.night_gain * scene.brightness) * tint
    else:
        lut = levels * (255.0 * scene.brightness) * np.ones((1, 3), np.float32)
    lut_u8 = np.clip(lut + 0.5, 0, 255).astype(np.uint8).reshape(1, 256, 3)
    out = cv2.LUT(out, lut_u8)
    light = np.zeros((h, w, 1), np.float32)  # extra light and noise, added once at the end
    if scene.domain == "night" and scene.lamps:
        glow = np.zeros((h // 4 + 1, w // 4 + 1), np.float32)
        for x, y, r in scene.lamps:
            cv2.circle(glow, (int(x / 4), int(y / 4)), max(1, int(r / 4)), 1.0, -1, cv2.LINE_AA)
        halo = cv2.GaussianBlur(glow, (0, 0), sigmaX=max(2.0, 6.0 * _scale(h)))
        glow = np.maximum(glow, 0.8 * halo / max(float(halo.max()), 1e-6))
        light = cv2.resize(glow, (w, h), interpolation=cv2.INTER_LINEAR)[..., None] * np.float32(
            [200, 235, 255]
        )
    elif scene.domain == "fog":
        ys = np.arange(h, dtype=np.float32)
        depth = np.clip((h - ys) / max(h - scene.horizon, 1.0), 0.0, 1.0) ** 0.7
        alpha = (scene.fog_density * (0.35 + 0.65 * depth))[:, None, None]
        out = (out * (1 - alpha) + alpha * np.float32([205, 205, 200])).astype(np.float32)
    noise = _noise(rng, h, w)[..., None] * np.float32(scene.noise_sigma)
    if scene.domain == "night":  # colour noise of a sensor at high gain, coarser than luma noise
        chroma = np.dstack([_noise(rng, h, w)[: h // 2 + 1, : w // 2 + 1] for _ in range(3)])
        noise = noise + cv2.resize(chroma, (w, h), interpolation=cv2.INTER_NEAREST) * np.float32(
            scene.noise_sigma * 0.5
        )
    total = out + (light + noise)
    return np.clip(total, 0, 255).astype(np.uint8)


def render_scene(
    rng: np.random.Generator, domain: str, size: tuple[int, int] = (640, 360)
) -> tuple[np.ndarray, np.ndarray]:
    """A random scene of ``domain`` at ``size`` (width, height).

    Returns the BGR uint8 image (H, W, 3) and its boxes, int32 (N, 5) ``x1,y1,x2,y2,cls``.
    """
    scene = sample_scene(rng, domain, size)
    return paint_scene(scene, rng)


# ---------------------------------------------------------------------------------------------
# Files


def _domain_key(domain: str) -> int:
    """A stable number for a domain name (Python's hash() changes between runs)."""
    return zlib.crc32(domain.encode())


def generate_dataset(
    out_dir: Path,
    count: int,
    domain: str,
    seed: int,
    size: tuple[int, int] = (640, 360),
    index_name: str = "data.txt",
    append: bool = False,
) -> Path:
    """Write ``count`` scenes as JPEGs under ``out_dir/images/`` and index them.

    Returns the index path.

    Image ``i`` depends only on (seed, domain, i), so datasets are reproducible byte for byte.
    Without ``append`` the index is replaced; with it, numbering continues after the images of
    the same seed and domain already there and their lines are appended.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    index = out_dir / index_name
    prefix = f"{domain}-s{seed}-"
    start = 0
    if append:
        start = sum(1 for _ in images.glob(f"{prefix}*.jpg"))
    elif index.exists():
        index.unlink()
    samples = []
    for i in range(start, start + count):
        rng = np.random.default_rng([seed, _domain_key(domain), i])
        image, boxes = render_scene(rng, domain, size)
        path = images / f"{prefix}{i:06d}.jpg"
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
            raise RuntimeError(f"could not encode {path}")
        path.write_bytes(data.tobytes())
        samples.append(Sample(image=path, boxes=boxes))
    append_samples(index, samples)
    if not index.exists():
        index.touch()
    return index


def _walk(scene: Scene, rng: np.random.Generator) -> None:
    """Advance people one frame; someone who leaves the frame re-enters at the other side."""
    for item in scene.items:
        if not isinstance(item, Person):
            continue
        item.cx += item.vx
        item.phase += abs(item.vx) / max(item.hh, 1.0) * 0.9
        margin = 1.9 * item.hh
        if item.cx > scene.width + margin or item.cx < -margin:
            fresh = _sample_person(rng, scene.domain, scene.width, scene.height, scene.horizon)
            fresh.vx = item.vx
            fresh.cx = -margin + 1 if item.vx > 0 else scene.width + margin - 1
            item.__dict__.update(fresh.__dict__)


def render_video(
    out_path: Path,
    schedule: Sequence[tuple[str, float]],
    seed: int,
    fps: int = 25,
    size: tuple[int, int] = (1280, 720),
) -> Path:
    """Render a video following ``schedule`` (domain, seconds) and its ground truth beside it.

    Each schedule entry is one camera shot: a new scene whose people walk across it. Ground truth
    goes to ``out_path.with_suffix(".gt.jsonl")``, one JSON line per frame:
    ``{"frame": i, "domain": d, "boxes": [[x1, y1, x2, y2, cls], ...]}``.
    """
    if not schedule:
        raise ValueError("schedule is empty; give e.g. [('day', 20.0), ('night', 30.0)]")
    for domain, seconds in schedule:
        if domain not in DOMAINS:
            raise ValueError(
                f"unknown domain {domain!r} in schedule; choose one of {', '.join(DOMAINS)}"
            )
        if not seconds > 0:
            raise ValueError(f"duration for {domain!r} must be > 0 seconds, got {seconds}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    width, height = int(size[0]), int(size[1])
    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an mp4v video to {out_path}")
    gt_path = out_path.with_suffix(".gt.jsonl")
    frame_no = 0
    try:
        with open(gt_path, "w", encoding="utf-8") as gt:
            for shot, (domain, seconds) in enumerate(schedule):
                rng = np.random.default_rng([seed, _domain_key(domain), shot, 7])
                scene = sample_scene(rng, domain, (width, height), min_people=3)
                for item in scene.items:
                    if isinstance(item, Person):
                        speed = rng.uniform(0.25, 0.6) * item.hh / fps * 2.0  # about 1 m/s
                        item.vx = float(speed if rng.random() < 0.5 else -speed)
                background = _paint_background(scene)
                for _ in range(int(round(seconds * fps))):
                    image, boxes = paint_scene(scene, rng, background)
                    writer.write(image)
                    gt.write(
                        json.dumps({"frame": frame_no, "domain": domain, "boxes": boxes.tolist()})
                        + "\n"
                    )
                    frame_no += 1
                    _walk(scene, rng)
    finally:
        writer.release()
    return out_path


def load_ground_truth(gt_path: Path) -> dict[int, np.ndarray]:
    """Read a ``.gt.jsonl`` written by :func:`render_video`: frame number -> boxes int32 (N, 5)."""
    result: dict[int, np.ndarray] = {}
    with open(gt_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                boxes = np.asarray(record["boxes"], np.int32).reshape(-1, 5)
                result[int(record["frame"])] = boxes
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{gt_path}: line {line_no} is not a ground-truth record: {exc}"
                ) from None
    return result
