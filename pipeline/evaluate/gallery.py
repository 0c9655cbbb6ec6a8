"""Overlay gallery of the worst and best test images: photo, truth, prediction with its errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from ..core.classes import ClassSpec
from ..model.outputs import predicted_classes
from ..serve.palette import FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE, TRUTH, overlay_colours
from .predictions import Batch

CASES_EACH = 4  # worst and best
PANEL = 256  # display side of each panel; tiny training sizes are scaled up to stay legible
CAPTION = 26
GAP = 6
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
# Each legend colour is a square inside a dark frame: white ("correct") and light colours would
# vanish on the white background without one.
SWATCH, SWATCH_BORDER, SWATCH_TOP = 16, 2, 7  # outer side, frame width, top edge (px)
SWATCH_FRAME = (40, 40, 40)


def _cases_each(images: int, count: int) -> int:
    """How many worst and how many best of ``images`` the gallery shows: all of them when too few to split."""
    return min(count, images // 2) or images


def pick_cases(dice: list[float], count: int = CASES_EACH) -> list[tuple[str, int]]:
    """(label, index) of the ``count`` lowest then the ``count`` highest Dice scores, no image twice."""
    order = sorted(range(len(dice)), key=lambda index: (dice[index], index))
    count = _cases_each(len(order), count)
    worst = order[:count]
    best = [index for index in reversed(order[-count:]) if index not in worst]
    return [(f"worst {rank}", index) for rank, index in enumerate(worst, 1)] + [
        (f"best {rank}", index) for rank, index in enumerate(best, 1)
    ]


@dataclass(frozen=True)
class Case:
    """What the gallery draws of one image: the photo and the truth and predicted class ids, at the
    network's scale (S x S; h x w, the aspect kept, under data.resize longest)."""

    photo: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


class GalleryCases:
    """The images ``pick_cases`` can choose among a split's ``images``, kept while the split is
    scored: those among the lowest and the highest Dice so far. An image pushed out of both never
    comes back, so the split's picks are among those kept, and only a few images are ever held."""

    def __init__(self, images: int, count: int = CASES_EACH):
        self.count = _cases_each(images, count)
        self.kept: dict[int, Case] = {}
        self._dice: dict[int, float] = {}

    def offer(self, batch: Batch, dice: list[float], threshold: float | None) -> None:
        """Keep those of ``batch``'s images (with their ``dice``) that may be picked, and drop
        those that no longer can."""
        for offset, score in enumerate(dice):
            self._dice[batch.start + offset] = score
        order = sorted(self._dice, key=lambda index: (self._dice[index], index))
        wanted = {*order[: self.count], *order[-self.count :]}
        self._dice = {index: self._dice[index] for index in wanted}
        self.kept = {index: case for index, case in self.kept.items() if index in wanted}
        for offset in range(len(dice)):
            index = batch.start + offset
            if index in wanted:
                # The image's content only: under data.resize longest the rest of the square is padding.
                height, width = batch.content[offset]
                prediction = predicted_classes(batch.probabilities[offset : offset + 1], threshold)[0]
                self.kept[index] = Case(
                    np.array(batch.photos[offset, :height, :width]),
                    batch.masks[offset, 0, :height, :width].numpy().copy(),
                    prediction[:height, :width].numpy().copy(),
                )


def _tint(image: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = image.copy()
    out[where] = (0.35 * out[where] + 0.65 * np.array(colour)).astype(np.uint8)
    return out


def _truth_colours(classes: ClassSpec) -> tuple[tuple[int, int, int], ...]:
    """One colour per foreground class; binary keeps the single truth colour."""
    return (TRUTH,) if classes.binary else overlay_colours(classes)


def _panels(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, classes: ClassSpec) -> list[np.ndarray]:
    # Dimmed photo underneath, so the colours carry the message and the subject stays recognisable.
    dim = (image * 0.6).astype(np.uint8)
    # A pixel given the wrong foreground class is a false positive of the class predicted.
    errors = _tint(dim, (prediction == truth) & (truth > 0), TRUE_POSITIVE)
    errors = _tint(errors, (prediction > 0) & (prediction != truth), FALSE_POSITIVE)
    errors = _tint(errors, (prediction == 0) & (truth > 0), FALSE_NEGATIVE)
    painted = dim
    for class_id, colour in enumerate(_truth_colours(classes), start=1):
        painted = _tint(painted, truth == class_id, colour)
    return [_fit(panel) for panel in (image, painted, errors)]


def _fit(panel: np.ndarray) -> np.ndarray:
    """``panel`` scaled to PANEL on its longer side, its aspect kept, centred on a PANEL square."""
    height, width = panel.shape[:2]
    scale = PANEL / max(height, width)
    fitted_width, fitted_height = max(1, round(width * scale)), max(1, round(height * scale))
    fitted = cv2.resize(panel, (fitted_width, fitted_height), interpolation=cv2.INTER_NEAREST)
    if (fitted_height, fitted_width) == (PANEL, PANEL):
        return fitted
    square = np.full((PANEL, PANEL, 3), BACKGROUND, np.uint8)
    top, left = (PANEL - fitted_height) // 2, (PANEL - fitted_width) // 2
    square[top : top + fitted_height, left : left + fitted_width] = fitted
    return square


def _text(canvas: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int] = TEXT) -> None:
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)


def legend_swatches(classes: ClassSpec) -> list[tuple[tuple[int, int, int], str, int]]:
    """(colour, label, left edge of its swatch) of each legend entry, left to right."""
    truth = (
        ((TRUTH, "truth"),) if classes.binary else tuple(zip(overlay_colours(classes), classes.foreground, strict=True))
    )
    entries = []
    x = GAP
    for colour, label in (
        *truth,
        (TRUE_POSITIVE, "correct"),
        (FALSE_POSITIVE, "false positive"),
        (FALSE_NEGATIVE, "false negative"),
    ):
        entries.append((colour, label, x))
        x += SWATCH + 16 + 9 * len(label)
    return entries


def _legend(width: int, classes: ClassSpec) -> np.ndarray:
    strip = np.full((CAPTION + GAP, width, 3), BACKGROUND, np.uint8)
    inner = slice(SWATCH_BORDER, SWATCH - SWATCH_BORDER)
    for colour, label, x in legend_swatches(classes):
        swatch = strip[SWATCH_TOP : SWATCH_TOP + SWATCH, x : x + SWATCH]
        swatch[:] = SWATCH_FRAME
        swatch[inner, inner] = colour
        _text(strip, label, x + SWATCH + 6, 20)
    return strip


def render_gallery(cases: Mapping[int, Case], ids: list[str], dice: list[float], classes: ClassSpec) -> np.ndarray:
    """An RGB image: a legend, then one row per picked case of photo | truth | prediction.
    ``cases`` holds at least the images ``pick_cases(dice)`` picks, by their position among ``ids``;
    their truths and predictions are class ids (or booleans for binary)."""
    width = 3 * PANEL + 4 * GAP
    rows = [_legend(width, classes)]
    for label, index in pick_cases(dice):
        row = np.full((CAPTION + PANEL + GAP, width, 3), BACKGROUND, np.uint8)
        _text(row, f"{label}: {ids[index]}   Dice {dice[index]:.3f}   (photo | truth | prediction)", GAP, 18)
        case = cases[index]
        for column, panel in enumerate(
            _panels(case.photo, case.truth.astype(int), case.prediction.astype(int), classes)
        ):
            left = GAP + column * (PANEL + GAP)
            row[CAPTION : CAPTION + PANEL, left : left + PANEL] = panel
        rows.append(row)
    return np.concatenate(rows)
