"""The prepared split on disk and how training reads it."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.core.images import decode_image
from pipeline.core.splits import SplitInfo, load_split
from pipeline.model.inputs import SegmentationDataset, eval_transform
from tests.helpers.datasets import build_test_split, make_dataset


def test_grayscale_photo_becomes_rgb_and_garbage_is_named():
    _, encoded = cv2.imencode(".jpg", np.full((8, 8), 200, np.uint8))
    assert decode_image(encoded.tobytes(), "g.jpg").shape == (8, 8, 3)
    with pytest.raises(DataError, match="broken.jpg: cannot be decoded"):
        decode_image(b"not an image", "broken.jpg")


def test_split_arrays_round_trip_with_ids_counts_and_hash(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=10)
    split_dir = build_test_split(raw, tmp_path, 32, 0.2, 0.2, seed=3)
    info = SplitInfo.read(split_dir)
    assert info.counts == {"train": 6, "val": 2, "test": 2} and info.image_size == 32 and len(info.data_hash) == 64
    images, masks = load_split(split_dir, "test")
    assert images.shape == (2, 32, 32, 3) and masks.shape == (2, 32, 32) and set(np.unique(masks)) <= {0, 1}
    first = cv2.cvtColor(cv2.imread(str(raw / "images" / f"{info.ids['test'][0]}.jpg")), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(first, (32, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(images[0].astype(int) - expected).max() <= 1


def test_dataset_yields_normalised_chw_images_and_binary_masks():
    images = np.full((2, 32, 32, 3), 128, np.uint8)
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[:, :16] = 1
    image, mask = SegmentationDataset(images, masks, eval_transform())[0]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert abs(float(image[0].mean()) - (128 / 255 - 0.485) / 0.229) < 0.05
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
