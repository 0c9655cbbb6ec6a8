"""Decoding image files: what every entry point that reads a photo shares."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
# Pixels one image may have, read from the file's header before anything is decoded: a
# 20000 x 20000 PNG of one colour is a 1.6 MB upload that decodes to 1.2 GB, and predict and
# the served model hold a few times that while working on it. 40 million is a 40-megapixel photo
# (8000 x 5000); raise it here for larger ones, given the memory (about 20 bytes per pixel).
MAX_IMAGE_PIXELS = 40_000_000
# Images decoded and run through the network together by the served model (predict's default
# --batch-size). With at most MAX_IMAGE_PIXELS pixels per batch, it bounds the memory of a request
# whatever its image count.
INFERENCE_BATCH = 8


def open_image(data: bytes, name: str | Path) -> Image.Image:
    """Pillow's view of the file, its header read and no pixel decoded, once the size it declares
    is within MAX_IMAGE_PIXELS (a DataError if not). Pillow's own errors pass through:
    UnidentifiedImageError for a format it does not know, OSError and the like for a broken header."""
    limit = f"the limit of {MAX_IMAGE_PIXELS:,} pixels (MAX_IMAGE_PIXELS in pipeline/core/images.py); scale it down"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        raise DataError(f"{name}: image is larger than {limit}") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise DataError(f"{name}: {width}x{height} image is larger than {limit}")
    return image


def check_pixels(data: bytes, name: str | Path) -> bool:
    """Refuse an image whose header declares more than MAX_IMAGE_PIXELS pixels; False if Pillow
    cannot read the header at all (not an image, or a format only OpenCV knows)."""
    try:
        image = open_image(data, name)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
    image.close()
    return True


def decode_image(data: bytes, name: str | Path) -> np.ndarray:
    """Decode to RGB uint8, whatever the file's channels (grayscale JPEGs exist in the wild).

    Only formats whose size can be checked first are decoded (JPEG, PNG, BMP, TIFF, WebP, ...)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if check_pixels(data, name) else None
    if image is None:
        raise DataError(f"{name}: cannot be decoded as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
