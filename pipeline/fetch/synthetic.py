"""A generated dataset of shapes on textured backgrounds: ``data.source: synthetic[:N]``.

For demos and tests without any download. Image ``i`` depends only on ``i`` (its own
seeded generator), so ``synthetic:40`` is the first 40 pairs of ``synthetic:100`` and
the same files come out on every run. Shapes differ from the background in colour and
texture, so a small network learns them in a few epochs; their sizes vary widely, from
specks to most of the frame, which gives the stratified split something to balance.
With more than two ``data.classes``, each foreground class is one shape kind (ellipse,
rectangle, pentagon, triangle, ring) and the masks hold class ids.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import FetchError

WIDTH, HEIGHT = 128, 96  # not square, as photos are not
SHAPE_KINDS = 5  # ellipse, rectangle, pentagon, triangle, ring
MAX_CLASSES = SHAPE_KINDS + 1


def _texture(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A smooth random field around ``base`` colour: a coarse noise grid scaled up, plus grain."""
    coarse = rng.normal(0, 30, (HEIGHT // 16 + 1, WIDTH // 16 + 1, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 8, (HEIGHT, WIDTH, 3)).astype(np.float32)
    return base + smooth + grain


def _draw_shape(rng: np.random.Generator, mask: np.ndarray, kind: int | None, label: int) -> None:
    """Draw one shape of ``kind`` (None: any of the first three, at random) into ``mask`` with value ``label``."""
    centre = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
    radius = int(rng.integers(4, HEIGHT // 2))
    kind = int(rng.integers(0, 3)) if kind is None else kind
    if kind == 0:
        axes = (radius, int(rng.integers(3, radius + 1)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, label, thickness=-1)
    elif kind == 1:
        cv2.rectangle(
            mask,
            (centre[0] - radius, centre[1] - radius // 2),
            (centre[0] + radius, centre[1] + radius // 2),
            label,
            -1,
        )
    elif kind == 4:
        cv2.circle(mask, centre, radius, label, thickness=max(2, radius // 3))  # a ring
    else:
        corners = 5 if kind == 2 else 3  # pentagon or triangle
        angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
        points = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [points.astype(np.int32)], label)


def make_pair(index: int, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` (H x W x 3 uint8 BGR, as OpenCV writes it) and its mask: 0/255 for two
    classes, else class ids, class ``k`` drawn as shape kind ``k - 1`` in a colour of its own."""
    rng = np.random.default_rng([index, 20240611])
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        # Binary: every kind is the one foreground class. (The draws stay in their original
        # order, so the two-class dataset is byte for byte what it always was.)
        label = 1 if classes == 2 else int(rng.integers(1, classes))
        _draw_shape(rng, mask, None if classes == 2 else label - 1, label)
    colours = rng.uniform(40, 215, (classes, 3)).astype(np.float32)
    # Keep the shapes visibly different from the background even when the colours are close.
    background = colours[0]
    colours[1:] = np.where(np.abs(colours[1:] - background) < 60, 255 - background, colours[1:])
    stripes = 25 * np.sin(np.arange(WIDTH, dtype=np.float32) / rng.uniform(1.5, 4))[None, :, None]
    layers = [_texture(rng, colour) + stripes for colour in colours[1:]]
    image = _texture(rng, background)
    for label, layer in enumerate(layers, start=1):
        image = np.where(mask[..., None] == label, layer, image)
    return np.clip(image, 0, 255).astype(np.uint8), mask * 255 if classes == 2 else mask


def generate(dest: Path, count: int, classes: int) -> None:
    """Write ``images/NNNN.jpg`` and ``masks/NNNN.png`` for ``count`` pairs of ``classes`` classes under ``dest``."""
    if not 2 <= classes <= MAX_CLASSES:
        raise FetchError(
            f"data.classes: the synthetic source draws one shape kind per class and has {SHAPE_KINDS} kinds, "
            f"so it makes 2 to {MAX_CLASSES} classes (background included), not {classes}"
        )
    write_pairs(dest, count, lambda index: make_pair(index, classes))


def write_pairs(dest: Path, count: int, make: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``images/NNNN.jpg`` and ``masks/NNNN.png`` under ``dest`` for pairs ``make(0)`` to
    ``make(count - 1)``, one pair in memory at a time."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, mask = make(index)
        name = f"{index:04d}"
        # Fixed JPEG quality and PNG compression: the same bytes every time, hence the same data hash.
        _write_encoded(dest / "images" / f"{name}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        _write_encoded(dest / "masks" / f"{name}.png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 3])


def _write_encoded(path: Path, pixels: np.ndarray, options: list[int]) -> None:
    # cv2.imwrite reports a failure only by returning False; encoding first makes it an error.
    ok, encoded = cv2.imencode(path.suffix, pixels, options)
    if not ok:
        raise FetchError(f"{path}: OpenCV could not encode the generated image")
    path.write_bytes(encoded.tobytes())
