"""End to end: `dvc repro` on a copy of the repository, the dataset served from 127.0.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import torch

from tests.conftest import copy_project, load_params, tiny_params, write_params
from tests.httpserver import FileServer
from tests.test_fetch import closed_port_url

pytestmark = pytest.mark.e2e
STAGES = ("fetch", "split", "train", "evaluate")


def run(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    # Stage commands call `python`: it must be this interpreter, with the package installed.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    # ...and import the copied code, not whichever checkout the package was installed from.
    env["PYTHONPATH"] = str(project)
    result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def repro(project: Path) -> set[str]:
    """Run `dvc repro`; return the stages that actually ran."""
    output = run(project, "dvc", "repro").stdout
    return set(re.findall(r"Running stage '(\w+)'", output))


def set_param(project: Path, section: str, key: str, value: object) -> None:
    params = load_params(project / "params.yaml")
    params[section][key] = value
    write_params(project / "params.yaml", params)


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_zip):
    root = copy_project(tmp_path_factory.mktemp("e2e"))
    with FileServer() as server:
        server.add("/master.zip", shared_zip.read_bytes())
        write_params(root / "params.yaml", tiny_params(load_params(root / "params.yaml"), server.url("/master.zip")))
        assert repro(root) == set(STAGES)
    yield root


@pytest.fixture(scope="module")
def client(project):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.MlflowClient()


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_metrics_files_hold_sane_numbers(project):
    train = read_json(project / "metrics" / "train.json")
    assert train["best_epoch"] in (1, 2)
    assert 0 < train["best_val_loss"] < 5 and 0 <= train["val_dice_at_best"] <= 1
    evaluation = read_json(project / "metrics" / "evaluate.json")
    for name in ("test_dice", "test_iou", "test_pixel_accuracy", "test_precision", "test_recall"):
        assert 0 <= evaluation[name] <= 1, name
    assert evaluation["test_dice"] > 0.3  # a foreground-everywhere guess scores about 0.4; anything sane is near it
    assert evaluation["threshold"] == 0.5
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
    evaluation = read_json(project / "metrics" / "evaluate.json")
    assert run.data.metrics["test_dice"] == pytest.approx(evaluation["test_dice"])


def test_registered_model_loads_and_predicts_any_batch_and_size(project, client):
    run_info = read_json(project / "models" / "run.json")
    version = client.get_model_version("human-segmentation-unet", run_info["model_version"])
    assert version.run_id == run_info["run_id"]
    model = mlflow.pytorch.load_model(f"models:/human-segmentation-unet/{run_info['model_version']}")
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 64, 64)).shape == (3, 1, 64, 64)
        assert model(torch.zeros(1, 3, 96, 128)).shape == (1, 1, 96, 128)
    pyfunc = mlflow.pyfunc.load_model(f"models:/human-segmentation-unet/{run_info['model_version']}")
    assert pyfunc.predict(np.zeros((2, 3, 160, 96), np.float32)).shape == (2, 1, 160, 96)


def test_repro_again_runs_nothing(project):
    assert repro(project) == set()


def test_changing_lr_reruns_train_and_evaluate_only(project, client):
    set_param(project, "train", "lr", 0.001)
    assert repro(project) == {"train", "evaluate"}
    versions = client.search_model_versions("name='human-segmentation-unet'")
    assert len(versions) == 2


def test_changing_threshold_reruns_evaluate_only(project):
    set_param(project, "evaluate", "threshold", 0.4)
    assert repro(project) == {"evaluate"}
    assert read_json(project / "metrics" / "evaluate.json")["threshold"] == 0.4


def test_changing_split_seed_reruns_all_but_fetch(project):
    set_param(project, "split", "seed", 7)
    assert repro(project) == {"split", "train", "evaluate"}


def test_predict_cli_writes_masks_at_original_size(project, tmp_path):
    photos = sorted((project / "data" / "raw" / "Training_Images").glob("*.jpg"))[:3]
    result = run(
        project, sys.executable, "-m", "pipeline", "predict", *map(str, photos), str(tmp_path / "missing.jpg"),
        "--model", "models/best.pt", "--out", str(tmp_path / "masks"), check=False,
    )
    assert "no such file, folder or matching glob" in result.stderr and result.returncode == 2
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = run(
        project, sys.executable, "-m", "pipeline", "predict", *map(str, photos), str(broken),
        "--model", "models:/human-segmentation-unet/1", "--out", str(tmp_path / "masks"), "--overlay", check=False,
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
    result = run(project, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "train.lr: Input should be greater than 0" in result.stderr + result.stdout
    direct = run(project, sys.executable, "stages/split.py", check=False)
    assert direct.returncode == 2 and "train.lr" in direct.stderr and "Traceback" not in direct.stderr
    set_param(project, "train", "lr", 0.001)


def test_unreachable_source_fails_with_one_clear_message(project):
    set_param(project, "data", "source", closed_port_url())
    result = run(project, sys.executable, "stages/fetch.py", check=False)
    assert result.returncode == 2
    assert "fetch: error: could not download data.source" in result.stderr
    assert "point data.source at a .zip, .tar.gz or folder" in result.stderr
    assert "Traceback" not in result.stderr
