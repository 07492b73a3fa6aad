"""Small real images for tests: bytes that every decoder (and the inbox's check) accepts."""

from __future__ import annotations

import cv2
import numpy as np


def image_bytes(seed: int, suffix: str = ".png", size: tuple[int, int] = (24, 32)) -> bytes:
    """A distinct noise image per ``seed``, encoded as ``suffix`` (``.png`` or ``.jpg``)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    ok, data = cv2.imencode(suffix, pixels)
    assert ok
    return data.tobytes()
