"""The split stage on a messy dataset: the bad-sample policy, the report, duplicates, byte-identical reruns."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import DataConfig, SplitConfig
from pipeline.core.errors import DataError
from pipeline.core.splits import PHOTO_SIZE_MASKS, SplitInfo, load_split, read_photo_size_masks
from pipeline.split.preparation import build_split
from pipeline.split.report import format_summary
from tests.helpers.datasets import make_dataset
from tests.helpers.project import PROJECT_ROOT

SPLIT = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=3)


def data_config(policy: str = "error", layout: str = "auto") -> DataConfig:
    return DataConfig(
        source="unused",
        manifest=None,
        layout=layout,
        classes=["background", "person"],
        palette=None,
        on_bad_sample=policy,
        image_size=32,
        resize="squash",
    )


def messy_dataset(root: Path) -> Path:
    """Twelve good pairs plus one file of each troublesome kind."""
    make_dataset(root, count=12)
    images, masks = root / "images", root / "masks"
    mask = cv2.imread(str(masks / "000.png"), cv2.IMREAD_UNCHANGED)
    photo = cv2.imread(str(images / "000.jpg"))

    def other(k: int) -> np.ndarray:  # a photo of its own, so that only 109 duplicates another
        return np.roll(photo, 3 * k, axis=1)

    for stem in ("100", "101", "102", "103", "104", "105", "108", "109"):
        cv2.imwrite(str(masks / f"{stem}.png"), mask)
    whole = (images / "001.jpg").read_bytes()
    (images / "100.jpg").write_bytes(whole[: len(whole) // 2])  # truncated
    (images / "101.jpg").write_bytes(b"")  # zero bytes
    (images / "102.jpg").write_text("this is not a picture")  # not an image
    cv2.imwrite(str(images / "103.png"), np.dstack([other(1), np.full(photo.shape[:2], 255, np.uint8)]))  # RGBA
    cv2.imwrite(str(images / "104.tif"), other(2).astype(np.uint16) * 257)  # 16-bit
    cv2.imwrite(str(images / "105.jpg"), other(3))
    soft = np.zeros((48, 48), np.uint8)
    cv2.circle(soft, (24, 24), 12, 255, -1, cv2.LINE_AA)
    cv2.imwrite(str(masks / "105.png"), soft)  # anti-aliased
    cv2.imwrite(str(images / "106.jpg"), other(4))
    cv2.imwrite(str(masks / "106.png"), np.zeros((48, 20), np.uint8))  # other aspect ratio
    cv2.imwrite(str(images / "107.jpg"), other(5))  # no mask
    cv2.imwrite(str(images / "108.jpg"), other(6))
    cv2.imwrite(str(images / "108.png"), other(6))  # two images named 108
    cv2.imwrite(str(images / "109.png"), photo)  # same pixels as 000.jpg, other bytes
    (images / "README.txt").write_text("not part of the data")
    return root


def run(tmp_path: Path, root: Path, out: str = "out", **config) -> dict:
    return build_split(root, tmp_path / out / "split", tmp_path / out / "report.json", data_config(**config), SPLIT)


def test_error_policy_stops_naming_every_bad_file_at_once(tmp_path: Path):
    root = messy_dataset(tmp_path / "raw")
    with pytest.raises(DataError) as caught:
        run(tmp_path, root)
    message = str(caught.value)
    assert message.startswith("6 bad sample(s):")
    for name, reason in [
        ("100.jpg", "truncated or corrupt image"),
        ("101.jpg", "empty file (0 bytes)"),
        ("102.jpg", "not a readable image"),
        ("106.png", "mask is 20x48 but its image is 48x48"),
        ("107.jpg", "image has no mask"),
        ("108.png", "2 image files share the name '108'"),
    ]:
        assert any(name in line and reason in line for line in message.splitlines()), (name, message)
    assert "data.on_bad_sample: skip" in message
    # The folder the split was staged in is gone with everything in it: no split, no report, no leftovers.
    assert list((tmp_path / "out").iterdir()) == []


def test_skip_policy_drops_bad_samples_and_the_report_says_what_happened(tmp_path: Path):
    root = messy_dataset(tmp_path / "raw")
    report = run(tmp_path, root, policy="skip")
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["layout"] == {"kind": "folders", "images": "images", "masks": "masks"}
    assert report["pairs"] == {"found": 22, "used": 16, "repaired": 3, "skipped": 6}
    assert report["repairs_by_kind"] == {"16bit_to_8bit": 1, "alpha_dropped": 1, "mask_thresholded": 1}
    assert report["skipped_by_reason"] == {
        "duplicate_stem": 1,
        "empty_file": 1,
        "size_mismatch": 1,
        "truncated": 1,
        "unpaired": 1,
        "unreadable": 1,
    }
    assert [(entry["files"], entry["reason"]) for entry in report["skipped"]] == [
        (["images/100.jpg"], "truncated"),
        (["images/101.jpg"], "empty_file"),
        (["images/102.jpg"], "unreadable"),
        (["images/107.jpg"], "unpaired"),
        (["images/108.jpg", "images/108.png"], "duplicate_stem"),
        (["masks/106.png"], "size_mismatch"),
    ]
    assert [(entry["id"], entry["repairs"]) for entry in report["repaired"]] == [
        ("103", ["alpha channel dropped"]),
        ("104", ["16-bit image scaled to 8 bits"]),
        ("105", [report["repaired"][2]["repairs"][0]]),
    ]
    assert report["repaired"][2]["repairs"][0].endswith("(anti-aliased edges): thresholded at 128")
    assert report["ignored_files"] == ["images/README.txt"]
    assert report["image_size"]["most_common"] == {"48x48": 16}
    info = SplitInfo.read(tmp_path / "out" / "split")
    kept = sorted(id_ for ids in info.ids.values() for id_ in ids)
    assert kept == [f"{i:03d}" for i in range(12)] + ["103", "104", "105", "109"]
    assert report["split"] == info.counts == {"train": 10, "val": 3, "test": 3}
    for name, stats in report["foreground_fraction"].items():
        _, masks = load_split(tmp_path / "out" / "split", name)
        assert stats["pairs"] == len(masks) and stats["mean"] == pytest.approx(masks.mean(axis=(1, 2)).mean(), abs=1e-4)


def test_exact_duplicates_are_reported_and_share_a_split_whatever_the_seed(tmp_path: Path):
    root = messy_dataset(tmp_path / "raw")
    for seed in range(6):
        split = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=seed)
        report = build_split(root, tmp_path / "split", tmp_path / "report.json", data_config("skip"), split)
        [group] = report["duplicates"]
        assert group["ids"] == ["000", "109"]
        ids = SplitInfo.read(tmp_path / "split").ids
        assert "000" in ids[group["split"]] and "109" in ids[group["split"]]


def test_rerun_is_byte_identical_and_changed_data_changes_hash_and_split(tmp_path: Path):
    root = make_dataset(tmp_path / "raw", count=20)
    first = run(tmp_path, root, "a")
    run(tmp_path, root, "b")
    for name in (
        "report.json",
        "split/split.json",
        "split/train/images.npy",
        "split/val/masks.npy",
        "split/test/images.npy",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    cv2.imwrite(str(root / "masks" / "004.png"), np.zeros((48, 48), np.uint8))
    changed = run(tmp_path, root, "c")
    assert changed["data_hash"] != first["data_hash"]
    assert SplitInfo.read(tmp_path / "c" / "split").ids != SplitInfo.read(tmp_path / "a" / "split").ids


def test_summary_and_headline_carry_the_reports_numbers(tmp_path: Path):
    report = run(tmp_path, messy_dataset(tmp_path / "raw"), policy="skip")
    summary = format_summary(report)
    assert "pairs: 22 found, 16 used, 3 repaired, 6 skipped" in summary
    assert "skipped: duplicate_stem 1, empty_file 1, size_mismatch 1, truncated 1, unpaired 1, unreadable 1" in summary
    assert f"000 = 109 ({report['duplicates'][0]['split']})" in summary
    headline = report["headline"]
    assert {
        key: headline[key]
        for key in ("data_pairs_found", "data_pairs_used", "data_pairs_skipped", "data_duplicate_groups")
    } == {
        "data_pairs_found": 22.0,
        "data_pairs_used": 16.0,
        "data_pairs_skipped": 6.0,
        "data_duplicate_groups": 1.0,
    }
    assert headline["data_test_foreground"] == report["foreground_fraction"]["test"]["mean"]


def test_the_reference_layout_from_a_csv_with_exif_rotated_photos(tmp_path: Path):
    root = make_dataset(tmp_path / "raw", count=10, image_dir="Training_Images", mask_dir="Ground_Truth")
    rows = [f"Ground_Truth/{i:03d}.png,Training_Images/{i:03d}.jpg" for i in range(10)]
    (root / "train.csv").write_text(
        "masks,images\n" + "\n".join(f"Some-master/{row.replace(',', ',Some-master/')}" for row in rows)
    )
    # A portrait photo stored sideways, as phones do, with its mask drawn upright.
    stored = np.zeros((30, 40, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", exif=exif.tobytes())
    (root / "Training_Images" / "003.jpg").write_bytes(buffer.getvalue())
    cv2.imwrite(str(root / "Ground_Truth" / "003.png"), np.zeros((40, 30), np.uint8))
    report = run(tmp_path, root)
    assert report["layout"] == {"kind": "csv", "csv": "train.csv"}
    assert report["pairs"] == {"found": 10, "used": 10, "repaired": 1, "skipped": 0}
    assert report["repaired"] == [
        {
            "id": "003",
            "image": "Training_Images/003.jpg",
            "mask": "Ground_Truth/003.png",
            "repairs": ["image turned upright per EXIF orientation 8, as viewers and predict show it"],
        }
    ]


def test_the_test_split_keeps_its_repaired_masks_at_each_photos_own_size(tmp_path: Path):
    rng = np.random.default_rng(5)
    images, masks = tmp_path / "raw" / "images", tmp_path / "raw" / "masks"
    images.mkdir(parents=True), masks.mkdir(parents=True)
    drawn = {}
    for index in range(10):
        height = 2 * (15 + 3 * index)  # each photo a size of its own, none square
        mask = np.zeros((height // 2, 30), np.uint8)  # drawn at half the photo's size: split resizes it
        mask[rng.integers(0, height // 4) :, rng.integers(0, 15) :][:5, :7] = 255
        drawn[f"{index:03d}"] = mask
        cv2.imwrite(str(images / f"{index:03d}.jpg"), rng.integers(0, 255, (height, 60, 3), dtype=np.uint8))
        cv2.imwrite(str(masks / f"{index:03d}.png"), mask)
    run(tmp_path, tmp_path / "raw")
    split = tmp_path / "out" / "split"
    test_ids = SplitInfo.read(split).ids["test"]
    stored = list(read_photo_size_masks(split, "test", len(test_ids)))
    assert len(test_ids) == 2 and len(list((split / "test" / PHOTO_SIZE_MASKS).iterdir())) == 2
    for id_, mask in zip(test_ids, stored, strict=True):
        height, width = cv2.imread(str(images / f"{id_}.jpg")).shape[:2]
        expected = cv2.resize(drawn[id_], (width, height), interpolation=cv2.INTER_NEAREST) // 255
        assert mask.shape == (height, width) and np.array_equal(mask, expected)
    assert not (split / "train" / PHOTO_SIZE_MASKS).exists() and not (split / "val" / PHOTO_SIZE_MASKS).exists()
    with pytest.raises(DataError, match=r"000002.png: missing or unreadable; rerun the split stage"):
        list(read_photo_size_masks(split, "test", 3))


def test_the_report_gives_the_size_distribution_to_choose_the_image_size_by(tmp_path: Path):
    sizes = [(60, 30), (30, 60), (48, 48), (40, 30), (100, 20), (64, 48), (48, 64), (50, 50), (90, 40), (33, 100)]
    images, masks = tmp_path / "raw" / "images", tmp_path / "raw" / "masks"
    images.mkdir(parents=True), masks.mkdir(parents=True)
    for index, (width, height) in enumerate(sizes):
        mask = np.zeros((height, width), np.uint8)
        mask[: height // 2, : width // 2] = 255
        cv2.imwrite(str(images / f"{index:03d}.png"), np.full((height, width, 3), index, np.uint8))
        cv2.imwrite(str(masks / f"{index:03d}.png"), mask)
    sizes_report = run(tmp_path, tmp_path / "raw")["image_size"]
    assert sizes_report["shorter_side"] == {"min": 20, "median": 36.5, "max": 50}
    assert sizes_report["megapixels"] == {"min": 0.001, "median": 0.002, "max": 0.004}
    assert sizes_report["aspect_ratio"] == {
        "<0.50": 1,
        "0.50-0.70": 1,
        "0.70-0.90": 1,
        "0.90-1.11": 2,
        "1.11-1.43": 2,
        "1.43-2.00": 0,
        ">=2.00": 3,
    }
    assert sizes_report["shorter_than_image_size"] == 4  # shorter sides 30, 30, 30 and 20 below 32
    assert sizes_report["width"] == {"min": 30, "median": 49.0, "max": 100} and sizes_report["distinct"] == 10


# The split stage in a process of its own, printing its peak resident memory in KiB (Linux's ru_maxrss unit).
PEAK_RSS_OF_A_SPLIT = """
import resource, sys
from pathlib import Path
from tests.helpers.datasets import build_test_split
build_test_split(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), val_fraction=0.2, test_fraction=0.2)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.process
def test_the_split_stages_peak_memory_does_not_grow_with_the_number_of_pairs(tmp_path: Path):
    size, counts = 128, (40, 400)
    # Both at once: each process spends most of its seconds importing.
    splits = [
        subprocess.Popen(
            [sys.executable, "-c", PEAK_RSS_OF_A_SPLIT, str(raw), str(tmp_path / f"out{count}"), str(size)],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for count in counts
        for raw in [make_dataset(tmp_path / f"raw{count}", count=count, size=size)]
    ]
    peaks = []
    for split in splits:
        stdout, stderr = split.communicate(timeout=120)
        assert split.returncode == 0, stderr[-3000:]
        peaks.append(int(stdout.split()[-1]) * 1024)
    one_pair = size * size * 3 + size * size  # the resized image and mask a pair adds to data/split
    # Holding the pairs would add 360 pairs' arrays (a few times over, counting copies): 24 MB and more.
    assert peaks[1] - peaks[0] < 8 * one_pair, (peaks, one_pair)
