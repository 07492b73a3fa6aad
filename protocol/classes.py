"""The helmet-detection classes, defined once.

Every box in a dataset index carries an integer class index into :data:`CLASS_NAMES` (or into the
``class_names`` manifest parameter, which defaults to the same list). What each class covers:

``person`` (0)
    A whole person: the box spans the visible body from the top of the head (or helmet) to the
    feet, arms included. Partly occluded people are boxed around their visible part.
``helmet`` (1)
    A loose helmet that is *not* worn: lying on the ground, on a shelf, in a hand. The box fits
    the helmet shell including its brim.
``helmet-on`` (2)
    A head wearing a helmet: one box around head and helmet together (from the top of the helmet
    dome to the chin). The worn helmet gets no separate ``helmet`` box.
``helmet-off`` (3)
    A bare head (no helmet): one box around the head, hair included.

The order is the seed's (``person,helmet,helmet-on,helmet-off``) so that indexes written for it
keep their meaning.
"""

from __future__ import annotations

from protocol.manifests import parse_class_names

__all__ = ["CLASS_NAMES", "parse_class_names"]

CLASS_NAMES: tuple[str, ...] = ("person", "helmet", "helmet-on", "helmet-off")


