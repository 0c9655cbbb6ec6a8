"""Finding pairs: the folder layout, the CSV layout, the data.layout override, pairing problems."""

from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.split.layouts import LAYOUTS, find_inventory
from tests.helpers.datasets import make_dataset


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def csv_dataset(root: Path) -> str:
    make_dataset(root, count=3, image_dir="p", mask_dir="q")
    write_csv(root / "lists" / "pairs.csv", "image,mask", [f"p/{i:03d}.jpg,q/{i:03d}.png" for i in range(3)])
    return "lists/pairs.csv"


def folders_dataset(root: Path) -> str:
    make_dataset(root, count=3)
    return "images,masks"


# Each registered layout's tiny dataset of three pairs: layout name -> writer returning its arguments.
EXAMPLES = {"csv": csv_dataset, "folders": folders_dataset}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_registered_layout_reads_a_tiny_dataset_found_or_named(tmp_path: Path, name: str):
    if name not in EXAMPLES:
        pytest.fail(f"layout {name!r} has no example dataset in EXAMPLES")
    arguments = EXAMPLES[name](tmp_path)
    for value in (name, f"{name}:{arguments}"):
        inventory = find_inventory(tmp_path, value)
        assert inventory.layout["kind"] == name and inventory.bad == []
        assert [pair.id for pair in inventory.pairs] == ["000", "001", "002"]


def test_folders_pair_by_stem_ignoring_hidden_files_mask_suffixes_and_non_images(tmp_path: Path):
    make_dataset(tmp_path, count=3)
    (tmp_path / "masks" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "masks" / "001.png").rename(tmp_path / "masks" / "001_mask.png")
    inventory = find_inventory(tmp_path, "auto")
    assert inventory.layout == {"kind": "folders", "images": "images", "masks": "masks"}
    assert [pair.id for pair in inventory.pairs] == ["000", "001", "002"]
    assert inventory.pairs[1].mask.name == "001_mask.png"
    assert inventory.bad == [] and inventory.ignored == [tmp_path / "images" / "notes.txt"]


def test_reference_folder_names_are_found_one_level_down(tmp_path: Path):
    make_dataset(tmp_path / "Dataset-master", count=2, image_dir="Training_Images", mask_dir="Ground_Truth")
    inventory = find_inventory(tmp_path, "auto")
    assert inventory.layout["images"] == "Dataset-master/Training_Images" and len(inventory.pairs) == 2


def test_unpaired_files_on_both_sides_are_bad_samples_naming_the_file(tmp_path: Path):
    make_dataset(tmp_path, count=3)
    (tmp_path / "masks" / "000.png").unlink()
    (tmp_path / "images" / "002.jpg").unlink()
    inventory = find_inventory(tmp_path, "auto")
    assert [pair.id for pair in inventory.pairs] == ["001"]
    assert [(bad.reason, bad.files, bad.detail) for bad in inventory.bad] == [
        ("unpaired", (tmp_path / "images" / "000.jpg",), "image has no mask"),
        ("unpaired", (tmp_path / "masks" / "002.png",), "mask has no image"),
    ]
    assert inventory.found == 3


def test_duplicate_stems_are_bad_and_their_partner_is_not_called_unpaired(tmp_path: Path):
    make_dataset(tmp_path, count=2)
    (tmp_path / "images" / "001.png").write_bytes((tmp_path / "images" / "001.jpg").read_bytes())
    inventory = find_inventory(tmp_path, "auto")
    assert [pair.id for pair in inventory.pairs] == ["000"]
    [bad] = inventory.bad
    assert bad.reason == "duplicate_stem" and bad.detail == "2 image files share the name '001'"
    assert bad.files == (tmp_path / "images" / "001.jpg", tmp_path / "images" / "001.png")


def test_reference_style_csv_with_a_stale_prefix_is_resolved_and_preferred(tmp_path: Path):
    make_dataset(tmp_path, count=3, image_dir="Training_Images", mask_dir="Ground_Truth")
    write_csv(
        tmp_path / "train.csv",
        "masks,images",
        [f"Old-Name-master/Ground_Truth/{i:03d}.png,Old-Name-master/Training_Images/{i:03d}.jpg" for i in range(3)],
    )
    inventory = find_inventory(tmp_path, "auto")
    assert inventory.layout == {"kind": "csv", "csv": "train.csv"}
    assert [(pair.id, pair.image, pair.mask) for pair in inventory.pairs][0] == (
        "000",
        tmp_path / "Training_Images" / "000.jpg",
        tmp_path / "Ground_Truth" / "000.png",
    )
    assert len(inventory.pairs) == 3 and inventory.bad == []


def test_csv_with_absolute_windows_paths_and_a_missing_row(tmp_path: Path):
    make_dataset(tmp_path / "data", count=2)
    write_csv(
        tmp_path / "lists" / "pairs.csv",
        "Image Path,Mask_Path",
        [
            r"C:\Users\me\set\images\000.jpg,C:\Users\me\set\masks\000.png",
            "/home/me/set/images/001.jpg,/home/me/set/masks/001.png",
            "images/404.jpg,masks/404.png",
        ],
    )
    inventory = find_inventory(tmp_path, "auto")
    assert [pair.image for pair in inventory.pairs] == [
        tmp_path / "data/images/000.jpg",
        tmp_path / "data/images/001.jpg",
    ]
    [bad] = inventory.bad
    assert (bad.reason, bad.files) == ("missing_file", (tmp_path / "lists" / "pairs.csv",))
    assert bad.detail == "line 4: image 'images/404.jpg' not found; mask 'masks/404.png' not found"


def test_csv_paths_cannot_escape_the_dataset_root(tmp_path: Path):
    root = make_dataset(tmp_path / "root", count=1)
    make_dataset(tmp_path / "outside", count=1)
    write_csv(root / "pairs.csv", "image,mask", ["../outside/images/000.jpg,../outside/masks/000.png"])
    inventory = find_inventory(root, "auto")
    assert inventory.pairs == [] and inventory.bad[0].reason == "missing_file"
    assert inventory.bad[0].detail == (
        "line 2: image '../outside/images/000.jpg' leaves the dataset folder; "
        "mask '../outside/masks/000.png' leaves the dataset folder"
    )


def test_csv_entry_matching_two_files_equally_well_is_named_ambiguous(tmp_path: Path):
    make_dataset(tmp_path, count=1)
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "000.jpg").write_bytes((tmp_path / "images" / "000.jpg").read_bytes())
    write_csv(tmp_path / "pairs.csv", "image,mask", ["000.jpg,masks/000.png"])
    [bad] = find_inventory(tmp_path, "auto").bad
    assert bad.detail == "line 2: image '000.jpg' matches several files (images/000.jpg, more/000.jpg)"


def test_two_pair_csvs_are_ambiguous_until_data_layout_names_one(tmp_path: Path):
    make_dataset(tmp_path, count=2)
    write_csv(tmp_path / "a.csv", "image,mask", ["images/000.jpg,masks/000.png"])
    write_csv(tmp_path / "b.csv", "image,mask", ["images/001.jpg,masks/001.png"])
    write_csv(tmp_path / "classes.csv", "id,label_name", ["1,person"])  # not a pair list
    with pytest.raises(
        DataError,
        match=r"several CSV files list image/mask pairs \(a.csv, b.csv\); choose one with data.layout: csv:<file>",
    ):
        find_inventory(tmp_path, "auto")
    assert [pair.id for pair in find_inventory(tmp_path, "csv:b.csv").pairs] == ["001"]
    assert len(find_inventory(tmp_path, "folders").pairs) == 2


def test_unusual_folder_names_need_the_override_and_the_error_says_so(tmp_path: Path):
    make_dataset(tmp_path, count=2, image_dir="rgb", mask_dir="segmentation")
    with pytest.raises(DataError, match="no image folder found.*data.layout to folders:<images folder>,<masks folder>"):
        find_inventory(tmp_path, "auto")
    inventory = find_inventory(tmp_path, "folders:rgb,segmentation")
    assert (
        inventory.layout == {"kind": "folders", "images": "rgb", "masks": "segmentation"} and len(inventory.pairs) == 2
    )
    with pytest.raises(DataError, match=r"data.layout: 'nope' is not a path inside the dataset root"):
        find_inventory(tmp_path, "folders:nope,segmentation")
    with pytest.raises(DataError, match="not a path inside"):
        find_inventory(tmp_path, "csv:../params.yaml")


def test_several_candidate_folders_are_ambiguous(tmp_path: Path):
    make_dataset(tmp_path / "train", count=1)
    make_dataset(tmp_path / "val", count=1)
    with pytest.raises(
        DataError, match=r"several candidate image/mask folders \(train/images, val/images, train/masks, val/masks\)"
    ):
        find_inventory(tmp_path, "auto")
