"""A generated dataset of thin curves on large images: ``data.source: synthetic-lines:N``.

Roads or vessels seen from far: smooth random curves 2 to 4 pixels wide, several per image,
some branching off others and many crossing, on a textured, noisy background. The lines differ
from the ground around them, not from every pixel of the image: the background drifts in
colour across the frame, soft blobs of the lines' colour lie about, and lines fade in and out,
so no colour threshold separates them; their shape does. The images are over 2048 pixels on a
side (WIDTHS, HEIGHTS) and rarely square, and a model sees the lines only at (or near) full
resolution: squashed to a few hundred pixels, a line is a fraction of a pixel wide, its
contrast averages away and its mask falls apart into scattered pixels.
Image ``i`` depends only on ``i``, as in ``synthetic:N``. Masks are 0/255 (background, line).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..core.errors import FetchError
from .synthetic import write_pairs

WIDTHS = (2048, 2560)  # image width range, pixels
HEIGHTS = (2048, 3072)
# Dilating a one-pixel centre line by these draws it 2, 3 or 4 pixels across at any angle.
PENS = {
    2: np.ones((2, 2), np.uint8),
    3: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)),
    4: np.array([[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]], np.uint8),
}
STEP = 2.0  # pixels between a curve's points; its heading turns slowly enough that this is smooth


def _curve(rng: np.random.Generator, start: np.ndarray, heading: float, length: float) -> np.ndarray:
    """Points of a smooth curve from ``start``: its heading wanders as a sum of three slow sines,
    so that no bend is tighter than a radius of 20 pixels."""
    arc = np.arange(0, length, STEP)
    wavelengths = rng.uniform(300, 2000, 3)
    turn = sum(
        amplitude * np.sin(2 * np.pi * arc / wavelength + phase)
        for amplitude, wavelength, phase in zip(
            rng.uniform(0.2, 0.8, 3), wavelengths, rng.uniform(0, 2 * np.pi, 3), strict=True
        )
    )
    angles = heading + turn
    steps = STEP * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return start + np.cumsum(steps, axis=0)


def _curves(rng: np.random.Generator, width: int, height: int) -> list[tuple[np.ndarray, int]]:
    """Curves with their pen widths, added until they cover 1 to 3 % of the frame (counted from
    the points inside it, before crossings overlap); some branch off, no wider than their parent."""
    size = max(width, height)
    budget = rng.uniform(0.01, 0.03) * width * height
    curves: list[tuple[np.ndarray, int]] = []
    while budget > 0:
        start = rng.uniform((0, 0), (width, height))
        points = _curve(rng, start, rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.6) * size)
        family = [(points, int(rng.integers(2, 5)))]
        for _ in range(int(rng.integers(0, 3))):
            fork = int(rng.integers(0, len(points) - 1))
            along = points[fork + 1] - points[fork]
            away = np.arctan2(along[1], along[0]) + rng.choice((-1, 1)) * rng.uniform(0.4, 1.2)
            branch = _curve(rng, points[fork], away, rng.uniform(0.2, 0.6) * size)
            family.append((branch, int(rng.integers(2, family[0][1] + 1))))
        for curve, pen in family:
            inside = (curve[:, 0] >= 0) & (curve[:, 0] < width) & (curve[:, 1] >= 0) & (curve[:, 1] < height)
            budget -= int(inside.sum()) * STEP * pen
        curves += family
    return curves


def _field(rng: np.random.Generator, width: int, height: int, cell: int, spread: float, channels: int) -> np.ndarray:
    """Smooth noise varying over about ``cell`` pixels: a coarse random grid scaled up."""
    coarse = rng.normal(0, spread, (height // cell + 2, width // cell + 2, channels)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)


def _draw_mask(curves: list[tuple[np.ndarray, int]], width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for pen, kernel in PENS.items():
        # Fixed point with 4 fractional bits: the centre line follows the curve, not a rounded copy.
        drawn = [np.round(points * 16).astype(np.int32) for points, curve_pen in curves if curve_pen == pen]
        centres = np.zeros_like(mask)
        cv2.polylines(centres, drawn, isClosed=False, color=255, thickness=1, lineType=cv2.LINE_8, shift=4)
        mask |= cv2.dilate(centres, kernel)
    return mask


def _blobs(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Soft patches in the lines' colour, 0 to 1: what a colour threshold would take for lines.
    Drawn at an eighth of the size and scaled up: they are blurred anyway."""
    patches = np.zeros((height // 8 + 1, width // 8 + 1), np.float32)
    for _ in range(int(rng.integers(4, 10))):
        centre = (int(rng.integers(0, width // 8)), int(rng.integers(0, height // 8)))
        axes = (int(rng.integers(3, 15)), int(rng.integers(3, 15)))
        cv2.ellipse(patches, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.5, 1)), -1)
    return cv2.resize(cv2.GaussianBlur(patches, (0, 0), 1.5), (width, height), interpolation=cv2.INTER_LINEAR)


def make_pair(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` (H x W x 3 uint8 BGR, as OpenCV writes it) and its 0/255 line mask."""
    rng = np.random.default_rng([index, 20261204])
    width = int(rng.integers(WIDTHS[0], WIDTHS[1], endpoint=True))
    height = int(rng.integers(HEIGHTS[0], HEIGHTS[1], endpoint=True))
    mask = _draw_mask(_curves(rng, width, height), width, height)
    # Lines fade along their way; their edges are soft, as a lens draws them.
    fade = np.clip(0.8 + _field(rng, width, height, 128, 0.3, 1)[..., 0], 0.4, 1)
    cover = np.maximum(cv2.GaussianBlur(mask, (0, 0), 0.7) * (fade / 255), _blobs(rng, width, height))
    # Brightness: a drift across the frame about as wide as the lines' contrast, texture, grain.
    contrast = rng.choice((-1, 1)) * rng.uniform(35, 60)
    brightness = _field(rng, width, height, 256, 25, 1)[..., 0] + _field(rng, width, height, 16, 8, 1)[..., 0]
    brightness += rng.standard_normal((height, width), dtype=np.float32) * 9 + cover * contrast
    # Colour: the ground's and the lines' hues, both drifting a little.
    ground, line = rng.uniform(70, 180, (2, 3)).astype(np.float32)
    hue = ground + _field(rng, width, height, 384, 8, 3) + cover[..., None] * 0.3 * (line - ground)
    image = hue + brightness[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate(dest: Path, count: int, classes: int) -> None:
    """Write ``images/NNNN.jpg`` and ``masks/NNNN.png`` for ``count`` pairs under ``dest``."""
    if classes != 2:
        raise FetchError(
            "data.classes: the synthetic-lines source draws lines on a background, 2 classes "
            f"(e.g. [background, line]), not {classes}"
        )
    write_pairs(dest, count, make_pair)
