"""prune: old versions, their logged models and runs go; aliased and newest versions stay whole."""

import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipeline.__main__ import main
from pipeline.core import paths
from pipeline.register.registry import CHAMPION
from pipeline.tracking import RunInfo
from tests.helpers.modelstore import NAME, register, tiny_checkpoint, use_store
from tests.helpers.project import PROJECT_ROOT, load_params, write_params


def training_run(root: Path, checkpoint: Path) -> str:
    use_store(root)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("tests").experiment_id) as run:
        mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
    return run.info.run_id


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> dict[str, str]:
    """Three trained models: version 1 (champion) from T1, versions 2 and 3 from two evaluations
    of T2, version 4 from T3, which has an evaluation that registered nothing."""
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    runs = {f"T{i}": training_run(tmp_path, checkpoint) for i in range(1, 4)}
    for version, (evaluation, training) in enumerate((("E1", "T1"), ("E2", "T2"), ("E2b", "T2"), ("E3", "T3")), 1):
        runs[evaluation], registered = register(
            tmp_path, checkpoint, threshold=0.5, val_scores={"a": 0.5}, parent=runs[training]
        )
        assert registered == str(version)
    experiment = mlflow.get_experiment_by_name("tests").experiment_id
    with mlflow.start_run(experiment_id=experiment, parent_run_id=runs["T3"]) as run:
        runs["E3x"] = run.info.run_id
    mlflow.MlflowClient().set_registered_model_alias(NAME, CHAMPION, "1")
    params = load_params(PROJECT_ROOT / "params.yaml")
    params["mlflow"].update(registered_model=NAME, experiment="tests")
    write_params(tmp_path / "params.yaml", params)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", use_store(tmp_path))
    return runs


def model_folder(version: str) -> Path:
    uri = mlflow.MlflowClient().get_model_version(NAME, version).source
    return Path(mlflow.get_logged_model(uri.removeprefix("models:/")).artifact_location.removeprefix("file://"))


def run_folder(run_id: str) -> Path:
    return Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://"))


@pytest.mark.process  # mlflow gc, as printed
def test_prune_keeps_aliased_and_newest_and_gc_frees_the_rest(store, tmp_path, monkeypatch, capsys):
    client = mlflow.MlflowClient()
    doomed_models = [model_folder(version) for version in ("2", "3")]
    doomed_runs = [run_folder(store[name]) for name in ("T2", "E2", "E2b")]
    assert all(folder.is_dir() for folder in doomed_models + doomed_runs)

    # The evaluation run this checkout's register adds to keeps its version, and its training run the rest.
    RunInfo(store["E2b"], "1").save(tmp_path / paths.EVALUATION_RUN)
    assert main(["prune", "--keep", "1", "--dry-run"]) == 0
    assert "keeps version(s) 4, 3, 1\nprune: would delete version(s) 2, 1 logged model(s) and 1 run(s)" in (
        capsys.readouterr().out
    )
    (tmp_path / paths.EVALUATION_RUN).unlink()
    assert main(["prune", "--keep", "1", "--dry-run"]) == 0
    assert "would delete version(s) 3, 2, 2 logged model(s) and 3 run(s)" in capsys.readouterr().out
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 4

    assert main(["prune", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert "keeps version(s) 4, 1" in out and "deleted version(s) 3, 2" in out
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")) == [1, 4]
    lifecycle = {name: client.get_run(run_id).info.lifecycle_stage for name, run_id in store.items()}
    assert {name for name, stage in lifecycle.items() if stage == "deleted"} == {"T2", "E2", "E2b"}

    # As a user runs it: in a shell of its own, without MLFLOW_TRACKING_URI.
    gc = shlex.split(out.split("free their files with: ")[1].strip())
    assert gc[:2] == ["mlflow", "gc"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    result = subprocess.run([sys.executable, "-m", "mlflow", *gc[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not any(folder.exists() for folder in doomed_models + doomed_runs)
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_run(store["T2"])

    champion = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    assert f"models:/{champion.metadata.model_id}" == client.get_model_version(NAME, "1").source
    assert all(any(model_folder(version).rglob("*.pt")) for version in ("1", "4"))
    assert all(run_folder(store[name]).is_dir() for name in ("T1", "E1", "T3", "E3"))

    assert main(["prune", "--keep", "1"]) == 0
    assert "nothing to delete" in capsys.readouterr().out


def test_prune_names_a_missing_registered_model(tmp_path, monkeypatch, capsys):
    write_params(tmp_path / "params.yaml", load_params(PROJECT_ROOT / "params.yaml"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["prune", "--keep", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: mlflow.registered_model: no registered model 'human-segmentation-unet' in this store"
    )
