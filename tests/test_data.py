import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data import (
    SegmentationDataset,
    decode_image,
    decode_mask,
    find_pairs,
    prepare,
    read_split_info,
    reconcile_mask,
    split_ids,
    eval_transform,
    train_transform,
    write_split,
    load_split,
)
from pipeline.errors import DataError
from tests.conftest import make_dataset


def test_pairs_by_stem_ignoring_hidden_files_and_mask_suffixes(tmp_path: Path):
    make_dataset(tmp_path, count=3)
    (tmp_path / "masks" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "masks" / "001.png").rename(tmp_path / "masks" / "001_mask.png")
    pairs = find_pairs(tmp_path)
    assert [pair.id for pair in pairs] == ["000", "001", "002"]
    assert pairs[1].mask.name == "001_mask.png"


def test_reference_layout_names_are_found(tmp_path: Path):
    make_dataset(tmp_path / "Dataset-master", count=2, image_dir="Training_Images", mask_dir="Ground_Truth")
    assert len(find_pairs(tmp_path)) == 2


def test_unpaired_files_are_all_named(tmp_path: Path):
    make_dataset(tmp_path, count=3)
    (tmp_path / "masks" / "000.png").unlink()
    (tmp_path / "images" / "002.jpg").unlink()
    with pytest.raises(DataError) as caught:
        find_pairs(tmp_path)
    assert "image without mask: " in str(caught.value) and "000.jpg" in str(caught.value)
    assert "mask without image: " in str(caught.value) and "002.png" in str(caught.value)


def test_missing_mask_folder_is_reported(tmp_path: Path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no mask folder found"):
        find_pairs(tmp_path)


def test_smaller_mask_with_same_aspect_is_resized_nearest():
    mask = np.zeros((50, 80), np.uint8)
    mask[10:30, 20:60] = 1
    resized = reconcile_mask(mask, (101, 160, 3), "m.png")
    assert resized.shape == (101, 160)
    assert set(np.unique(resized)) == {0, 1}
    assert abs(resized.mean() - mask.mean()) < 0.01


def test_mask_with_other_aspect_ratio_is_an_error_naming_the_file():
    with pytest.raises(DataError, match=r"bad\.png: mask is 80x80 but its image is 160x100"):
        reconcile_mask(np.zeros((80, 80), np.uint8), (100, 160, 3), "bad.png")


def test_masks_are_binarised_from_0_255_and_0_1():
    _, encoded = cv2.imencode(".png", np.array([[0, 255], [255, 0]], np.uint8))
    assert decode_mask(encoded.tobytes(), "a.png").tolist() == [[0, 1], [1, 0]]
    _, encoded = cv2.imencode(".png", np.array([[0, 1], [1, 0]], np.uint8))
    assert decode_mask(encoded.tobytes(), "b.png").tolist() == [[0, 1], [1, 0]]


def test_grayscale_photo_becomes_rgb_and_garbage_is_named():
    _, encoded = cv2.imencode(".jpg", np.full((8, 8), 200, np.uint8))
    assert decode_image(encoded.tobytes(), "g.jpg").shape == (8, 8, 3)
    with pytest.raises(DataError, match="broken.jpg: cannot be decoded"):
        decode_image(b"not an image", "broken.jpg")


@pytest.mark.parametrize("seed", [0, 42])
def test_split_is_disjoint_complete_and_independent_of_input_order(seed):
    ids = [f"{i}" for i in range(290)]
    first = split_ids(ids, 0.2, 0.1, seed)
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert split_ids(shuffled, 0.2, 0.1, seed) == first
    sets = [set(first[name]) for name in ("train", "val", "test")]
    assert sum(map(len, sets)) == 290 and set().union(*sets) == set(ids)
    assert (len(sets[1]), len(sets[2])) == (58, 29)


def test_another_seed_gives_another_split():
    ids = [f"{i}" for i in range(100)]
    assert split_ids(ids, 0.2, 0.1, 1)["test"] != split_ids(ids, 0.2, 0.1, 2)["test"]


def test_too_few_pairs_for_a_split_is_an_error():
    with pytest.raises(DataError, match="only 2 pairs"):
        split_ids(["a", "b"], 0.2, 0.1, 0)


def test_prepare_and_write_split_round_trip_byte_identical(tmp_path: Path):
    pairs = find_pairs(make_dataset(tmp_path / "raw", count=10))
    prepared = prepare(pairs, 32)
    assert prepared.images.shape == (10, 32, 32, 3) and prepared.masks.shape == (10, 32, 32)
    assert set(np.unique(prepared.masks)) == {0, 1}
    assignment = split_ids(prepared.ids, 0.2, 0.2, 3)
    write_split(tmp_path / "a", prepared, assignment)
    write_split(tmp_path / "b", prepare(pairs, 32), assignment)
    for name in ("train/images.npy", "train/masks.npy", "test/masks.npy", "split.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    info = read_split_info(tmp_path / "a")
    assert info["counts"] == {"train": 6, "val": 2, "test": 2} and info["data_hash"] == prepared.content_hash
    images, masks = load_split(tmp_path / "a", "test")
    row = prepared.ids.index(assignment["test"][0])
    assert np.array_equal(images[0], prepared.images[row]) and np.array_equal(masks[0], prepared.masks[row])


def test_content_hash_changes_with_the_data(tmp_path: Path):
    root = make_dataset(tmp_path, count=4)
    before = prepare(find_pairs(root), 32).content_hash
    cv2.imwrite(str(root / "masks" / "001.png"), np.zeros((48, 48), np.uint8))
    assert prepare(find_pairs(root), 32).content_hash != before


def test_dataset_yields_normalised_chw_images_and_binary_masks():
    images = np.full((2, 32, 32, 3), 128, np.uint8)
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[:, :16] = 1
    image, mask = SegmentationDataset(images, masks, eval_transform())[0]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert abs(float(image[0].mean()) - (128 / 255 - 0.485) / 0.229) < 0.05
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
