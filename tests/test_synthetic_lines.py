"""The synthetic-lines source: large images of thin curves, which a squashed input loses."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.errors import FetchError
from pipeline.fetch.dataset import build_manifest, fetch_dataset
from pipeline.split.layouts import find_inventory

COUNT = 3


def fetch(source: str, dest: Path, classes: int = 2) -> Path:
    return fetch_dataset(source, dest, manifest=None, cache_dir=dest.parent / "cache", classes=classes)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return fetch(f"synthetic-lines:{COUNT}", tmp_path_factory.mktemp("lines") / "raw")


@pytest.fixture(scope="module")
def pairs(raw: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (cv2.imread(str(raw / "images" / f"{i:04d}.jpg")), cv2.imread(str(raw / "masks" / f"{i:04d}.png"), 0))
        for i in range(COUNT)
    ]


def test_same_count_same_bytes_and_a_smaller_count_is_a_prefix(raw: Path, tmp_path: Path):
    again = fetch(f"synthetic-lines:{COUNT}", tmp_path / "again")
    fewer = fetch("synthetic-lines:1", tmp_path / "fewer")
    first = build_manifest(raw)
    assert len(first) == 2 * COUNT and build_manifest(again) == first
    assert build_manifest(fewer) == {name: digest for name, digest in first.items() if name[-8:-4] == "0000"}
    assert len(find_inventory(raw, "auto").pairs) == COUNT


def test_images_are_large_and_not_all_square_and_masks_are_binary(pairs):
    shapes = {image.shape[:2] for image, _ in pairs}
    assert all(height >= 2048 and width >= 2048 for height, width in shapes)
    assert any(height != width for height, width in shapes) and len(shapes) == COUNT
    for image, mask in pairs:
        assert mask.shape == image.shape[:2] and set(np.unique(mask).tolist()) == {0, 255}


def test_lines_are_two_to_four_pixels_wide(pairs):
    for _, mask in pairs:
        line = mask > 0
        # At most 4 across: the distance to the background stays within sqrt(5) (a 4-pixel diagonal),
        # except where lines cross or branch.
        inside = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[line]
        assert (inside > 5**0.5 + 1e-3).mean() < 0.01
        assert (inside >= 2).mean() > 0.05  # not all 2 across: 3- and 4-pixel lines have a middle
        # At least 2 across: nearly every line pixel lies in a 2 x 2 block of line pixels.
        block = line[:-1, :-1] & line[1:, :-1] & line[:-1, 1:] & line[1:, 1:]
        in_block = np.zeros_like(line)
        for down in (0, 1):
            for right in (0, 1):
                in_block[down : down + block.shape[0], right : right + block.shape[1]] |= block
        assert in_block[line].mean() > 0.99


def test_lines_cover_a_small_share_of_each_image(pairs):
    shares = [float((mask > 0).mean()) for _, mask in pairs]
    assert all(0.005 < share < 0.10 for share in shares), shares


def test_a_squashed_copy_loses_most_line_pixels(pairs):
    for _, mask in pairs:
        # Averaged down to 320 pixels, as the image is: most line pixels cover under half of their new pixel.
        small = cv2.resize(mask, (320, 320), interpolation=cv2.INTER_AREA) >= 128
        back = cv2.resize(small.astype(np.uint8), mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        assert back[mask > 0].mean() < 0.4
        # Sampled down, as split resizes masks: the few connected lines shatter into scattered pixels.
        sampled = cv2.resize(mask, (320, 320), interpolation=cv2.INTER_NEAREST)
        pieces = cv2.connectedComponents(mask)[0] - 1
        assert pieces < 20 and cv2.connectedComponents(sampled)[0] - 1 > 20 * pieces


def test_no_colour_threshold_finds_the_lines(pairs):
    for image, mask in pairs:
        line = mask > 0
        for channel in (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), *cv2.split(image)):
            on_line = np.bincount(channel[line], minlength=256)
            everywhere = np.bincount(channel.ravel(), minlength=256)
            for order in (slice(None), slice(None, None, -1)):  # lines darker, or lighter, than the cut
                dice = 2 * np.cumsum(on_line[order]) / (np.cumsum(everywhere[order]) + line.sum())
                assert dice.max() < 0.5


def test_lines_stand_out_from_the_ground_around_them(pairs):
    for image, mask in pairs:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        local = np.abs(gray.astype(np.int16) - cv2.medianBlur(gray, 9))  # a 9 x 9 median ignores thin lines
        assert local[mask > 0].mean() > 1.3 * local[mask == 0].mean()


@pytest.mark.parametrize(
    "source",
    ["synthetic-lines:0", "synthetic-lines:-3", "synthetic-lines:x", "synthetic-lines", "synthetic-lines:100001"],
)
def test_a_bad_count_is_named(tmp_path: Path, source: str):
    with pytest.raises(FetchError, match=f"data.source: '{source}': write synthetic-lines:N with N a whole number"):
        fetch(source, tmp_path / "raw")


def test_more_than_two_classes_is_refused_naming_the_key(tmp_path: Path):
    with pytest.raises(FetchError, match=r"data.classes: the synthetic-lines source .* 2 classes .* not 3"):
        fetch("synthetic-lines:1", tmp_path / "raw", classes=3)
    assert not (tmp_path / "raw").exists()
