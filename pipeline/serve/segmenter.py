"""What every inference backend shares, without PyTorch: photos in at any size, brought to the
network's scale as ``data.resize`` says and padded to multiples of 32, the padding cut off the
probabilities, those back at each photo's size, and masks cut from them.

The ONNX backend (``onnx_backend.py``) and the served model import only this side of the
package, so serving needs neither PyTorch nor smp.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import cv2
import numpy as np

from ..core.classes import ClassSpec
from ..core.images import MAX_IMAGE_PIXELS
from ..core.resizing import at_network_scale, pad_to, padded_shape

T = TypeVar("T")


def image_batches(images: Iterable[tuple[T, np.ndarray]], size: int) -> Iterator[list[tuple[T, np.ndarray]]]:
    """Consecutive groups of at most ``size`` (key, image) pairs holding at most MAX_IMAGE_PIXELS
    pixels between them (one image may have that many), so only one group is decoded at a time."""
    batch: list[tuple[T, np.ndarray]] = []
    pixels = 0
    for key, image in images:
        if batch and (len(batch) == size or pixels + image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS):
            yield batch
            batch, pixels = [], 0
        batch.append((key, image))
        pixels += image.shape[0] * image.shape[1]
    if batch:
        yield batch


def at_photo_size(probabilities: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """One photo's C x h x w network probabilities (its content at the network's scale, the
    padding cut off: ``Segmenter.content_probabilities``) at its (height, width): H x W foreground
    probabilities for a binary model (one channel), H x W x C class probabilities otherwise.
    Evaluate scores the test split through this too, so its scores are those of predict's masks."""
    height, width = shape
    # Resized as probabilities, then cut: smoother edges than resizing a class map.
    return cv2.resize(probabilities.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_LINEAR)


def class_map(probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
    """H x W uint8 class ids from H x W foreground probabilities (binary: cut at ``threshold``)
    or H x W x C class probabilities (multi-class: the most probable class), as
    ``pipeline.model.outputs.predicted_classes`` derives them for the metrics."""
    if probabilities.ndim == 2:
        return (probabilities >= threshold).astype(np.uint8)
    return probabilities.argmax(axis=2).astype(np.uint8)


def soft_masks(probabilities: np.ndarray, classes: ClassSpec) -> dict[str, np.ndarray]:
    """8-bit soft masks (probability x 255, rounded) by file-name suffix: ``_probability`` for a
    binary model's foreground, ``_probability_<class>`` for each class after the background of a
    multi-class one (the background's is 255 minus their sum)."""
    scaled = np.rint(np.clip(probabilities, 0.0, 1.0) * 255).astype(np.uint8)
    foreground = [scaled] if probabilities.ndim == 2 else [scaled[:, :, index] for index in range(1, scaled.shape[2])]
    return dict(zip(soft_mask_suffixes(classes), foreground, strict=True))


def soft_mask_suffixes(classes: ClassSpec) -> list[str]:
    """The file-name suffixes ``soft_masks`` writes for these classes, in order."""
    if classes.binary:
        return ["_probability"]
    return [f"_probability_{name}" for name in classes.names[1:]]


@dataclass(frozen=True)
class Segmenter:
    """A model that turns RGB photos into masks. Subclasses run the network on a batch."""

    backend: ClassVar[str]

    image_size: int
    resize: str  # data.resize: pipeline/core/resizing.py
    threshold: float | None  # binary models only; multi-class ones take the top class
    tta: bool
    classes: ClassSpec

    def network_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """N x C x H x W float32 probabilities for N x H x W x 3 uint8 RGB images, H and W multiples of 32."""
        raise NotImplementedError

    def content_probabilities(self, contents: list[np.ndarray]) -> list[np.ndarray]:
        """C x h x w probabilities for h x w x 3 photos already at the network's scale: each padded
        to multiples of 32, run with the others of its padded shape, and the padding cut off
        again. Evaluate scores the test split through this, as predict runs."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, content in enumerate(contents):
            groups[padded_shape(content.shape[:2])].append(index)
        probabilities: list[np.ndarray] = [np.empty(0)] * len(contents)
        for shape, indices in groups.items():
            batch = np.stack([pad_to(contents[index], shape) for index in indices])
            for index, prob in zip(indices, self.network_probabilities(batch), strict=True):
                height, width = contents[index].shape[:2]
                probabilities[index] = prob[:, :height, :width]
        return probabilities

    def probabilities(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per pixel, at each image's own size: the foreground probability (H x W) of a binary
        model, the class probabilities (H x W x C) of a multi-class one."""
        contents = [at_network_scale(image, self.image_size, self.resize) for image in images]
        probs = self.content_probabilities(contents)
        return [at_photo_size(prob, image.shape[:2]) for prob, image in zip(probs, images, strict=True)]

    def class_maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """H x W uint8 class ids per image (0/1 for binary)."""
        return [class_map(prob, self.threshold) for prob in self.probabilities(images)]

    def mask_values(self, classes_map: np.ndarray) -> np.ndarray:
        """What a mask file holds: 0/255 for binary (viewable, as always), class ids otherwise."""
        return classes_map * 255 if self.classes.binary else classes_map

    def masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self.mask_values(classes_map) for classes_map in self.class_maps(images)]
