"""Decoding image files: what every entry point that reads a photo shares."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


def decode_image(data: bytes, name: str | Path) -> np.ndarray:
    """Decode to RGB uint8, whatever the file's channels (grayscale JPEGs exist in the wild)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{name}: cannot be decoded as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
