"""Training augmentation. Only the train stage imports this: editing it reruns training alone."""

from __future__ import annotations

import albumentations as A
import cv2


def train_transform() -> A.Compose:
    # People stand upright, so no vertical flip; rotations and zoom stay small.
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            # Nearest neighbour for masks (albumentations' default, stated): interpolating class
            # ids would invent classes along the edges.
            A.Affine(
                scale=(0.9, 1.1),
                rotate=(-10, 10),
                translate_percent=(-0.05, 0.05),
                mask_interpolation=cv2.INTER_NEAREST,
                p=0.5,
            ),
            A.Normalize(),
        ]
    )
