"""End to end: `dvc repro` on a copy of the repository, the dataset served from 127.0.0.1.

The module works in its own copy of the session's trained reference project (conftest.py's
``trained_project``); its tests run in file order and the later ones change params and rerun.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import onnxruntime as ort
import pytest
from ruamel.yaml import YAML

from pipeline.core.files import read_json
from pipeline.core.paths import AT_INPUT_SIZE
from pipeline.core.splits import SplitInfo
from pipeline.split.layouts import find_inventory
from pipeline.split.samples import read_pair
from tests.helpers import browser
from tests.helpers.httpserver import closed_port_url
from tests.helpers.modelstore import PAIRED, project_client
from tests.helpers.project import (
    PROJECT_ROOT,
    TRACKING_DB,
    copy_trained,
    repro,
    run,
    set_param,
)
from tests.helpers.serving import TORCHLESS

# First on PYTHONPATH, its sitecustomize makes `import torch` fail.

pytestmark = pytest.mark.e2e
REGISTERED = "human-segmentation-unet"
# The trained project's tiny run is 2 epochs long.
LONGER_EPOCHS = 10


@pytest.fixture(scope="module")
def project(module_folder, trained_project):
    return copy_trained(trained_project, module_folder("e2e"))


@pytest.fixture(scope="module")
def client(project):
    return project_client(project)


def val_per_image(path: Path) -> dict[str, float]:
    """A val_per_image.csv as Dice by image id; it has exactly the columns id and dice."""
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["id", "dice"]
    return {row["id"]: float(row["dice"]) for row in rows}


def all_foreground_dice(split: Path) -> float:
    """The test Dice of a guess blind to the image, foreground everywhere: per image 2|T| / (|T| + pixels)."""
    masks = np.load(split / "test" / "masks.npy")
    foreground = (masks.reshape(len(masks), -1) > 0).sum(axis=1)
    return float(np.mean(2 * foreground / (foreground + masks[0].size)))


def bootstrap_bounds(values: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of the mean of ``values``, computed here rather
    than by the pipeline: 10,000 resamples with replacement, drawn with seed 0."""
    draws = np.random.default_rng(0).integers(0, len(values), size=(10_000, len(values)))
    low, high = np.quantile(values[draws].mean(axis=1), [0.025, 0.975])
    return float(low), float(high)


def test_metrics_files_hold_sane_numbers(project):
    train = read_json(project / "metrics" / "train.json")
    assert train["best_epoch"] in (1, 2)
    assert 0 < train["best_val_loss"] < 5 and 0 <= train["val_dice_at_best"] <= 1
    evaluation = read_json(project / "metrics" / "evaluate.json")
    scores = ("dice", "iou", "precision", "recall")
    # The headline alone: each score with its interval, the loss, the threshold, the selection score.
    assert list(evaluation) == [
        *(f"test_{name}{part}" for name in scores for part in ("", "_ci_low", "_ci_high")),
        *("test_loss", "threshold", "val_dice_deployed"),
    ]
    details = read_json(project / "metrics" / "evaluate_details.json")
    at_photo_size = {"test_pixel_accuracy"} | {f"test_{name}_pooled" for name in (*scores, "pixel_accuracy")}
    at_input_size = {f"test_{name}{AT_INPUT_SIZE}" for name in scores} | {
        f"{name}{AT_INPUT_SIZE}" for name in at_photo_size
    }
    assert set(details) == at_photo_size | at_input_size
    for name, value in {**evaluation, **details}.items():
        assert 0 <= value <= 1 or name == "test_loss", name
    assert evaluation["test_dice"] > all_foreground_dice(project / "data" / "split")
    # evaluate.threshold is `auto`: the sweep's best on val.
    sweep = list(csv.DictReader((project / "metrics" / "threshold_sweep.csv").open()))
    assert len(sweep) == 19 and list(sweep[0]) == ["threshold", "dice", "iou", "precision", "recall", "chosen"]
    best = max(sweep, key=lambda row: float(row["dice"]))
    assert [row["threshold"] for row in sweep if row["chosen"] == "1"] == [str(evaluation["threshold"])]
    assert float(best["dice"]) == pytest.approx(evaluation["val_dice_deployed"])
    per_image = list(csv.DictReader((project / "metrics" / "test_per_image.csv").open()))
    assert list(per_image[0]) == ["id", *scores, "foreground_fraction"] and len(per_image) == 29
    # Each headline score and its interval follow from the per-image file alone.
    for name in scores:
        column = np.array([float(row[name]) for row in per_image])
        assert column.mean() == pytest.approx(evaluation[f"test_{name}"], rel=1e-6), name
        bounds = (evaluation[f"test_{name}_ci_low"], evaluation[f"test_{name}_ci_high"])
        assert bounds == pytest.approx(bootstrap_bounds(column), abs=1e-12), name
        assert bounds[0] <= evaluation[f"test_{name}"] <= bounds[1], name
    assert evaluation["test_dice_ci_low"] < evaluation["test_dice_ci_high"]
    # The deployed model's Dice on each validation image: exactly what val_dice_deployed averages.
    val_scores = val_per_image(project / "metrics" / "val_per_image.csv")
    assert sorted(val_scores) == sorted(read_json(project / "data" / "split" / "split.json")["ids"]["val"])
    assert len(val_scores) == 58 and len(set(val_scores.values())) > 1
    assert np.mean(list(val_scores.values())) == pytest.approx(evaluation["val_dice_deployed"], abs=1e-6)
    assert cv2.imread(str(project / "metrics" / "gallery.png")).shape[1] > 700
    card = (project / "models" / "model_card.md").read_text()
    assert read_json(project / "data" / "split" / "split.json")["data_hash"] in card and "Intended use" in card
    dice = (evaluation[key] for key in ("test_dice", "test_dice_ci_low", "test_dice_ci_high"))
    assert "- Dice {:.3f} [{:.3f}, {:.3f}]\n".format(*dice) in card
    history = (project / "metrics" / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_dice,val_iou,lr,epoch_seconds" and len(history) == 3


def test_mlflow_run_has_per_epoch_metrics_params_tags_and_test_metrics(project, client):
    run_info = read_json(project / "models" / "run.json")
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [1, 2]
    for name in ("train_loss", "val_loss", "val_iou", "lr", "epoch_seconds"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 2, name
    assert run.data.params["train.lr"] == "0.003" and run.data.params["model.encoder"] == "resnet18"
    assert len(run.data.tags["data_hash"]) == 64 and run.data.tags["git_commit"] != "unknown"
    assert "dvc.exp_name" not in run.data.tags  # a plain `dvc repro` is no experiment
    # The data report's numbers are tags under their report names, not metrics charted above the curves.
    headline = read_json(project / "data" / "report.json")["headline"]
    assert {name: float(run.data.tags[name]) for name in headline} == pytest.approx(headline, rel=1e-5)
    assert run.data.tags["data_pairs_used"] == "290" and not any(name.startswith("data") for name in run.data.metrics)
    (dataset,) = [found.dataset for found in run.inputs.dataset_inputs]
    assert dataset.digest == run.data.tags["data_hash"][:16] and dataset.source_type == "http"
    assert read_json(project / "data" / "split" / "split.json")["counts"] == json.loads(dataset.profile)
    # The evaluation is a run of its own under the training run, with the settings it used.
    assert not any(name.startswith("test_") for name in run.data.metrics)
    evaluation_run = client.get_run(read_json(project / "models" / "evaluation_run.json")["run_id"])
    assert evaluation_run.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert evaluation_run.info.run_name == f"{run.info.run_name} evaluation"
    assert evaluation_run.data.params == {"evaluate.threshold": "auto", "evaluate.tta": "False"}
    # Every score evaluate wrote, the headline's intervals and the details, and the export check.
    evaluation = read_json(project / "metrics" / "evaluate.json")
    scores = {**evaluation, **read_json(project / "metrics" / "evaluate_details.json")}
    assert {name: evaluation_run.data.metrics[name] for name in scores} == pytest.approx(scores)
    assert "test_recall_ci_high" in scores and "test_dice_pooled" in scores
    logged = {artifact.path for artifact in client.list_artifacts(evaluation_run.info.run_id, "evaluation")}
    assert logged == {
        f"evaluation/{name}"
        for name in (
            "confusion.csv",
            "confusion.png",
            "gallery.png",
            "model_card.md",
            "test_per_image.csv",
            "threshold_sweep.csv",
            "val_per_image.csv",
        )
    }


def test_registered_model_is_tagged_champion_and_predicts_any_batch_and_size(project, client):
    decision = read_json(project / "models" / "registry.json")
    assert (decision["version"], decision["alias"], decision["champion_version"]) == ("1", "champion", None)
    assert decision["metric"] == "val_dice_deployed" and "validation Dice" in decision["metric_description"]
    version = client.get_model_version("human-segmentation-unet", "1")
    run = client.get_run(read_json(project / "models" / "run.json")["run_id"])
    assert version.run_id == read_json(project / "models" / "evaluation_run.json")["run_id"]
    assert version.tags["registration_complete"] == "true"
    assert {key: version.tags[key] for key in ("data_hash", "git_commit")} == {
        key: run.data.tags[key] for key in ("data_hash", "git_commit")
    }
    evaluation = read_json(project / "metrics" / "evaluate.json")
    assert float(version.tags["test_dice"]) == evaluation["test_dice"] and version.tags["alias_decision"] == "champion"
    # The headline with its intervals is searchable; the details stay in the evaluation run.
    assert {key for key in version.tags if key.startswith("test_")} == {
        *(key for key in evaluation if key.startswith("test_")),
        "test_set",
    }
    deployed = evaluation["val_dice_deployed"]
    assert float(version.tags["val_dice_deployed"]) == decision["val_dice_deployed"] == deployed
    assert version.tags["alias_metric"] == "val_dice_deployed"
    assert [decision[key] for key in ("improvement", "improvement_ci_low", "improvement_ci_high")] == [None] * 3
    assert decision["paired_images"] is None and "paired_images" not in version.tags
    # The card evaluate wrote, then the decision register made.
    card, registry_decision = version.description.split("\n## Registry decision\n")
    assert card == (project / "models" / "model_card.md").read_text()
    assert "## Champion selection\n`val_dice_deployed`" in card
    assert "Alias **champion**: there was no champion yet." in registry_decision
    model = mlflow.pyfunc.load_model("models:/human-segmentation-unet@champion")
    assert model.unwrap_python_model().predictor.threshold == evaluation["threshold"]
    assert [mask.shape for mask in model.predict(np.zeros((3, 64, 64, 3)))] == [(64, 64)] * 3
    assert [mask.shape for mask in model.predict(np.zeros((1, 96, 130, 3)))] == [(96, 130)]


def test_onnx_export_is_verified_self_describing_and_takes_any_batch_and_size(project, client):
    check = read_json(project / "metrics" / "export.json")
    assert check["mask_agreement"] >= 0.999 and 0 <= check["max_abs_probability_diff"] < 1e-3
    assert (check["images"], check["pixels"]) == (29, 29 * 64 * 64)
    run_metrics = client.get_run(read_json(project / "models" / "evaluation_run.json")["run_id"]).data.metrics
    assert run_metrics["export_mask_agreement"] == check["mask_agreement"]
    session = ort.InferenceSession(str(project / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    metadata = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    assert metadata["threshold"] == read_json(project / "metrics" / "evaluate.json")["threshold"]
    assert metadata["classes"] == ["background", "person"] and metadata["tta"] is False
    for shape in [(1, 64, 64, 3), (3, 96, 128, 3)]:
        photos = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        probabilities = session.run(["probabilities"], {"image": photos})[0]
        assert probabilities.shape == (shape[0], 1, *shape[1:3])
        assert 0 <= probabilities.min() and probabilities.max() <= 1


def test_an_export_that_disagrees_with_pytorch_fails_evaluate_and_changes_nothing(project, client):
    exported = (project / "models" / "model.onnx").read_bytes()
    versions = len(client.search_model_versions("name='human-segmentation-unet'"))
    result = run(project, sys.executable, "stages/evaluate.py", INJECT_EXPORT_MISMATCH="1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(
        r"evaluate: error: the ONNX export disagrees with PyTorch fp32: mask agreement 0\.\d+%", result.stderr
    )
    assert "max probability difference" in result.stderr and "Traceback" not in result.stderr
    assert (project / "models" / "model.onnx").read_bytes() == exported
    assert len(client.search_model_versions("name='human-segmentation-unet'")) == versions


def _predict(project: Path, photos: list[Path], out: Path, *options: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pipeline", "predict", *map(str, photos), "--model", "models/best.pt"]
    result = run(project, *args, "--out", str(out), *options)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_predict_backends_agree_on_the_test_split_and_write_soft_masks(project, tmp_path):
    test_ids = set(read_json(project / "data" / "split" / "split.json")["ids"]["test"])
    photos = [path for path in sorted((project / "data" / "raw").rglob("*.jpg")) if path.stem in test_ids]
    assert len(photos) == 29
    for backend in ("torch", "onnxruntime"):
        result = _predict(project, photos, tmp_path / backend, "--backend", backend, "--probabilities")
        assert f", {backend})" in result.stdout
    threshold = read_json(project / "metrics" / "evaluate.json")["threshold"] * 255
    equal = total = 0
    for photo in photos:
        torch_mask, onnx_mask = (
            cv2.imread(str(tmp_path / backend / f"{photo.stem}.png"), cv2.IMREAD_UNCHANGED)
            for backend in ("torch", "onnxruntime")
        )
        equal, total = equal + int((torch_mask == onnx_mask).sum()), total + onnx_mask.size
        soft = cv2.imread(str(tmp_path / "onnxruntime" / f"{photo.stem}_probability.png"), cv2.IMREAD_UNCHANGED)
        assert soft.shape == onnx_mask.shape and soft.dtype == np.uint8
        # Cut at the threshold, the soft mask is the mask (but where rounding to 8 bits decides).
        assert not ((soft > threshold + 1) & (onnx_mask == 0)).any()
        assert not ((soft < threshold - 1) & (onnx_mask == 255)).any()
    assert equal / total >= 0.999
    assert ", onnxruntime)" in _predict(project, photos[:1], tmp_path / "default").stdout


def test_predicts_masks_of_the_test_photos_score_the_headline_test_dice_against_the_original_masks(project, tmp_path):
    """A user's check: predict on the original test photos, Dice of its masks against the original
    masks (repaired as the split stage repairs them, at the photo's size), mean over the photos."""
    info = SplitInfo.read(project / "data" / "split")
    pairs = {pair.id: pair for pair in find_inventory(project / "data" / "raw", "auto").pairs}
    test_pairs = [pairs[id_] for id_ in info.ids["test"]]
    _predict(project, [pair.image for pair in test_pairs], tmp_path / "masks")
    dice = []
    for pair in test_pairs:
        truth = read_pair(pair, pair.image.read_bytes(), pair.mask.read_bytes(), info.classes).mask > 0
        predicted = cv2.imread(str(tmp_path / "masks" / f"{pair.image.stem}.png"), cv2.IMREAD_UNCHANGED) > 0
        assert predicted.shape == truth.shape == cv2.imread(str(pair.image)).shape[:2]
        both = truth.sum() + predicted.sum()
        dice.append(2 * (truth & predicted).sum() / both if both else 1.0)
    evaluation = read_json(project / "metrics" / "evaluate.json")
    # Only pixels the two backends' probabilities put on opposite sides of the threshold may differ.
    assert np.mean(dice) == pytest.approx(evaluation["test_dice"], abs=0.001)


def test_example_client_segments_a_photo_with_the_onnx_file_alone(project, tmp_path):
    photo = next((project / "data" / "raw").rglob("*.jpg"))
    _predict(project, [photo], tmp_path / "predict")
    # Neither torch nor the pipeline package importable: NumPy, onnxruntime and OpenCV only.
    env = {**os.environ, "PYTHONPATH": str(TORCHLESS)}
    result = subprocess.run(
        [sys.executable, str(project / "examples" / "onnx_client.py"), str(project / "models" / "model.onnx")]
        + [str(photo), "--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "overlay.png")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"person \d+\.\d% of the pixels", result.stdout)
    client_mask = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(
        client_mask, cv2.imread(str(tmp_path / "predict" / f"{photo.stem}.png"), cv2.IMREAD_UNCHANGED)
    )
    assert cv2.imread(str(tmp_path / "overlay.png")).shape == cv2.imread(str(photo)).shape


def test_repro_again_runs_nothing(project):
    assert repro(project) == set()


def test_renaming_the_registered_model_reruns_register_only_and_registers_one_version(trained_project, tmp_path):
    """mlflow.registered_model is register's alone; an unchanged pipeline registers nothing new."""
    project = copy_trained(trained_project, tmp_path / "project")
    # A client of this copy's store that leaves the module's tracking URI alone.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / TRACKING_DB}")
    set_param(project, "mlflow", "registered_model", "renamed-unet")
    assert repro(project) == {"register"}
    (version,) = client.search_model_versions("name='renamed-unet'")
    assert version.run_id == read_json(project / "models" / "evaluation_run.json")["run_id"]
    assert read_json(project / "models" / "registry.json")["version"] == str(version.version)
    assert repro(project) == set()
    assert len(client.search_model_versions("name='renamed-unet'")) == 1
    assert len(client.search_model_versions("name='human-segmentation-unet'")) == 1


def declared_plots() -> dict[str, dict]:
    """dvc.yaml's top-level plots: title (or image path) -> its properties."""
    entries = YAML(typ="safe", pure=True).load((PROJECT_ROOT / "dvc.yaml").read_text())["plots"]
    return dict(next(iter(entry.items())) if isinstance(entry, dict) else (entry, {}) for entry in entries)


def axis_encodings(spec: object, axis: str) -> list[dict]:
    """Every encoding of ``axis`` in the chart (DVC's templates nest them in layers)."""
    if isinstance(spec, list):
        return [found for item in spec for found in axis_encodings(item, axis)]
    if not isinstance(spec, dict):
        return []
    found = [spec["encoding"][axis]] if axis in spec.get("encoding", {}) else []
    return found + [inner for key, value in spec.items() if key != "encoding" for inner in axis_encodings(value, axis)]


def axis_titles(spec: object, axis: str) -> set[str]:
    return {encoding["title"] for encoding in axis_encodings(spec, axis)}


def test_plots_show_draws_exactly_the_declared_charts_once_with_titles_and_axis_labels(project):
    shown = json.loads(run(project, "dvc", "plots", "show", "--json", check=True).stdout)
    declared = declared_plots()
    assert "errors" not in shown
    assert set(shown["data"]) == set(declared)
    for name, charts in shown["data"].items():
        (chart,) = charts  # each once
        if name.endswith(".png"):
            assert chart["type"] == "image" and Path(chart["url"]).exists()
            continue
        spec = chart["content"]
        assert spec["title"]["text"] == name
        assert axis_titles(spec, "x") == {declared[name]["x_label"]}, name
        assert axis_titles(spec, "y") == {declared[name]["y_label"]}, name
        if declared[name]["x"] == "epoch":  # whole epochs: no tick at 2.5
            assert all(x["axis"] == {"format": "d", "tickMinStep": 1} for x in axis_encodings(spec, "x")), name


def test_plots_page_renders_every_chart_in_a_browser(project, tmp_path):
    if reason := browser.missing():
        pytest.skip(reason)
    run(project, "dvc", "plots", "show", "--out", str(tmp_path / "plots"), check=True)
    try:
        page = browser.offline_page(tmp_path / "plots" / "index.html")
    except FileNotFoundError as missing:
        pytest.skip(f"no local copy of a script the page loads: {missing}")
    dom = browser.render(page.as_uri(), tmp_path / "profile", tmp_path / "plots.png")
    charts = [name for name in declared_plots() if not name.endswith(".png")]
    # vega-embed draws each chart into a canvas; a spec it cannot draw leaves its div empty.
    assert dom.count('class="marks"') == len(charts), dom[-2000:]
    assert dom.count("<img") == len(declared_plots()) - len(charts)
    assert (tmp_path / "plots.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("edited", "stale"),
    [
        # The gallery's and overlays' colours; register logs the served model, pipeline/serve's code.
        ("pipeline/serve/palette.py", {"evaluate", "register"}),
        ("pipeline/train/augmentation.py", {"train"}),
        ("pipeline/fetch/archive.py", {"fetch"}),  # split follows only if fetch's output changes
    ],
)
def test_a_code_change_makes_only_the_stages_that_run_it_stale(project, edited, stale):
    path = project / edited
    original = path.read_text()
    path.write_text(original + "# edited\n")
    try:
        status = run(project, "dvc", "status", check=True).stdout
    finally:
        path.write_text(original)
    assert set(re.findall(r"^(\w+):$", status, flags=re.MULTILINE)) == stale, status
    assert run(project, "dvc", "status", check=True).stdout.strip() == "Data and pipelines are up to date."


def test_a_rerun_differing_only_in_the_seed_leaves_the_champion_where_it_is(project, client, tmp_path):
    """Seeds 42 and 43 of the tiny run differ within the noise of the 58 validation images: the
    paired interval contains zero, so version 1 stays champion. Changing train.* reruns train,
    evaluate and register only."""
    set_param(project, "train", "seed", 43)
    assert repro(project) == {"train", "evaluate", "register"}
    decision = read_json(project / "models" / "registry.json")
    first = client.get_model_version(REGISTERED, "1")
    assert decision["champion_version"] == "1"
    assert decision["champion_val_dice_deployed"] == float(first.tags["val_dice_deployed"])
    assert decision["alias"] == "challenger" and decision["paired_images"] == 58
    assert decision["improvement_ci_low"] < 0 < decision["improvement_ci_high"]
    assert re.fullmatch(rf"not better than v1: {PAIRED}", decision["reason"])
    # Paired image by image: this run's scores minus those version 1's evaluation run logged.
    ours = val_per_image(project / "metrics" / "val_per_image.csv")
    logged = client.download_artifacts(first.run_id, "evaluation/val_per_image.csv", str(tmp_path))
    theirs = val_per_image(Path(logged))
    assert decision["improvement"] == pytest.approx(np.mean([ours[id_] - theirs[id_] for id_ in theirs]))
    assert client.get_registered_model(REGISTERED).aliases == {"champion": 1, "challenger": 2}
    second = client.get_model_version(REGISTERED, "2")
    assert second.tags["alias_reason"] == decision["reason"] and second.tags["paired_images"] == "58"
    assert float(second.tags["improvement_ci_low"]) == decision["improvement_ci_low"]
    assert f"Alias **challenger**: {decision['reason']}." in second.description


def test_changing_threshold_reruns_evaluate_and_register_only(project):
    set_param(project, "evaluate", "threshold", 0.4)
    assert repro(project) == {"evaluate", "register"}
    assert read_json(project / "metrics" / "evaluate.json")["threshold"] == 0.4


def test_a_clearly_better_run_is_promoted(project, client):
    """Trained five times as long (its threshold tuned on validation again), the model beats the
    champion on the same validation images by more than the noise."""
    champion = client.get_model_version_by_alias(REGISTERED, "champion").version
    set_param(project, "train", "epochs", LONGER_EPOCHS)
    set_param(project, "evaluate", "threshold", "auto")
    try:
        assert repro(project) == {"train", "evaluate", "register"}
    finally:
        set_param(project, "train", "epochs", 2)  # the tests below retrain at the tiny run's length
    decision = read_json(project / "models" / "registry.json")
    assert (decision["alias"], decision["champion_version"]) == ("champion", str(champion))
    assert decision["improvement_ci_low"] > 0 and decision["paired_images"] == 58
    assert re.fullmatch(rf"better than v{champion}: {PAIRED}", decision["reason"])
    assert client.get_registered_model(REGISTERED).aliases["champion"] == int(decision["version"])


def test_changing_split_seed_reruns_all_but_fetch(project):
    set_param(project, "split", "seed", 7)
    assert repro(project) == {"split", "train", "evaluate", "register"}
    decision = read_json(project / "models" / "registry.json")
    assert decision["alias"] == "challenger" and "validated on other data" in decision["reason"]


def test_predict_cli_writes_masks_at_original_size(project, tmp_path):
    photos = sorted((project / "data" / "raw" / "Training_Images").glob("*.jpg"))[:3]
    result = run(
        project,
        sys.executable,
        "-m",
        "pipeline",
        "predict",
        *map(str, photos),
        str(tmp_path / "missing.jpg"),
        "--model",
        "models/best.pt",
        "--out",
        str(tmp_path / "masks"),
    )
    assert "no such file, folder or matching glob" in result.stderr and result.returncode == 2
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = run(
        project,
        sys.executable,
        "-m",
        "pipeline",
        "predict",
        *map(str, photos),
        str(broken),
        "--model",
        "models:/human-segmentation-unet/1",
        "--out",
        str(tmp_path / "masks"),
        "--overlay",
    )
    assert result.returncode == 1, result.stderr
    assert "wrote 3 mask(s)" in result.stdout and f"skipped {broken}: cannot be decoded" in result.stdout
    for photo in photos:
        mask = cv2.imread(str(tmp_path / "masks" / f"{photo.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == cv2.imread(str(photo)).shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert (tmp_path / "masks" / f"{photo.stem}_overlay.png").exists()


def test_bad_param_fails_before_work_naming_the_key(project):
    set_param(project, "train", "lr", -1.0)
    result = run(project, "dvc", "repro")
    assert result.returncode != 0
    assert "train.lr: Input should be greater than 0" in result.stderr + result.stdout
    direct = run(project, sys.executable, "stages/split.py")
    assert direct.returncode == 2 and "train.lr" in direct.stderr and "Traceback" not in direct.stderr
    set_param(project, "train", "lr", 0.001)


def test_unreachable_source_fails_with_one_clear_message(project):
    set_param(project, "data", "source", closed_port_url())
    result = run(project, sys.executable, "stages/fetch.py")
    assert result.returncode == 2
    assert "fetch: error: could not download data.source" in result.stderr
    assert "point data.source at a .zip, .tar.gz or folder" in result.stderr
    assert "Traceback" not in result.stderr
