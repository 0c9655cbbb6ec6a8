from pathlib import Path

import pytest
import torch

from pipeline.core.errors import TrackingError, TrainingError
from pipeline.tracking import connect, project_root, tracking_uri
from pipeline.train.loop import train_one_epoch
from tests.helpers.httpserver import closed_port_url


def test_project_root_sees_through_dvc_experiment_workspaces(tmp_path: Path):
    workspace = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    assert project_root(workspace) == tmp_path / "proj"
    assert project_root(tmp_path / "proj") == tmp_path / "proj"


def test_default_store_is_an_absolute_sqlite_file_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmp1"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
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
