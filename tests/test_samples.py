"""Reading one pair: every kind of bad or odd file, written for real, and exactly what becomes of it."""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.core.classes import PERSON, ClassSpec
from pipeline.split.layouts import Pair
from pipeline.split.report import BadSample
from pipeline.split.samples import read_pair

PHOTO = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)  # 60 wide, 40 high, BGR
MASK = np.zeros((40, 60), np.uint8)
MASK[10:30, 15:45] = 255


def encode(array: np.ndarray, suffix: str) -> bytes:
    ok, encoded = cv2.imencode(suffix, array)
    assert ok
    return encoded.tobytes()


def read(image: bytes, mask: bytes, image_name: str = "p.jpg", mask_name: str = "p.png"):
    return read_pair(Pair("p", Path(image_name), Path(mask_name)), image, mask, PERSON)


def repairs(sample) -> list[tuple[str, str]]:
    return [(repair.kind, repair.detail) for repair in sample.repairs]


def test_clean_pair_passes_untouched():
    sample = read(encode(PHOTO, ".png"), encode(MASK, ".png"))
    assert np.array_equal(sample.image, PHOTO[..., ::-1]) and np.array_equal(sample.mask, MASK // 255)
    assert sample.repairs == []


@pytest.mark.parametrize(
    ("image", "reason", "detail"),
    [
        (b"", "empty_file", "empty file (0 bytes)"),
        (b"<html>404 Not Found</html>", "unreadable", "not a readable image (unknown format or corrupt)"),
    ],
)
def test_empty_and_non_image_files_are_rejected_by_name(image, reason, detail):
    assert read(image, encode(MASK, ".png"), "broken.jpg") == BadSample(reason, (Path("broken.jpg"),), detail)


def test_truncated_jpeg_is_rejected_even_where_opencv_would_decode_it_padded_with_grey():
    whole = encode(np.full((64, 64, 3), 120, np.uint8), ".jpg")
    cut = whole[: len(whole) - 40]
    bad = read(cut, encode(np.zeros((64, 64), np.uint8), ".png"), "cut.jpg")
    assert isinstance(bad, BadSample) and bad.reason == "truncated" and bad.files == (Path("cut.jpg"),)
    assert bad.detail.startswith("truncated or corrupt image (image file is truncated")


def test_zero_byte_mask_names_the_mask():
    bad = read(encode(PHOTO, ".png"), b"", "p.jpg", "empty.png")
    assert bad == BadSample("empty_file", (Path("empty.png"),), "empty file (0 bytes)")


def test_rgba_png_loses_its_alpha_and_keeps_its_colours():
    rgba = np.dstack([PHOTO, np.full((40, 60), 128, np.uint8)])
    sample = read(encode(rgba, ".png"), encode(MASK, ".png"))
    assert np.array_equal(sample.image, PHOTO[..., ::-1])
    assert repairs(sample) == [("alpha_dropped", "alpha channel dropped")]


def test_grayscale_jpeg_becomes_rgb():
    sample = read(encode(PHOTO[..., 0], ".jpg"), encode(MASK, ".png"))
    assert sample.image.shape == (40, 60, 3) and np.array_equal(sample.image[..., 0], sample.image[..., 2])
    assert repairs(sample) == [("grayscale_to_rgb", "grayscale image converted to RGB")]


def test_16_bit_tiff_is_scaled_to_8_bits():
    deep = PHOTO.astype(np.uint16) * 257
    sample = read(encode(deep, ".tiff"), encode(MASK, ".png"), "deep.tiff")
    assert sample.image.dtype == np.uint8 and np.array_equal(sample.image, PHOTO[..., ::-1])
    assert repairs(sample) == [("16bit_to_8bit", "16-bit image scaled to 8 bits")]


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """Stored 60 wide x 40 high, left half dark; orientation 6 shows it turned 90 degrees clockwise."""
    stored = np.full((40, 60, 3), 230, np.uint8)
    stored[:, :30] = 20
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def test_exif_rotated_jpeg_is_turned_upright_when_the_mask_was_drawn_upright():
    upright_mask = np.zeros((60, 40), np.uint8)
    upright_mask[:30] = 255
    sample = read(exif_rotated_jpeg(), encode(upright_mask, ".png"))
    assert sample.image.shape == (60, 40, 3)
    assert sample.image[:30].mean() < 60 < 200 < sample.image[30:].mean()  # the dark half is now on top
    assert repairs(sample) == [
        ("exif_rotated", "image turned upright per EXIF orientation 6, as viewers and predict show it")
    ]


def test_exif_orientation_is_ignored_when_the_mask_matches_the_stored_pixels():
    stored_mask = np.zeros((40, 60), np.uint8)
    stored_mask[:, :30] = 255
    sample = read(exif_rotated_jpeg(), encode(stored_mask, ".png"))
    assert sample.image.shape == (40, 60, 3) and sample.image[:, :30].mean() < 60
    assert repairs(sample) == [("exif_ignored", "EXIF orientation 6 ignored: the mask matches the stored pixels")]
    assert np.array_equal(sample.mask, stored_mask // 255)


def test_anti_aliased_mask_is_thresholded_and_recorded():
    soft = np.zeros((64, 64), np.uint8)
    cv2.circle(soft, (32, 32), 20, 255, thickness=-1, lineType=cv2.LINE_AA)
    assert len(np.unique(soft)) > 2
    sample = read(encode(np.zeros((64, 64, 3), np.uint8), ".png"), encode(soft, ".png"))
    assert set(np.unique(sample.mask)) == {0, 1}
    assert abs(int(sample.mask.sum()) - int((soft >= 128).sum())) == 0
    [(kind, detail)] = repairs(sample)
    assert kind == "mask_thresholded"
    assert detail == f"mask had {len(np.unique(soft))} grey levels (anti-aliased edges): thresholded at 128"


def test_a_photo_in_the_masks_folder_is_not_thresholded_into_a_label():
    bad = read(encode(PHOTO, ".png"), encode(cv2.cvtColor(PHOTO, cv2.COLOR_BGR2GRAY), ".png"), "p.jpg", "photo.png")
    assert bad.reason == "mask_values" and bad.files == (Path("photo.png"),)
    assert "of the mask's pixels are grey" in bad.detail and bad.detail.endswith("not a binary mask")


def test_class_label_masks_are_rejected_not_binarised():
    labels = (MASK // 255) * 2
    labels[0, 0] = 1
    bad = read(encode(PHOTO, ".png"), encode(labels, ".png"), "p.jpg", "labels.png")
    assert bad == BadSample(
        "mask_values", (Path("labels.png"),), "mask values 0, 1, 2 are neither 0/255 nor 0/1 (class labels?)"
    )


def test_colour_mask_is_rejected_but_grey_stored_as_rgb_is_reduced():
    colour = np.dstack([MASK, MASK // 2, MASK])
    bad = read(encode(PHOTO, ".png"), encode(colour, ".png"), "p.jpg", "colour.png")
    assert bad.reason == "mask_colour" and bad.files == (Path("colour.png"),)
    sample = read(encode(PHOTO, ".png"), encode(np.dstack([MASK] * 3), ".png"))
    assert repairs(sample) == [("mask_channels", "mask stored with several identical channels; one kept")]
    assert np.array_equal(sample.mask, MASK // 255)


@pytest.mark.parametrize("mask", [MASK // 255, MASK.astype(np.uint16) * 257], ids=["0/1", "16-bit 0/65535"])
def test_other_binary_conventions_pass_without_repair(mask):
    sample = read(encode(PHOTO, ".png"), encode(mask, ".png"))
    assert sample.repairs == [] and np.array_equal(sample.mask, MASK // 255)


def test_smaller_mask_with_the_same_aspect_is_resized_nearest():
    small = cv2.resize(MASK, (30, 20), interpolation=cv2.INTER_NEAREST)
    sample = read(encode(PHOTO, ".png"), encode(small, ".png"))
    assert sample.mask.shape == (40, 60) and set(np.unique(sample.mask)) == {0, 1}
    assert abs(sample.mask.mean() - (MASK // 255).mean()) < 0.02
    assert repairs(sample) == [("mask_resized", "mask resized from 30x20 to 60x40 (nearest neighbour)")]


def test_mask_with_another_aspect_ratio_is_rejected_naming_it():
    bad = read(encode(PHOTO, ".png"), encode(np.zeros((40, 40), np.uint8), ".png"), "p.jpg", "square.png")
    assert bad == BadSample(
        "size_mismatch",
        (Path("square.png"),),
        "mask is 40x40 but its image is 60x40; the aspect ratios differ, so the mask cannot be rescaled to fit",
    )


THREE = ClassSpec(("background", "road", "tree"), None)
PALETTE = ClassSpec(("background", "road", "tree"), ((0, 0, 0), (128, 64, 128), (0, 255, 0)))


def read_classes(mask: bytes, classes: ClassSpec, mask_name: str = "p.png"):
    return read_pair(Pair("p", Path("p.jpg"), Path(mask_name)), encode(PHOTO, ".jpg"), mask, classes)


def test_index_mask_keeps_class_ids_and_refuses_ids_beyond_the_classes():
    labels = np.zeros((40, 60), np.uint8)
    labels[:, 20:40], labels[:, 40:] = 1, 2
    sample = read_classes(encode(labels, ".png"), THREE)
    assert np.array_equal(sample.mask, labels) and sample.repairs == []
    labels[0, 0] = 7
    bad = read_classes(encode(labels, ".png"), THREE, "seven.png")
    assert bad == BadSample(
        "mask_values", (Path("seven.png"),), "mask values 7 are not class ids: data.classes lists 3 classes (ids 0-2)"
    )


def test_palette_mask_maps_exact_colours_and_names_an_unknown_one():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, 20:40] = (128, 64, 128)
    rgb[:, 40:] = (0, 255, 0)
    expected = np.zeros((40, 60), np.uint8)
    expected[:, 20:40], expected[:, 40:] = 1, 2
    sample = read_classes(encode(rgb[..., ::-1], ".png"), PALETTE)  # OpenCV writes BGR
    assert np.array_equal(sample.mask, expected)
    rgb[5, 5] = (127, 64, 128)  # an anti-aliased edge pixel: no exact match, no guess
    bad = read_classes(encode(rgb[..., ::-1], ".png"), PALETTE, "edge.png")
    assert bad == BadSample("mask_colour", (Path("edge.png"),), "mask colours [127, 64, 128] are not in data.palette")


def test_two_classes_with_a_palette_read_colours_not_grey_levels():
    two = ClassSpec(("background", "person"), ((0, 0, 0), (255, 0, 0)))
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[10:30, 15:45] = (255, 0, 0)
    assert np.array_equal(read_classes(encode(rgb[..., ::-1], ".png"), two).mask, (MASK > 0).astype(np.uint8))
