"""Hostile and broken input, injected for real at every entry point: fetch, split, predict, the
served model and the tracking server. Each test is one row of docs/reliability.md's table."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from pipeline.__main__ import main as cli
from pipeline.core.errors import FetchError
from pipeline.core.files import sha256_file
from pipeline.fetch.dataset import fetch_dataset
from tests.helpers.datasets import make_dataset
from tests.helpers.modelstore import NAME, tiny_checkpoint, use_store


def fetch(source: Path | str, tmp_path: Path) -> Path:
    return fetch_dataset(str(source), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)


def error_lines(capsys) -> list[str]:
    """What the command printed as errors (MLflow's own progress bars aside)."""
    return [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]


# --- fetch: a folder source ------------------------------------------------------------------


def test_folder_link_out_of_the_dataset_is_refused_naming_link_and_target(tmp_path: Path):
    secret = tmp_path / "home" / ".aws" / "credentials"
    secret.parent.mkdir(parents=True)
    secret.write_text("aws_secret_access_key = hunter2\n")
    dataset = make_dataset(tmp_path / "dataset", count=2)
    (dataset / "images" / "x.jpg").symlink_to(secret)
    with pytest.raises(FetchError) as caught:
        fetch(dataset, tmp_path)
    message = str(caught.value)
    assert f"{dataset}/images/x.jpg is a symbolic link to {secret}" in message and "outside the dataset" in message
    assert not (tmp_path / "raw").exists()
    copies = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != secret]
    assert not any(b"hunter2" in p.read_bytes() for p in copies)


def test_folder_link_to_the_root_of_the_disk_is_refused(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    (dataset / "disk").symlink_to("/")
    with pytest.raises(FetchError, match=r"disk is a symbolic link to /, outside the dataset"):
        fetch(dataset, tmp_path)
    assert not (tmp_path / "raw").exists()


def test_folder_links_that_stay_inside_are_followed(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    (dataset / "images" / "copy.jpg").symlink_to(dataset / "images" / "000.jpg")
    (dataset / "more").symlink_to("masks")
    raw = fetch(dataset, tmp_path)
    copied = raw / "images" / "copy.jpg"
    assert not copied.is_symlink() and copied.read_bytes() == (dataset / "images" / "000.jpg").read_bytes()
    assert sorted(p.name for p in (raw / "more").iterdir()) == ["000.png", "001.png"]


def test_folder_link_loop_is_refused(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    (dataset / "images" / "again").symlink_to("..")
    with pytest.raises(FetchError, match=r"images/again is a symbolic link to .*one of its own parent folders"):
        fetch(dataset, tmp_path)


def test_named_pipe_in_a_folder_is_refused_not_waited_on(tmp_path: Path):
    dataset = make_dataset(tmp_path / "dataset", count=2)
    os.mkfifo(dataset / "images" / "003.jpg")
    with pytest.raises(FetchError, match=r"images/003.jpg is not a regular file"):
        fetch(dataset, tmp_path)


# --- predict: a registered model -------------------------------------------------------------

HOSTILE_MODEL = """
import mlflow

open({marker!r}, "w").write("registered code ran")


class Hostile(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Hostile())
"""


def register_code(root: Path, code: str, **log_kwargs) -> str:
    """Registers ``code`` as a models-from-code pyfunc, as anyone with write access to the registry could."""
    use_store(root)
    script = root / "hostile_model.py"
    script.write_text(code)
    experiment = mlflow.get_experiment_by_name("tests").experiment_id
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(script), registered_model_name=NAME, **log_kwargs)
    return str(info.registered_model_version)


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", use_store(root))
    return root


def test_predict_never_runs_a_registered_models_code(store: Path, tmp_path: Path, capsys):
    checkpoint = tiny_checkpoint(store / "best.pt")
    marker = tmp_path / "marker"
    version = register_code(
        store,
        HOSTILE_MODEL.format(marker=str(marker)),
        artifacts={"checkpoint": str(checkpoint)},
        model_config={"threshold": 0.5, "tta": False, "checkpoint_sha256": sha256_file(checkpoint)},
    )
    marker.unlink(missing_ok=True)  # logging may have run it; only loading for predict counts
    photos = make_dataset(tmp_path / "photos", count=1)
    uri = f"models:/{NAME}/{version}"
    assert cli(["predict", str(photos / "images"), "--model", uri, "--out", str(tmp_path / "masks")]) == 0
    assert (tmp_path / "masks" / "000.png").exists()
    assert not marker.exists(), "predict ran the registered model's code"
    # The same version loaded as MLflow loads it (and `mlflow models serve` does) runs the code:
    mlflow.pyfunc.load_model(uri)
    assert marker.read_text() == "registered code ran"


def test_predict_refuses_a_registered_version_without_checkpoint_or_settings(store: Path, tmp_path: Path, capsys):
    marker = tmp_path / "marker"
    version = register_code(store, HOSTILE_MODEL.format(marker=str(marker)))
    marker.unlink(missing_ok=True)
    uri = f"models:/{NAME}/{version}"
    photos = make_dataset(tmp_path / "photos", count=1)
    capsys.readouterr()
    assert cli(["predict", str(photos / "images"), "--model", uri, "--out", str(tmp_path / "masks")]) == 2
    (error,) = error_lines(capsys)
    assert error.startswith(f"error: --model {uri}: not a model registered by this pipeline")
    assert not marker.exists() and not any((tmp_path / "masks").iterdir())


def test_predict_refuses_a_registered_checkpoint_that_is_not_the_evaluated_one(store: Path, tmp_path: Path, capsys):
    checkpoint = tiny_checkpoint(store / "best.pt")
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    version = register_code(
        store,
        HOSTILE_MODEL.format(marker=str(tmp_path / "marker")),
        artifacts={"checkpoint": str(other)},
        model_config={"threshold": 0.5, "tta": False, "checkpoint_sha256": sha256_file(checkpoint)},
    )
    photos = make_dataset(tmp_path / "photos", count=1)
    uri = f"models:/{NAME}/{version}"
    assert cli(["predict", str(photos / "images"), "--model", uri, "--out", str(tmp_path / "masks")]) == 2
    (error,) = error_lines(capsys)
    assert "the checkpoint is not the one its settings were evaluated for" in error
