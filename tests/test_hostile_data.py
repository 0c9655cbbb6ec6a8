"""Hostile input, round two: names MLflow refuses, a tracking store in a missing folder, data too
small or too uniform to measure anything, and EXIF rotations the mask cannot confirm. Each is
refused before any work with one line saying what to change, or warned about in data/report.json."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_experiment_name, _validate_model_name
from PIL import Image

from pipeline.core.classes import PERSON
from pipeline.core.config import (
    MLFLOW_NAME_MAX_LENGTH,
    DataConfig,
    SplitConfig,
    experiment_name_problem,
    parse_config,
    registered_model_name_problem,
)
from pipeline.core.errors import ConfigError, DataError, TrackingError
from pipeline.split.layouts import Pair
from pipeline.split.preparation import build_split
from pipeline.split.report import EXIF_AMBIGUOUS, format_summary
from pipeline.split.samples import read_pair
from pipeline.split.splitting import MIN_PAIRS_PER_SPLIT, check_split_sizes, split_sizes
from pipeline.tracking import connect, tracking_uri
from tests.helpers.datasets import data_config, make_dataset
from tests.helpers.project import PROJECT_ROOT, load_params, write_params

# --- names MLflow refuses: checked with the rest of params.yaml, before any stage does work --------

# Names on both sides of each of MLflow's rules, and some it accepts that look odd.
NAMES = [
    "human-segmentation-unet",
    "bad name/with slash",
    "a:b",
    "ns:model",
    "/leading",
    "trailing/",
    ".",
    "..",
    "..hidden",
    "...",
    ".hidden",
    "a..b",
    "a.b",
    "name with spaces",
    " padded ",
    "\t",
    "   ",
    "ümlaut-ß-模型",
    "a@b",
    "a#b",
    "a%20b",
    "x" * MLFLOW_NAME_MAX_LENGTH,
]
# Refused here though MLflow's validator lets them through, each for a reason of its own.
STRICTER_MODEL_NAMES = {
    "a?b": "cuts the name short in a models:/NAME@champion URI",  # urllib reads '?' as a query
    "x" * (MLFLOW_NAME_MAX_LENGTH + 1): f"MLflow's registry holds at most {MLFLOW_NAME_MAX_LENGTH}",  # VARCHAR(256)
}
STRICTER_EXPERIMENT_NAMES = {
    "   ": "must be a name, not blank",
    "x" * (MLFLOW_NAME_MAX_LENGTH + 1): f"MLflow's stores hold at most {MLFLOW_NAME_MAX_LENGTH}",
}


def mlflow_accepts(validator, name: str) -> bool:
    try:
        validator(name)
    except MlflowException:
        return False
    return True


@pytest.mark.parametrize("name", NAMES, ids=lambda name: repr(name[:24]))
def test_the_model_name_rule_agrees_with_mlflows_own_validator(name: str):
    assert (registered_model_name_problem(name) is None) == mlflow_accepts(_validate_model_name, name)


@pytest.mark.parametrize("name", [name for name in NAMES if name.strip()], ids=lambda name: repr(name[:24]))
def test_the_experiment_name_rule_agrees_with_mlflows_own_validator(name: str):
    assert (experiment_name_problem(name) is None) == mlflow_accepts(_validate_experiment_name, name)


@pytest.mark.parametrize(
    "rule, validator, stricter",
    [
        (registered_model_name_problem, _validate_model_name, STRICTER_MODEL_NAMES),
        (experiment_name_problem, _validate_experiment_name, STRICTER_EXPERIMENT_NAMES),
    ],
    ids=["registered_model", "experiment"],
)
def test_names_refused_beyond_mlflows_validator_are_refused_for_the_stated_reason(rule, validator, stricter):
    for name, reason in stricter.items():
        assert mlflow_accepts(validator, name), name[:24]
        assert reason in rule(name), name[:24]


def params_with(**mlflow: str) -> dict:
    params = load_params()
    params["mlflow"].update(mlflow)
    return params


def test_a_registered_model_name_with_a_slash_fails_the_config_check_naming_the_key():
    with pytest.raises(ConfigError) as caught:
        parse_config(params_with(registered_model="bad name/with slash"), origin="params.yaml")
    assert str(caught.value).splitlines() == [
        "params.yaml is invalid:",
        "  - mlflow.registered_model: contains '/': MLflow refuses '/' and ':' in registered model names; "
        "write e.g. 'bad name-with slash' (got 'bad name/with slash')",
    ]


def test_every_refused_name_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        parse_config(params_with(experiment=" ", registered_model="..models"), origin="params.yaml")
    lines = str(caught.value).splitlines()
    assert lines[1] == "  - mlflow.experiment: must be a name, not blank (got ' ')"
    assert lines[2].startswith("  - mlflow.registered_model: MLflow refuses '.' and names starting with '..'")
    assert len(lines) == 3


def project_with(tmp_path: Path, params: dict) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    write_params(project / "params.yaml", params)
    return project


def run_stage(project: Path, name: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "stages" / f"{name}.py")],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.process
def test_the_first_stage_refuses_a_bad_registered_model_name_before_any_work(tmp_path: Path):
    # The name is only used by register, after training: fetch, the first stage, must already refuse it.
    project = project_with(tmp_path, params_with(registered_model="bad name/with slash"))
    done = run_stage(project, "fetch")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[:2] == [
        "fetch: error: params.yaml is invalid:",
        "  - mlflow.registered_model: contains '/': MLflow refuses '/' and ':' in registered model names; "
        "write e.g. 'bad name-with slash' (got 'bad name/with slash')",
    ]
    assert sorted(path.name for path in project.iterdir()) == ["params.yaml"]


# --- a local tracking store in a folder that does not exist ------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///{missing}/mlflow.db",
        "sqlite:///{missing}/mlflow.db?timeout=20",
        "file://{missing}/mlruns",
        "{missing}/mlruns",
    ],
    ids=["sqlite", "sqlite-query", "file-uri", "bare-path"],
)
def test_a_local_store_in_a_missing_folder_is_refused_naming_the_folder(tmp_path: Path, monkeypatch, uri: str):
    missing = tmp_path / "no" / "such" / "dir"
    uri = uri.format(missing=missing)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingError) as caught:
        connect("human-segmentation")
    message = str(caught.value)
    assert message.splitlines() == [message]
    assert message.startswith(f"MLFLOW_TRACKING_URI={uri}: the folder {missing} does not exist")
    assert f"mkdir -p {missing}" in message and "unset it" in message
    assert not (tmp_path / "no").exists()  # MLflow would have made every folder on the way


def test_a_store_under_a_file_is_refused_as_not_a_folder(tmp_path: Path, monkeypatch):
    (tmp_path / "notes.txt").write_text("a file")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'notes.txt' / 'mlflow.db'}")
    with pytest.raises(TrackingError, match=r"notes.txt is a file, not a folder; correct the variable"):
        tracking_uri()


@pytest.mark.parametrize(
    "uri", ["sqlite://", "sqlite:///:memory:", "http://tracking.example:5000", "postgresql://u@h/db"]
)
def test_stores_without_a_local_folder_pass_as_they_are(monkeypatch, uri: str):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking_uri() == uri


def test_a_store_in_an_existing_folder_is_used(tmp_path: Path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking_uri() == uri
    assert connect("hostile-data")
    assert (tmp_path / "mlflow.db").is_file()


# --- data too small or too uniform to measure anything ----------------------------------------------


def configs(
    val: float = 0.2, test: float = 0.2, classes: tuple[str, ...] = ("background", "person")
) -> tuple[DataConfig, SplitConfig]:
    data = data_config(classes)
    return data, SplitConfig(val_fraction=val, test_fraction=test, seed=0)


def split(raw: Path, out: Path, **config) -> dict:
    return build_split(raw, out / "split", out / "report.json", *configs(**config))


def test_a_three_image_dataset_is_refused_before_anything_is_written(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=3)
    with pytest.raises(DataError) as caught:
        split(raw, tmp_path / "out", val=0.2, test=0.1)
    message = str(caught.value)
    assert message.splitlines() == [message]
    assert message.startswith(
        "3 pairs (counting exact duplicates once) split into train 1, val 1, test 1 "
        "(split.val_fraction 0.2, split.test_fraction 0.1): train, val and test each need at least 2 pairs"
    )
    assert message.endswith("Add pairs (at least 15 at these fractions). Nothing was written.")
    assert list((tmp_path / "out").iterdir()) == []  # the split was staged there and is gone, leftovers too


def test_a_refused_split_keeps_the_previous_one(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=10)
    first = split(raw, tmp_path / "out")
    before = (tmp_path / "out" / "split" / "split.json").read_bytes(), (tmp_path / "out" / "report.json").read_bytes()
    for path in sorted((raw / "images").iterdir())[3:]:
        path.unlink()
        (raw / "masks" / f"{path.stem}.png").unlink()
    with pytest.raises(DataError, match="3 pairs"):
        split(raw, tmp_path / "out")
    after = (tmp_path / "out" / "split" / "split.json").read_bytes(), (tmp_path / "out" / "report.json").read_bytes()
    assert after == before and first["pairs"]["used"] == 10


def test_the_suggested_fraction_is_one_that_works(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=12)
    with pytest.raises(DataError) as caught:
        split(raw, tmp_path / "out", val=0.2, test=0.1)
    message = str(caught.value)
    assert "train 9, val 2, test 1" in message
    assert "Add pairs (at least 15 at these fractions); or raise split.test_fraction to 0.13." in message
    report = split(raw, tmp_path / "out", val=0.2, test=0.13)
    assert report["split"] == {"train": 8, "val": 2, "test": 2}


def test_duplicates_count_once_towards_the_minimum(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=5)
    for copy in range(3):  # the same photo three more times: 8 files, 5 distinct pictures
        (raw / "images" / f"10{copy}.jpg").write_bytes((raw / "images" / "000.jpg").read_bytes())
        (raw / "masks" / f"10{copy}.png").write_bytes((raw / "masks" / "000.png").read_bytes())
    with pytest.raises(
        DataError, match=r"^5 pairs \(counting exact duplicates once\) split into train 3, val 1, test 1"
    ):
        split(raw, tmp_path / "out")


@pytest.mark.parametrize("fractions", [(0.2, 0.1), (0.2, 0.2), (0.1, 0.05), (0.4, 0.4), (0.3, 0.15)])
def test_the_minimum_holds_for_every_dataset_size_and_the_advice_is_exact(fractions):
    val, test = fractions
    for count in range(1, 80):
        sizes = split_sizes(count, val, test)
        if min(sizes.values()) >= MIN_PAIRS_PER_SPLIT:
            check_split_sizes(count, val, test)
            continue
        with pytest.raises(DataError) as caught:
            check_split_sizes(count, val, test)
        message = str(caught.value)
        needed = int(message.split("at least ")[2].split(" ")[0])
        assert needed > count
        for more in range(needed, needed + 100):  # from there on, every count is enough
            assert min(split_sizes(more, val, test).values()) >= MIN_PAIRS_PER_SPLIT, (count, more, message)
        assert min(split_sizes(needed - 1, val, test).values()) < MIN_PAIRS_PER_SPLIT or needed - 1 > count
        for key, share in re.findall(r"raise split\.(val|test)_fraction to ([0-9.]*[0-9])", message):
            shares = {"val": val, "test": test, key: float(share)}
            assert min(split_sizes(count, shares["val"], shares["test"]).values()) >= MIN_PAIRS_PER_SPLIT


@pytest.mark.process
def test_the_split_stage_refuses_a_tiny_dataset_in_one_line(tmp_path: Path):
    params = load_params()
    params["data"].update(manifest=None, image_size=32)
    project = project_with(tmp_path, params)
    make_dataset(project / "data" / "raw", count=3)
    done = run_stage(project, "split")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    *progress, line = done.stderr.strip().splitlines()
    assert all(text.startswith("prepare:") for text in progress), progress  # tqdm's bar
    assert line.startswith("split: error: 3 pairs (counting exact duplicates once) split into train 1, val 1, test 1")
    assert not (project / "data" / "split").exists() and not (project / "data" / "report.json").exists()


def mask_warnings(report: dict) -> list[str]:
    return [warning for warning in report["warnings"] if "mask" in warning]


def rewrite_masks(raw: Path, value) -> None:
    for path in (raw / "masks").iterdir():
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(path), value(mask))


def test_all_empty_masks_are_warned_about_in_the_report_and_the_summary(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=10)
    rewrite_masks(raw, np.zeros_like)
    report = split(raw, tmp_path / "out")
    assert report["masks_with_class"] == {
        "background": {"train": 6, "val": 2, "test": 2},
        "person": {"train": 0, "val": 0, "test": 0},
    }
    (warning,) = mask_warnings(report)
    assert warning.startswith("every mask is empty (background only): there is nothing to learn")
    assert f"warning: {warning}" in format_summary(report).splitlines()


def test_all_full_masks_are_warned_about(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=10)
    rewrite_masks(raw, lambda mask: np.full_like(mask, 255))
    (warning,) = mask_warnings(split(raw, tmp_path / "out"))
    assert warning.startswith("every mask is person from edge to edge (no background pixel anywhere)")


def class_dataset(root: Path, labels: list[int]) -> Path:
    """One pair per entry of ``labels``: a rectangle of that class id on background."""
    make_dataset(root, count=len(labels))
    for index, label in enumerate(labels):
        mask = np.zeros((48, 48), np.uint8)
        mask[8 + index % 10 : 30, 6:40] = label
        cv2.imwrite(str(root / "masks" / f"{index:03d}.png"), mask)
    return root


def test_a_class_no_mask_holds_is_warned_about_by_name(tmp_path: Path):
    raw = class_dataset(tmp_path / "raw", [1] * 10)
    report = split(raw, tmp_path / "out", classes=("background", "cat", "dog"))
    assert mask_warnings(report) == [
        "class 'dog' (data.classes) appears in no mask: the model cannot learn it and its scores are not measured; "
        "check the masks' values, or remove it from data.classes"
    ]


def test_a_class_missing_from_a_split_is_warned_about_per_split(tmp_path: Path):
    raw = class_dataset(tmp_path / "raw", [1] * 9 + [2])
    report = split(raw, tmp_path / "out", classes=("background", "cat", "dog"))
    (holding,) = [name for name, count in report["masks_with_class"]["dog"].items() if count]
    missing = sorted({"train", "val", "test"} - {holding})
    warned = [warning for warning in mask_warnings(report) if warning.startswith("class 'dog' appears in no ")]
    assert sorted(warning.split(" ")[5] for warning in warned) == missing


def test_ordinary_data_gives_no_mask_warnings_and_few_held_out_pairs_are_named(tmp_path: Path):
    report = split(make_dataset(tmp_path / "raw", count=10), tmp_path / "out")
    assert mask_warnings(report) == []
    assert [warning for warning in report["warnings"] if "holds only" in warning] == [
        "val holds only 2 pairs: its scores are rough (one image moves a mean by up to 50%); "
        "more pairs or a larger split.val_fraction make them firmer",
        "test holds only 2 pairs: its scores are rough (one image moves a mean by up to 50%); "
        "more pairs or a larger split.test_fraction make them firmer",
    ]


# --- EXIF rotations that the mask's shape cannot confirm ----------------------------------------------


def exif_jpeg(stored_rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored_rgb).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def png(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def photo_with_subject(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright photo with a dark subject off centre (top left), and its mask on the stored pixels."""
    photo = np.full((height, width, 3), 220, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[4 : height // 2, 4 : width // 3] = 255
    photo[mask > 0] = 20
    return photo, mask


@pytest.mark.parametrize(
    "shape, orientation",
    [((48, 48), 6), ((48, 48), 8), ((48, 48), 3), ((40, 60), 3), ((40, 60), 2)],
    ids=["square-6", "square-8", "square-3", "wide-half-turn", "wide-mirror"],
)
def test_a_rotation_the_mask_cannot_confirm_keeps_the_photo_on_its_mask(shape, orientation: int):
    photo, mask = photo_with_subject(*shape)
    sample = read_pair(Pair("p", Path("p.jpg"), Path("p.png")), exif_jpeg(photo, orientation), png(mask), PERSON)
    assert iou(sample.image[..., 0] < 128, sample.mask > 0) > 0.9  # rotated, it was 0.00
    ((kind, detail),) = [(repair.kind, repair.detail) for repair in sample.repairs]
    assert kind == EXIF_AMBIGUOUS
    assert detail.startswith(f"EXIF orientation {orientation} not applied: the mask fits the {shape[1]}x{shape[0]}")
    assert "kept as stored, like the mask" in detail


def test_a_turned_photo_whose_mask_shows_the_upright_view_is_still_turned():
    photo, _ = photo_with_subject(40, 60)
    upright_mask = np.zeros((60, 40), np.uint8)
    sample = read_pair(Pair("p", Path("p.jpg"), Path("p.png")), exif_jpeg(photo, 6), png(upright_mask), PERSON)
    assert sample.image.shape[:2] == (60, 40) and [repair.kind for repair in sample.repairs] == ["exif_rotated"]


def test_the_report_lists_and_warns_about_photos_kept_as_stored(tmp_path: Path):
    raw = make_dataset(tmp_path / "raw", count=10)
    photo, mask = photo_with_subject(48, 48)
    (raw / "images" / "004.jpg").write_bytes(exif_jpeg(photo, 6))
    cv2.imwrite(str(raw / "masks" / "004.png"), mask)
    report = split(raw, tmp_path / "out")
    assert report["repairs_by_kind"] == {EXIF_AMBIGUOUS: 1}
    ((entry),) = report["repaired"]
    assert entry["id"] == "004" and entry["repairs"][0].startswith("EXIF orientation 6 not applied")
    (warning,) = [warning for warning in report["warnings"] if "EXIF" in warning]
    assert warning.startswith("1 photo(s) carry an EXIF rotation that their square or same-shaped masks cannot confirm")
    assert f"warning: {warning}" in format_summary(report)
