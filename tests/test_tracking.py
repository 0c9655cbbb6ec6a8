from pathlib import Path

import pytest
import torch

from pipeline.core.errors import TrackingError, TrainingError
from pipeline.tracking import connect, dvc_experiment_tags, prepared_data, project_root, run_url, tracking_uri
from pipeline.train.loop import train_one_epoch
from tests.helpers.httpserver import closed_port_url


def test_project_root_is_dvc_root_else_the_working_directory(tmp_path: Path, monkeypatch):
    workspace = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert project_root() == workspace.resolve()  # run by hand: where it runs
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "proj"))  # what DVC passes to a queued experiment
    assert project_root() == (tmp_path / "proj").resolve()


def test_default_store_is_an_absolute_sqlite_file_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmp1"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri() == "http://tracking.example:5000"


def test_closed_tracking_port_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_url().rsplit("/", 1)[0])
    with pytest.raises(TrackingError, match="is unreachable: ConnectionError.*unset MLFLOW_TRACKING_URI"):
        connect("anything")


def test_cuda_out_of_memory_suggests_a_batch_size_that_fits():
    class Exhausted(torch.nn.Module):
        def forward(self, images):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    loader = [(torch.zeros(16, 3, 8, 8), torch.zeros(16, 1, 8, 8))]
    model = Exhausted()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(
        TrainingError, match=r"out of memory at epoch 3, step 1 with a batch of 16 .*train.batch_size=8"
    ):
        train_one_epoch(model, loader, torch.nn.MSELoss(), optimizer, torch.device("cpu"), epoch=3)


def test_dvc_experiment_tags_come_from_what_dvc_passes(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert dvc_experiment_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "lr-small")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    assert dvc_experiment_tags() == {"dvc.exp_name": "lr-small", "dvc.baseline_rev": "a" * 40}


def test_run_url_points_at_the_server_or_the_local_ui(monkeypatch, tmp_path):
    import mlflow

    mlflow.set_tracking_uri("http://tracking.example:5000/")
    assert run_url("3", "abc") == "http://tracking.example:5000/#/experiments/3/runs/abc"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run_url("3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc"


@pytest.mark.parametrize(
    ("source", "source_type", "name"),
    [
        ("https://example.com/data/people.zip", "http", "people.zip"),
        ("~/data/human-seg.zip", "local", "human-seg.zip"),
        ("synthetic:96", "code", "synthetic:96"),
    ],
)
def test_training_data_is_an_mlflow_dataset_with_source_digest_and_counts(source, source_type, name):
    import json

    from pipeline.core.classes import PERSON
    from pipeline.core.splits import SplitInfo

    info = SplitInfo("f" * 64, 64, PERSON, {"train": 203, "val": 58, "test": 29}, {})
    dataset = prepared_data(source, info).to_dict()
    assert (dataset["source_type"], dataset["name"], dataset["digest"]) == (source_type, name, "f" * 16)
    assert source in dataset["source"]
    assert json.loads(dataset["profile"]) == {"train": 203, "val": 58, "test": 29}
