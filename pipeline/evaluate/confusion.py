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
CELL = 72
MARGIN = 110  # room for the class names left of and above the grid
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


def _text(canvas: np.ndarray, text: str, x: int, y: int, colour=TEXT) -> None:
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def render_confusion(matrix: torch.Tensor, classes: ClassSpec) -> np.ndarray:
    """An RGB image: rows are the true classes, columns the predicted ones, each cell its share of the row."""
    shares = _shares(matrix)
    side = MARGIN + CELL * classes.count + 10
    canvas = np.full((side + 20, side, 3), BACKGROUND, np.uint8)
    _text(canvas, "true class (rows) vs predicted class (columns), share of the true class's pixels", 6, 16)
    for index, name in enumerate(classes.names):
        _text(canvas, name[:14], 6, MARGIN + 20 + index * CELL + CELL // 2)
        _text(canvas, name[:9], MARGIN + index * CELL + 4, MARGIN + 10)
    for row in range(classes.count):
        for column in range(classes.count):
            share = shares[row, column]
            colour = np.array(BACKGROUND, np.float32) * (1 - share) + HEAT * share
            top, left = MARGIN + 20 + row * CELL, MARGIN + column * CELL
            cv2.rectangle(canvas, (left, top), (left + CELL - 2, top + CELL - 2), colour.astype(np.uint8).tolist(), -1)
            _text(canvas, f"{share:.0%}", left + 14, top + CELL // 2 + 4, BACKGROUND if share > 0.5 else TEXT)
    return canvas
