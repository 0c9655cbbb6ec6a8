"""The pixel confusion matrix of the test split: which class each true class is predicted as.

Written as a table (``metrics/confusion.csv``, every cell's pixel count) and drawn as an
image (``metrics/confusion.png``), since DVC's confusion template counts one row per
sample and a row per pixel would be millions of rows.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..core.classes import ClassSpec

CONFUSION_FIELDS = ("actual", "predicted", "pixels", "share_of_actual")
CELL = 72  # the smallest cell; wider when a class name needs it
PAD = 8
LINE = 20  # height of a line of text
FONT, SCALE, STROKE = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
TITLE = (
    "Test pixels: true class (rows) by predicted class (columns),",
    "each cell the share of the true class's pixels",
)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
HEAT = np.array([0, 114, 178], np.float32)  # Okabe-Ito blue, full strength at a share of 1


def _shares(matrix: torch.Tensor) -> np.ndarray:
    """Each cell as a share of its row (the true class's pixels); an absent class's row is 0."""
    counts = matrix.double().numpy()
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def confusion_rows(matrix: torch.Tensor, classes: ClassSpec) -> list[dict[str, object]]:
    shares = _shares(matrix)
    return [
        {
            "actual": actual,
            "predicted": predicted,
            "pixels": int(matrix[row, column]),
            "share_of_actual": float(shares[row, column]),
        }
        for row, actual in enumerate(classes.names)
        for column, predicted in enumerate(classes.names)
    ]


def _width(text: str) -> int:
    return cv2.getTextSize(text, FONT, SCALE, STROKE)[0][0]


def _text(canvas: np.ndarray, text: str, x: int, y: int, colour=TEXT) -> None:
    cv2.putText(canvas, text, (x, y), FONT, SCALE, colour, STROKE, cv2.LINE_AA)


def render_confusion(matrix: torch.Tensor, classes: ClassSpec) -> np.ndarray:
    """An RGB image: rows are the true classes, columns the predicted ones, each cell its share of the row.

    The canvas is sized from the text, so titles and class names are drawn whole."""
    shares = _shares(matrix)
    names = classes.names
    cell = max(CELL, max(map(_width, names)) + PAD)
    left = PAD + max(map(_width, (*names, "true class"))) + PAD
    header = LINE * len(TITLE) + PAD
    top = header + 2 * LINE
    width = max(left + cell * classes.count, *(PAD + _width(line) for line in TITLE)) + PAD
    canvas = np.full((top + cell * classes.count + PAD, width, 3), BACKGROUND, np.uint8)
    for index, line in enumerate(TITLE):
        _text(canvas, line, PAD, LINE * (index + 1))
    _text(canvas, "predicted class", left, header + LINE - 4)
    _text(canvas, "true class", PAD, top - 6)
    for index, name in enumerate(names):
        _text(canvas, name, PAD, top + index * cell + cell // 2 + 4)
        _text(canvas, name, left + index * cell + 4, top - 6)
    for row in range(classes.count):
        for column in range(classes.count):
            share = shares[row, column]
            colour = np.array(BACKGROUND, np.float32) * (1 - share) + HEAT * share
            y, x = top + row * cell, left + column * cell
            cv2.rectangle(canvas, (x, y), (x + cell - 2, y + cell - 2), colour.astype(np.uint8).tolist(), -1)
            _text(canvas, f"{share:.0%}", x + 14, y + cell // 2 + 4, BACKGROUND if share > 0.5 else TEXT)
    return canvas
