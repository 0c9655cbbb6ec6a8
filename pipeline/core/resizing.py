"""How a photo is brought to the network's scale (``data.resize``), and padded for it.

``squash`` resizes every photo to S x S (S = ``data.image_size``), whatever its aspect.
``longest`` resizes its longest side to S and keeps the aspect: the photo's content is then
h x w with max(h, w) = S, and it is padded at the bottom and right, by mirroring the content
(OpenCV's BORDER_REFLECT_101). The split stage pads to the S x S square, so training batches
stack; inference pads only up to the next multiple of 32 on each axis, which the network
needs (five poolings). Either way the network's output over the padding is cut away before
anything is scored or delivered: the content is always the top-left h x w.

Mirroring rather than a constant: a constant border is a large flat area the network never
meets in a photo (two thirds of the square for a 3:1 photo), which would pull the BatchNorm
statistics and the loss towards it; the mirrored border looks like the photo, its mask is
mirrored with it, so the labels over the padding are true for the pixels shown, and training
needs no ignore label.

The mode is an inference setting: it travels in split.json, in the checkpoint and in the ONNX
file's metadata, each read back through ``resize_mode``.
"""

from __future__ import annotations

import numpy as np

from .errors import PipelineError

RESIZE_MODES = ("squash", "longest")
# What network input sides must be multiples of: U-Net encoders downsample five times.
NETWORK_STRIDE = 32


def resize_problem(value: object) -> str | None:
    """Why ``value`` is not a resize mode; None when it is one."""
    if isinstance(value, str) and value in RESIZE_MODES:
        return None
    return f"unknown resize mode; choose one of: {', '.join(RESIZE_MODES)}"


def resize_mode(value: object, where: str, error: type[PipelineError]) -> str:
    """``value`` as read from split.json, a checkpoint or an ONNX file's metadata, checked: an
    ``error`` naming ``where`` when it is no resize mode (or missing: None)."""
    if value is None:
        raise error(f"{where}: records no resize mode ({', '.join(RESIZE_MODES)}); rerun the stage that wrote it")
    problem = resize_problem(value)
    if problem:
        raise error(f"{where}: resize {str(value)[:40]!r} in its metadata: {problem}")
    return str(value)


def describe(size: int, mode: str) -> str:
    """How the network sees a photo, in words (the model card's)."""
    if mode == "squash":
        return f"{size} x {size} px"
    return f"{size} px on the longest side, aspect kept"


def content_shape(shape: tuple[int, int], size: int, mode: str) -> tuple[int, int]:
    """The (height, width) a photo of ``shape`` (height, width) has at the network's scale."""
    if mode == "squash":
        return size, size
    height, width = shape[:2]
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def padded_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """``shape`` (height, width) rounded up to multiples of NETWORK_STRIDE: what the network is fed."""
    return tuple(-(-side // NETWORK_STRIDE) * NETWORK_STRIDE for side in shape[:2])  # type: ignore[return-value]


# OpenCV is imported by the two functions that use it: readers of split.json (the register
# stage) and config checks need only the geometry.


def at_network_scale(image: np.ndarray, size: int, mode: str, mask: bool = False) -> np.ndarray:
    """``image`` (H x W x 3, or an H x W ``mask`` of class ids) resized to its ``content_shape``:
    area interpolation for photos, nearest neighbour for masks (interpolated class ids would
    invent classes along the edges)."""
    import cv2

    height, width = content_shape(image.shape[:2], size, mode)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST if mask else cv2.INTER_AREA)


def pad_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` at the top left of ``shape`` (height, width), mirrored into the rest; itself when it fits exactly."""
    import cv2

    height, width = image.shape[:2]
    if (height, width) == tuple(shape):
        return image
    return cv2.copyMakeBorder(image, 0, shape[0] - height, 0, shape[1] - width, cv2.BORDER_REFLECT_101)
